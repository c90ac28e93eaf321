"""A model directory (``models/<name>/``, or a BentoML store entry): its manifest, validated, with every file verified.

No torch here: the service imports this module. A model directory holds ``generator.onnx`` (z[, label] -> uint8
NHWC images), optionally ``generator.fp16.onnx``, ``samples.png``, ``metrics.json`` and ``manifest.json``, which
lists every other file with its sha256 and size. ``load_model_dir`` refuses a directory whose manifest is missing,
malformed or incomplete, or whose files do not match it, with a message naming the file or key.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from gan_service.core.atomic import atomic_write

MANIFEST = "manifest.json"
ONNX_FILE = "generator.onnx"
FP16_FILE = "generator.fp16.onnx"
INT8_FILE = "generator.int8.onnx"        # written only when its quality gate passed
FORMAT_VERSION = 1


class ModelDirError(ValueError):
    """A model directory or tag that cannot be used: missing, malformed manifest, or files not matching it."""


class LabelError(ValueError):
    """A class label (name or id) that the model does not have."""


# A model name goes into HTTP headers (X-Model), file names inside ZIP answers and log lines: a plain ASCII token.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
DECIMAL_ID = re.compile(r"-?[0-9]{1,18}")      # a class id given as text: ASCII digits only (int() takes far more)

# Required manifest keys and their JSON types (bool is excluded from int checks below).
REQUIRED: dict[str, type | tuple[type, ...]] = {
    "format_version": int,
    "name": str,
    "version": str,
    "created": str,
    "latent_dim": int,
    "num_classes": int,
    "class_names": list,
    "image_shape": list,
    "dtype": str,
    "opset": int,
    "inputs": list,
    "outputs": list,
    "files": dict,
}


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_entry(path: str | Path) -> dict:
    """The manifest's record of one file: {sha256, bytes}."""
    return {"sha256": file_sha256(path), "bytes": os.path.getsize(path)}


@dataclass
class ModelDir:
    path: Path
    manifest: dict
    name: str
    latent_dim: int
    num_classes: int
    class_names: list[str]
    image_shape: tuple[int, int, int]          # (H, W, C)
    onnx_path: Path
    fp16_path: Path | None = None
    int8_path: Path | None = None              # a checked int8 graph (manifest int8.passed)
    version: str = ""
    tag: str | None = None                     # the BentoML tag it was resolved from, if any
    files: dict = field(default_factory=dict)

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    @property
    def sha256(self) -> str:
        """sha256 of generator.onnx: identifies the weights."""
        return self.files[ONNX_FILE]["sha256"]

    def label_index(self, label: int | str) -> int:
        """A class id (int or decimal string) or class name (exact, then case-insensitive) -> class id."""
        shown = _shown(label)
        if not self.conditional:
            raise LabelError(f"label {shown}: model {self.name!r} is unconditional and takes no labels")
        if isinstance(label, bool):
            raise LabelError(f"label {shown}: not a class id or name")
        if isinstance(label, str) and DECIMAL_ID.fullmatch(label.strip()):
            label = int(label.strip())
        if isinstance(label, int):
            if 0 <= label < self.num_classes:
                return label
            raise LabelError(f"label {shown}: class ids of model {self.name!r} are 0..{self.num_classes - 1}")
        if isinstance(label, str):
            if label in self.class_names:
                return self.class_names.index(label)
            folded = [c.casefold() for c in self.class_names]
            if label.casefold() in folded:
                return folded.index(label.casefold())
            names = ", ".join(repr(c) for c in self.class_names) or "(none: use ids)"
            raise LabelError(f"label {shown}: not a class of model {self.name!r}; "
                             f"use an id 0..{self.num_classes - 1} or one of {names}")
        raise LabelError(f"label {shown}: must be a class id (int) or a class name (str)")


def _shown(value, limit: int = 60) -> str:
    """repr(value), cut to ``limit`` characters: an error message quotes what it refused, not a whole request."""
    try:
        text = repr(value)
    except ValueError:                   # an int past Python's 4300-digit str() limit
        text = f"<an integer of {value.bit_length()} bits>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _fail(where: Path, msg: str) -> ModelDirError:
    return ModelDirError(f"{where}: {msg}")


def validate_manifest(manifest: dict, where: Path | str = MANIFEST) -> None:
    """Check the manifest's schema: required keys, their types and consistency; raise ModelDirError naming the key."""
    where = Path(where)
    if not isinstance(manifest, dict):
        raise _fail(where, "manifest must be a JSON object")
    for key, typ in REQUIRED.items():
        if key not in manifest:
            raise _fail(where, f"missing required key {key!r}")
        value = manifest[key]
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise _fail(where, f"key {key!r} must be of type {typ.__name__}, got {type(value).__name__}")
    if not NAME_PATTERN.fullmatch(manifest["name"]):
        raise _fail(where, f"key 'name': {_shown(manifest['name'])} is not a model name (1-128 of A-Z a-z 0-9 . _ -, "
                           "starting with a letter or digit)")
    if manifest["format_version"] != FORMAT_VERSION:
        raise _fail(where, f"key 'format_version': {manifest['format_version']} is not the supported {FORMAT_VERSION}")
    if manifest["latent_dim"] < 1:
        raise _fail(where, "key 'latent_dim' must be >= 1")
    if manifest["num_classes"] < 0:
        raise _fail(where, "key 'num_classes' must be >= 0")
    names = manifest["class_names"]
    if not all(isinstance(c, str) for c in names) or (names and len(names) != manifest["num_classes"]):
        raise _fail(where, f"key 'class_names' must be a list of {manifest['num_classes']} strings (or empty)")
    shape = manifest["image_shape"]
    if len(shape) != 3 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise _fail(where, f"key 'image_shape' must be [H, W, C] of positive ints, got {shape!r}")
    if shape[2] not in (1, 3):
        raise _fail(where, f"key 'image_shape': channels must be 1 or 3, got {shape[2]}")
    if manifest["dtype"] != "uint8":
        raise _fail(where, f"key 'dtype' must be 'uint8', got {manifest['dtype']!r}")
    if ONNX_FILE not in manifest["files"]:
        raise _fail(where, f"key 'files' does not list {ONNX_FILE}")
    for fname, entry in manifest["files"].items():
        if (not isinstance(fname, str) or "/" in fname or "\\" in fname or fname in ("", ".", "..")
                or fname == MANIFEST):
            raise _fail(where, f"key 'files': {fname!r} is not a plain file name of the directory")
        if (not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str)
                or not isinstance(entry.get("bytes"), int) or isinstance(entry.get("bytes"), bool)):
            raise _fail(where, f"key 'files': entry {fname!r} must be {{'sha256': str, 'bytes': int}}")
    input_names = [i.get("name") if isinstance(i, dict) else None for i in manifest["inputs"]]
    want = ["z", "label"] if manifest["num_classes"] else ["z"]
    if input_names != want:
        raise _fail(where, f"key 'inputs' must describe {want}, got {input_names}")
    if [o.get("name") if isinstance(o, dict) else None for o in manifest["outputs"]] != ["image"]:
        raise _fail(where, "key 'outputs' must describe one output named 'image'")


def read_manifest(directory: str | Path) -> dict:
    """Parse and validate ``directory/manifest.json`` (no file checks)."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ModelDirError(f"{path}: missing; not a model directory (expected {MANIFEST} from `gan export`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelDirError(f"{path}: invalid JSON ({exc})") from exc
    validate_manifest(manifest, path)
    return manifest


def verify_files(directory: str | Path, manifest: dict) -> None:
    """Every file the manifest lists must exist with the listed size and sha256."""
    directory = Path(directory)
    for fname, entry in manifest["files"].items():
        path = directory / fname
        if not path.is_file():
            raise ModelDirError(f"{path}: listed in {MANIFEST} but missing")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise ModelDirError(f"{path}: size {size} bytes does not match {MANIFEST} ({entry['bytes']} bytes); "
                                "the file was modified or truncated")
        digest = file_sha256(path)
        if digest != entry["sha256"]:
            raise ModelDirError(f"{path}: sha256 {digest[:16]}... does not match {MANIFEST} "
                                f"({entry['sha256'][:16]}...); the file was modified")


def resolve_tag(tag: str) -> Path:
    """A BentoML model tag ("name:version" or "name:latest" or "name") -> its directory in the model store."""
    try:
        import bentoml
    except ImportError as exc:
        raise ModelDirError(f"{tag}: not a model directory, and bentoml is not installed to resolve it as a "
                            "BentoML model tag") from exc
    try:
        return Path(bentoml.models.get(tag).path)
    except Exception as exc:   # NotFound, invalid tag syntax, unreadable store
        raise ModelDirError(f"{tag}: not a model directory nor a model in the BentoML store "
                            f"({type(exc).__name__}: {exc})") from exc


def load_model_dir(path_or_tag: str | Path) -> ModelDir:
    """A model directory path, or a BentoML model tag -> ModelDir, after validating the manifest and every file."""
    tag = None
    path = Path(path_or_tag)
    if not path.is_dir():
        text = str(path_or_tag)
        if path.exists():
            raise ModelDirError(f"{path}: not a directory")
        if "/" in text or os.sep in text or not text:
            raise ModelDirError(f"{path}: no such model directory")
        tag, path = text, resolve_tag(text)
    manifest = read_manifest(path)
    verify_files(path, manifest)
    files = manifest["files"]
    h, w, c = manifest["image_shape"]
    return ModelDir(
        path=path, manifest=manifest, name=manifest["name"], latent_dim=manifest["latent_dim"],
        num_classes=manifest["num_classes"], class_names=list(manifest["class_names"]), image_shape=(h, w, c),
        onnx_path=path / ONNX_FILE, fp16_path=path / FP16_FILE if FP16_FILE in files else None,
        int8_path=path / INT8_FILE if INT8_FILE in files and (manifest.get("int8") or {}).get("passed") else None,
        version=manifest["version"], tag=tag, files=files,
    )


def write_manifest(directory: str | Path, manifest: dict) -> Path:
    """Re-list every file of the directory (sha256 and size) in ``manifest`` and write it atomically.

    For tools that add a file to an exported model (e.g. ``metrics.json`` from an evaluation): write the file,
    then call this so the service accepts the directory again.
    """
    directory = Path(directory)
    manifest = dict(manifest)
    manifest["files"] = {p.name: file_entry(p) for p in sorted(directory.iterdir())
                         if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")}
    validate_manifest(manifest, directory / MANIFEST)
    return atomic_write(directory / MANIFEST, json.dumps(manifest, indent=2) + "\n")
