"""Where evaluated images come from, torch-free: a model directory or BentoML tag (generated through the service's
runtime path), a sampler output directory (``gan sample``: npy / png-tar / png shards), or a folder of images;
and the real Fashion-MNIST images (IDX files) they are compared with.

Every problem becomes an ``EvaluationError`` naming the file or argument and what was expected.
"""
from __future__ import annotations

import io
import json
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gan_service.core.paths import resolve_shipped
from gan_service.core.errors import DataError
from gan_service.core.fmnist import load_fmnist as load_split
from gan_service.core.image_folder import image_files

LABEL_IN_NAME = re.compile(r"_c(\d+)$")            # the sampler's naming of conditional PNGs: 000000012_c3.png
GEN_BATCH = 1000


class EvaluationError(ValueError):
    """An evaluation that cannot run: a bad source, images of the wrong shape, too few samples, no classifier."""


@dataclass
class Samples:
    """Images to evaluate: uint8 [N, H, W, C], with the requested class of each image when known."""
    images: np.ndarray
    requested: np.ndarray | None          # int64 [N] class ids asked of a conditional model, else None
    kind: str                             # model | bentoml | sampler | folder
    info: dict = field(default_factory=dict)
    model_dir: Path | None = None         # set for a model directory given as a path (reports go there)
    manifest: dict | None = None


# ---------------------------------------------------------------- real data (IDX, no torch)

def load_fmnist(directory: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST images uint8 [N, 28, 28, 1] and labels int64 [N] of the train or test split, read by the
    training reader (torch-free), its errors as EvaluationError."""
    try:
        images, labels = load_split(directory, split)
    except DataError as exc:
        raise EvaluationError(f"{exc} (apt-get install dataset-fashion-mnist, or give --data DIR)") from exc
    if images.shape[1:] != (28, 28):
        raise EvaluationError(f"{directory}: {split} images {images.shape} are not Fashion-MNIST's [N, 28, 28]")
    return images[..., None], labels


# ---------------------------------------------------------------- image checks

def check_images(images: np.ndarray, shape: tuple[int, int, int], where: str) -> np.ndarray:
    """uint8 [N, H, W, C] of exactly ``shape`` per image, or an error naming the mismatch."""
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise EvaluationError(f"{where}: images have shape {images.shape}; expected [N, {shape[0]}, {shape[1]}, "
                              f"{shape[2]}]")
    h, w, c = images.shape[1:]
    if (h, w) != shape[:2]:
        raise EvaluationError(f"{where}: images are {h}x{w} pixels; the evaluation classifier takes "
                              f"{shape[0]}x{shape[1]} (Fashion-MNIST)")
    if c != shape[2]:
        raise EvaluationError(f"{where}: images have {c} channel(s); the evaluation classifier takes "
                              f"{shape[2]} (grey)")
    if images.dtype != np.uint8:
        raise EvaluationError(f"{where}: images are {images.dtype}; expected uint8 pixels")
    return images


def _read_png(data_or_path, where: str, shape: tuple[int, int, int]) -> np.ndarray:
    """One image file -> uint8 [H, W, C]; refuses other sizes and colour images (never silently converts)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path) as img:
            img.load()
            mode, size = img.mode, img.size
            if mode in ("L", "1", "P") and (mode != "P" or _grey_palette(img)):
                arr = np.asarray(img.convert("L"), np.uint8)[..., None]
            elif mode == "LA":
                arr = np.asarray(img.getchannel("L"), np.uint8)[..., None]
            else:
                bands = len(img.getbands())
                raise EvaluationError(f"{where}: a {bands}-channel {mode} image; the evaluation classifier "
                                      f"takes {shape[2]}-channel grey {shape[0]}x{shape[1]} images")
    except (UnidentifiedImageError, OSError) as exc:
        raise EvaluationError(f"{where}: not a readable PNG/JPEG image ({exc})") from exc
    if (size[1], size[0]) != shape[:2]:
        raise EvaluationError(f"{where}: image is {size[0]}x{size[1]} pixels; the evaluation classifier takes "
                              f"{shape[1]}x{shape[0]} (Fashion-MNIST)")
    return arr


def _grey_palette(img) -> bool:
    pal = img.getpalette() or []
    rgb = np.asarray(pal[: len(pal) // 3 * 3]).reshape(-1, 3)
    return bool((rgb == rgb[:, :1]).all())


def _label_from_name(name: str) -> int | None:
    m = LABEL_IN_NAME.search(Path(name).stem)
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------- sources

def load_folder(directory: Path, n: int, shape: tuple[int, int, int]) -> Samples:
    """The first n images (sorted by path) of a folder tree of PNG/JPEG files."""
    files = image_files(directory)
    if not files:
        raise EvaluationError(f"{directory}: no images found (expected PNG or JPEG files, "
                              f"{shape[0]}x{shape[1]} grey)")
    files = files[:n]
    images = np.stack([_read_png(p, str(p), shape) for p in files])
    labels = [_label_from_name(p.name) for p in files]
    requested = np.asarray(labels, np.int64) if all(v is not None for v in labels) else None
    return Samples(images, requested, "folder", {"path": str(directory), "files_found": len(files)})


def load_sampler_output(directory: Path, n: int, shape: tuple[int, int, int]) -> Samples:
    """The first n images of a ``gan sample`` output directory (finished shards, in index order)."""
    from gan_service.serving.shards import SampleError, read_index

    try:                   # the sampler's own reader: every entry checked, no name outside the directory
        spec, done = read_index(directory)
    except SampleError as exc:
        raise EvaluationError(str(exc)) from None
    fmt = spec.format
    shards = [{"name": done[k]["name"], "start": spec.shard_range(k)[0], "stop": spec.shard_range(k)[1]}
              for k in sorted(done)]
    images, labels, expected = [], [], 0
    for shard in shards:
        if sum(len(a) for a in images) >= n:
            break
        if shard["start"] != expected:               # a gap (unfinished shard): stop at the contiguous prefix
            break
        path = directory / shard["name"]
        if fmt == "npy":
            try:
                arr = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise EvaluationError(f"{path}: unreadable npy shard ({exc})") from exc
            images.append(check_images(arr, shape, str(path)))
            lab = path.with_name(path.stem + ".labels.npy")
            labels.append(np.load(lab, allow_pickle=False).astype(np.int64) if lab.exists() else None)
        elif fmt == "png-tar":
            imgs, labs = [], []
            try:
                with tarfile.open(path) as tar:
                    for member in sorted(tar.getmembers(), key=lambda m: m.name):
                        if member.isfile() and member.name.lower().endswith(".png"):
                            imgs.append(_read_png(tar.extractfile(member).read(), f"{path}:{member.name}", shape))
                            labs.append(_label_from_name(member.name))
            except (OSError, tarfile.TarError) as exc:
                raise EvaluationError(f"{path}: unreadable tar shard ({exc})") from exc
            images.append(np.stack(imgs) if imgs else np.zeros((0, *shape), np.uint8))
            labels.append(np.asarray(labs, np.int64) if labs and all(v is not None for v in labs) else None)
        elif fmt == "png":
            files = sorted(p for p in path.glob("*.png"))
            images.append(np.stack([_read_png(p, str(p), shape) for p in files]) if files
                          else np.zeros((0, *shape), np.uint8))
            labs = [_label_from_name(p.name) for p in files]
            labels.append(np.asarray(labs, np.int64) if labs and all(v is not None for v in labs) else None)
        else:
            raise EvaluationError(f"{directory / 'index.json'}: unknown shard format {fmt!r}")
        expected = shard["stop"]
    if not images or sum(len(a) for a in images) == 0:
        raise EvaluationError(f"{directory}: the sampler output has no finished shards (no images); "
                              "finish it with the same `gan sample` command")
    all_images = np.concatenate(images)[:n]
    requested = np.concatenate(labels)[:n] if all(lab is not None for lab in labels) else None
    return Samples(all_images, requested, "sampler",
                   {"path": str(directory), "model": spec.model_name, "model_sha256": spec.model_sha256,
                    "seed": spec.seed, "labels": spec.labels, "format": fmt,
                    "complete": len(done) == spec.num_shards})


def generate_from_model(ref: str, n: int, seed: int, shape: tuple[int, int, int]) -> Samples:
    """n images of a model directory or BentoML tag through the service's runtime path (``gan sample``'s):
    image i is the service's image (seed, i); conditional models get balanced labels (i mod classes)."""
    from gan_service.serving.modeldir import ModelDirError, load_model_dir
    from gan_service.serving.sampler import SampleError, SampleOptions, build_spec, make_runtime, render_shard

    try:
        model = load_model_dir(ref)
    except ModelDirError as exc:
        raise EvaluationError(str(exc)) from exc
    if tuple(model.image_shape) != tuple(shape):
        h, w, c = model.image_shape
        raise EvaluationError(f"{ref}: model {model.name!r} makes {h}x{w}x{c} images; the evaluation classifier "
                              f"takes {shape[0]}x{shape[1]}x{shape[2]} (Fashion-MNIST)")
    labels = "balanced" if model.num_classes else "random"
    try:
        runtime = make_runtime(str(model.path), SampleOptions(batch=GEN_BATCH, provider="auto", progress=False))
        spec = build_spec(runtime.models[0], n, seed, labels, 1.0, "npy", n)
        images, requested = render_shard(runtime, spec, 0, n, GEN_BATCH)
    except SampleError as exc:
        raise EvaluationError(str(exc).replace("--count", "--n")) from exc
    is_path = Path(ref).is_dir()
    info = {"model": model.name, "version": model.version, "sha256": model.sha256, "seed": seed, "labels": labels,
            "truncation": 1.0, "conditional": model.conditional, "provider": runtime.engines[0].provider,
            **({"path": str(model.path)} if is_path else {"tag": ref})}
    return Samples(images, requested if model.num_classes else None, "model" if is_path else "bentoml", info,
                   model_dir=model.path if is_path else None, manifest=model.manifest)


def load_source(source: str, n: int, seed: int, shape: tuple[int, int, int]) -> Samples:
    """Dispatch on what ``source`` is; see the module docstring. A relative path follows ``core.paths`` (so
    ``models/fmnist-cdcgan`` names the shipped model from any directory)."""
    path = resolve_shipped(source)
    if path.is_dir():
        manifest = path / "manifest.json"
        if manifest.is_file():
            try:
                kind = json.loads(manifest.read_text()).get("kind")
            except (OSError, ValueError):
                kind = None
            if kind == "classifier":
                raise EvaluationError(f"{path}: this is the evaluation classifier, not a generator or images")
            return generate_from_model(str(path), n, seed, shape)
        if (path / "index.json").is_file():
            return load_sampler_output(path, n, shape)
        return load_folder(path, n, shape)
    if path.exists():
        raise EvaluationError(f"{path}: not a directory; give a model directory, a BentoML tag, a folder of "
                              "images or a `gan sample` output directory")
    if not source or "/" in source or source.startswith("."):
        raise EvaluationError(f"{source}: no such model directory, image folder or sampler output")
    return generate_from_model(source, n, seed, shape)          # a BentoML tag (load_model_dir resolves it)
