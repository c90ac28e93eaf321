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


def _table(body: str) -> list[list[str]]:
    """The data rows of the first Markdown table in ``body``, cells stripped."""
    lines = [line for line in body.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.split("|")[1:-1]] for line in lines[1:] if "---" not in line]


def test_bench_engine_writes_a_measured_table(trained_tiny, tmp_path):
    import shutil

    from gan_service.core.cpus import available_cores
    from gan_service.training.benchmarks import bench_engine, thread_counts

    from gan_service.serving.modeldir import read_manifest, write_manifest

    model = Path(shutil.copytree(trained_tiny, tmp_path / "tiny-dc"))
    shutil.copy(model / "generator.onnx", model / "generator.int8.onnx")     # stands in for `gan quantize`'s graph
    write_manifest(model, {**read_manifest(model), "int8": {"passed": True}})
    out = tmp_path / "benchmarks.md"
    body = bench_engine(str(model), "cpu", sampler_count=256, out=str(out), command="gan bench engine tiny",
                        batches=(1, 8))
    assert "## Engine: onnxruntime against PyTorch eager (gan bench engine)" in out.read_text()
    rows = _table(body)
    cells = {(r[0], r[1], int(r[2]), int(r[3])) for r in rows}
    for precision in ("fp32", "int8"):
        for threads in thread_counts(available_cores()):
            assert {("onnxruntime CPUExecutionProvider", precision, threads, b) for b in (1, 8)} <= cells
    assert ("PyTorch eager CPU", "fp32", 1, 8) in cells
    assert all(float(r[4].replace(",", "")) > 0 for r in rows)
    assert "MFLOP" in body and "Offline sampler to NPY shards" in body and "checkpoint" in body
    assert f"{available_cores()} engine thread" in body and "of the best onnxruntime configuration" in body


def test_thread_counts_run_from_one_to_every_core():
    from gan_service.training.benchmarks import thread_counts

    assert thread_counts(1) == [1] and thread_counts(2) == [1, 2] and thread_counts(6) == [1, 2, 4, 6]
    assert thread_counts(16) == [1, 2, 4, 8, 16]


def test_default_engine_threads_are_every_core_a_worker_may_use():
    from gan_service.core.cpus import default_engine_threads

    assert [default_engine_threads(c) for c in (0, 1, 2, 3, 8, 64)] == [1, 1, 2, 3, 8, 64]


def test_available_cores_honour_a_cgroup_quota(tmp_path):
    from gan_service.core.cpus import cgroup_cpu_limit

    for text, cores in (("max 100000", None), ("150000 100000", 2), ("50000 100000", 1), ("garbage", None)):
        (tmp_path / "cpu.max").write_text(text + "\n")
        assert cgroup_cpu_limit(tmp_path / "cpu.max") == cores
    assert cgroup_cpu_limit(tmp_path / "missing") is None


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
                        command="gan bench sample tiny", index_shards=50)
    text = out.read_text()
    assert "## Other\n\nkept" in text and "## Offline sampler (gan bench sample)" in text
    rates = {r[0]: r[2] for r in _table(body)}
    assert set(rates) == {"sampler -> npy shards", "sampler -> png-tar shards",
                          "naive: PyTorch forward + PIL save per image"}
    assert all(float(v.replace(",", "")) > 0 for v in rates.values())
    assert "Index upkeep: 50 shards" in body
