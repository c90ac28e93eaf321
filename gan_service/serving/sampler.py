"""Offline batch sampling: millions of images to shards on disk, resumable after any crash, on every core.

Images come from the same rows -> latents -> engine path as the HTTP service (``ModelRuntime.render``),
so image (model, seed, index) is the same bytes here and over HTTP when both run the same graph (precision and
provider, which index.json records), whatever the thread or worker counts.

Output directory:
  index.json             what is being sampled (model sha256, seed, count, labels, truncation, format,
                         shard size, and the graph: precision, provider, graph sha256) and every *finished*
                         shard with its index range and sha256
  .gan-sample.lock       an empty file; the run writing the directory holds an flock on it
  shard-00000.tar        PNGs named 000000000.png ... (format png-tar), or
  shard-00000.npy        uint8 [n, H, W, C] (format npy; conditional models add shard-00000.labels.npy), or
  png/00000/...png       individual PNG files, one folder per shard (format png)

A shard is written under a temporary name that carries the run's identity (``.tmp-<run id>-...``), fsynced and
renamed when complete; the index is rewritten atomically as shards finish (``shards.Index``: after each shard
while that is cheap, never more than about a tenth of the run). A crash at any moment (kill -9 included) leaves
at worst a temporary of this run (deleted on restart) or finished shards the index does not list yet
(regenerated, to the same bytes). So the same command continues where it stopped, and the finished output
equals an uninterrupted run byte for byte. Nothing else in the directory is ever deleted or replaced.
"""
from __future__ import annotations

import hashlib
import tarfile
import time
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from gan_service.core.cpus import available_cores
from gan_service.serving.latents import MAX_SEED
from gan_service.serving.modeldir import ModelDir
from gan_service.serving.shards import (FORMATS, INDEX, INDEX_VERSION, MAX_SHARDS, Output, SampleError,  # noqa: F401
                                        SampleOptions, SampleSpec, dir_digest, drop_inherited_lock, encode_shard,
                                        engine_graph, make_runtime, open_output, read_index, render_shard,
                                        resolve_labels, shard_name)


def build_spec(model: ModelDir, count: int, seed: int, labels: str, truncation: float, fmt: str,
               shard_size: int, engine=None) -> SampleSpec:
    """Validate the arguments (messages name the flag) into a SampleSpec of the graph ``engine`` runs (None:
    generator.onnx on the CPU)."""
    checks = [("--count", count >= 1, "must be >= 1"), ("--seed", 0 <= seed <= MAX_SEED, f"must be in 0..{MAX_SEED}"),
              ("--shard-size", shard_size >= 1, "must be >= 1"), ("--truncation", 0 < truncation <= 1, "must be in (0, 1]"),
              ("--format", fmt in FORMATS, f"must be one of {', '.join(FORMATS)}"),
              ("--shard-size", count < 1 or shard_size < 1 or -(-count // shard_size) <= MAX_SHARDS,
               f"--count {count} makes more than {MAX_SHARDS:,} shards of this size; raise it")]
    for flag, ok, why in checks:
        if not ok:
            raise SampleError(f"{flag}: {why}")
    graph = engine_graph(model, engine) if engine is not None else {"graph_sha256": model.sha256}
    return SampleSpec(model.name, model.sha256, seed, count, resolve_labels(model, labels), float(truncation), fmt,
                      shard_size, **graph)


def check_options(options: SampleOptions) -> None:
    for flag, value, least in (("--batch", options.batch, 1), ("--workers", options.workers, 0),
                               ("--threads", options.threads, 0)):
        if value < least:
            raise SampleError(f"{flag}: must be >= {least}")
    if options.engine not in ("local", "ray"):
        raise SampleError(f"--engine: {options.engine!r} is not local or ray")


def sample(model_ref: str, count: int, seed: int, out: str | Path, labels: str = "random", truncation: float = 1.0,
           fmt: str = "png-tar", shard_size: int = 10000, options: SampleOptions | None = None) -> dict:
    """Sample ``count`` images of (model, seed) into ``out``; resumes a partial run of the same spec.

    A write that fails (a full disk, no permission) is one SampleError naming --out; the shards finished before it
    stay listed, so the same call resumes once the cause is fixed."""
    options = options or SampleOptions()
    check_options(options)
    runtime = make_runtime(model_ref, options)
    spec = build_spec(runtime.models[0], count, seed, labels, truncation, fmt, shard_size, runtime.engines[0])
    out = Path(out)
    try:
        with open_output(out, spec) as output:
            return _run(model_ref, runtime, spec, output, options)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise SampleError(f"--out {out}: cannot write: {exc.strerror or exc}{where}; the shards finished so far are "
                          "kept: make room (or fix the cause) and run the same command to resume") from None


def _run(model_ref: str, runtime, spec: SampleSpec, output: Output, options: SampleOptions) -> dict:
    """Render every shard ``output`` does not hold yet; the run's summary."""
    pending = [k for k in range(spec.num_shards) if k not in output.done]
    already = sum(b - a for a, b in map(spec.shard_range, output.done))
    t0 = time.perf_counter()
    with Progress(spec.count, already, options.progress) as progress:
        if options.engine == "ray":
            from gan_service.serving.ray_sampler import run_ray
            run_ray(model_ref, spec, output, pending, options, progress)
        else:
            _run_local(runtime, spec, output, pending, options, progress)
    output.index.flush()
    seconds = time.perf_counter() - t0
    made = spec.count - already
    return {"out": str(output.out), "count": spec.count, "generated_now": made, "resumed_from": already,
            "shards": spec.num_shards, "seconds": round(seconds, 2),
            "images_per_s": round(made / seconds, 1) if seconds > 0 else None, "provider": runtime.engines[0].provider,
            "precision": runtime.engines[0].precision, "threads": runtime.engines[0].options.intra_op_threads, "index_writes": output.index.writes,
            "index_seconds": round(output.index.seconds, 3)}


def _run_local(runtime, spec: SampleSpec, output: Output, pending: list[int], options: SampleOptions,
               progress: Progress) -> None:
    """Inference here (every engine thread), encoding in a process pool, each shard written as its encoding
    completes (in order)."""
    workers = options.workers or available_cores()
    conditional = bool(runtime.models[0].num_classes)
    in_flight: list[tuple[int, Future]] = []

    def finish_oldest():
        k, fut = in_flight.pop(0)
        output.record(k, fut.result())
        a, b = spec.shard_range(k)
        progress.advance(b - a)

    # NPY encoding is a copy: a thread does it beside the engine; PNG encoding needs processes (the GIL).
    with (ThreadPoolExecutor(1) if spec.format == "npy" else
          ProcessPoolExecutor(workers, initializer=drop_inherited_lock, initargs=(output.lock_fd,))) as pool:
        for k in pending:
            start, stop = spec.shard_range(k)
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
    """Check that every index is present exactly once and every shard matches its sha256.

    Only files inside ``out`` are read: a malformed index entry (a name that is absolute, has '..' or is not the
    shard's own) or a file that resolves outside ``out`` (a link) is one SampleError, before anything is read."""
    out = Path(out)
    if not (out / INDEX).exists():
        raise SampleError(f"{out}: no {INDEX} (not a sampler output directory)")
    spec, listed = read_index(out)
    problems = []
    for k in range(spec.num_shards):
        start, stop = spec.shard_range(k)
        if k not in listed:
            problems.append(f"shard {k} (indices {start}..{stop - 1}) missing")
            continue
        problems += _check_shard(out, spec, listed[k], stop - start)
    if problems:
        raise SampleError(f"{out}: {len(problems)} problem(s): " + "; ".join(problems))
    return {"out": str(out), "count": spec.count, "shards": len(listed), "ok": True}


def _inside(out: Path, path: Path) -> Path:
    """``path``, or SampleError when it resolves outside ``out`` (a link leading out of the directory)."""
    target = path.resolve()
    if not target.is_relative_to(out.resolve()):
        raise SampleError(f"{path}: resolves outside --out {out} (to {target}); refusing to read it")
    return path


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_shard(out: Path, spec: SampleSpec, entry: dict, n: int) -> list[str]:
    """Problems of one listed shard: missing, corrupted (sha256), unreadable or holding the wrong image count."""
    name = entry["name"]
    path = _inside(out, out / name)
    if not path.exists():
        return [f"{name}: file missing"]
    if spec.format == "png":
        return _check_png_folder(out, entry, path, n)
    bad = [f"{fname}: sha256 mismatch (corrupted)" for fname, digest in entry["files"].items()
           if not _inside(out, out / fname).is_file() or _sha256_file(out / fname) != digest]
    if bad:
        return bad
    try:
        if spec.format == "npy":
            images = np.load(path, mmap_mode="r", allow_pickle=False).shape[0]
        else:
            with tarfile.open(path) as tar:
                images = len(tar.getnames())
    except (OSError, ValueError, IndexError, EOFError, tarfile.TarError) as exc:
        return [f"{name}: unreadable ({exc})"]
    return [] if images == n else [f"{name}: {images} images, expected {n}"]


def _check_png_folder(out: Path, entry: dict, path: Path, n: int) -> list[str]:
    name = entry["name"]
    if not path.is_dir():
        return [f"{name}: not a folder"]
    files = [_inside(out, p) for p in path.iterdir()]
    if not all(p.is_file() for p in files):
        return [f"{name}: holds something other than PNG files"]
    if len(files) != n:
        return [f"{name}: {len(files)} files, expected {n}"]
    return [] if dir_digest(path) == entry["sha256"] else [f"{name}: sha256 mismatch (corrupted)"]
