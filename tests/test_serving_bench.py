"""`gan bench engine` and the pieces of `gan bench http` (the load runs themselves: tests/test_load.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from gan_service.serving.httpbench import markdown
from gan_service.serving.loadgen import LoadError, LoadResult, body_template, run_wrk


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory):
    """A tiny model exported from a checkpoint that still exists (the engine bench times PyTorch on it too)."""
    pytest.importorskip("torch", reason="gan bench engine compares with PyTorch (the train extra)")
    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists():
        pytest.skip("apt-get install dataset-fashion-mnist")
    from gan_service.training.config import make_config
    from gan_service.training.export import export_model
    from gan_service.training.loop import train

    root = tmp_path_factory.mktemp("trained-tiny")
    cfg = make_config("fmnist-dcgan-basic", {"g_channels": 8, "d_channels": 8, "latent_dim": 16, "steps": 3,
                                             "limit": 256, "batch_size": 16, "log_every": 1, "sample_every": 0,
                                             "fd_every": 0, "out_dir": str(root / "runs")})
    return export_model(train(cfg), "tiny-dc", out_dir=root / "models", fp16=False, log=lambda m: None)


def test_bench_engine_writes_a_measured_table(trained_tiny, tmp_path):
    from gan_service.training.benchmarks import bench_engine

    out = tmp_path / "benchmarks.md"
    body = bench_engine(str(trained_tiny), "cpu", sampler_count=256, out=str(out), command="gan bench engine tiny",
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


def test_bench_sample_writes_a_measured_table(trained_tiny, tmp_path):
    from gan_service.training.benchmarks import bench_sample, write_section

    out = tmp_path / "benchmarks.md"
    write_section(out, "Other", "kept")
    body = bench_sample(str(trained_tiny), count=300, naive_count=20, batch=64, workers=1, out=str(out),
                        command="gan bench sample tiny")
    text = out.read_text()
    assert "## Other\n\nkept" in text and "## Offline sampler (gan bench sample)" in text
    rates = {line.split("|")[1].strip(): line.split("|")[3].strip() for line in body.splitlines()
             if line.startswith("| ") and "images/s" not in line and "---" not in line}
    assert set(rates) == {"sampler -> npy shards", "sampler -> png-tar shards",
                          "naive: PyTorch forward + PIL save per image"}
    assert all(float(v.replace(",", "")) > 0 for v in rates.values())
