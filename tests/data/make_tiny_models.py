"""Re-make the tiny model directories the torch-free tests serve (tiny-dc, tiny-cdc: a few kilobytes each).

    python tests/data/make_tiny_models.py        # needs the train extra (torch) and dataset-fashion-mnist

They are real exports (`gan export`'s code path, parity-checked against PyTorch) of networks trained for three
steps on 256 Fashion-MNIST images, so the service, sampler and web tests run on genuine model directories without
torch or the dataset. Their images are noise: the tests check contracts and bytes, not quality.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TINY = {"g_channels": 8, "d_channels": 8, "latent_dim": 16, "steps": 3, "limit": 256, "batch_size": 16,
        "log_every": 1, "sample_every": 0, "fd_every": 0}
# dc: unconditional; cdc: class-conditional on the 10 labels.
PRESETS = {"dc": ("fmnist-dcgan-basic", {}),
           "cdc": ("fmnist-cdcgan-basic", {})}


def main() -> None:
    from gan_service.training.config import make_config
    from gan_service.training.export import export_model
    from gan_service.training.loop import train

    with tempfile.TemporaryDirectory() as work:
        for key, (preset, extra) in PRESETS.items():
            cfg = make_config(preset, {**TINY, **extra, "out_dir": str(Path(work) / "runs"), "seed": 0})
            out = export_model(train(cfg), f"tiny-{key}", out_dir=Path(work) / "models", fp16=False)
            target = HERE / f"tiny-{key}"
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(out, target)
            print(target, sum(f.stat().st_size for f in target.iterdir()), "bytes")


if __name__ == "__main__":
    main()
