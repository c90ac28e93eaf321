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
import io
import json
import os
import shutil
import tarfile
import time
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from service.codecs import encode_image, encode_npy
from service.latents import MAX_SEED, random_labels
from service.modeldir import ModelDir, ModelDirError, load_model_dir
from service.runtime import RANDOM_LABEL, ModelRuntime, make_rows
from service.settings import ServeSettings

INDEX = "index.json"
FORMATS = ("png-tar", "npy", "png")
INDEX_VERSION = 1


class SampleError(ValueError):
    """Bad sampling arguments or an output directory that belongs to another run."""


@dataclass
class SampleSpec:
    """Everything that determines the output bytes; stored in index.json and checked on resume."""
    model_name: str
    model_sha256: str
    seed: int
    count: int
    labels: str            # "random" | "balanced" | a class id
    truncation: float
    format: str
    shard_size: int

    def shard_ranges(self) -> list[tuple[int, int]]:
        return [(s, min(s + self.shard_size, self.count)) for s in range(0, self.count, self.shard_size)]


def shard_name(spec: SampleSpec, k: int) -> str:
    return {"png-tar": f"shard-{k:05d}.tar", "npy": f"shard-{k:05d}.npy", "png": f"png/{k:05d}"}[spec.format]


def _sha256_bytes(*blobs: bytes) -> str:
    h = hashlib.sha256()
    for b in blobs:
        h.update(b)
    return h.hexdigest()


# ---------------------------------------------------------------- labels and rows

def resolve_labels(model: ModelDir, labels: str) -> str:
    """Validate --labels against the model: random | balanced | a class id or name (-> its id)."""
    if labels in ("random", "balanced"):
        if labels == "balanced" and not model.num_classes:
            raise SampleError(f"--labels balanced: model {model.name!r} is unconditional")
        return labels
    if not model.num_classes:
        raise SampleError(f"--labels {labels}: model {model.name!r} is unconditional (use random)")
    try:
        return str(model.label_index(labels))
    except ValueError as exc:
        raise SampleError(f"--labels: {exc}") from exc


def labels_for(spec: SampleSpec, model: ModelDir, start: int, stop: int) -> np.ndarray:
    """Class ids [stop - start] of indices start..stop-1 (RANDOM_LABEL rows get the service's random class)."""
    n = stop - start
    if not model.num_classes:
        return np.full(n, RANDOM_LABEL, np.int64)
    if spec.labels == "random":
        return random_labels(spec.seed, start, n, model.latent_dim, model.num_classes)
    if spec.labels == "balanced":
        return np.arange(start, stop, dtype=np.int64) % model.num_classes
    return np.full(n, int(spec.labels), np.int64)


# ---------------------------------------------------------------- encoding (runs in worker processes)

def encode_shard(fmt: str, images: np.ndarray, labels: np.ndarray, start: int, conditional: bool) -> dict[str, bytes]:
    """A shard's files as {relative name: bytes}; pure, so any worker gives the same bytes."""
    if fmt == "npy":
        files = {"images": encode_npy(images)}
        if conditional:
            files["labels"] = encode_npy(labels)
        return files
    names = [f"{start + i:09d}" + (f"_c{labels[i]}" if conditional else "") + ".png" for i in range(len(images))]
    pngs = {name: encode_image(img, "png") for name, img in zip(names, images)}
    if fmt == "png":
        return pngs
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in pngs.items():
            info = tarfile.TarInfo(name)          # fixed metadata: the archive depends only on the images
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return {"tar": buf.getvalue()}


# ---------------------------------------------------------------- writing (atomic) and the index

def write_shard(out: Path, spec: SampleSpec, k: int, files: dict[str, bytes]) -> dict:
    """Write shard k under a temp name, fsync, rename; return its index entry."""
    final = out / shard_name(spec, k)
    tmp = final.with_name(f".tmp-{final.name}")
    if spec.format == "png":
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        digest = _sha256_bytes(*(name.encode() + hashlib.sha256(files[name]).digest() for name in sorted(files)))
        shutil.rmtree(final, ignore_errors=True)   # an unlisted leftover of a crashed run: same bytes again
        os.replace(tmp, final)
        return {"name": final.relative_to(out).as_posix(), "sha256": digest, "files": len(files)}
    entries = {}
    parts = [("", "tar")] if spec.format == "png-tar" else [("", "images")] + ([(".labels", "labels")] if "labels" in files else [])
    for suffix, key in parts:
        path = final.with_name(final.stem + suffix + final.suffix)
        part_tmp = path.with_name(f".tmp-{path.name}")
        with open(part_tmp, "wb") as fh:
            fh.write(files[key])
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(part_tmp, path)
        entries[path.name] = hashlib.sha256(files[key]).hexdigest()
    return {"name": final.name, "sha256": entries[final.name], "files": entries}


def dir_digest(path: Path) -> str:
    """The sha256 recorded for a png shard folder: over sorted (name, sha256(file)) pairs."""
    return _sha256_bytes(*(p.name.encode() + hashlib.sha256(p.read_bytes()).digest() for p in sorted(path.iterdir())))


def save_index(out: Path, spec: SampleSpec, shards: dict[int, dict]) -> None:
    doc = {"version": INDEX_VERSION, **asdict(spec), "complete": len(shards) == len(spec.shard_ranges()),
           "shards": [{"shard": k, "start": spec.shard_ranges()[k][0], "stop": spec.shard_ranges()[k][1], **shards[k]}
                      for k in sorted(shards)]}
    tmp = out / f".tmp-{INDEX}"
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, out / INDEX)


def open_output(out: Path, spec: SampleSpec) -> dict[int, dict]:
    """Create or re-open the output dir; refuse one that holds another run's shards. Returns finished shards."""
    out.mkdir(parents=True, exist_ok=True)
    index_path = out / INDEX
    for leftover in out.rglob(".tmp-*"):                      # partial writes of a crashed run
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    if not index_path.exists():
        if any(p.name != "png" for p in out.iterdir()) or any((out / "png").glob("*")):
            raise SampleError(f"--out {out}: not empty and has no {INDEX}; refusing to write into it")
        return {}
    try:
        doc = json.loads(index_path.read_text())
        previous = SampleSpec(**{k: doc[k] for k in SampleSpec.__dataclass_fields__})
    except (ValueError, KeyError, TypeError) as exc:
        raise SampleError(f"{index_path}: unreadable index ({exc}); refusing to overwrite") from exc
    if previous != spec:
        diff = {k: (getattr(previous, k), getattr(spec, k)) for k in SampleSpec.__dataclass_fields__
                if getattr(previous, k) != getattr(spec, k)}
        raise SampleError(f"--out {out}: holds shards of another run ({', '.join(f'{k}: {a} here, {b} asked' for k, (a, b) in diff.items())}); "
                          "nothing was overwritten: choose another --out")
    return {entry["shard"]: {k: v for k, v in entry.items() if k not in ("shard", "start", "stop")}
            for entry in doc["shards"]}


# ---------------------------------------------------------------- the sampling loop

@dataclass
class SampleOptions:
    batch: int = 1024            # rows per engine call
    workers: int = 0             # encoding processes (0 = one per CPU core)
    provider: str = "auto"       # onnxruntime provider: auto | cuda | cpu
    engine: str = "local"        # local | ray
    progress: bool = True        # progress bar on stderr


def make_runtime(model_ref: str, options: SampleOptions) -> ModelRuntime:
    """The service's runtime for one model, unpadded (shapes are few: the batch size and one remainder)."""
    settings = ServeSettings(models=[model_ref], provider=options.provider, max_batch_size=options.batch,
                             max_n=1, pad_to_buckets=False)
    try:                      # a model that cannot load is one error here, not a runtime log line and an error
        load_model_dir(settings.resolve_model(model_ref))
    except ModelDirError as exc:
        raise SampleError(f"model {exc}") from None          # exc names the directory or tag already
    runtime = ModelRuntime(settings, warmup=False)
    if runtime.errors:
        raise SampleError(f"model {model_ref}: {next(iter(runtime.errors.values()))}")
    return runtime


def render_shard(runtime: ModelRuntime, spec: SampleSpec, start: int, stop: int, batch: int):
    """Images uint8 [n, H, W, C] and labels [n] of indices start..stop-1, batch rows per engine call."""
    model = runtime.models[0]
    labels = labels_for(spec, model, start, stop)
    h, w, c = model.image_shape
    parts = []
    for s in range(start, stop, batch):
        e = min(s + batch, stop)
        rows = make_rows(0, spec.seed, np.arange(s, e), labels[s - start:e - start], spec.truncation)
        parts.append(runtime.render(rows)[:, : h * w * c].reshape(e - s, h, w, c))
    return np.concatenate(parts), labels


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
            from service.ray_sampler import run_ray
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
