"""One self-describing checkpoint format, written atomically, read by one loader.

A checkpoint is a plain dict of tensors and JSON-able values (no pickled classes), so
``torch.load(weights_only=True)`` reads it:
  format_version, config (TrainConfig as dict), step, G, D, G_ema (or None), opt_G, opt_D,
  rng {torch, cuda, data}, class_names, label_prior (cluster frequencies of --clusters runs, else None).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from gan_service.core.atomic import atomic_write
from gan_service.core.stats import read_stats
from gan_service.serving.modeldir import file_sha256  # noqa: F401  (re-exported: one sha256 helper for all)
from gan_service.training.config import TrainConfig
from gan_service.training.nets import ClusterDrawingGenerator, build_generator

FORMAT_VERSION = 1
CKPT_DIR = "checkpoints"


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable or of an unknown format."""


class ServedGenerator(NamedTuple):
    """A generator as a model directory serves it, with the interface of its graph."""
    generator: torch.nn.Module     # eval mode; called as generator(z, labels or None)
    latent_dim: int                # z [N, latent_dim]
    num_classes: int               # 0: no label input


@dataclass
class Checkpoint:
    path: Path
    config: TrainConfig
    step: int
    state: dict          # the raw dict as saved

    def generator(self, ema: bool = True) -> torch.nn.Module:
        """The generator in eval mode: the EMA weights when present and asked for, else G."""
        g = build_generator(self.config)
        weights = self.state["G_ema"] if ema and self.state.get("G_ema") is not None else self.state["G"]
        g.load_state_dict(weights)
        return g.eval()

    @property
    def has_ema(self) -> bool:
        return self.state.get("G_ema") is not None

    @property
    def class_names(self) -> list[str]:
        return list(self.state.get("class_names") or [])

    @property
    def label_prior(self) -> list[float] | None:
        """Cluster frequencies [K] of a self-conditioned run (``--clusters``); None otherwise."""
        return self.state.get("label_prior")

    def served_generator(self, ema: bool = True) -> ServedGenerator:
        """What a model directory made from this checkpoint serves (see ``served_generator``)."""
        return served_generator(self.config, self.generator(ema), self.label_prior, self.path)


def served_generator(cfg: TrainConfig, generator: torch.nn.Module, prior: list[float] | None,
                     where: str | Path) -> ServedGenerator:
    """What a model directory serves of ``generator`` (trained as ``cfg``): (generator, latent_dim, num_classes).
    A self-conditioned generator is wrapped to draw its cluster from one extra latent with the cluster frequencies
    ``prior`` (nets.ClusterDrawingGenerator), with latent_dim + 1: unconditional, or (clusters within each class)
    conditional on the class alone; every other one is served as trained. The one place that decides it: the
    export, the checkpoint picker and the engine benchmark call it."""
    m = cfg.model
    if cfg.data.clusters:
        if not prior or len(prior) != m.num_classes:
            raise CheckpointError(f"{where}: a --clusters run without its cluster frequencies (label_prior)")
        # clusters within each class (--use-labels): served with the class label, else unconditional
        classes = m.num_classes // cfg.data.clusters if cfg.data.use_labels else 1
        return ServedGenerator(ClusterDrawingGenerator(generator, prior, classes).eval(), m.latent_dim + 1,
                               classes if cfg.data.use_labels else 0)
    return ServedGenerator(generator, m.latent_dim, m.num_classes)


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write ``state`` to ``path`` atomically (``core.atomic``: temp file, fsync, rename, fsync of the directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda fh: torch.save({"format_version": FORMAT_VERSION, **state}, fh))


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CKPT_DIR / f"step-{step:08d}.pt"


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The newest complete checkpoint of a run directory (temp files are never matched)."""
    found = sorted((Path(run_dir) / CKPT_DIR).glob("step-*.pt"))
    if not found:
        raise CheckpointError(f"{run_dir}: no checkpoint found under {CKPT_DIR}/ (expected step-NNNNNNNN.pt)")
    return found[-1]


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or the latest checkpoint of a run directory."""
    path = Path(path)
    if path.is_dir():
        return latest_checkpoint(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file or run directory")
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """The one loader: a file or run directory -> Checkpoint, with weights_only=True."""
    path = resolve_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:   # torch raises a zoo of types for truncated/corrupt/foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(f"{path}: not a GAN checkpoint (no format_version)")
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {state['format_version']} is not the supported {FORMAT_VERSION}")
    return Checkpoint(path, TrainConfig.from_dict(state["config"]), int(state["step"]), state)


def training_time(ck: Checkpoint) -> dict:
    """Wall time and device of the training run behind a checkpoint, for the manifest.

    Checkpoints written since these fields existed carry them; for older ones the wall time is summed from the run's
    stats.jsonl (each resumed session restarts its ``elapsed_s`` clock) and the device is unknown (None).
    """
    if "train_seconds" in ck.state:
        return {"wall_time_s": round(float(ck.state["train_seconds"]), 3), "device": ck.state.get("device") or None}
    stats = Path(ck.path).resolve().parent.parent / "stats.jsonl"
    total, last = 0.0, 0.0
    if stats.is_file():
        for row in read_stats(stats):
            if "elapsed_s" not in row or row.get("step", 0) > ck.step:
                continue
            if row["elapsed_s"] < last:         # a resumed session: its clock started again from 0
                total += last
            last = row["elapsed_s"]
    return {"wall_time_s": round(total + last, 3) if last else None, "device": None}
