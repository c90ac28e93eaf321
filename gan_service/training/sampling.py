"""Drawing from a generator: latents (and labels) from an explicit torch.Generator, and G run in eval mode
over them in chunks. Used by the loop, the best-checkpoint FD, the toy benchmark and rejection sampling."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from gan_service.training.config import TrainConfig


def sample_latents(cfg: TrainConfig, n: int, gen: torch.Generator, device,
                   prior: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """z [n, latent_dim] ~ N(0, I) and, for conditional models, labels [n]: uniform, or drawn from ``prior`` [K]
    (the cluster frequencies of a self-conditioned model)."""
    z = torch.randn(n, cfg.model.latent_dim, generator=gen)
    labels = None
    if prior is not None:
        labels = torch.multinomial(prior, n, replacement=True, generator=gen)
    elif cfg.model.num_classes:
        labels = torch.randint(cfg.model.num_classes, (n,), generator=gen)
    return z.to(device), None if labels is None else labels.to(device)


@torch.no_grad()
def generate(G: nn.Module, z: torch.Tensor, labels, batch: int = 1024) -> np.ndarray:
    """Run G in eval mode over z in chunks; float32 numpy [N, *sample_shape]."""
    was_training = G.training
    G.eval()
    out = [G(z[i:i + batch], None if labels is None else labels[i:i + batch]).float().cpu()
           for i in range(0, len(z), batch)]
    G.train(was_training)
    return torch.cat(out).numpy()
