"""Discriminator rejection sampling (Azadi et al. 2019) with the seeds' optimal discriminator.

Proposition 1 of the GAN paper: for a fixed G, the D that maximises V(G, D) is D* = p_data / (p_data + p_g), so
its logit is log p_data(x) - log p_g(x). Drawing x ~ p_g and keeping it with probability exp(logit(x) - M), where
M bounds the logit, is then ordinary rejection sampling with proposal p_g and target p_data: the kept samples
follow p_data, to the accuracy of the fitted D and of the bound M.

So after training, a fresh unpacked discriminator is fitted to the frozen generator (the paper's inner loop run to
convergence), and samples are filtered with it. It corrects what a trained G cannot easily fix on its own, such as
the thin bridges a continuous G draws between separate modes (docs/toy-benchmark.md). It needs real data and a
discriminator at sampling time, so it is a training-side tool: the ONNX service serves G alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from gan_service.training.losses import d_loss
from gan_service.training.nets import FourierFeatures

# A sampler of n items with an explicit generator: (n, gen) -> tensor [n, ...]
Sampler = Callable[[int, torch.Generator], torch.Tensor]


@dataclass
class RejectionConfig:
    """How D* is fitted and how its logit bounds the acceptance."""
    steps: int = 3000                 # Adam steps fitting D* to the frozen G (fresh real and fake batches each step)
    batch: int = 512                  # real and fake samples per step, each
    lr: float = 1e-3                  # Adam learning rate; decays to 0 over the steps (cosine) so D* settles
    hidden: list[int] = field(default_factory=lambda: [128, 128, 128])   # D* MLP widths (LeakyReLU 0.2)
    fourier: int = 64                 # random Fourier features beside the standardised input (0 = none)
    fourier_scale: float = 2.0        # their frequencies' std, in cycles per standard deviation of the real data
    calibration: int = 20000          # G samples whose logits set the bound M
    bound_quantile: float = 0.99      # M = this quantile of the calibration logits; 1.0 = their max
    max_candidates: int = 2_000_000   # give up (ValueError) after proposing this many samples


class Standardise(nn.Module):
    """x [N, ...] -> (flattened x - mean) / std [N, d], with mean and std [d] fixed from real samples."""

    def __init__(self, real: torch.Tensor):
        super().__init__()
        flat = real.reshape(len(real), -1).double()                                     # [N, d]
        self.register_buffer("mean", flat.mean(0).float())
        self.register_buffer("std", flat.std(0).clamp_min(1e-8).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.reshape(len(x), -1) - self.mean) / self.std


def optimal_discriminator_net(real: torch.Tensor, cfg: RejectionConfig) -> nn.Module:
    """The untrained D* MLP: standardised input (statistics of ``real`` [N, ...]), Fourier features, LeakyReLU."""
    # Fourier features let an MLP on low-dimensional input resolve narrow modes (Tancik et al. 2020); unlike in
    # the GAN's own D, they cannot make G collapse here, because G is frozen. Standardising first makes one
    # frequency scale fit data of any extent (the ring spans 2 units, the grid 8).
    dim = real[0].numel()
    layers: list[nn.Module] = [Standardise(real)]
    if cfg.fourier:
        layers.append(FourierFeatures(dim, cfg.fourier, cfg.fourier_scale))
    width = dim + 2 * cfg.fourier
    for h in cfg.hidden:
        layers += [nn.Linear(width, h), nn.LeakyReLU(0.2)]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, 1))


def fit_optimal_discriminator(real: Sampler, fake: Sampler, cfg: RejectionConfig,
                              gen: torch.Generator) -> nn.Module:
    """An MLP D [N, ...] -> logits [N, 1] trained alone, on -V(G, D), against fixed real and fake samplers."""
    # Initialise from ``gen`` rather than the global RNG, so that a seeded call repeats exactly.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2 ** 31, (1,), generator=gen)))
        d = optimal_discriminator_net(real(10 * cfg.batch, gen), cfg)
    opt = torch.optim.Adam(d.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    for _ in range(cfg.steps):
        # One step of the paper's inner loop: maximise V = E log D(x) + E log(1 - D(G(z))).
        x_real, x_fake = real(cfg.batch, gen), fake(cfg.batch, gen).detach()        # [B, ...] each
        loss = d_loss("nonsaturating", d(x_real).squeeze(1), d(x_fake).squeeze(1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return d.eval()


def acceptance(logits: torch.Tensor, bound: float) -> torch.Tensor:
    """Keep-probability exp(logit - bound), clipped to [0, 1] (D* logit = log p_data/p_g; bound >= its max)."""
    return torch.exp(torch.clamp(logits - bound, max=0.0))


@torch.no_grad()
def rejection_sample(fake: Sampler, d: nn.Module, n: int, cfg: RejectionConfig,
                     gen: torch.Generator) -> tuple[torch.Tensor, float]:
    """``n`` samples from ``fake`` kept with probability exp(D(x) - M); returns them [n, ...] and the
    acceptance rate. M is the ``bound_quantile`` of D's logits on ``calibration`` fresh proposals."""
    calib = d(fake(cfg.calibration, gen)).squeeze(1)                                   # [calibration]
    bound = float(torch.quantile(calib.double(), cfg.bound_quantile))                  # quantile 1.0 = the max
    kept, proposed, have = [], 0, 0
    chunk = max(1024, 2 * n)
    while have < n:
        if proposed >= cfg.max_candidates:
            raise ValueError(f"rejection sampling kept {have} of {proposed} proposals (bound {bound:.2f}); "
                             f"raise max_candidates or lower bound_quantile")
        x = fake(chunk, gen)                                                           # [chunk, ...]
        keep = torch.rand(chunk, generator=gen) < acceptance(d(x).squeeze(1), bound)   # [chunk]
        kept.append(x[keep])
        proposed, have = proposed + chunk, have + int(keep.sum())
    return torch.cat(kept)[:n], have / proposed


def sample_with_rejection(G: nn.Module, data, train_cfg, n: int, cfg: RejectionConfig,
                          seed_offset: int = 777) -> tuple[np.ndarray, float]:
    """``n`` samples [n, ...] of an unconditional generator of ``train_cfg``'s run, filtered by a D* fitted to it
    on ``data`` (a training.data.TrainingData); returns them as float32 numpy and the acceptance rate. Seeded from the
    run's seed, so it repeats exactly."""
    from gan_service.training.sampling import sample_latents

    if train_cfg.model.num_classes:
        raise ValueError("rejection sampling supports unconditional generators only")
    gen = torch.Generator().manual_seed(train_cfg.run.seed + seed_offset)

    def fake(count: int, g: torch.Generator) -> torch.Tensor:                        # [count, ...]
        with torch.no_grad():
            return G(sample_latents(train_cfg, count, g, "cpu")[0])

    d_star = fit_optimal_discriminator(lambda count, g: data.sample(count, g)[0], fake, cfg, gen)
    kept, rate = rejection_sample(fake, d_star, n, cfg, gen)
    return kept.numpy(), rate
