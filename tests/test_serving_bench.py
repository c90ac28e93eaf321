"""`gan bench engine` and the pieces of `gan bench http` (the load runs themselves: tests/test_load.py)."""
from __future__ import annotations

import pytest

from service.httpbench import markdown
from service.loadgen import LoadError, LoadResult, body_template, run_wrk


def test_bench_engine_writes_a_measured_table(tiny_models, tmp_path):
    from training.benchmarks import bench_engine

    out = tmp_path / "benchmarks.md"
    body = bench_engine(str(tiny_models["dc"]), "cpu", sampler_count=256, out=str(out), command="gan bench engine tiny",
                        batches=(1, 8))
    assert "## Engine: onnxruntime against PyTorch eager (gan bench engine)" in out.read_text()
    rows = [line.split("|")[1:-1] for line in body.splitlines() if line.startswith("| ") and "---" not in line][1:]
    engines = {(r[0].strip(), r[2].strip()) for r in rows}
    assert engines >= {("onnxruntime CPUExecutionProvider", "1"), ("PyTorch eager CPU", "8")}
    assert all(float(r[3].replace(",", "")) > 0 for r in rows)
    assert "MFLOP" in body and "Offline sampler to NPY shards" in body and "checkpoint" in body


def test_load_runs_are_loopback_only_and_bodies_carry_a_seed_counter():
    with pytest.raises(LoadError, match="loopback"):
        run_wrk("http://example.com:3000", "/generate", 1, "png", 1, 1)
    assert body_template(64, "npy") == '{"n": 64, "seed": %d, "format": "npy"}'


def test_http_bench_report_states_the_targets_as_medians():
    def result(c, ok, p50):
        return LoadResult(concurrency=c, seconds=1.0, requests=ok + 3, statuses={200: ok, 429: 3}, p50_ms=p50,
                          errors={"connect": 0, "read": 0, "write": 0, "timeout": 0})

    rounds = [(16, result(16, 500, 30.0), result(16, 800, 20.0)), (64, result(64, 600, 90.0), result(64, 1000, 60.0)),
              (16, result(16, 500, 40.0), result(16, 800, 20.0)), (64, result(64, 800, 90.0), result(64, 1000, 60.0)),
              (16, result(16, 500, 50.0), result(16, 800, 20.0)), (64, result(64, 700, 90.0), result(64, 1000, 60.0))]
    text = markdown({"do-nothing BentoML": [(1, "png", result(64, 1000, 60.0))]}, rounds)
    assert "| do-nothing BentoML | n=1 png | 64 | 1,000 | 60.0 |" in text and "{429: 3}" in text
    assert "= 70% of the do-nothing endpoint" in text and "= 2.00x its p50" in text
