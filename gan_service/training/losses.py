"""GAN losses, all computed from discriminator logits (never sigmoid-then-BCE).

With D(x) = sigmoid(l):  log D = -softplus(-l)  and  log(1 - D) = -softplus(l), both stable for any l.
Logits are cast to float32 first so the losses stay accurate under bf16/fp16 autocast.

Generator losses (minimised):
  minimax        E[log(1 - D(G(z)))] = -E[softplus(l)]    saturates when D rejects fakes (l << 0)
  nonsaturating  -E[log D(G(z))]     =  E[softplus(-l)]   the paper's "-log D" trick
  mle            -E[exp(l)]          = -E[D / (1 - D)]    at D*, exp(l) = p_data / p_g, and the gradient
                                                          equals that of KL(p_data || p_g)
  hinge          -E[l]
Discriminator losses: the paper's -V(G, D) for the first three; hinge uses relu(1 - l_real) + relu(1 + l_fake).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("minimax", "nonsaturating", "mle", "hinge")
# exp(l) overflows float32 at l ~ 88; D*-ratios beyond e^30 carry no usable gradient signal anyway.
MLE_LOGIT_CLAMP = 30.0


def d_loss(kind: str, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator loss to minimise, from logits [N] on real and fake samples."""
    real, fake = real_logits.float(), fake_logits.float()
    if kind == "hinge":
        return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
    if kind in LOSSES:
        # -V(G, D) = -E[log D(x)] - E[log(1 - D(G(z)))]
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    raise ValueError(f"unknown loss {kind!r}")


def g_loss(kind: str, fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator loss to minimise, from logits [N] of D on generated samples."""
    fake = fake_logits.float()
    if kind == "minimax":
        return -F.softplus(fake).mean()
    if kind == "nonsaturating":
        return F.softplus(-fake).mean()
    if kind == "mle":
        return -torch.exp(fake.clamp(max=MLE_LOGIT_CLAMP)).mean()
    if kind == "hinge":
        return -fake.mean()
    raise ValueError(f"unknown loss {kind!r}")


def r1_penalty(real: torch.Tensor, real_logits: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): E ||grad_x D(x)||^2 on real samples; ``real`` must require grad."""
    (grad,) = torch.autograd.grad(real_logits.float().sum(), real, create_graph=True)
    return grad.pow(2).reshape(len(grad), -1).sum(dim=1).mean()


def value_function(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The paper's V(G, D) = E[log D(x)] + E[log(1 - D(G(z)))], from logits."""
    return -(F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean())
