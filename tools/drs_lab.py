"""Exploration harness for D* rejection sampling (training/rejection.py) on a generator saved by tools/toy_lab.py.

    python tools/toy_lab.py save=/tmp/g.pt                       # train the bench's `best` on the grid, keep G
    python tools/drs_lab.py /tmp/g.pt fourier=0 bound_quantile=1  # key=value overrides of RejectionConfig

Prints G alone on 2500 fresh samples, where the fitted D*'s logits sit on the modes and on the bridges between
them (a good D* puts the bridges far below the modes), and the rejection-sampled result: modes captured /
% high quality / reverse KL, the acceptance rate and the % of kept samples more than 10 std from every mode.
It produced the "D* rejection sampling" table of docs/toy-benchmark.md; a research tool, not part of the product.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from anywhere without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))
from toy_lab import make_generator, make_latents  # noqa: E402
from gan_service.training.config import make_config  # noqa: E402
from gan_service.training.data import load_data, toy_modes  # noqa: E402
from gan_service.training.rejection import RejectionConfig, fit_optimal_discriminator, rejection_sample  # noqa: E402
from gan_service.training.toybench import EVAL_SAMPLES, nearest_mode, score_modes  # noqa: E402


def parse(overrides: list[str]) -> RejectionConfig:
    """RejectionConfig with key=value overrides (lists comma-separated)."""
    cfg, fields = RejectionConfig(), {f.name: f for f in dataclasses.fields(RejectionConfig)}
    for kv in overrides:
        key, _, value = kv.partition("=")
        if key not in fields:
            sys.exit(f"drs_lab: unknown setting {key!r}; known: {', '.join(fields)}")
        current = getattr(cfg, key)
        setattr(cfg, key, [int(v) for v in value.split(",")] if isinstance(current, list) else type(current)(value))
    return cfg


def main(path: str, cfg: RejectionConfig) -> None:
    torch.set_num_threads(1)
    saved = torch.load(path, weights_only=True)
    a = saved["settings"]
    G = make_generator(a)
    G.load_state_dict(saved["generator"])
    G.eval()
    latents = make_latents(a)
    modes, std = toy_modes(a["ds"])
    data = load_data(make_config(f"toy-{a['ds']}").data)

    def real(n: int, g: torch.Generator) -> torch.Tensor:                            # [n, 2]
        return data.sample(n, g)[0]

    def fake(n: int, g: torch.Generator) -> torch.Tensor:                            # [n, 2]
        with torch.no_grad():
            return G(latents(n, g))

    # Fit D* to the frozen G, then look at its logits on fresh G samples, on the modes and on the bridges.
    gen = torch.Generator().manual_seed(a["seed"] + 777)
    t0 = time.time()
    d_star = fit_optimal_discriminator(real, fake, cfg, gen)
    x = fake(20000, gen)
    with torch.no_grad():
        logit = d_star(x).squeeze(1).numpy()
    _, dist = nearest_mode(x.numpy(), modes)
    on, far = dist <= 3 * std, dist > 10 * std
    print(f"D* fitted in {time.time() - t0:.0f}s; logits on the modes: mean {logit[on].mean():.2f}, "
          f"max {logit[on].max():.2f}; on the bridges: mean {logit[far].mean():.2f}, "
          f"99th percentile {np.quantile(logit[far], 0.99) if far.any() else float('nan'):.2f}")
    alone = score_modes(x[:EVAL_SAMPLES].numpy(), modes, std)
    print(f"G alone: {alone['modes']} modes, {alone['hq']:.1f}% HQ, KL {alone['kl']:.3f}, "
          f"off {100 * far[:EVAL_SAMPLES].mean():.1f}%")
    kept, rate = rejection_sample(fake, d_star, EVAL_SAMPLES, cfg, gen)
    r = score_modes(kept.numpy(), modes, std)
    _, dist = nearest_mode(kept.numpy(), modes)
    print(f"D* rejection: {r['modes']} modes, {r['hq']:.1f}% HQ, KL {r['kl']:.3f}, kept {100 * rate:.1f}%, "
          f"off {100 * (dist > 10 * std).mean():.1f}%")


if __name__ == "__main__":
    if len(sys.argv) < 2 or "=" in sys.argv[1]:
        sys.exit(__doc__)
    main(sys.argv[1], parse(sys.argv[2:]))
