"""Exploration harness for the toy benchmark: the training step of `gan train` on the 2-D mixtures, cut down to a
tight loop, plus switches for recipe ideas that the product does not ship (latent distributions, instance noise,
top-k G loss, Fourier features beside the raw input). It produced the "More recipes tried" table of
docs/toy-benchmark.md; it is a research tool, not part of the service or the bench.

    python tools/toy_lab.py ds=grid steps=8000 every=2000 loss=hinge        # key=value overrides of DEFAULTS

Prints, every `every` steps, the EMA generator's modes captured / % high quality / reverse KL on the bench's
2500 fixed latents (training.toybench.score_modes), two diagnostics of where precision is lost (`rms/std`: per-axis
RMS distance of the samples within 10 std of a mode, over the mode std, 1.0 for the true mixture; `off`: % of
samples farther than 10 std from every mode, i.e. on the bridges G draws between modes), and the seconds so far.
`save=PATH` keeps the final EMA generator and the settings for tools/drs_lab.py (D* rejection sampling).
"""
from __future__ import annotations

import copy
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from anywhere without installing
from gan_service.training.data import toy_modes  # noqa: E402
from gan_service.training.loop import lr_decay_factor, update_ema  # noqa: E402
from gan_service.training.losses import LOSSES, d_loss, g_loss, r1_penalty  # noqa: E402
from gan_service.training.toybench import nearest_mode, recipe_for, score_modes  # noqa: E402

DEFAULTS = dict(
    ds="grid", steps=16000, every=2000, seed=0,
    bs=256, lr_g=1e-3, lr_d=2e-3, b1=0.5, b2=0.9, decay=0.3,     # Adam; decay: LR decays linearly from this fraction (0 = constant)
    pack=4, dsteps=2, dh="128,128,128,128,128", gh="128,128,128,128", gbn=0, ema=0.99,   # the bench's `best`
    loss="nonsaturating", r1=-1.0,     # any of training.losses.LOSSES; R1 weight (gamma), -1 = the bench's per mixture
    zdim=2, zd="normal", K=0,          # latent: dims, normal|uniform, plus a one-hot of K mixture components
    zs=1.0,                            # G sees z * zs (a steeper first layer at the same weights)
    scale=1.0,                         # D sees x / scale
    ff=0, ffs=1.0,                     # random Fourier features (count, cycles per unit) beside the raw input of D
    inoise=0.0, ifrac=0.5,             # instance noise std on D's inputs, annealed to 0 at this fraction of steps
    tk=1.0,                            # top-k G loss: keep this fraction of the batch at the end (annealed from 1)
    png="",                            # write a scatter plot of the last evaluation here
    save="",                           # save the final EMA generator and these settings here (tools/drs_lab.py reads it)
)


def mlp(d_in: int, hidden: list[int], d_out: int, act, batchnorm: bool = False) -> nn.Sequential:
    layers = []
    for h in hidden:
        layers += [nn.Linear(d_in, h)] + ([nn.BatchNorm1d(h)] if batchnorm else []) + [act()]
        d_in = h
    return nn.Sequential(*layers, nn.Linear(d_in, d_out))


def make_generator(a: dict) -> nn.Module:
    return mlp(a["zdim"] + a["K"], [int(x) for x in a["gh"].split(",")], 2, nn.ReLU, bool(a["gbn"]))


def make_latents(a: dict):
    """(n, gen) -> latents [n, zdim + K] of the settings ``a``."""
    def latents(n: int, gen: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn(n, a["zdim"], generator=gen) if a["zd"] == "normal" \
            else torch.rand(n, a["zdim"], generator=gen) * 2 - 1
        z = z * a["zs"]
        if a["K"]:
            z = torch.cat([z, F.one_hot(torch.randint(a["K"], (n,), generator=gen), a["K"]).float()], 1)
        return z
    return latents


def main(a: dict) -> None:
    torch.manual_seed(a["seed"])
    torch.set_num_threads(1)
    modes, std = toy_modes(a["ds"])
    centres = torch.tensor(modes, dtype=torch.float32)                            # [M, 2]
    d_in = 2 + 2 * a["ff"]
    G = make_generator(a)
    D = mlp(d_in * a["pack"], [int(x) for x in a["dh"].split(",")], 1, lambda: nn.LeakyReLU(0.2))
    G_ema = copy.deepcopy(G).eval()
    opt_G = torch.optim.Adam(G.parameters(), a["lr_g"], betas=(a["b1"], a["b2"]))
    opt_D = torch.optim.Adam(D.parameters(), a["lr_d"], betas=(a["b1"], a["b2"]))
    fourier = torch.randn(2, a["ff"]) * a["ffs"] * 2 * math.pi                 # [2, F]
    noise_std = [0.0]

    def real(n):                                                                  # [n, 2]
        return centres[torch.randint(len(centres), (n,))] + std * torch.randn(n, 2)

    latents = make_latents(a)

    def d_logits(x):                                                              # [n, 2] -> [n / pack]
        if noise_std[0] > 0:
            x = x + noise_std[0] * torch.randn_like(x)
        x = x / a["scale"]
        if a["ff"]:
            proj = x @ fourier
            x = torch.cat([x, torch.sin(proj), torch.cos(proj)], 1)
        return D(x.reshape(-1, d_in * a["pack"])).squeeze(1)

    z_fixed = latents(2500, torch.Generator().manual_seed(12345))
    t0, bs = time.time(), a["bs"]
    for step in range(1, a["steps"] + 1):
        # Learning rates and the instance-noise level for this step.
        if a["decay"]:
            f = lr_decay_factor(step, a["steps"], a["decay"])
            for opt, base in ((opt_G, a["lr_g"]), (opt_D, a["lr_d"])):
                for group in opt.param_groups:
                    group["lr"] = base * f
        noise_std[0] = a["inoise"] * max(0.0, 1 - step / (a["ifrac"] * a["steps"]))
        # k discriminator steps.
        for _ in range(a["dsteps"]):
            x_real, x_fake = real(bs), G(latents(bs)).detach()
            x_real.requires_grad_(a["r1"] > 0)
            lr_, lf = d_logits(x_real), d_logits(x_fake)
            loss_d = d_loss(a["loss"], lr_, lf)
            if a["r1"]:
                loss_d = loss_d + 0.5 * a["r1"] * r1_penalty(x_real, lr_)
            opt_D.zero_grad()
            loss_d.backward()
            opt_D.step()
        # One generator step (optionally on the top-k packs by D score).
        lf = d_logits(G(latents(bs)))
        if a["tk"] < 1:
            frac = 1 - (1 - a["tk"]) * min(1.0, step / (0.5 * a["steps"]))
            lf = lf.topk(max(1, int(frac * len(lf)))).values
        loss_g = g_loss(a["loss"], lf)
        opt_G.zero_grad()
        loss_g.backward()
        opt_G.step()
        update_ema(G_ema, G, a["ema"], step)
        if step % a["every"] == 0:
            with torch.no_grad():
                x = G_ema(z_fixed).numpy()                                        # [2500, 2]
            r = score_modes(x, modes, std)
            _, dist = nearest_mode(x, modes)
            near = dist[dist <= 10 * std]                                         # samples on some mode
            # rms is undefined (nan) when no sample is on any mode, e.g. at the very start.
            r["rms"] = float(np.sqrt((near ** 2).mean() / 2)) / std if len(near) else float("nan")
            r["far"] = 100.0 * float((dist > 10 * std).mean())
            if a["png"]:
                from gan_service.core.imaging import scatter_png
                scatter_png(x, modes, a["png"], title=str(step))
            print(f"{step:6d} {r['modes']:2d} {r['hq']:5.1f} {r['kl']:.3f}  "
                  f"rms/std {r['rms']:.2f} off {r['far']:4.1f}%  {time.time() - t0:.0f}s", flush=True)
    if a["save"]:
        torch.save({"generator": G_ema.state_dict(), "settings": a}, a["save"])


if __name__ == "__main__":
    args = dict(DEFAULTS)
    for kv in sys.argv[1:]:
        key, _, value = kv.partition("=")
        if key not in args:
            sys.exit(f"toy_lab: unknown setting {key!r}; known: {', '.join(args)}")
        args[key] = value if isinstance(args[key], str) else type(args[key])(value)
    if args["r1"] < 0:
        args["r1"] = recipe_for("best", args["ds"]).get("r1_gamma", 0.0)
    if args["loss"] not in LOSSES:
        sys.exit(f"toy_lab: loss={args['loss']!r} is not one of {', '.join(LOSSES)}")
    main(args)
