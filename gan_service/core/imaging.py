"""Image helpers without torch: tiling uint8 batches into grids, 2-D scatter plots, float -> uint8."""
from __future__ import annotations

import math

import numpy as np


def to_uint8(images_nchw: np.ndarray) -> np.ndarray:
    """Generator output float [N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C] (the same rounding as the ONNX graph)."""
    x = np.clip(np.floor((images_nchw + 1.0) * 127.5 + 0.5), 0, 255).astype(np.uint8)
    return x.transpose(0, 2, 3, 1)


def tile_grid(images: np.ndarray, ncol: int | None = None, pad: int = 2, fill: int = 0) -> np.ndarray:
    """uint8 [N, H, W, C] -> one uint8 [rows*(H+pad)+pad, cols*(W+pad)+pad, C] image, row-major."""
    n, h, w, c = images.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), fill, dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y:y + h, x:x + w] = img
    return grid


def save_png(image_hwc: np.ndarray, path) -> None:
    from PIL import Image

    Image.fromarray(image_hwc[:, :, 0] if image_hwc.shape[2] == 1 else image_hwc).save(path)


def scatter_png(points: np.ndarray, modes: np.ndarray, path, size: int = 480, title: str = "") -> None:
    """Draw 2-D samples (blue dots) over mode centres (red crosses) to a PNG; axes fit the modes."""
    from PIL import Image, ImageDraw

    lo, hi = modes.min() - 1.0, modes.max() + 1.0
    scale = (size - 1) / (hi - lo)

    def to_px(p):  # data (x, y) -> pixel (col, row) with y up
        return (p[0] - lo) * scale, (hi - p[1]) * scale

    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    for p in points:
        x, y = to_px(p)
        if 0 <= x < size and 0 <= y < size:
            draw.point((x, y), fill=(30, 80, 200))
    for m in modes:
        x, y = to_px(m)
        draw.line((x - 5, y, x + 5, y), fill=(220, 30, 30), width=2)
        draw.line((x, y - 5, x, y + 5), fill=(220, 30, 30), width=2)
    if title:
        draw.text((6, 6), title, fill="black")
    img.save(path)
