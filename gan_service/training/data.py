"""Training data: Fashion-MNIST, image folders, .npz arrays or a 2-D toy mixture, held in memory as a
``TrainingData`` that draws real batches from an explicit torch.Generator.

Nothing here downloads anything. Every reader turns a missing or malformed file into a ``DataError`` whose
message names the file and what was expected. The IDX and image-folder readers live in core/ (core.fmnist,
core.image_folder), shared with the evaluation; torch is imported only where tensors are made.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gan_service.core.errors import DataError
from gan_service.core.fmnist import FMNIST_CLASSES, load_fmnist
from gan_service.core.image_folder import fit_image, load_image_folder
from gan_service.training.config import DataConfig

__all__ = ["DataError", "TrainingData", "load_data", "load_npz", "toy_modes"]
RING_STD, GRID_STD = 0.01, 0.05


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
class TrainingData:
    """Real samples in memory (or a mixture to draw from), sampled with an explicit generator."""
    images: torch.Tensor | None          # float32 [N, C, H, W] in [-1, 1]; None for toy mixtures
    labels: torch.Tensor | None          # int64 [N]; None when unlabelled
    class_names: list[str] = field(default_factory=list)
    modes: torch.Tensor | None = None    # float32 [M, 2] for toy mixtures
    mode_std: float = 0.0
    label_prior: torch.Tensor | None = None   # float32 [K]: cluster frequencies of self-conditioning (--clusters);
                                              # fake labels are drawn from it (None: uniform over the classes)

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


def load_data(cfg: DataConfig) -> TrainingData:
    """Load the configured source into a TrainingData."""
    import torch

    if cfg.source in ("ring", "grid"):
        modes, std = toy_modes(cfg.source)
        return TrainingData(None, None, modes=torch.from_numpy(modes).float(), mode_std=std)
    class_names: list[str] = []
    if cfg.source == "fmnist":
        images, labels = load_fmnist(cfg.path, cfg.split)
        class_names = list(FMNIST_CLASSES)
        images = np.stack([fit_image(_pil(im), cfg.resolution, cfg.channels) for im in images]) \
            if (cfg.resolution, cfg.channels) != (28, 1) else images[..., None]
    elif cfg.source == "folder":
        images, labels, class_names = load_image_folder(cfg.path, cfg.resolution, cfg.channels)
    elif cfg.source == "npz":
        images, labels = load_npz(cfg.path, cfg.resolution, cfg.channels)
    else:
        raise DataError(f"unknown data source {cfg.source!r}")
    if cfg.limit:
        images, labels = images[: cfg.limit], None if labels is None else labels[: cfg.limit]
    if cfg.use_labels and labels is None:
        raise DataError(f"{cfg.path}: --use-labels was given but the data has no labels")
    if cfg.clusters:
        return _self_conditioned(images, cfg.clusters, labels if cfg.use_labels else None, class_names)
    return TrainingData(_to_tensor(images), torch.from_numpy(labels) if cfg.use_labels else None, class_names)


def _self_conditioned(images: np.ndarray, k: int, classes: np.ndarray | None = None,
                      class_names: list[str] | None = None) -> TrainingData:
    """Images labelled by their k-means cluster (training.clusters), with the clusters' frequencies as prior.
    With class labels ``classes`` [N], each class is clustered on its own: ids class * k + cluster, in 0..C*k-1."""
    import torch

    from gan_service.training.clusters import cluster_labels, label_prior, subclass_labels

    if classes is None:
        if len(images) < k:
            raise DataError(f"--clusters {k}: more clusters than training images ({len(images)})")
        ids, names = cluster_labels(images, k), [f"cluster {i}" for i in range(k)]            # int64 [N]
    else:
        n_classes = int(classes.max()) + 1
        smallest = int(np.bincount(classes, minlength=n_classes).min())
        if smallest < k:
            raise DataError(f"--clusters {k}: a class has fewer training images ({smallest}) than clusters")
        ids = subclass_labels(images, classes, k)                                               # int64 [N]
        names = list(class_names or [])          # the served classes' names (the export numbers them if absent)
    prior = torch.from_numpy(label_prior(ids, k if classes is None else n_classes * k)).float()     # [K] or [C*k]
    return TrainingData(_to_tensor(images), torch.from_numpy(ids), names, label_prior=prior)


def _pil(arr: np.ndarray):
    from PIL import Image
    return Image.fromarray(arr)

