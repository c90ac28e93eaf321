"""Real-sample sources: Fashion-MNIST IDX files, image folders, .npz arrays and the 2-D toy mixtures.

Nothing here downloads anything. Every reader turns a missing or malformed file into a
``DataError`` whose message names the file and what was expected. The readers are torch-free (torch is
imported only where tensors are made), so the torch-free evaluation code reuses them.
"""
from __future__ import annotations

import gzip
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.config import FMNIST_CLASSES, DataConfig

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
RING_STD, GRID_STD = 0.01, 0.05


class DataError(ValueError):
    """A data file or folder that cannot be used, with the reason."""


# ---------------------------------------------------------------- IDX (Fashion-MNIST)

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


def idx_file(directory: Path, stem: str) -> Path:
    """The gzipped file if present, else the raw one (Debian ships .gz)."""
    gz = directory / f"{stem}.gz"
    return gz if gz.exists() else directory / stem


def load_fmnist(directory: str | Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST images uint8 [N, 28, 28] and labels int64 [N] of one split."""
    directory = Path(directory)
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(idx_file(directory, f"{prefix}-images-idx3-ubyte"))
    labels_path = idx_file(directory, f"{prefix}-labels-idx1-ubyte")
    labels = read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{labels_path}: {len(labels)} labels do not match {images.shape} images")
    if labels.max(initial=0) >= len(FMNIST_CLASSES):
        raise DataError(f"{labels_path}: label {labels.max()} outside 0..9")
    return images, labels.astype(np.int64)


# ---------------------------------------------------------------- image folders and .npz

def _fit_image(img, resolution: int, channels: int) -> np.ndarray:
    """Centre-crop to square, resize to resolution, convert to grey or RGB; uint8 [H, W, C]."""
    from PIL import Image

    img = img.convert("L" if channels == 1 else "RGB")
    w, h = img.size
    side = min(w, h)
    img = img.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    if side != resolution:
        img = img.resize((resolution, resolution), Image.Resampling.LANCZOS)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if channels == 1 else arr


def load_folder(directory: str | Path, resolution: int, channels: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images uint8 [N, H, W, C] from a folder; subfolders, if any, are the classes (sorted by name)."""
    from PIL import Image, UnidentifiedImageError

    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory (expected a folder of PNG/JPEG images)")
    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"{directory}: no PNG or JPEG images found")
    class_names = sorted({p.parent.relative_to(directory).as_posix() for p in files} - {"."})
    class_of = {name: i for i, name in enumerate(class_names)}
    images, labels = [], []
    for p in files:
        try:
            with Image.open(p) as img:
                images.append(_fit_image(img, resolution, channels))
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"{p}: not a readable PNG/JPEG image ({exc})") from exc
        labels.append(class_of.get(p.parent.relative_to(directory).as_posix(), 0))
    return np.stack(images), np.asarray(labels, dtype=np.int64), class_names


def load_npz(path: str | Path, resolution: int, channels: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Images uint8 [N, H, W, C] (and labels if present) from a .npz with keys ``images`` [, ``labels``]."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected a .npz with an 'images' array)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npz archive ({exc})") from exc
    if "images" not in arrays:
        raise DataError(f"{path}: no 'images' array (found: {', '.join(arrays) or 'nothing'})")
    images = arrays["images"]
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[1:] != (resolution, resolution, channels):
        raise DataError(f"{path}: 'images' has shape {arrays['images'].shape}; expected "
                        f"[N, {resolution}, {resolution}, {channels}] (or [N, H, W] for grey)")
    if images.dtype != np.uint8:
        if images.min() < 0 or images.max() > 255:
            raise DataError(f"{path}: 'images' values must lie in 0..255 (uint8 pixels)")
        images = images.astype(np.uint8)
    labels = arrays.get("labels")
    if labels is not None and labels.shape != (len(images),):
        raise DataError(f"{path}: 'labels' has shape {labels.shape}; expected ({len(images)},)")
    return images, None if labels is None else labels.astype(np.int64)


# ---------------------------------------------------------------- 2-D toy mixtures

def toy_modes(kind: str) -> tuple[np.ndarray, float]:
    """Mode centres [M, 2] and per-mode std of PacGAN's ring of 8 and grid of 25."""
    if kind == "ring":
        angles = 2 * np.pi * np.arange(8) / 8
        return np.stack([np.cos(angles), np.sin(angles)], axis=1), RING_STD
    if kind == "grid":
        ticks = np.array([-4.0, -2.0, 0.0, 2.0, 4.0])
        return np.stack(np.meshgrid(ticks, ticks, indexing="ij"), axis=-1).reshape(-1, 2), GRID_STD
    raise ValueError(f"unknown toy mixture {kind!r}")


# ---------------------------------------------------------------- one sampler for all sources

@dataclass
class RealData:
    """Real samples in memory (or a mixture to draw from), sampled with an explicit generator."""
    images: torch.Tensor | None          # float32 [N, C, H, W] in [-1, 1]; None for toy mixtures
    labels: torch.Tensor | None          # int64 [N]; None when unlabelled
    class_names: list[str] = field(default_factory=list)
    modes: torch.Tensor | None = None    # float32 [M, 2] for toy mixtures
    mode_std: float = 0.0

    def __len__(self) -> int:
        return 0 if self.images is None else len(self.images)

    def sample(self, batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A batch of real samples (with replacement) and their labels; depends only on ``gen``'s state."""
        import torch

        if self.modes is not None:
            which = torch.randint(len(self.modes), (batch,), generator=gen)
            noise = torch.randn(batch, 2, generator=gen)
            return self.modes[which] + self.mode_std * noise, None   # [B, 2]
        idx = torch.randint(len(self.images), (batch,), generator=gen)
        return self.images[idx], None if self.labels is None else self.labels[idx]


def _to_tensor(images_nhwc: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, C] -> float32 [N, C, H, W] in [-1, 1]."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images_nhwc)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def load_data(cfg: DataConfig) -> RealData:
    """Load the configured source into a RealData."""
    import torch

    if cfg.source in ("ring", "grid"):
        modes, std = toy_modes(cfg.source)
        return RealData(None, None, modes=torch.from_numpy(modes).float(), mode_std=std)
    class_names: list[str] = []
    if cfg.source == "fmnist":
        images, labels = load_fmnist(cfg.path, cfg.split)
        class_names = list(FMNIST_CLASSES)
        images = np.stack([_fit_image(_pil(im), cfg.resolution, cfg.channels) for im in images]) \
            if (cfg.resolution, cfg.channels) != (28, 1) else images[..., None]
    elif cfg.source == "folder":
        images, labels, class_names = load_folder(cfg.path, cfg.resolution, cfg.channels)
    elif cfg.source == "npz":
        images, labels = load_npz(cfg.path, cfg.resolution, cfg.channels)
    else:
        raise DataError(f"unknown data source {cfg.source!r}")
    if cfg.limit:
        images, labels = images[: cfg.limit], None if labels is None else labels[: cfg.limit]
    if cfg.use_labels and labels is None:
        raise DataError(f"{cfg.path}: --use-labels was given but the data has no labels")
    return RealData(_to_tensor(images), torch.from_numpy(labels) if cfg.use_labels else None, class_names)


def _pil(arr: np.ndarray):
    from PIL import Image
    return Image.fromarray(arr)

