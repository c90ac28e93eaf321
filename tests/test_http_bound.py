"""`gan bench http`'s combined bound: the project's n=1 rate against 1 / (1/do-nothing + 1/engine), the engine
timed in-process at the batch sizes the server ran."""
from __future__ import annotations

import pytest

from gan_service.serving.httpbench import bound_text, combined_bound, engine_rows_per_s, histogram_delta, markdown
from gan_service.serving.loadgen import LoadResult
from gan_service.serving.runtime import ModelRuntime
from gan_service.serving.settings import ServeSettings


def _result(c, ok):
    return LoadResult(concurrency=c, seconds=1.0, requests=ok, statuses={200: ok}, p50_ms=10.0,
                      errors={"connect": 0, "read": 0, "write": 0, "timeout": 0})


def test_combined_bound_is_the_two_costs_in_series():
    assert combined_bound(1000.0, 1000.0) == pytest.approx(500.0)
    assert combined_bound(1041.0, 950.0) == pytest.approx(497, abs=1)        # the worked example
    assert histogram_delta({1: 5, 8: 2}, {1: 5, 8: 6, 16: 3}) == {8: 4, 16: 3}


def test_bound_text_reports_medians_per_concurrency():
    rounds = [(16, _result(16, 400), _result(16, 1000), 1000.0), (64, _result(64, 450), _result(64, 1000), 1000.0),
              (16, _result(16, 300), _result(16, 1000), 1000.0), (64, _result(64, 500), _result(64, 1000), 1000.0),
              (16, _result(16, 500), _result(16, 1000), 1000.0), (64, _result(64, 400), _result(64, 1000), 1000.0)]
    text = bound_text(rounds)
    assert "concurrency 16: 80% of the bound (bound 500 req/s" in text
    assert "concurrency 64: 90% of the bound" in text and "target >= 85%" in text
    assert "combined bound" in markdown({}, rounds)
    assert bound_text([(16, _result(16, 1), _result(16, 1))]) == ""             # no engine timing: no claim


def test_engine_rows_per_s_times_the_real_runtime(tiny_models):
    runtime = ModelRuntime(ServeSettings(models=[str(tiny_models["dc"])], max_batch_size=64, max_n=64), warmup=False)
    rate = engine_rows_per_s(runtime, {1: 10, 8: 2}, min_s=0.01)
    assert rate > 0 and runtime.stats.summary()["rows"] >= 3 * (1 + 8)
    assert engine_rows_per_s(runtime, {}) is None
