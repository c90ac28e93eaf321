"""The sampler's output directory, shard by shard: the spec, index.json, rendering, encoding and writing one shard.

Shared by the local engine (``serving.sampler``) and the Ray Data engine (``serving.ray_sampler``); see
``serving.sampler`` for the layout and the crash-safety contract.
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from gan_service.core.atomic import atomic_write, publish_dir
from gan_service.serving.codecs import encode_image, encode_npy
from gan_service.serving.latents import random_labels
from gan_service.serving.modeldir import ModelDir, ModelDirError, load_model_dir
from gan_service.serving.runtime import RANDOM_LABEL, ModelRuntime, make_rows
from gan_service.serving.settings import ServeSettings


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
        publish_dir(tmp, final)
        return {"name": final.relative_to(out).as_posix(), "sha256": digest, "files": len(files)}
    entries = {}
    parts = [("", "tar")] if spec.format == "png-tar" else [("", "images")] + ([(".labels", "labels")] if "labels" in files else [])
    for suffix, key in parts:
        path = final.with_name(final.stem + suffix + final.suffix)
        atomic_write(path, files[key], tmp=path.with_name(f".tmp-{path.name}"))
        entries[path.name] = hashlib.sha256(files[key]).hexdigest()
    return {"name": final.name, "sha256": entries[final.name], "files": entries}


def dir_digest(path: Path) -> str:
    """The sha256 recorded for a png shard folder: over sorted (name, sha256(file)) pairs."""
    return _sha256_bytes(*(p.name.encode() + hashlib.sha256(p.read_bytes()).digest() for p in sorted(path.iterdir())))


def save_index(out: Path, spec: SampleSpec, shards: dict[int, dict]) -> None:
    doc = {"version": INDEX_VERSION, **asdict(spec), "complete": len(shards) == len(spec.shard_ranges()),
           "shards": [{"shard": k, "start": spec.shard_ranges()[k][0], "stop": spec.shard_ranges()[k][1], **shards[k]}
                      for k in sorted(shards)]}
    atomic_write(out / INDEX, json.dumps(doc, indent=1), tmp=out / f".tmp-{INDEX}")


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
        model = load_model_dir(settings.resolve_model(model_ref))
    except ModelDirError as exc:
        raise SampleError(f"model {exc}") from None          # exc names the directory or tag already
    return ModelRuntime(settings, warmup=False, loaded=[model])


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


