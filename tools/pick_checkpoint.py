"""Rank a run's checkpoints by FD in every evaluation view, to choose the one to export.

    python tools/pick_checkpoint.py /work/runs/00001-fmnist-dcgan --n 5000

Each checkpoint's EMA generator (in PyTorch, the same rounding as the ONNX graph) draws n images from one fixed
latent batch (balanced labels for a conditional model; a self-conditioned one draws
its clusters from the latents, as its export does); FD against the test images is measured in the classifier,
robust-classifier and pixel-PCA views. The score of a checkpoint is the geometric mean over the views of FD / floor
FD; the lowest wins. Prints one line per checkpoint and the winner.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def images_of(checkpoint: Path, n: int):
    """uint8 [n, 28, 28, 1] from the checkpoint's EMA generator on a fixed latent batch."""
    import torch

    from gan_service.core.imaging import to_uint8
    from gan_service.training.checkpoint import load_checkpoint
    from gan_service.training.sampling import generate

    ck = load_checkpoint(checkpoint)
    served = ck.served_generator(ema=ck.has_ema)        # as exported: a self-conditioned G draws its own cluster
    gen = torch.Generator().manual_seed(20261202)
    z = torch.randn(n, served.latent_dim, generator=gen)
    labels = torch.arange(n) % served.num_classes if served.num_classes else None
    return to_uint8(generate(served.generator, z, labels)), ck.step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--n", type=int, default=5000)
    args = parser.parse_args()
    from gan_service.core.frechet import frechet_distance_features
    from gan_service.evaluation.evaluate import ROBUST_CLASSIFIER, real_data
    from gan_service.evaluation.features import Classifier

    real = real_data(Classifier("models/eval"), extra_classifiers=(Classifier(ROBUST_CLASSIFIER),))
    floor_images = real.train_images[real.floor_order[:args.n]]
    floors = {name: frechet_distance_features(ref.view.features(floor_images), ref.test_features)
              for name, ref in real.views.items()}
    scores = {}
    for path in sorted((args.run_dir / "checkpoints").glob("*.pt")):
        images, step = images_of(path, args.n)
        fds = {name: frechet_distance_features(ref.view.features(images), ref.test_features)
               for name, ref in real.views.items()}
        scores[path] = math.exp(sum(math.log(fds[v] / floors[v]) for v in fds) / len(fds))
        print(f"{path.name} (step {step}): " + ", ".join(f"{v} {fds[v]:.3f}" for v in fds)
              + f"; geometric mean of FD/floor {scores[path]:.2f}", flush=True)
    print("floor: " + ", ".join(f"{v} {f:.3f}" for v, f in floors.items()))
    print(f"best: {min(scores, key=scores.get)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
