"""The training loop: Algorithm 1 of the paper (k D-steps per G-step) with EMA, AMP, DDP and checkpoints.

Entry point: ``train(cfg, resume=None) -> run_dir``. Single process by default; under ``torchrun``
(WORLD_SIZE > 1) each process trains on its own data stream with DistributedDataParallel
(NCCL on CUDA, gloo on CPU) and rank 0 writes the run directory.
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from gan_service.core.imaging import save_png, scatter_png, tile_grid, to_uint8
from gan_service.core.stats import read_stats
from gan_service.training import checkpoint as ckpt_io
from gan_service.training.best_fd import FDJudge
from gan_service.training.config import TrainConfig
from gan_service.training.data import TrainingData, load_data
from gan_service.training.losses import d_loss, g_loss, r1_penalty
from gan_service.training.nets import build_discriminator, build_generator
from gan_service.training.sampling import generate, sample_latents


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the run stopped and its last good checkpoint is kept."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM/SIGINT arrived; a checkpoint was written before stopping."""


# ---------------------------------------------------------------- run directories and distribution

def new_run_dir(out_dir: str | Path, name: str) -> Path:
    """Create the next numbered run directory ``NNNNN-name`` under out_dir; never reuses one."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    while True:
        ids = [int(m.group(1)) for p in out.iterdir() if (m := re.match(r"^(\d{5})-", p.name))]
        run_dir = out / f"{max(ids, default=-1) + 1:05d}-{name}"
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:   # another process took this number first: try the next
            continue


@dataclass
class Dist:
    rank: int = 0                  # this process's rank in the group
    world: int = 1                 # processes in the group (1: no group)
    store: dist.Store | None = None  # this training call's key-value store shared by the ranks (None: no group)

    def __post_init__(self):
        if self.world > 1 and self.store is None:
            raise ValueError("Dist: a group of several processes needs their shared store")

    @property
    def main(self) -> bool:
        return self.rank == 0


def _call_store(rank: int) -> dist.Store:
    """A key-value store private to this training call, shared by all ranks: the group's store under a prefix
    numbered by the call (every rank makes the same calls in the same order, so the n-th calls of all ranks meet).

    The ranks exchange their few values here rather than by collectives: a collective's work is freed afterwards by
    one of gloo's worker threads, and when that falls after the interpreter has begun to exit, the rank aborts
    (SIGABRT, "terminate called without an active exception"; 2 of 40 two-rank CPU runs did).
    """
    # the store the default group was made with; private, but torch has no public handle on it
    base = dist.distributed_c10d._get_default_store()
    call = base.add(f"gan-train-calls/{rank}", 1)
    return dist.PrefixStore(f"gan-train/{call}", base)


@contextmanager
def process_group(device: torch.device) -> Iterator[Dist]:
    """Join the torchrun process group when WORLD_SIZE > 1 (torchrun sets it), else single process.

    A group this opens is destroyed on the way out; a group the caller opened is left open. Destroying does not
    stop gloo's worker threads once DDP has used the group (torch 2.13: 4 threads before and after), so nothing may
    leave them work to finish at exit: the ranks talk through the call's store (:func:`_call_store`).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield Dist()
        return
    opened = not dist.is_initialized()
    if opened:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield Dist(dist.get_rank(), dist.get_world_size(), _call_store(dist.get_rank()))
    finally:
        if opened:
            dist.destroy_process_group()


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


# ---------------------------------------------------------------- state

@dataclass
class TrainState:
    """Everything that changes during training and goes into a checkpoint."""
    G: nn.Module
    D: nn.Module
    G_ema: nn.Module | None
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    data_gen: torch.Generator          # drives real-batch sampling, latents and fake labels
    step: int = 0
    best_fd: float = math.inf
    best_by: str = ""                  # the FD best_fd was measured in (training.best_fd: pixel_fd or classifier_fd)
    train_seconds: float = 0.0         # wall time spent in the training loop, summed over resumed sessions
    device: str = ""                   # what trained it, e.g. "cpu" or "cuda: NVIDIA H100 80GB HBM3" (latest session)

    def to_checkpoint(self, cfg: TrainConfig, data: TrainingData) -> dict:
        prior = None if data.label_prior is None else [float(p) for p in data.label_prior]
        return {
            "config": cfg.to_dict(), "step": self.step, "class_names": data.class_names, "label_prior": prior,
            "G": _unwrap(self.G).state_dict(), "D": _unwrap(self.D).state_dict(),
            "G_ema": None if self.G_ema is None else self.G_ema.state_dict(),
            "opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "data": self.data_gen.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "best_fd": self.best_fd, "best_by": self.best_by, "train_seconds": self.train_seconds,
            "device": self.device,
        }

    def load_checkpoint(self, state: dict) -> None:
        _unwrap(self.G).load_state_dict(state["G"])
        _unwrap(self.D).load_state_dict(state["D"])
        if self.G_ema is not None and state.get("G_ema") is not None:
            self.G_ema.load_state_dict(state["G_ema"])
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        torch.set_rng_state(state["rng"]["torch"])
        self.data_gen.set_state(state["rng"]["data"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.step = int(state["step"])
        self.best_fd = float(state.get("best_fd", math.inf))
        self.best_by = state.get("best_by") or ("pixel_fd" if math.isfinite(self.best_fd) else "")
        self.train_seconds = float(state.get("train_seconds", 0.0))


def describe_device(device: torch.device) -> str:
    """A short human name of the training device, recorded in checkpoints and model manifests."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads"


def _unwrap(m: nn.Module) -> nn.Module:
    return m.module if isinstance(m, nn.parallel.DistributedDataParallel) else m


def build_state(cfg: TrainConfig, device: torch.device, dist_info: Dist) -> TrainState:
    """Networks, optimisers and the data RNG, seeded from cfg.run.seed (weights equal on every rank)."""
    torch.manual_seed(cfg.run.seed)
    G, D = build_generator(cfg).to(device), build_discriminator(cfg).to(device)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False) if cfg.run.ema else None
    if dist_info.world > 1:
        G = nn.parallel.DistributedDataParallel(G, device_ids=[device.index] if device.type == "cuda" else None)
        D = nn.parallel.DistributedDataParallel(D, device_ids=[device.index] if device.type == "cuda" else None)
    # foreach: one fused kernel per op over all tensors; torch only defaults to it on CUDA, and on CPU it cuts
    # the per-step optimiser cost of the small toy MLPs by half.
    betas = (cfg.optim.beta1, cfg.optim.beta2)
    opt_G = torch.optim.Adam(G.parameters(), lr=cfg.optim.lr_g, betas=betas, foreach=True)
    opt_D = torch.optim.Adam(D.parameters(), lr=cfg.optim.lr_d, betas=betas, foreach=True)
    # Each rank draws its own data stream; rank r of seed s never repeats another rank's draws.
    data_gen = torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + dist_info.rank)
    torch.manual_seed(cfg.run.seed * 7919 + dist_info.rank)   # dropout etc. differ per rank too
    return TrainState(G, D, G_ema, opt_G, opt_D, data_gen)


# ---------------------------------------------------------------- one step of Algorithm 1

def _cat_labels(a, b):
    return None if a is None else torch.cat([a, b])


def discriminator_step(cfg: TrainConfig, st: TrainState, data: TrainingData, device, amp) -> dict:
    """One D update on a real batch and a fake batch (G frozen)."""
    B = cfg.optim.batch_size
    real, real_labels = data.sample(B, st.data_gen)
    real = real.to(device)
    real_labels = None if real_labels is None else real_labels.to(device)
    z, fake_labels = sample_latents(cfg, B, st.data_gen, device, data.label_prior)
    with torch.no_grad(), amp():
        fake = st.G(z, fake_labels)                                        # [B, *sample_shape]
    r1 = cfg.loss.r1_gamma > 0
    real.requires_grad_(r1)
    with amp():
        # One D forward on [real; fake]: DDP allows one forward per backward.
        logits = st.D(torch.cat([real, fake.to(real.dtype)]), _cat_labels(real_labels, fake_labels))
    real_logits, fake_logits = logits[: len(logits) // 2], logits[len(logits) // 2:]
    loss = d_loss(cfg.loss.loss, real_logits, fake_logits)
    penalty = r1_penalty(real, real_logits) if r1 else torch.zeros((), device=device)
    total = loss + 0.5 * cfg.loss.r1_gamma * penalty
    st.opt_D.zero_grad(set_to_none=True)
    total.backward()
    st.opt_D.step()
    return {"loss_d": total, "r1": penalty, "d_real": torch.sigmoid(real_logits.float()).mean(),
            "d_fake": torch.sigmoid(fake_logits.float()).mean()}


def generator_step(cfg: TrainConfig, st: TrainState, device, amp, prior=None) -> dict:
    """One G update through a frozen D (labels drawn from ``prior`` when given, as in TrainingData)."""
    z, labels = sample_latents(cfg, cfg.optim.batch_size, st.data_gen, device, prior)
    # D is used unwrapped and frozen: its weights do not change here, so DDP must not reduce its grads.
    D = _unwrap(st.D).requires_grad_(False)
    with amp():
        logits = D(st.G(z, labels), labels)
    loss = g_loss(cfg.loss.loss, logits)
    st.opt_G.zero_grad(set_to_none=True)
    loss.backward()
    st.opt_G.step()
    D.requires_grad_(True)
    return {"loss_g": loss}


def train_step(cfg: TrainConfig, st: TrainState, data: TrainingData, device, amp) -> dict:
    """One step of Algorithm 1 (k discriminator steps, then one generator step) and the EMA update; the losses and
    D statistics as floats."""
    set_learning_rates(cfg, st)
    for _ in range(cfg.loss.d_steps):
        d_stats = discriminator_step(cfg, st, data, device, amp)
    g_stats = generator_step(cfg, st, device, amp, data.label_prior)
    st.step += 1
    if st.G_ema is not None:
        update_ema(st.G_ema, _unwrap(st.G), cfg.run.ema_decay, st.step)
    return {k: float(v.detach()) for k, v in {**d_stats, **g_stats}.items()}


@torch.no_grad()
def update_ema(G_ema: nn.Module, G: nn.Module, decay: float, step: int) -> None:
    """EMA of G's weights; the decay ramps up from 0 so short runs are not dominated by the initial weights."""
    d = min(decay, (1.0 + step) / (10.0 + step))
    torch._foreach_lerp_(list(G_ema.parameters()), [p.detach() for p in G.parameters()], 1.0 - d)
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)


def lr_decay_factor(step: int, steps: int, decay_start: float) -> float:
    """1 until ``decay_start * steps``, then linear down to 0 at ``steps``: the multiplier of both learning rates."""
    start = decay_start * steps
    return 1.0 if step < start else max(0.0, (steps - step) / max(steps - start, 1.0))


def set_learning_rates(cfg: TrainConfig, st: TrainState) -> None:
    """Constant rates, then a linear decay to 0 over the last (1 - lr_decay_start) of the run.

    A pure function of the step, so a resumed run uses exactly the rates of an uninterrupted one.
    """
    factor = lr_decay_factor(st.step, cfg.run.steps, cfg.optim.lr_decay_start)
    for opt, base in ((st.opt_G, cfg.optim.lr_g), (st.opt_D, cfg.optim.lr_d)):
        for group in opt.param_groups:
            group["lr"] = base * factor


def grad_norm(module: nn.Module) -> float:
    norms = [p.grad.detach().float().norm() for p in module.parameters() if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


# ---------------------------------------------------------------- samples and cheap FD

def fixed_latents(cfg: TrainConfig, n: int, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The same latent batch for every grid of a run (labels cycle through the classes, row by row)."""
    gen = torch.Generator().manual_seed(cfg.run.seed + 12345)
    z = torch.randn(n, cfg.model.latent_dim, generator=gen).to(device)
    labels = torch.arange(n, device=device) % cfg.model.num_classes if cfg.model.num_classes else None
    return z, labels


def write_progress_grid(cfg: TrainConfig, G: nn.Module, data: TrainingData, path: Path, device) -> None:
    """A grid PNG of images, or a scatter PNG of the 2-D toy samples, from the fixed latents."""
    z, labels = fixed_latents(cfg, cfg.run.grid_size, device)
    out = generate(G, z, labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    if cfg.is_toy:
        scatter_png(out, data.modes.numpy(), path, title=path.stem)
        return
    ncol = cfg.model.num_classes or None
    save_png(tile_grid(to_uint8(out), ncol=ncol), path)


# ---------------------------------------------------------------- the loop

class _StopFlag:
    """Set by SIGTERM/SIGINT; checked once per step so the checkpoint is always consistent."""

    def __init__(self):
        self.signum = 0
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


class Recorder:
    """stats.jsonl records and progress lines with ETA, rank 0 only."""

    def __init__(self, run_dir: Path, total_steps: int, start_step: int, main: bool, log=None):
        self.path, self.total, self.main = run_dir / "stats.jsonl", total_steps, main
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.t0, self.step0 = time.perf_counter(), start_step
        if main and start_step > 0:
            _truncate_stats(self.path, start_step)

    def record(self, row: dict) -> None:
        elapsed = time.perf_counter() - self.t0
        done = row["step"] - self.step0
        eta = elapsed / max(done, 1) * (self.total - row["step"])
        row.update(elapsed_s=round(elapsed, 2), eta_s=round(eta, 1))
        if not self.main:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        self.log(f"step {row['step']}/{self.total}  loss_d {row['loss_d']:.4f}  loss_g {row['loss_g']:.4f}  "
                 f"D(x) {row['d_real']:.3f}  D(G(z)) {row['d_fake']:.3f}  {row['images_per_s']:.0f} img/s  "
                 f"ETA {_fmt_time(eta)}")


def _truncate_stats(path: Path, last_step: int) -> None:
    """On resume, drop records past the checkpoint so stats.jsonl never holds a step twice; a torn last line
    (the run was killed mid-write) is dropped too, by the one tolerant reader, core.stats.read_stats."""
    if not path.exists():
        return
    keep = [row for row in read_stats(path) if row.get("step", 0) <= last_step]
    path.write_text("".join(json.dumps(row) + "\n" for row in keep))


def _fmt_time(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


def _check_finite(stats: dict, step: int, last_ckpt: Path | None) -> None:
    for name, value in stats.items():
        if not math.isfinite(value):
            kept = f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint had been written yet"
            raise TrainingDiverged(f"{name} became {value} at step {step}; training stopped, {kept}. "
                                   f"Try a lower --lr-d/--lr-g or another --loss.")


def save(cfg: TrainConfig, st: TrainState, run_dir: Path, data: TrainingData, best: bool = False) -> Path:
    """Write a periodic checkpoint (and prune old ones), or checkpoints/best.pt."""
    state = st.to_checkpoint(cfg, data)
    if best:
        return ckpt_io.save_checkpoint(run_dir / ckpt_io.CKPT_DIR / "best.pt", state)
    path = ckpt_io.save_checkpoint(ckpt_io.checkpoint_path(run_dir, st.step), state)
    if cfg.run.keep_ckpts:
        for old in sorted((run_dir / ckpt_io.CKPT_DIR).glob("step-*.pt"))[:-cfg.run.keep_ckpts]:
            old.unlink()
    return path


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")      # /proc/cpuinfo flags of native bfloat16 arithmetic


def cpuinfo_bf16_flags(cpuinfo: str) -> list[str]:
    """Which of BF16_CPU_FLAGS the ``flags`` lines of a /proc/cpuinfo text name."""
    flags = {flag for line in cpuinfo.splitlines() if line.startswith("flags")
             for flag in line.split(":", 1)[-1].split()}
    return [flag for flag in BF16_CPU_FLAGS if flag in flags]


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX). Without them oneDNN emulates bfloat16 and
    an autocast training step is over 10x slower than float32 (docs/benchmarks.md), not 1.7x faster."""
    # torch has no public query for these; the private ones below back torch.cpu's own checks (torch 2.x), and
    # /proc/cpuinfo answers where a torch build lacks them
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        cpuinfo = Path("/proc/cpuinfo")
        return cpuinfo.exists() and bool(cpuinfo_bf16_flags(cpuinfo.read_text()))


def _asks_cpu_autocast(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether the config asks for bfloat16 autocast on this CPU device (``amp`` and ``cpu_amp``)."""
    return cfg.run.amp and cfg.run.cpu_amp and device.type == "cpu"


def autocast_for(cfg: TrainConfig, device: torch.device, cpu_bf16: bool | None = None):
    """A factory of the context G's and D's forwards run in: bfloat16 autocast on CUDA (``amp``) and, when asked
    (``cpu_amp``), on a CPU with bfloat16 instructions; otherwise plain float32. ``cpu_bf16``: whether the CPU has
    them (None: ask :func:`cpu_has_bf16`; ``gan bench train`` passes True to time the emulated path too)."""
    if cfg.run.amp and device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    if _asks_cpu_autocast(cfg, device) and (cpu_has_bf16() if cpu_bf16 is None else cpu_bf16):
        return lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext


def cpu_amp_fallback_note(cfg: TrainConfig, device: torch.device, amp) -> str | None:
    """The line a run logs when it was asked for --cpu-amp but ``amp``, the context factory :func:`autocast_for`
    chose, is plain float32 (a CPU that would only emulate bfloat16)."""
    if _asks_cpu_autocast(cfg, device) and amp is nullcontext:
        return ("--cpu-amp: this CPU has no x86 bfloat16 instructions (AVX512-BF16 or AMX), so bfloat16 autocast would "
                "be emulated and over 10x slower; training in float32 instead")
    return None


def train(cfg: TrainConfig, resume: str | Path | None = None, log=None) -> Path:
    """Train G and D as configured; returns the run directory. ``resume``: a run dir or checkpoint to continue."""
    device = pick_device(cfg.run.device)
    with process_group(device) as dist_info:
        return _train(cfg, resume, log, device, dist_info)


def _train(cfg: TrainConfig, resume, log, device: torch.device, dist_info: Dist) -> Path:
    """The training loop of :func:`train`, inside its process group."""
    if dist_info.world > 1 and cfg.loss.r1_gamma > 0:
        raise ValueError("--r1-gamma: the R1 penalty needs double backward, which DDP does not support; "
                         "train it in one process")
    data = load_data(cfg.data)
    _check_cluster_count(cfg, data)
    st = build_state(cfg, device, dist_info)
    run_dir = _open_run_dir(cfg, resume, st, dist_info, data)
    amp = autocast_for(cfg, device)
    recorder = Recorder(run_dir, cfg.run.steps, st.step, dist_info.main, log)
    if dist_info.main and (note := cpu_amp_fallback_note(cfg, device, amp)):
        recorder.log(note)
    last_ckpt = ckpt_io.latest_checkpoint(run_dir) if resume else None
    G_plain = _unwrap(st.G)
    st.device = describe_device(device)
    judge = FDJudge(cfg, data, device, recorder.log) if cfg.run.fd_every and dist_info.main else None
    t_last, imgs_since = time.perf_counter(), 0
    t_step = t_last

    with _StopFlag() as stop:
        while st.step < cfg.run.steps:
            scalars = train_step(cfg, st, data, device, amp)
            now = time.perf_counter()
            st.train_seconds, t_step = st.train_seconds + (now - t_step), now
            imgs_since += cfg.optim.batch_size * (cfg.loss.d_steps + 1) * dist_info.world
            _check_finite(scalars, st.step, last_ckpt)
            g_eval = st.G_ema if st.G_ema is not None else G_plain
            final = st.step == cfg.run.steps

            # Periodic records, samples, FD and checkpoints (rank 0 writes).
            if st.step % cfg.run.log_every == 0 or final:
                now = time.perf_counter()
                scalars.update(step=st.step, grad_norm_g=grad_norm(G_plain), grad_norm_d=grad_norm(_unwrap(st.D)),
                               images_per_s=imgs_since / max(now - t_last, 1e-9), world_size=dist_info.world)
                recorder.record(scalars)
                t_last, imgs_since = now, 0
            if dist_info.main and ((cfg.run.sample_every and st.step % cfg.run.sample_every == 0) or final):
                write_progress_grid(cfg, g_eval, data, run_dir / "samples" / f"step-{st.step:08d}.png", device)
            if judge is not None and (st.step % cfg.run.fd_every == 0 or final):
                _record_fd(cfg, st, judge, g_eval, data, run_dir)
            if st.step % cfg.run.ckpt_every == 0 or final or stop.signum:
                if dist_info.main:
                    last_ckpt = save(cfg, st, run_dir, data)
                if stop.signum:
                    raise TrainingInterrupted(f"stopped by signal {stop.signum} at step {st.step}; "
                                              f"checkpoint {last_ckpt}; continue with: gan train --resume {run_dir}")
    _check_ranks_in_sync(G_plain, dist_info)
    return run_dir


def _record_fd(cfg, st: TrainState, judge: FDJudge, g_eval, data, run_dir: Path) -> None:
    """Log the FDs and keep checkpoints/best.pt at the minimum of the judge's metric (a best.pt ranked in another
    space, e.g. by pixel FD before a classifier was available, is replaced by the first new measurement)."""
    fds = judge.measure(g_eval)
    with open(run_dir / "stats.jsonl", "a") as fh:
        fh.write(json.dumps({"step": st.step, **fds}) + "\n")
    fd = fds[judge.metric]
    if st.best_by != judge.metric or fd < st.best_fd:
        st.best_fd, st.best_by = fd, judge.metric
        save(cfg, st, run_dir, data, best=True)


def _open_run_dir(cfg: TrainConfig, resume, st: TrainState, dist_info: Dist, data: TrainingData) -> Path:
    """A new numbered run dir with config.json; the resumed one with its state loaded; or, when ``resume`` is a
    checkpoint other than its run's latest, a new run dir branched from it (the original run is left untouched)."""
    if not resume:
        return _new_run_dir(cfg, dist_info)
    ck = ckpt_io.load_checkpoint(resume)
    _check_same_clusters(ck, data)
    st.load_checkpoint(ck.state)
    run_dir = ck.path.parent.parent
    if ck.path.resolve() != ckpt_io.latest_checkpoint(run_dir).resolve():
        return _new_run_dir(cfg, dist_info, branch_of=ck)
    if dist_info.main:
        (run_dir / "config.json").write_text(cfg.to_json())
    return run_dir


def _new_run_dir(cfg: TrainConfig, dist_info: Dist, branch_of: ckpt_io.Checkpoint | None = None) -> Path:
    """Rank 0 makes the next numbered run dir (with config.json, and a branch's starting files) and tells the rest."""
    if dist_info.main:
        run_dir = new_run_dir(cfg.run.out_dir, cfg.run.name or cfg.preset)
        (run_dir / "config.json").write_text(cfg.to_json())
        if branch_of is not None:
            _start_branch(run_dir, branch_of)
        if dist_info.world > 1:
            dist_info.store.set("run-dir", str(run_dir))
        return run_dir
    return Path(dist_info.store.get("run-dir").decode())              # blocks until rank 0 has set it


def _start_branch(run_dir: Path, ck: ckpt_io.Checkpoint) -> None:
    """A branch starts with a copy of the checkpoint it grows from (so it resumes on its own) and the original run's
    stats up to that step; branch.json says where it came from."""
    start = ckpt_io.checkpoint_path(run_dir, ck.step)
    start.parent.mkdir(parents=True)
    shutil.copyfile(ck.path, start)
    stats = ck.path.parent.parent / "stats.jsonl"
    if stats.is_file():
        shutil.copyfile(stats, run_dir / "stats.jsonl")
        _truncate_stats(run_dir / "stats.jsonl", ck.step)
    (run_dir / "branch.json").write_text(json.dumps({"from": str(ck.path.resolve()), "step": ck.step}) + "\n")


def _check_same_clusters(ck: ckpt_io.Checkpoint, data: TrainingData) -> None:
    """A self-conditioned run's clusters are recomputed from the data at every start: refuse a resume whose clusters
    came out different (other data or --limit), which would silently relabel every training image."""
    now, saved = data.label_prior, ck.label_prior                          # [K] float32 / list, or None
    if now is None and saved is None:
        return
    if now is None or saved is None or len(now) != len(saved) or not torch.allclose(now, torch.tensor(saved)):
        raise ValueError(f"--clusters: the clusters of this data differ from those {ck.path} was trained on "
                         "(cluster frequencies changed: other data, --limit or --clusters); resume on the same data")


def _check_cluster_count(cfg: TrainConfig, data: TrainingData) -> None:
    """Clusters within each class (--clusters K --use-labels) make classes x K ids, known only once the data is
    loaded: --num-classes must match them, or G's embeddings would be too small or partly never trained."""
    if data.label_prior is not None and len(data.label_prior) != cfg.model.num_classes:
        raise ValueError(f"--num-classes {cfg.model.num_classes}: --clusters {cfg.data.clusters} on this data makes "
                         f"{len(data.label_prior)} cluster ids; set --num-classes {len(data.label_prior)}")


def _check_ranks_in_sync(G: nn.Module, dist_info: Dist) -> None:
    """Under DDP every rank must end with identical G weights; fail loudly if not. Checksums go through the call's
    store, not a collective (see :func:`_call_store`)."""
    if dist_info.world <= 1:
        return
    flat = torch.cat([p.detach().double().flatten() for p in G.parameters()])
    mine = f"{flat.sum().item().hex()} {flat.abs().sum().item().hex()}"     # exact float64 sums, as text
    dist_info.store.set(f"weights/{dist_info.rank}", mine)
    every = [dist_info.store.get(f"weights/{rank}").decode() for rank in range(dist_info.world)]
    # rank 0 may host the store (a launch without torchrun's agent store): it leaves only once every rank has read
    if dist_info.main:
        dist_info.store.wait([f"read/{rank}" for rank in range(1, dist_info.world)])
    else:
        dist_info.store.set(f"read/{dist_info.rank}", "1")
    if len(set(every)) > 1:
        sums = [[float.fromhex(v) for v in sums.split()] for sums in every]
        raise RuntimeError(f"DDP ranks ended with different generator weights: {sums}")