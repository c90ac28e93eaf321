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


# ---------------------------------------------------------------- the output directory is the user's: touch only our own

NPY = {"fmt": "npy", "shard_size": 10, "options": QUIET}


def test_a_directory_that_is_not_a_sampler_output_is_refused_untouched(tiny_models, tmp_path):
    out = tmp_path / "mine"
    (out / "notes").mkdir(parents=True)
    (out / ".tmp-draft.txt").write_text("a user's file that merely starts with .tmp-")
    (out / "notes" / ".tmp-todo").write_text("keep me")
    before = _files(out)
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    with pytest.raises(SampleError, match="not empty"):
        sample(str(tiny_models["dc"]), 20, 1, out, **NPY)
    assert _files(out) == before and sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == names


def test_resume_deletes_only_temporaries_of_this_run(tiny_models, tmp_path):
    out = tmp_path / "o"
    sample(str(tiny_models["cdc"]), 25, 3, out, fmt="png", shard_size=10, options=QUIET)
    reference = _files(out)
    index = json.loads((out / "index.json").read_text())
    index["shards"], index["complete"] = index["shards"][:1], False            # as if killed after shard 0
    (out / "index.json").write_text(json.dumps(index))
    foreign = {out / ".tmp-shard-00001.npy": b"user", out / "png" / ".tmp-00001": None,
               out / ".tmp-0123456789abcdef-x": b"another run's name"}
    for path, data in foreign.items():
        path.mkdir() if data is None else path.write_bytes(data)
    sample(str(tiny_models["cdc"]), 25, 3, out, fmt="png", shard_size=10, options=QUIET)
    assert all(path.exists() for path in foreign)
    assert {k: v for k, v in _files(out).items() if ".tmp-" not in k} == reference
    assert verify(out)["ok"]


def test_a_second_run_into_the_same_out_fails_at_once(tiny_models, tmp_path):
    import fcntl

    from gan_service.serving.shards import LOCK

    out = tmp_path / "o"
    sample(str(tiny_models["dc"]), 20, 1, out, **NPY)
    before = _files(out)
    with open(out / LOCK, "a") as held:                   # the lock another `gan sample` would hold while it runs
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        second = _gan("sample", str(tiny_models["dc"]), "--count", "20", "--seed", "1", "--format", "npy",
                      "--shard-size", "10", "--out", str(out), "--no-progress")
    assert second.returncode == 2, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and str(out) in lines[0] and "another gan sample" in lines[0], second.stderr
    assert _files(out) == before


def test_every_file_and_directory_written_is_fsynced(tiny_models, tmp_path, monkeypatch):
    synced: set[tuple[int, int]] = set()
    real_fsync = os.fsync

    def fsync(fd):
        st = os.fstat(fd)
        synced.add((st.st_dev, st.st_ino))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    for fmt in ("png", "png-tar", "npy"):
        out = tmp_path / "new" / fmt
        sample(str(tiny_models["cdc"]), 12, 1, out, fmt=fmt, shard_size=5, options=QUIET)
        for path in [out.parent, out, *out.rglob("*")]:
            st = path.stat()
            if path.name != ".gan-sample.lock":
                assert (st.st_dev, st.st_ino) in synced, f"{fmt}: {path} was never fsynced"


def test_index_upkeep_is_linear_in_the_shard_count(tmp_path, monkeypatch):
    """Each index write costs time in proportion to its size; a run of 2N shards must not cost 4x a run of N."""
    from gan_service.serving import shards

    clock = {"now": 0.0}
    written = {"bytes": 0}

    def costly_write(path, data, tmp=None):                 # 1 microsecond per byte, on the test's clock
        written["bytes"] += len(data)
        clock["now"] += len(data) * 1e-6

    monkeypatch.setattr(shards, "atomic_write", costly_write)

    def upkeep(n: int) -> int:
        written["bytes"] = 0
        spec = shards.SampleSpec("m", "0" * 64, 0, n, "random", 1.0, "npy", 1)
        index = shards.Index(tmp_path, spec, {}, clock=lambda: clock["now"])
        for k in range(n):
            clock["now"] += 0.01                             # 10 ms to render a shard
            index.add(k, {"name": shards.shard_name(spec, k), "sha256": "0" * 64,
                          "files": {shards.shard_name(spec, k): "0" * 64}})
        index.flush()
        return written["bytes"]

    small, large = upkeep(2000), upkeep(4000)
    assert large < 2.5 * small, (small, large)


def test_an_index_write_lists_every_finished_shard_and_only_those(tiny_models, tmp_path):
    from gan_service.serving import shards

    out = tmp_path / "o"
    sample(str(tiny_models["dc"]), 30, 1, out, **NPY)
    full = json.loads((out / "index.json").read_text())
    spec = shards.SampleSpec(**{k: full[k] for k in shards.SampleSpec.__dataclass_fields__})
    done = {e["shard"]: {k: v for k, v in e.items() if k not in ("shard", "start", "stop")} for e in full["shards"]}
    index = shards.Index(out, spec, {2: done[2], 0: done[0]})
    index.flush()
    partial = json.loads((out / "index.json").read_text())
    assert partial["complete"] is False and partial["shards"] == [full["shards"][0], full["shards"][2]]
    index.add(1, done[1])
    index.flush()
    assert json.loads((out / "index.json").read_text()) == full


# ---------------------------------------------------------------- --verify reads only inside --out

def _crafted(tiny_models, tmp_path) -> tuple[Path, dict]:
    out = tmp_path / "a"
    sample(str(tiny_models["dc"]), 20, 1, out, **NPY)
    return out, json.loads((out / "index.json").read_text())


def test_verify_never_reads_a_shard_outside_out(tiny_models, tmp_path):
    out, index = _crafted(tiny_models, tmp_path)
    other = tmp_path / "b"
    sample(str(tiny_models["dc"]), 20, 1, other, **NPY)
    (out / "shard-00000.npy").unlink()
    index["shards"][0]["name"] = "../b/shard-00000.npy"
    index["shards"][0]["files"] = {"../b/shard-00000.npy": index["shards"][0]["sha256"]}
    (out / "index.json").write_text(json.dumps(index))
    result = _gan("sample", "--verify", str(out))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "../b/shard-00000.npy" in result.stderr, result.stderr


def test_verify_never_follows_a_link_out_of_out(tiny_models, tmp_path):
    out, _ = _crafted(tiny_models, tmp_path)
    other = tmp_path / "b"
    sample(str(tiny_models["dc"]), 20, 1, other, **NPY)
    (out / "shard-00000.npy").unlink()
    (out / "shard-00000.npy").symlink_to(other / "shard-00000.npy")          # same bytes, outside --out
    result = _gan("sample", "--verify", str(out))
    assert result.returncode == 2 and "outside" in result.stderr and "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize("craft", [
    lambda d: d["shards"][0].update(name="/etc/hostname"),
    lambda d: d["shards"][0].update(name="shard-00000/../../x.npy"),
    lambda d: d["shards"][0].pop("name"),
    lambda d: d["shards"][0].update(shard="zero"),
    lambda d: d["shards"][0].update(shard=7),
    lambda d: d["shards"][0].update(files=["shard-00000.npy"]),
    lambda d: d["shards"][0].update(files={"/etc/hostname": "0" * 64}),
    lambda d: d["shards"].append(d["shards"][0]),
    lambda d: d["shards"].__setitem__(0, "shard-00000.npy"),
    lambda d: d.update(count="20"),
    lambda d: d.update(shard_size=0),
    lambda d: d.update(count=10 ** 15, shard_size=1),
    lambda d: d.update(shards={}),
], ids=["absolute", "dotdot", "no-name", "shard-not-int", "shard-out-of-range", "files-not-dict", "files-absolute",
        "duplicate", "entry-not-dict", "count-str", "shard-size-0", "too-many-shards", "shards-not-list"])
def test_verify_refuses_a_malformed_index_in_one_line(tiny_models, tmp_path, craft):
    out, index = _crafted(tiny_models, tmp_path)
    craft(index)
    (out / "index.json").write_text(json.dumps(index))
    result = _gan("sample", "--verify", str(out))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(out / "index.json") in lines[0], result.stderr


# ---------------------------------------------------------------- a full disk

def test_a_full_disk_is_one_line_naming_out_and_the_run_resumes(tiny_models, tmp_path, monkeypatch, capsys):
    import errno

    from gan_service import cli
    from gan_service.serving import shards

    real_write, calls = shards.atomic_write, {"n": 0}

    def write(path, data, tmp=None):
        if Path(path).name.startswith("shard-"):
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
        return real_write(path, data, tmp=tmp)

    monkeypatch.setattr(shards, "atomic_write", write)
    out = tmp_path / "o"
    args = ["sample", str(tiny_models["dc"]), "--count", "30", "--format", "npy", "--shard-size", "10",
            "--out", str(out), "--no-progress", "--workers", "1"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0] and str(out) in err[0] and "No space left" in err[0], err
    assert [e["shard"] for e in json.loads((out / "index.json").read_text())["shards"]] == [0]
    monkeypatch.setattr(shards, "atomic_write", real_write)
    assert cli.main(args) == 0
    assert verify(out)["ok"]
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]


# ---------------------------------------------------------------- the whole machine, the same bytes

def test_default_engine_threads_are_every_core(tiny_models):
    from gan_service.core.cpus import available_cores
    from gan_service.serving.shards import make_runtime

    runtime = make_runtime(str(tiny_models["dc"]), SampleOptions(progress=False))
    assert runtime.engines[0].options.intra_op_threads == available_cores()
    runtime = make_runtime(str(tiny_models["dc"]), SampleOptions(threads=1, progress=False))
    assert runtime.engines[0].options.intra_op_threads == 1


@pytest.mark.parametrize("fmt", ["npy", "png-tar"])
def test_thread_count_does_not_change_the_bytes(tiny_models, tmp_path, fmt):
    outs = []
    for threads in ("1", "2"):
        outs.append(tmp_path / f"t{threads}")
        result = _gan("sample", str(tiny_models["cdc"]), "--count", "300", "--seed", "4", "--format", fmt,
                      "--shard-size", "100", "--batch", "64", "--threads", threads, "--out", str(outs[-1]),
                      "--no-progress")
        assert result.returncode == 0, result.stderr
    assert _files(outs[0]) == _files(outs[1])


def test_bad_threads_is_one_line(tiny_models, tmp_path):
    result = _gan("sample", str(tiny_models["dc"]), "--count", "3", "--threads", "-1", "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "--threads: must be >= 0" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_encoding_workers_left_behind_by_a_killed_run_do_not_hold_the_lock(tiny_models, tmp_path):
    out = tmp_path / "o"
    args = ["sample", str(tiny_models["cdc"]), "--count", "30000", "--shard-size", "500", "--format", "png-tar",
            "--workers", "2", "--no-progress", "--out", str(out)]
    first = subprocess.Popen([sys.executable, "-m", "gan_service.cli", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while first.poll() is None and _listed_shards(out) < 2:      # the pool's workers exist once shards are listed
            time.sleep(0.01)
        assert first.poll() is None, "the first run finished before it could be killed; make it longer"
        os.kill(first.pid, signal.SIGKILL)                  # the main process only: its pool workers are orphaned
        first.wait()
        second = _gan(*args)                                # the same command resumes: the lock died with its run
        assert second.returncode == 0, second.stderr
        assert verify(out)["ok"]
    finally:
        os.killpg(first.pid, signal.SIGKILL)


# ---------------------------------------------------------------- the graph that made the bytes is part of the spec

def test_a_resume_with_another_graph_is_refused(tiny_models, tmp_path):
    """Bytes differ between precisions and providers: a run made by another graph (here: an int8 one) is not mixed."""
    out = tmp_path / "o"
    sample(str(tiny_models["dc"]), 30, 1, out, **NPY)
    index = json.loads((out / "index.json").read_text())
    assert (index["precision"], index["provider"]) == ("fp32", "CPUExecutionProvider")
    assert index["graph_sha256"] == index["model_sha256"]
    index.update(precision="int8", graph_sha256="1" * 64, complete=False)
    index["shards"] = index["shards"][:1]
    (out / "index.json").write_text(json.dumps(index))
    before = _files(out)
    with pytest.raises(SampleError, match="holds shards of another run.*precision: int8 here, fp32 asked"):
        sample(str(tiny_models["dc"]), 30, 1, out, **NPY)
    assert _files(out) == before


def test_an_index_of_an_older_version_resumes_as_a_cpu_fp32_run(tiny_models, tmp_path):
    out = tmp_path / "o"
    sample(str(tiny_models["dc"]), 30, 1, out, **NPY)
    reference = _files(out)
    index = json.loads((out / "index.json").read_text())
    for key in ("precision", "provider", "graph_sha256"):
        del index[key]
    index.update(version=1, complete=False, shards=index["shards"][:1])
    (out / "index.json").write_text(json.dumps(index, indent=1))
    assert sample(str(tiny_models["dc"]), 30, 1, out, **NPY)["resumed_from"] == 10
    assert _files(out) == reference


def test_a_precision_the_model_lacks_is_one_line(tiny_models, tmp_path):
    result = _gan("sample", str(tiny_models["dc"]), "--count", "3", "--precision", "int8", "--out", str(tmp_path / "o"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "int8" in lines[0] and "Traceback" not in result.stderr, \
        result.stderr
    assert not (tmp_path / "o").exists()
