"""samples.png of a model directory: a fixed-seed grid rendered by the exported ONNX model itself, with the
service's (seed, index) -> z, so the picture is what the service serves."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from gan_service.core.imaging import save_png, tile_grid
from gan_service.core.onnx_runtime import ort_session
from gan_service.serving.latents import latents

SAMPLES_FILE = "samples.png"
SAMPLES_SEED = 0


def write_samples_png(onnx_path: Path, path: Path, latent_dim: int, num_classes: int,
                      class_names: list[str]) -> dict:
    """samples.png from the exported model via onnxruntime: 8x8, or one labelled row of 10 per class; returns how
    it was drawn (for the manifest)."""
    sess = ort_session(onnx_path)
    how = f"gan_service.serving.latents.latents(seed={SAMPLES_SEED}, start=0, count=rows*cols), row-major"
    if not num_classes:
        images = sess.run(["image"], {"z": latents(SAMPLES_SEED, 0, 64, latent_dim)})[0]
        save_png(tile_grid(images, ncol=8), path)
        return {"seed": SAMPLES_SEED, "rows": 8, "cols": 8, "latents": how}
    cols = 10
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), cols)
    z = latents(SAMPLES_SEED, 0, len(labels), latent_dim)
    images = sess.run(["image"], {"z": z, "label": labels})[0]
    names = class_names or [str(i) for i in range(num_classes)]
    _save_labelled_rows(tile_grid(images, ncol=cols), images.shape[1], names, path)
    return {"seed": SAMPLES_SEED, "rows": num_classes, "cols": cols, "labels": "row r shows class r",
            "latents": how}


def _save_labelled_rows(grid: np.ndarray, h: int, names: list[str], path: Path) -> None:
    """The grid with each row's class name written in a left margin (rows of images h pixels high, 2 px apart)."""
    from PIL import Image, ImageDraw

    mode = "L" if grid.shape[2] == 1 else "RGB"
    probe = ImageDraw.Draw(Image.new(mode, (1, 1)))
    boxes = [probe.textbbox((0, 0), n) for n in names]
    margin = max(b[2] - b[0] for b in boxes) + 8
    canvas = Image.new(mode, (grid.shape[1] + margin, grid.shape[0]), 0)
    canvas.paste(Image.fromarray(grid[:, :, 0] if mode == "L" else grid), (margin, 0))
    draw = ImageDraw.Draw(canvas)
    pad = 2
    for row, (name, box) in enumerate(zip(names, boxes)):
        y = pad + row * (h + pad) + (h - (box[3] - box[1])) // 2 - box[1]
        draw.text((4, y), name, fill=255 if mode == "L" else (255, 255, 255))
    canvas.save(path)
