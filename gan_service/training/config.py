"""Typed training configuration: dataclasses, named presets, and flat CLI overrides.

Every field is documented where it is declared (``metadata["help"]``); the CLI builds one
``--flag`` per field from that metadata, so ``gan train --help`` always lists every option
with its default and never drifts from the code.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from gan_service.core.fmnist import FMNIST_DIR


def _f(default: Any, help: str, choices: tuple | None = None) -> Any:
    """A dataclass field carrying its own documentation (and allowed values)."""
    meta = {"help": help}
    if choices:
        meta["choices"] = choices
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    source: str = _f("fmnist", "where real samples come from", ("fmnist", "folder", "npz", "ring", "grid"))
    path: str = _f(FMNIST_DIR, "directory of the IDX files (fmnist), image folder (folder) or .npz file (npz)")
    split: str = _f("train", "Fashion-MNIST split to train on", ("train", "test"))
    resolution: int = _f(28, "image height and width the model works at (images are resized/cropped to it)")
    channels: int = _f(1, "image channels: 1 (grey) or 3 (RGB); images are converted to it")
    use_labels: bool = _f(False, "read class labels (needed by conditional models)")
    limit: int = _f(0, "use only the first N images (0 = all)")
    clusters: int = _f(0, "self-conditioning (Liu et al. 2020): label every training image by its k-means cluster "
                          "(k = this; pixels on their first 64 principal components) and train a conditional model "
                          "on those ids; the export draws the cluster inside the graph from one extra latent. "
                          "Without --use-labels no class label is read, --num-classes must equal k and the served "
                          "model is unconditional; with --use-labels each class is split into k clusters, "
                          "--num-classes must be classes x k and the served model takes the class label. 0 = off")


@dataclass
class ModelConfig:
    arch: str = _f("dcgan", "network family: the seed paper's MLP pair or a DCGAN-style conv pair", ("mlp", "dcgan"))
    latent_dim: int = _f(100, "size of the noise vector z ~ N(0, I)")
    num_classes: int = _f(0, "number of classes for a class-conditional model (0 = unconditional)")
    g_hidden: list = _f([1200, 1200], "MLP generator hidden widths")
    d_hidden: list = _f([240, 240], "MLP discriminator hidden widths")
    d_maxout: int = _f(5, "MLP discriminator maxout pieces per unit as in the paper (0 = LeakyReLU)")
    d_dropout: float = _f(0.5, "MLP discriminator dropout rate (the paper used dropout in D)")
    g_cond: str = _f("concat", "how a conditional DCGAN generator sees the label: concat (a learned embedding "
                               "concatenated to z) or cbn (class-conditional BatchNorm gains and biases; z alone "
                               "enters the first layer)", ("concat", "cbn"))
    d_cond: str = _f("projection", "how a conditional D sees the label: projection (Miyato & Koyama 2018) or concat "
                                   "(one-hot label maps/vector concatenated to D's input, the classic cGAN)",
                     ("projection", "concat"))
    pack: int = _f(1, "PacGAN packing: D judges this many samples at once (1 = plain GAN)")
    d_fourier: int = _f(0, "MLP discriminator: map each input through this many random Fourier features first "
                           "(sin/cos of random projections; lets D resolve narrow modes; 0 = raw input)")
    d_fourier_scale: float = _f(1.0, "std of the random Fourier frequencies (cycles per input unit)")
    g_channels: int = _f(64, "DCGAN generator base width (channels of the last hidden layer)")
    d_channels: int = _f(64, "DCGAN discriminator base width (channels of the first layer)")
    g_upsample: str = _f("transpose", "DCGAN generator 2x upsampling: transpose (4x4 stride-2 transposed conv, the "
                                      "DCGAN original; prone to checkerboard speckle) or resize (nearest 2x resize "
                                      "then a 3x3 conv, Odena et al. 2016)", ("transpose", "resize"))
    d_mbstd: int = _f(0, "DCGAN discriminator: append the minibatch standard deviation over groups of this many "
                         "consecutive samples as one feature map before the head (Karras et al. 2018), so D sees "
                         "too little variety in a batch of fakes; 0 = off")
    d_norm: str = _f("none", "DCGAN discriminator weight normalisation: none or spectral (Miyato et al. 2018)",
                     ("none", "spectral"))


@dataclass
class LossConfig:
    loss: str = _f("nonsaturating", "GAN loss: minimax = G minimises log(1-D(G(z))); nonsaturating = -log D(G(z)); "
                   "mle = -exp(logit), the MLE-equivalent G loss; hinge", ("minimax", "nonsaturating", "mle", "hinge"))
    d_steps: int = _f(1, "k: discriminator steps per generator step (Algorithm 1 of the paper)")
    r1_gamma: float = _f(0.0, "weight of the R1 gradient penalty on real data (0 = off)")


@dataclass
class OptimConfig:
    batch_size: int = _f(64, "samples per step per process (real and fake each)")
    lr_g: float = _f(2e-4, "Adam learning rate of G")
    lr_d: float = _f(2e-4, "Adam learning rate of D")
    beta1: float = _f(0.5, "Adam beta1")
    beta2: float = _f(0.999, "Adam beta2")
    lr_decay_start: float = _f(1.0, "fraction of --steps after which both learning rates decay linearly to 0 "
                                    "(1.0 = constant learning rates)")


@dataclass
class RunConfig:
    steps: int = _f(200, "generator steps to train in total")
    seed: int = _f(0, "seed of every random choice (weights, data order, noise)")
    out_dir: str = _f("runs", "parent directory of the numbered run directories")
    name: str = _f("", "run name suffix (default: the preset name)")
    device: str = _f("auto", "torch device: auto picks cuda when available", ("auto", "cpu", "cuda"))
    amp: bool = _f(True, "bfloat16 mixed precision on CUDA (on CPU only with --cpu-amp)")
    cpu_amp: bool = _f(False, "bfloat16 autocast on CPU too: 1.5-1.8x faster steps on CPUs with AVX512-BF16 or AMX "
                              "(docs/benchmarks.md); on CPUs without them, where it would be emulated and over 10x "
                              "slower, the run logs so and trains in float32; weights and losses stay float32")
    ema: bool = _f(True, "keep an exponential moving average of G's weights")
    ema_decay: float = _f(0.999, "EMA decay per generator step")
    log_every: int = _f(50, "steps between stats.jsonl records and progress lines")
    sample_every: int = _f(500, "steps between sample grids (0 = only at the end)")
    ckpt_every: int = _f(1000, "steps between checkpoints (one is always written at the end)")
    keep_ckpts: int = _f(3, "how many periodic checkpoints to keep (0 = all)")
    grid_size: int = _f(64, "samples in each grid, from one fixed latent batch")
    fd_every: int = _f(0, "steps between Frechet distance records (classifier features and pixels); also keeps "
                          "checkpoints/best.pt at the lowest (0 = off: no best.pt)")
    fd_samples: int = _f(2000, "samples used by the Frechet distances of --fd-every")
    fd_classifier: str = _f("models/eval", "evaluation classifier (model directory) whose 128-d features rank "
                                           "checkpoints for checkpoints/best.pt (FD against real training images); "
                                           "pixel FD ranks them when it is empty, missing or the images are not "
                                           "28x28 grey")


@dataclass
class TrainConfig:
    preset: str = "custom"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        kwargs = {name: sec_cls(**d.get(name, {})) for name, sec_cls in zip(SECTION_NAMES, SECTION_CLASSES)}
        return cls(preset=d.get("preset", "custom"), **kwargs)

    @property
    def is_toy(self) -> bool:
        return self.data.source in ("ring", "grid")

    def data_shape(self) -> tuple[int, ...]:
        """Shape of one sample: (2,) for the toy mixtures, (C, H, W) for images."""
        if self.is_toy:
            return (2,)
        return (self.data.channels, self.data.resolution, self.data.resolution)


SECTION_CLASSES = (DataConfig, ModelConfig, LossConfig, OptimConfig, RunConfig)
SECTION_NAMES = ("data", "model", "loss", "optim", "run")


def _toy(source: str) -> dict:
    """Shared recipe of the two 2-D mixtures: small MLPs, big batches, EMA on."""
    return {
        "data": {"source": source, "path": ""},
        "model": {"arch": "mlp", "latent_dim": 2, "g_hidden": [256, 256, 256], "d_hidden": [256, 256, 256],
                  "d_maxout": 0, "d_dropout": 0.0},
        "loss": {"loss": "nonsaturating"},
        "optim": {"batch_size": 256, "lr_g": 1e-4, "lr_d": 1e-4, "beta1": 0.5, "beta2": 0.9},
        "run": {"steps": 3000, "log_every": 250, "sample_every": 0, "ckpt_every": 100000, "ema_decay": 0.99,
                "grid_size": 2500},
    }


def _shipped(overrides: dict) -> dict:
    """The recipe of both shipped Fashion-MNIST models, with ``overrides`` merged into its sections."""
    base = {
        "data": {},
        "model": {"arch": "dcgan", "latent_dim": 64, "g_channels": 64, "d_channels": 64, "d_cond": "concat",
                  "g_cond": "cbn", "g_upsample": "resize"},
        "loss": {"loss": "nonsaturating"},
        "optim": {"batch_size": 64, "lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.5, "lr_decay_start": 0.5},
        "run": {"ema": True, "ema_decay": 0.999, "fd_every": 1000, "log_every": 500, "sample_every": 4000,
                "keep_ckpts": 0},
    }
    return {section: {**base[section], **overrides.get(section, {})} for section in base}


# Named presets: each a set of overrides on the defaults above; a shipped model's preset has the model's name.
PRESETS: dict[str, dict] = {
    "toy-ring": _toy("ring"),
    "toy-grid": _toy("grid"),
    "paper-mlp": {
        "model": {"arch": "mlp", "latent_dim": 100, "g_hidden": [1200, 1200], "d_hidden": [240, 240],
                  "d_maxout": 5, "d_dropout": 0.5},
        "loss": {"loss": "nonsaturating"},
        "optim": {"batch_size": 100, "lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.5},
        "run": {"steps": 2000, "ema": False, "fd_every": 500},
    },
    # A plain DCGAN (Radford et al. 2016): unconditional, transposed-conv upsampling, a short schedule; the quick
    # baseline the tests and benchmarks train, not a shipped model.
    "fmnist-dcgan-basic": {
        "model": {"arch": "dcgan", "latent_dim": 64, "g_channels": 64, "d_channels": 64},
        "loss": {"loss": "nonsaturating"},
        "optim": {"batch_size": 64, "lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.5},
        "run": {"steps": 2000, "ema": True, "ema_decay": 0.999, "fd_every": 500},
    },
    # The same, class-conditional: conditional batch norm in G, one-hot label maps into D.
    "fmnist-cdcgan-basic": {
        "data": {"use_labels": True},
        "model": {"arch": "dcgan", "latent_dim": 64, "num_classes": 10, "g_channels": 64, "d_channels": 64,
                  "d_cond": "concat", "g_cond": "cbn"},
        "loss": {"loss": "nonsaturating"},
        "optim": {"batch_size": 64, "lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.5},
        "run": {"steps": 2000, "ema": True, "ema_decay": 0.999, "fd_every": 500},
    },
    # The shipped fmnist-cdcgan (the default served model): class-conditional, each class split into 10 k-means
    # clusters of its pixels (100 ids), resize upsampling, learning rates decaying to 0 over the second half.
    "fmnist-cdcgan": _shipped({"data": {"use_labels": True, "clusters": 10}, "model": {"num_classes": 100},
                               "run": {"steps": 36000}}),
    # The shipped fmnist-dcgan: the same networks self-conditioned on 200 k-means clusters of the pixels, with no
    # labels read at all (Liu et al. 2020), for images that carry none; served as an unconditional model.
    "fmnist-dcgan": _shipped({"data": {"use_labels": False, "clusters": 200}, "model": {"num_classes": 200},
                              "run": {"steps": 48000}}),
}


def make_config(preset: str = "fmnist-cdcgan", overrides: dict | None = None) -> TrainConfig:
    """Resolve a preset plus flat ``{field: value}`` overrides into a validated TrainConfig."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    base = {name: {} for name in SECTION_NAMES}
    for section, values in PRESETS[preset].items():
        base[section].update(values)
    cfg = TrainConfig.from_dict({"preset": preset, **base})
    apply_overrides(cfg, overrides or {})
    validate(cfg)
    return cfg


def field_index() -> dict[str, tuple[str, dataclasses.Field]]:
    """Flat field name -> (section name, field). Field names are unique across sections."""
    index: dict[str, tuple[str, dataclasses.Field]] = {}
    for section, cls in zip(SECTION_NAMES, SECTION_CLASSES):
        for f in dataclasses.fields(cls):
            assert f.name not in index, f"duplicate config field {f.name}"
            index[f.name] = (section, f)
    return index


def apply_overrides(cfg: TrainConfig, overrides: dict) -> None:
    """Set flat ``{field: value}`` overrides on the matching section."""
    index = field_index()
    for name, value in overrides.items():
        if name not in index:
            raise ValueError(f"unknown config field {name!r}")
        setattr(getattr(cfg, index[name][0]), name, value)


def train_command(cfg: TrainConfig) -> str:
    """The ``gan train`` command line that resolves to ``cfg``: the preset plus every field that differs from it."""
    import shlex
    base = make_config(cfg.preset) if cfg.preset in PRESETS else TrainConfig()
    parts = ["gan", "train", "--preset", cfg.preset] if cfg.preset in PRESETS else ["gan", "train"]
    for name, (section, _) in field_index().items():
        value, default = getattr(getattr(cfg, section), name), getattr(getattr(base, section), name)
        if value == default:
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + name.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            parts += [flag, *map(str, value)]
        else:
            parts += [flag, str(value)]
    return " ".join(shlex.quote(p) for p in parts)


def ignored_fields(cfg: TrainConfig) -> set[str]:
    """Fields that have no effect on this config (the other architecture's widths, conditioning of an unconditional
    model, image settings of the 2-D mixtures, FD settings with --fd-every 0, ...): ``gan train --dry-run`` leaves
    them out."""
    m = cfg.model
    mlp_only = {"g_hidden", "d_hidden", "d_maxout", "d_dropout", "d_fourier", "d_fourier_scale"}
    dcgan_only = {"g_channels", "d_channels", "g_upsample", "d_norm", "d_mbstd", "g_cond"}
    ignored = dcgan_only if m.arch == "mlp" else mlp_only
    if not m.num_classes:
        ignored |= {"g_cond", "d_cond"}
    if m.arch == "mlp" and not m.d_fourier:
        ignored.add("d_fourier_scale")
    if cfg.is_toy:
        ignored |= {"path", "split", "resolution", "channels", "use_labels", "limit", "clusters", "fd_classifier"}
    elif cfg.data.source != "fmnist":
        ignored.add("split")
    if not cfg.run.fd_every:
        ignored |= {"fd_samples", "fd_classifier"}
    if not cfg.run.ema:
        ignored.add("ema_decay")
    return ignored


def effective_dict(cfg: TrainConfig) -> dict:
    """``cfg.to_dict()`` without the fields this config ignores (what ``gan train --dry-run`` prints)."""
    ignored = ignored_fields(cfg)
    return {k: ({f: v for f, v in sec.items() if f not in ignored} if isinstance(sec, dict) else sec)
            for k, sec in cfg.to_dict().items()}


def validate(cfg: TrainConfig) -> None:
    """Reject inconsistent settings with a message naming the field."""
    index = field_index()
    for name, (section, f) in index.items():
        value = getattr(getattr(cfg, section), name)
        if "choices" in f.metadata and value not in f.metadata["choices"]:
            raise ValueError(f"--{name.replace('_', '-')}: {value!r} is not one of {f.metadata['choices']}")
    checks = [
        ("steps", cfg.run.steps >= 1, "must be >= 1"),
        ("batch_size", cfg.optim.batch_size >= 1, "must be >= 1"),
        ("d_steps", cfg.loss.d_steps >= 1, "must be >= 1"),
        ("latent_dim", cfg.model.latent_dim >= 1, "must be >= 1"),
        ("num_classes", cfg.model.num_classes >= 0, "must be >= 0"),
        ("channels", cfg.data.channels in (1, 3), "must be 1 or 3"),
        ("resolution", cfg.data.resolution >= 8, "must be >= 8"),
        ("ema_decay", 0.0 <= cfg.run.ema_decay < 1.0, "must be in [0, 1)"),
        ("r1_gamma", cfg.loss.r1_gamma >= 0, "must be >= 0"),
        ("pack", cfg.model.pack >= 1 and cfg.optim.batch_size % cfg.model.pack == 0,
         "must be >= 1 and divide --batch-size"),
        ("pack", cfg.model.pack == 1 or cfg.model.num_classes == 0, "packing is for unconditional models only"),
        ("d_mbstd", cfg.model.d_mbstd == 0 or (cfg.model.d_mbstd >= 2 and cfg.model.arch == "dcgan"
                                              and cfg.optim.batch_size % (cfg.model.d_mbstd * cfg.model.pack) == 0),
         "must be 0 or >= 2 with --arch dcgan, and groups of packed samples must divide --batch-size"),
        ("use_labels", cfg.model.num_classes == 0 or cfg.data.use_labels or cfg.data.clusters,
         "conditional models (--num-classes > 0) need --use-labels (or --clusters)"),
        ("clusters", cfg.data.clusters == 0 or (not cfg.is_toy and cfg.model.num_classes > 0 and (
            cfg.model.num_classes % cfg.data.clusters == 0 if cfg.data.use_labels
            else cfg.model.num_classes == cfg.data.clusters)),
         "self-conditioning needs image data and --num-classes equal to --clusters (or, with --use-labels, "
         "classes x --clusters)"),
        ("g_cond", cfg.model.g_cond == "concat" or cfg.model.arch == "dcgan",
         "cbn (class-conditional BatchNorm) needs --arch dcgan; the MLP generator has no BatchNorm"),
        ("arch", not (cfg.is_toy and cfg.model.arch != "mlp"), "the 2-D toy mixtures need --arch mlp"),
        ("num_classes", not (cfg.is_toy and cfg.model.num_classes), "the 2-D toy mixtures have no labels"),
        ("lr_decay_start", 0.0 <= cfg.optim.lr_decay_start <= 1.0, "must be in [0, 1]"),
        ("log_every", cfg.run.log_every >= 1, "must be >= 1"),
        ("ckpt_every", cfg.run.ckpt_every >= 1, "must be >= 1"),
    ]
    for name, ok, why in checks:
        if not ok:
            raise ValueError(f"--{name.replace('_', '-')}: {why}")
