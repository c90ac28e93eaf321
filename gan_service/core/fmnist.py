"""Fashion-MNIST on disk: where Debian installs it, its class names, and the IDX reader (numpy only)."""
from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np

from gan_service.core.errors import DataError

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"      # apt-get install dataset-fashion-mnist
FMNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a uint8 array of the shape its header declares."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected an IDX file such as train-images-idx3-ubyte.gz)")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read ({exc}); expected a gzipped or raw IDX file") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(shape)
    if len(raw) != expected:
        raise DataError(f"{path}: IDX header declares shape {shape} ({expected} bytes) but the file has {len(raw)}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()   # writable, owns its memory


def idx_file(directory: str | Path, stem: str) -> Path:
    """The gzipped file if present, else the raw one (Debian ships .gz)."""
    gz = Path(directory) / f"{stem}.gz"
    return gz if gz.exists() else Path(directory) / stem


def load_fmnist(directory: str | Path = FMNIST_DIR, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST images uint8 [N, 28, 28] and labels int64 [N] of one split ("train" or "test")."""
    if split not in ("train", "test"):
        raise DataError(f"split {split!r}: expected 'train' or 'test'")
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(idx_file(directory, f"{prefix}-images-idx3-ubyte"))
    labels_path = idx_file(directory, f"{prefix}-labels-idx1-ubyte")
    labels = read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{labels_path}: {len(labels)} labels do not match {images.shape} images")
    if labels.max(initial=0) >= len(FMNIST_CLASSES):
        raise DataError(f"{labels_path}: label {labels.max()} outside 0..9")
    return images, labels.astype(np.int64)


def fmnist_fingerprint(directory: str | Path = FMNIST_DIR) -> str:
    """Names, sizes and mtimes of the four IDX files: a cache key that changes when the data does."""
    parts = []
    for stem in IDX_STEMS:
        p = idx_file(directory, stem)
        st = p.stat() if p.exists() else None
        parts.append(f"{p.name}:{st.st_size if st else 0}:{int(st.st_mtime) if st else 0}")
    return "|".join(parts)
