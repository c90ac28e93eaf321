"""Offline batch sampling: millions of images to shards on disk, resumable after any crash.

Images come from the same rows -> latents -> engine path as the HTTP service (``ModelRuntime.render``),
so image (model, seed, index) is the same bytes here and over HTTP.

Output directory:
  index.json             what is being sampled (model sha256, seed, count, labels, truncation, format,
                         shard size) and every *finished* shard with its index range and sha256
  shard-00000.tar        PNGs named 000000000.png ... (format png-tar), or
  shard-00000.npy        uint8 [n, H, W, C] (format npy; conditional models add shard-00000.labels.npy), or
  png/00000/...png       individual PNG files, one folder per shard (format png)

A shard is written under a temporary name and renamed when complete; the index is rewritten atomically
after each rename. A crash at any moment (kill -9 included) leaves at worst a temp file (deleted on
restart) or a finished shard the index does not list yet (regenerated, to the same bytes). So the same
command continues where it stopped, and the finished output equals an uninterrupted run byte for byte.
"""
from __future__ import annotations

import hashlib
import json
import os
import tarfile
import time
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from gan_service.serving.modeldir import ModelDir
from gan_service.serving.latents import MAX_SEED
from gan_service.serving.shards import (FORMATS, INDEX, INDEX_VERSION, SampleError, SampleOptions, SampleSpec,  # noqa: F401
                                        dir_digest, encode_shard, make_runtime, open_output, render_shard,
                                        resolve_labels, save_index, shard_name, write_shard)


def build_spec(model: ModelDir, count: int, seed: int, labels: str, truncation: float, fmt: str,
               shard_size: int) -> SampleSpec:
    """Validate the arguments (messages name the flag) into a SampleSpec."""
    checks = [("--count", count >= 1, "must be >= 1"), ("--seed", 0 <= seed <= MAX_SEED, f"must be in 0..{MAX_SEED}"),
              ("--shard-size", shard_size >= 1, "must be >= 1"), ("--truncation", 0 < truncation <= 1, "must be in (0, 1]"),
              ("--format", fmt in FORMATS, f"must be one of {', '.join(FORMATS)}")]
    for flag, ok, why in checks:
        if not ok:
            raise SampleError(f"{flag}: {why}")
    return SampleSpec(model.name, model.sha256, seed, count, resolve_labels(model, labels), float(truncation), fmt,
                      shard_size)


def sample(model_ref: str, count: int, seed: int, out: str | Path, labels: str = "random", truncation: float = 1.0,
           fmt: str = "png-tar", shard_size: int = 10000, options: SampleOptions | None = None) -> dict:
    """Sample ``count`` images of (model, seed) into ``out``; resumes a partial run of the same spec."""
    options = options or SampleOptions()
    if options.batch < 1 or options.workers < 0:
        raise SampleError("--batch must be >= 1 and --workers >= 0")
    runtime = make_runtime(model_ref, options)
    spec = build_spec(runtime.models[0], count, seed, labels, truncation, fmt, shard_size)
    out = Path(out)
    done = open_output(out, spec)
    pending = [k for k in range(len(spec.shard_ranges())) if k not in done]
    t0, already = time.perf_counter(), sum(b - a for k, (a, b) in enumerate(spec.shard_ranges()) if k in done)
    with Progress(spec.count, already, options.progress) as progress:
        if options.engine == "ray":
            from gan_service.serving.ray_sampler import run_ray
            run_ray(model_ref, spec, out, pending, options, done, progress)
        elif options.engine == "local":
            _run_local(runtime, spec, out, pending, options, done, progress)
        else:
            raise SampleError(f"--engine: {options.engine!r} is not local or ray")
    seconds = time.perf_counter() - t0
    made = spec.count - already
    return {"out": str(out), "count": spec.count, "generated_now": made, "resumed_from": already,
            "shards": len(spec.shard_ranges()), "seconds": round(seconds, 2),
            "images_per_s": round(made / seconds, 1) if seconds > 0 else None, "provider": runtime.engines[0].provider}


def _run_local(runtime, spec: SampleSpec, out: Path, pending: list[int], options: SampleOptions, done: dict,
               progress: "Progress") -> None:
    """Inference here, encoding in a process pool, writing as each shard's encoding completes (in order)."""
    workers = options.workers or os.cpu_count() or 1
    conditional = bool(runtime.models[0].num_classes)
    in_flight: list[tuple[int, Future]] = []

    def finish_oldest():
        k, fut = in_flight.pop(0)
        done[k] = write_shard(out, spec, k, fut.result())
        save_index(out, spec, done)
        a, b = spec.shard_ranges()[k]
        progress.advance(b - a)

    # NPY encoding is a copy: a thread does it beside the engine; PNG encoding needs processes (the GIL).
    with (ThreadPoolExecutor(1) if spec.format == "npy" else ProcessPoolExecutor(workers)) as pool:
        for k in pending:
            start, stop = spec.shard_ranges()[k]
            images, labels = render_shard(runtime, spec, start, stop, options.batch)
            in_flight.append((k, pool.submit(encode_shard, spec.format, images, labels, start, conditional)))
            while len(in_flight) > workers or (in_flight and in_flight[0][1].done()):
                finish_oldest()
        while in_flight:
            finish_oldest()


class Progress:
    """A progress bar with images/s and ETA on stderr (rich), or nothing."""

    def __init__(self, total: int, completed: int, enabled: bool):
        self.enabled, self.total, self.completed = enabled, total, completed

    def __enter__(self):
        if self.enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, TaskProgressColumn,
                                       TextColumn, TimeElapsedColumn, TimeRemainingColumn)
            self._bar = RichProgress(TextColumn("sampling"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                                     TextColumn("{task.fields[rate]} img/s"), TimeElapsedColumn(), TextColumn("ETA"),
                                     TimeRemainingColumn(), transient=False)
            self._bar.__enter__()
            self._task = self._bar.add_task("sample", total=self.total, completed=self.completed, rate="-")
            self._t0, self._n0 = time.perf_counter(), self.completed
        return self

    def advance(self, n: int) -> None:
        self.completed += n
        if self.enabled:
            rate = (self.completed - self._n0) / max(time.perf_counter() - self._t0, 1e-9)
            self._bar.update(self._task, advance=n, rate=f"{rate:,.0f}")

    def __exit__(self, *exc):
        if self.enabled:
            self._bar.__exit__(*exc)


# ---------------------------------------------------------------- verification

def verify(out: str | Path) -> dict:
    """Check that every index is present exactly once and every shard matches its sha256."""
    out = Path(out)
    index_path = out / INDEX
    if not index_path.exists():
        raise SampleError(f"{out}: no {INDEX} (not a sampler output directory)")
    try:
        doc = json.loads(index_path.read_text())
        spec = SampleSpec(**{k: doc[k] for k in SampleSpec.__dataclass_fields__})
        listed = {e["shard"]: e for e in doc["shards"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise SampleError(f"{index_path}: damaged index ({type(exc).__name__}: {exc})") from None
    problems = []
    for k, (start, stop) in enumerate(spec.shard_ranges()):
        entry = listed.get(k)
        if entry is None:
            problems.append(f"shard {k} (indices {start}..{stop - 1}) missing")
            continue
        problems += _check_shard(out, spec, k, entry, stop - start)
    if problems:
        raise SampleError(f"{out}: {len(problems)} problem(s): " + "; ".join(problems))
    return {"out": str(out), "count": spec.count, "shards": len(listed), "ok": True}


def _check_shard(out: Path, spec: SampleSpec, k: int, entry: dict, n: int) -> list[str]:
    path = out / entry["name"]
    if not path.exists():
        return [f"{entry['name']}: file missing"]
    if spec.format == "png":
        if len(list(path.iterdir())) != n:
            return [f"{entry['name']}: {len(list(path.iterdir()))} files, expected {n}"]
        return [] if dir_digest(path) == entry["sha256"] else [f"{entry['name']}: sha256 mismatch (corrupted)"]
    bad = [f"{name}: sha256 mismatch (corrupted)" for name, digest in entry["files"].items()
           if not (out / name).exists() or hashlib.sha256((out / name).read_bytes()).hexdigest() != digest]
    if not bad and spec.format == "npy" and np.load(path, allow_pickle=False).shape[0] != n:
        bad.append(f"{entry['name']}: wrong image count")
    if not bad and spec.format == "png-tar":
        with tarfile.open(path) as tar:
            if len(tar.getnames()) != n:
                bad.append(f"{entry['name']}: {len(tar.getnames())} images, expected {n}")
    return bad
