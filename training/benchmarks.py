"""`gan bench sample`: the offline sampler against the loop a user would write (PyTorch forward + PIL save).

Results go to docs/benchmarks.md as one section per benchmark, with machine, command and date;
the section is replaced on each run, other sections are kept.
"""
from __future__ import annotations

import datetime as dt
import os
import platform
import re
import tempfile
import time
from pathlib import Path

import numpy as np

from core.imaging import to_uint8
from service.codecs import encode_image


def machine() -> str:
    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{platform.node() or 'host'}: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_section(path: str | Path, title: str, body: str) -> None:
    """Replace (or append) the ``## title`` section of a Markdown file."""
    path = Path(path)
    text = path.read_text() if path.exists() else "# Benchmarks\n\nEvery number here was measured by the command shown with it.\n"
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def naive_loop(checkpoint: str, count: int, out_dir: Path) -> float:
    """The loop a user would write: one PyTorch forward and one PIL save per image. Returns images/s."""
    import torch
    from PIL import Image

    from training.checkpoint import load_checkpoint

    ck = load_checkpoint(checkpoint)
    G = ck.generator()
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(count):
            z = torch.randn(1, ck.config.model.latent_dim, generator=gen)
            labels = torch.tensor([i % ck.config.model.num_classes]) if ck.config.model.num_classes else None
            image = to_uint8(G(z, labels).numpy())[0]                           # [H, W, C]
            Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(out_dir / f"{i:09d}.png")
    return count / (time.perf_counter() - t0)


def png_encode_rate(images: np.ndarray) -> float:
    """One core's PNG encode rate (images/s) with the sampler's encoder and settings."""
    t0 = time.perf_counter()
    for image in images:
        encode_image(image, "png")
    return len(images) / (time.perf_counter() - t0)


def bench_sample(model: str, count: int = 100_000, naive_count: int = 2000, checkpoint: str | None = None,
                 batch: int = 1024, workers: int = 0, out: str = "docs/benchmarks.md", command: str = "") -> str:
    """Measure sampler -> NPY and -> PNG shards, the naive loop, and one core's PNG rate; write the table."""
    from service.modeldir import load_model_dir
    from service.sampler import SampleOptions, render_shard, make_runtime, sample, build_spec

    model_dir = load_model_dir(model)
    checkpoint = checkpoint or model_dir.manifest.get("source", {}).get("checkpoint")
    rows, options = [], SampleOptions(batch=batch, workers=workers, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for fmt in ("npy", "png-tar"):
            summary = sample(model, count, 0, tmp / fmt, fmt=fmt, shard_size=min(count, 10_000), options=options)
            rows.append((f"sampler -> {fmt} shards", count, summary["images_per_s"], summary["provider"]))
        runtime = make_runtime(model, options)
        spec = build_spec(runtime.models[0], 2000, 0, "random", 1.0, "npy", 2000)
        images, _ = render_shard(runtime, spec, 0, 2000, batch)
        one_core = png_encode_rate(images)
        if checkpoint and Path(checkpoint).exists():
            (tmp / "naive").mkdir()
            rows.append(("naive: PyTorch forward + PIL save per image", naive_count,
                         round(naive_loop(checkpoint, naive_count, tmp / "naive"), 1), "PyTorch CPU"))
        else:
            rows.append(("naive loop", 0, None, f"skipped: checkpoint {checkpoint} not found (--checkpoint)"))
    cores = os.cpu_count() or 1
    table = ["| path | images | images/s | engine |", "| --- | ---: | ---: | --- |"]
    table += [f"| {name} | {n:,} | {rate if rate is None else f'{rate:,.0f}'} | {engine} |" for name, n, rate, engine in rows]
    png = next(r[2] for r in rows if r[0].endswith("png-tar shards"))
    body = (f"Model `{model}` ({model_dir.name}, {'x'.join(map(str, model_dir.image_shape))}), measured "
            f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC on {machine()}.\n\n"
            f"Command: `{command or 'gan bench sample ' + model}`\n\n" + "\n".join(table) + "\n\n"
            f"One core encodes {one_core:,.0f} PNG/s; the PNG-shard bound on {cores} cores is {cores * one_core:,.0f}/s, "
            f"so PNG shards ran at {png / (cores * one_core):.0%} of it.")
    write_section(out, "Offline sampler (gan bench sample)", body)
    return body
