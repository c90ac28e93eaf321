"""Folders of PNG/JPEG images: which files count as images, and reading a folder tree into one uint8 array."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from gan_service.core.errors import DataError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})


def image_files(directory: str | Path) -> list[Path]:
    """Every PNG/JPEG file under ``directory`` (any depth, suffix case ignored), sorted by path; [] if none."""
    return sorted(p for p in Path(directory).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def fit_image(img, resolution: int, channels: int) -> np.ndarray:
    """A PIL image centre-cropped to a square, resized to ``resolution`` and converted to grey or RGB;
    uint8 [H, W, C]."""
    from PIL import Image

    img = img.convert("L" if channels == 1 else "RGB")
    w, h = img.size
    side = min(w, h)
    img = img.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    if side != resolution:
        img = img.resize((resolution, resolution), Image.Resampling.LANCZOS)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if channels == 1 else arr


def load_image_folder(directory: str | Path, resolution: int,
                      channels: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images uint8 [N, H, W, C] (fitted to resolution and channels), labels int64 [N] and class names from a
    folder; subfolders, if any, are the classes (sorted by name; images at the top level get class 0)."""
    from PIL import Image, UnidentifiedImageError

    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory (expected a folder of PNG/JPEG images)")
    files = image_files(directory)
    if not files:
        raise DataError(f"{directory}: no PNG or JPEG images found")
    class_names = sorted({p.parent.relative_to(directory).as_posix() for p in files} - {"."})
    class_of = {name: i for i, name in enumerate(class_names)}
    images, labels = [], []
    for p in files:
        try:
            with Image.open(p) as img:
                images.append(fit_image(img, resolution, channels))
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"{p}: not a readable PNG/JPEG image ({exc})") from exc
        labels.append(class_of.get(p.parent.relative_to(directory).as_posix(), 0))
    return np.stack(images), np.asarray(labels, dtype=np.int64), class_names
