"""Offline sampler: same images as the service, atomic resumable shards, verification, the Ray engine."""
from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from gan_service.serving.sampler import SampleError, SampleOptions, sample, verify

REPO = Path(__file__).resolve().parents[1]
QUIET = SampleOptions(batch=64, workers=2, progress=False)


def _files(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_sampler_images_equal_the_http_service(tiny_models, server, tmp_path):
    for key, model_name, labels in (("dc", "tiny-dc", "random"), ("cdc", "tiny-cdc", "random")):
        out = tmp_path / key
        sample(str(tiny_models[key]), 70, 1234, out, labels=labels, fmt="npy", shard_size=30, options=QUIET)
        images = np.concatenate([np.load(out / f"shard-{k:05d}.npy") for k in range(3)])
        assert images.shape[0] == 70
        r = httpx.post(server.url + "/generate", json={"model": model_name, "n": 64, "seed": 1234, "format": "npy"},
                       timeout=60)
        assert np.array_equal(np.load(io.BytesIO(r.content)), images[:64])
        if key == "cdc":
            labels_saved = np.concatenate([np.load(out / f"shard-{k:05d}.labels.npy") for k in range(3)])
            assert r.headers["x-labels"] == ",".join(map(str, labels_saved[:64]))


def test_png_tar_layout_labels_and_index(tiny_models, tmp_path):
    out = tmp_path / "tar"
    summary = sample(str(tiny_models["cdc"]), 25, 5, out, labels="balanced", fmt="png-tar", shard_size=10, options=QUIET)
    assert summary["shards"] == 3 and summary["generated_now"] == 25
    index = json.loads((out / "index.json").read_text())
    assert index["complete"] and [(s["start"], s["stop"]) for s in index["shards"]] == [(0, 10), (10, 20), (20, 25)]
    with tarfile.open(out / "shard-00002.tar") as tar:
        assert tar.getnames() == [f"{i:09d}_c{i % 10}.png" for i in range(20, 25)]
    assert verify(out)["ok"]
    single = tmp_path / "png"
    sample(str(tiny_models["cdc"]), 12, 5, single, labels="Bag", fmt="png", shard_size=5, options=QUIET)
    assert sorted(p.name for p in (single / "png" / "00002").iterdir()) == ["000000010_c8.png", "000000011_c8.png"]
    assert verify(single)["ok"]


def test_verify_catches_corruption_and_missing_shards(tiny_models, tmp_path):
    out = tmp_path / "v"
    sample(str(tiny_models["dc"]), 30, 1, out, fmt="png-tar", shard_size=10, options=QUIET)
    data = bytearray((out / "shard-00001.tar").read_bytes())
    data[700] ^= 0x55
    (out / "shard-00001.tar").write_bytes(bytes(data))
    with pytest.raises(SampleError, match=r"shard-00001\.tar: sha256 mismatch"):
        verify(out)
    (out / "shard-00002.tar").unlink()
    with pytest.raises(SampleError, match=r"shard-00002\.tar: file missing"):
        verify(out)
    bad = subprocess.run([sys.executable, "-m", "gan_service.cli", "sample", "--verify", str(out)], capture_output=True, text=True)
    assert bad.returncode == 2 and "shard-00001.tar" in bad.stderr and "Traceback" not in bad.stderr


def test_bad_input_is_refused_and_nothing_overwritten(tiny_models, tmp_path):
    out = tmp_path / "o"
    sample(str(tiny_models["dc"]), 10, 1, out, fmt="npy", shard_size=10, options=QUIET)
    before = _files(out)
    with pytest.raises(SampleError, match="holds shards of another run.*seed: 1 here, 2 asked"):
        sample(str(tiny_models["dc"]), 10, 2, out, fmt="npy", shard_size=10, options=QUIET)
    with pytest.raises(SampleError, match="model_sha256"):
        sample(str(tiny_models["cdc"]), 10, 1, out, fmt="npy", shard_size=10, options=QUIET)
    assert _files(out) == before
    with pytest.raises(SampleError, match="--count: must be >= 1"):
        sample(str(tiny_models["dc"]), 0, 1, tmp_path / "x", options=QUIET)
    with pytest.raises(SampleError, match="no such model directory"):
        sample(str(tmp_path / "nope"), 5, 1, tmp_path / "y", options=QUIET)
    with pytest.raises(SampleError, match="--labels.*unconditional"):
        sample(str(tiny_models["dc"]), 5, 1, tmp_path / "z", labels="balanced", options=QUIET)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "precious.txt").write_text("keep")
    with pytest.raises(SampleError, match="not empty"):
        sample(str(tiny_models["dc"]), 5, 1, tmp_path / "full", options=QUIET)


def _listed_shards(out: Path) -> int:
    try:
        return len(json.loads((out / "index.json").read_text())["shards"])
    except (OSError, ValueError, KeyError):
        return 0


def test_resume_after_kill_9_at_random_points_is_byte_identical(tiny_models, tmp_path):
    args = [str(tiny_models["cdc"]), "--count", "6000", "--seed", "77", "--shard-size", "100", "--batch", "8",
            "--format", "png-tar", "--workers", "2", "--no-progress"]
    reference = tmp_path / "reference"
    subprocess.run([sys.executable, "-m", "gan_service.cli", "sample", *args, "--out", str(reference)], check=True,
                   capture_output=True, cwd=REPO)
    out, rng, kills = tmp_path / "killed", random.Random(0), 0
    # Kill the sampler (and its encoding workers) once the index lists a random number of shards, plus a random
    # few milliseconds, so the kill lands mid-render, mid-encode or mid-write; then run it again.
    for target in sorted(rng.sample(range(2, 55), 4)):
        proc = subprocess.Popen([sys.executable, "-m", "gan_service.cli", "sample", *args, "--out", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO, start_new_session=True)
        while proc.poll() is None and _listed_shards(out) < target:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.02))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
    assert kills >= 2, "the sampler finished before it could be killed; make the run longer"
    subprocess.run([sys.executable, "-m", "gan_service.cli", "sample", *args, "--out", str(out)], check=True,
                   capture_output=True, cwd=REPO)
    assert verify(out)["ok"]
    assert _files(out) == _files(reference)


def test_ray_engine_writes_identical_shards(tiny_models, tmp_path):
    pytest.importorskip("ray")
    import ray

    local, distributed = tmp_path / "local", tmp_path / "ray"
    sample(str(tiny_models["cdc"]), 90, 9, local, fmt="png-tar", shard_size=30, options=QUIET)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = sample(str(tiny_models["cdc"]), 90, 9, distributed, fmt="png-tar", shard_size=30,
                         options=SampleOptions(batch=64, engine="ray", progress=False))
    finally:
        ray.shutdown()
    assert summary["shards"] == 3
    assert _files(distributed) == _files(local)


def _gan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gan_service.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("content", ['{"broken', '{"version": 1}', "[]"])
def test_verify_on_a_damaged_index_is_one_line_naming_the_file(tmp_path, content):
    (tmp_path / "index.json").write_text(content)
    out = _gan("sample", "--verify", str(tmp_path))
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / "index.json") in lines[0] and "Traceback" not in out.stderr, out.stderr


def test_sample_on_a_missing_model_says_so_once(tmp_path):
    out = _gan("sample", str(tmp_path / "nope"), "--count", "3", "--out", str(tmp_path / "out"))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "no such model directory" in lines[0], out.stderr
    assert lines[0].count(str(tmp_path / "nope")) == 1, out.stderr          # the path named once, not twice
