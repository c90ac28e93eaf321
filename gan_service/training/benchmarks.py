"""`gan bench sample`, `engine` and `train`: the offline sampler against the loop a user would write (PyTorch
forward + PIL save), onnxruntime against PyTorch eager, and a CPU training step in float32 against bfloat16.

Results go to docs/benchmarks.md as one section per benchmark, with machine, command and date;
the section is replaced on each run, other sections are kept.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import os
import platform
import re
import tempfile
import time
from pathlib import Path

import numpy as np

from gan_service.core.imaging import to_uint8
from gan_service.core.cpus import available_cores
from gan_service.core.onnx_runtime import CUDA, ort_session
from gan_service.serving.codecs import encode_image


def _cpuinfo(field: str) -> str | None:
    """The value of the first ``field`` line of /proc/cpuinfo (None where there is none)."""
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith(field))
    except (OSError, StopIteration):
        return None


def machine() -> str:
    cpu = _cpuinfo("model name") or "unknown CPU"
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

    from gan_service.training.checkpoint import load_checkpoint

    G, latent_dim, num_classes = load_checkpoint(checkpoint).served_generator()
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(count):
            z = torch.randn(1, latent_dim, generator=gen)
            labels = torch.tensor([i % num_classes]) if num_classes else None
            image = to_uint8(G(z, labels).numpy())[0]                           # [H, W, C]
            Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(out_dir / f"{i:09d}.png")
    return count / (time.perf_counter() - t0)


def png_encode_rate(images: np.ndarray) -> float:
    """One core's PNG encode rate (images/s) with the sampler's encoder and settings."""
    t0 = time.perf_counter()
    for image in images:
        encode_image(image, "png")
    return len(images) / (time.perf_counter() - t0)


def index_upkeep(model: str, shards: int, options) -> dict:
    """A sampler run of ``shards`` shards of 10 images (NPY): its summary, with the time spent rewriting index.json."""
    from gan_service.serving.sampler import sample

    with tempfile.TemporaryDirectory() as tmp:
        return sample(model, 10 * shards, 0, Path(tmp) / "index", fmt="npy", shard_size=10, options=options)


def bench_sample(model: str, count: int = 100_000, naive_count: int = 2000, checkpoint: str | None = None,
                 batch: int = 1024, workers: int = 0, out: str = "docs/benchmarks.md", command: str = "",
                 threads: int = 0, index_shards: int = 1000) -> str:
    """Measure sampler -> NPY and -> PNG shards, the naive loop, one core's PNG rate and the index upkeep of a run
    of ``index_shards`` small shards; write the table."""
    from gan_service.serving.modeldir import load_model_dir
    from gan_service.serving.sampler import SampleOptions, build_spec, make_runtime, render_shard, sample

    model_dir = load_model_dir(model)
    checkpoint = checkpoint or model_dir.manifest.get("source", {}).get("checkpoint")
    rows, options = [], SampleOptions(batch=batch, workers=workers, threads=threads, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for fmt in ("npy", "png-tar"):
            summary = sample(model, count, 0, tmp / fmt, fmt=fmt, shard_size=min(count, 10_000), options=options)
            rows.append((f"sampler -> {fmt} shards", count, summary["images_per_s"],
                         f"{summary['provider']} {summary['precision']}"))
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
    upkeep = index_upkeep(model, index_shards, options)
    cores = available_cores()
    table = ["| path | images | images/s | engine |", "| --- | ---: | ---: | --- |"]
    table += [f"| {name} | {n:,} | {'-' if rate is None else f'{rate:,.0f}'} | {engine} |" for name, n, rate, engine in rows]
    png = next(r[2] for r in rows if r[0].endswith("png-tar shards"))
    body = (f"Model `{model}` ({model_dir.name}, {'x'.join(map(str, model_dir.image_shape))}), measured "
            f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC on {machine()}; {summary['threads']} engine "
            f"thread(s), {workers or cores} PNG-encoding worker(s).\n\n"
            f"Command: `{command or 'gan bench sample ' + model}`\n\n" + "\n".join(table) + "\n\n"
            f"One core encodes {one_core:,.0f} PNG/s; the PNG-shard bound on {cores} cores is {cores * one_core:,.0f}/s, "
            f"so PNG shards ran at {png / (cores * one_core):.0%} of it.\n\n"
            f"Index upkeep: {index_shards:,} shards of 10 images (NPY) rewrote index.json {upkeep['index_writes']:,} "
            f"times in {upkeep['index_seconds']:.2f} s of the run's {upkeep['seconds']:.2f} s "
            f"({upkeep['index_seconds'] / max(upkeep['seconds'], 1e-9):.1%}).")
    write_section(out, "Offline sampler (gan bench sample)", body)
    return body


# ---------------------------------------------------------------- gan bench engine

ENGINE_BATCHES = (1, 8, 64, 256, 1024)
ORT_CPU = "onnxruntime CPUExecutionProvider"


def _rate(fn, n: int, min_s: float = 0.2, trials: int = 3) -> tuple[float, float]:
    """(images/s, ms per call) of fn() making n images: one warm-up call, then the best of ``trials`` timings
    of >= min_s each (the best, because other processes on a shared machine only ever slow a trial down)."""
    fn()
    best = float("inf")
    for _ in range(trials):
        calls, t0 = 0, time.perf_counter()
        while calls < 1 or time.perf_counter() - t0 < min_s:
            fn()
            calls += 1
        best = min(best, (time.perf_counter() - t0) / calls)
    return n / best, 1000 * best


def thread_counts(cores: int) -> list[int]:
    """The intra-op thread counts ``gan bench engine`` times: 1, 2, 4, ... below ``cores``, then ``cores``."""
    counts, t = [], 1
    while t < cores:
        counts.append(t)
        t *= 2
    return counts + [cores]


def onnx_graphs(model_dir) -> list[tuple[str, Path]]:
    """(precision, path) of the graphs the CPU can run: generator.onnx, and the checked generator.int8.onnx (the
    one `gan quantize` lists when its quality gate passed) when the directory has one."""
    int8 = [("int8", model_dir.int8_path)] if model_dir.int8_path else []
    return [("fp32", model_dir.onnx_path)] + int8


def session_call(session, model_dir, b: int):
    """A function making ``b`` images with an onnxruntime session of the model (zero latents, class 0)."""
    feeds = {"z": np.zeros((b, model_dir.latent_dim), np.float32)}
    if "label" in {i.name for i in session.get_inputs()}:
        feeds["label"] = np.zeros(b, np.int64)
    return lambda: session.run(["image"], feeds)


def cpu_session(path, threads: int):
    """A CPU session opened as the service's engine opens one (idle threads sleep), with ``threads`` threads."""
    return ort_session(path, "cpu", threads=threads, spinning=False)


def onnx_cpu_rows(model_dir, batches, cores: int) -> list[tuple]:
    """(engine, precision, threads, batch, images/s, ms per call) of every CPU graph at 1..``cores`` threads."""
    rows = []
    for precision, path in onnx_graphs(model_dir):
        for threads in thread_counts(cores):
            session = cpu_session(path, threads)
            rows += [(ORT_CPU, precision, threads, b, *_rate(session_call(session, model_dir, b), b)) for b in batches]
    return rows


def torch_rows(generator, model_dir, batches) -> list[tuple]:
    """The same rows for PyTorch eager (forward + the graph's uint8 post-processing), 1 and torch's default threads."""
    import torch

    rows, d, k = [], model_dir.latent_dim, model_dir.num_classes
    default_threads = torch.get_num_threads()
    for threads in (1, default_threads):
        torch.set_num_threads(threads)
        for b in batches:
            z, labels = torch.zeros(b, d), (torch.zeros(b, dtype=torch.long) if k else None)

            def forward():
                with torch.no_grad():
                    return to_uint8(generator(z, labels).numpy())

            rows.append(("PyTorch eager CPU", "fp32", threads, b, *_rate(forward, b)))
    torch.set_num_threads(default_threads)
    return rows


def engine_rows(model_dir, providers: list[str], batches, generator) -> list[tuple]:
    """(engine, precision, threads, batch, images/s, ms per call): onnxruntime (CPU: every graph at 1..all cores;
    CUDA: the fp32 graph) and PyTorch eager (``generator``, as ``torch_generator`` gives it) on one model."""
    from gan_service.serving.engine import Engine, EngineOptions

    rows = onnx_cpu_rows(model_dir, batches, available_cores()) if "cpu" in providers else []
    if "cuda" in providers:
        engine = Engine(model_dir, EngineOptions(provider="cuda", precision="fp32"))
        for b in batches:
            z, labels = np.zeros((b, model_dir.latent_dim), np.float32), np.zeros(b, np.int64)
            rows.append((f"onnxruntime {engine.provider}", "fp32", 0, b,
                         *_rate(lambda: engine.generate(z, labels if model_dir.num_classes else None), b)))
    return rows + torch_rows(generator, model_dir, batches)


def peak_gflops() -> float:
    """The machine's float32 compute bound as numpy's BLAS reaches it (all cores): GFLOP/s of a 1024^3 matmul."""
    a = np.random.default_rng(0).standard_normal((1024, 1024), dtype=np.float32)
    rate, ms = _rate(lambda: a @ a, 1)
    return 2 * 1024 ** 3 / (ms / 1000) / 1e9


def torch_generator(model_dir):
    """(generator as the directory serves it, how): the manifest's checkpoint when it is on this machine, else the
    same architecture rebuilt from the manifest's training config (untrained weights: speed does not depend on their
    values)."""
    from gan_service.training.checkpoint import load_checkpoint, served_generator
    from gan_service.training.config import TrainConfig
    from gan_service.training.nets import build_generator

    checkpoint = model_dir.manifest.get("source", {}).get("checkpoint")
    if checkpoint and Path(checkpoint).exists():
        return load_checkpoint(checkpoint).served_generator().generator, f"checkpoint {checkpoint}"
    config = (model_dir.manifest.get("training") or {}).get("config")
    if not config:
        raise ValueError(f"{model_dir.path}: the manifest has no training config to rebuild the generator from")
    cfg = TrainConfig.from_dict(config)
    prior = (model_dir.manifest.get("self_conditioning") or {}).get("frequencies")
    served = served_generator(cfg, build_generator(cfg).eval(), prior, model_dir.path)
    return served.generator, "same architecture (checkpoint not on this machine)"


def flops_per_image(generator, latent_dim: int, num_classes: int) -> float:
    """Forward FLOPs of one image (PyTorch's FlopCounterMode: 2 per multiply-add of convs and matmuls)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    labels = torch.zeros(1, dtype=torch.long) if num_classes else None
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        generator(torch.zeros(1, latent_dim), labels)
    return float(counter.get_total_flops())


def sampler_against_engine(model: str, model_dir, count: int, best: tuple) -> tuple[float, float, int]:
    """(sampler -> NPY images/s, engine images/s, the sampler's engine threads): the sampler with its defaults
    (every core, its default graph on the CPU), and the ``best`` onnxruntime CPU row's configuration making as many
    images just before and just after it (mean of the two), so both see the same machine load."""
    from gan_service.serving.sampler import SampleOptions, sample

    _, precision, threads, batch = best[:4]
    call = session_call(cpu_session(dict(onnx_graphs(model_dir))[precision], threads), model_dir, batch)
    calls = max(1, round(count / batch))

    def engine_rate() -> float:
        t0 = time.perf_counter()
        for _ in range(calls):
            call()
        return calls * batch / (time.perf_counter() - t0)

    call()
    before = engine_rate()
    with tempfile.TemporaryDirectory() as tmp:
        summary = sample(model, count, 0, Path(tmp) / "npy", fmt="npy", shard_size=min(count, 10_000),
                         options=SampleOptions(batch=1024, progress=False, provider="cpu"))
    return summary["images_per_s"], (before + engine_rate()) / 2, summary["threads"]


def bench_engine(model: str, provider: str = "auto", sampler_count: int = 20_000, out: str = "docs/benchmarks.md",
                 command: str = "", batches=ENGINE_BATCHES) -> str:
    """Engine table (onnxruntime at 1..all threads, each graph, vs PyTorch eager), FLOPs per image and compute
    bound, and the sampler -> NPY against the best onnxruntime fp32 CPU configuration, in one run."""
    import onnxruntime as ort

    from gan_service.serving.modeldir import load_model_dir

    model_dir = load_model_dir(model)
    cuda = CUDA in ort.get_available_providers()
    providers = {"auto": ["cpu"] + (["cuda"] if cuda else []), "cpu": ["cpu"], "cuda": ["cuda"]}[provider]
    generator, how = torch_generator(model_dir)
    rows = engine_rows(model_dir, providers, batches, generator)
    flops, peak = flops_per_image(generator, model_dir.latent_dim, model_dir.num_classes), peak_gflops()
    table = ["| engine | precision | threads | batch | images/s | ms per call |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    table += [f"| {e} | {p} | {t} | {b} | {rate:,.0f} | {ms:.2f} |" for e, p, t, b, rate, ms in rows]
    body = (f"Model `{model}` ({model_dir.name}), measured {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC on "
            f"{machine()}; PyTorch weights: {how}. Each cell: one warm-up call, then the best of 3 timings of "
            f">= 0.2 s (other processes on a shared machine only slow a timing down); onnxruntime sessions are "
            f"opened as the service's engine opens them (idle threads sleep); "
            f"PyTorch includes the same uint8 post-processing as the graph.\n\n"
            f"Command: `{command or 'gan bench engine ' + model}`\n\n" + "\n".join(table) + "\n\n"
            f"FLOPs per image: {flops / 1e6:,.1f} MFLOP. Compute bound: {peak:,.0f} GFLOP/s (numpy float32 1024^3 "
            f"matmul, all cores) = {peak * 1e9 / flops:,.0f} images/s.")
    precision = sampler_precision(model)
    cpu = [r for r in rows if r[0] == ORT_CPU and r[1] == precision]
    if cpu:
        body += "\n\n" + _sampler_line(model, model_dir, sampler_count, max(cpu, key=lambda r: r[4]), flops, peak)
    write_section(out, "Engine: onnxruntime against PyTorch eager (gan bench engine)", body)
    return body


def sampler_precision(model: str) -> str:
    """The graph ``gan sample --provider cpu`` runs by default on this machine (fp32, or int8 where it pays)."""
    from gan_service.serving.sampler import SampleOptions, make_runtime

    return make_runtime(model, SampleOptions(provider="cpu", threads=1, progress=False)).engines[0].precision


def _sampler_line(model: str, model_dir, count: int, best: tuple, flops: float, peak: float) -> str:
    """The sampler against the best CPU configuration of the graph it runs, as a sentence of the report."""
    sampler_rate, engine_rate, threads = sampler_against_engine(model, model_dir, count, best)
    return (f"Best onnxruntime {best[1]} CPU configuration: {best[2]} thread(s), batch {best[3]}: {best[4]:,.0f} "
            f"images/s ({best[4] * flops / peak / 1e9:.0%} of the float32 bound). Offline sampler to NPY shards "
            f"(`gan sample --format npy`, {count:,} images, batch 1024, CPU, its default graph ({best[1]}) and "
            f"default of {threads} engine thread(s) = every core): "
            f"{sampler_rate:,.0f} images/s, against {engine_rate:,.0f} images/s of the best onnxruntime "
            f"configuration re-measured making as many images just before and after it (mean): "
            f"{sampler_rate / engine_rate:.0%} (target >= 90%).")


# ---------------------------------------------------------------- gan bench train

def _step_timer(cfg, data, cpu_amp: bool):
    """A function timing ``steps`` training steps of a fresh G/D pair (float32, or bfloat16 autocast on CPU)."""
    import torch

    from gan_service.training.loop import Dist, autocast_for, build_state, train_step

    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, cpu_amp=cpu_amp, amp=True, device="cpu"))
    device = torch.device("cpu")
    amp = autocast_for(cfg, device, cpu_bf16=True)              # autocast even where bf16 is emulated: timed as is
    state = build_state(cfg, device, Dist())                  # seeded from cfg.run.seed: both arms start alike

    def time_steps(steps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            train_step(cfg, state, data, device, amp)
        return (time.perf_counter() - t0) / steps
    return time_steps


def bench_train(preset: str = "fmnist-cdcgan", overrides: dict | None = None, steps: int = 20, rounds: int = 3,
                threads: int = 1, out: str = "docs/benchmarks.md", command: str = "") -> str:
    """Seconds per training step in float32 and with bfloat16 autocast on CPU (``--cpu-amp``), side by side.

    The two arms alternate round by round on the same machine (fp32, amp, fp32, amp, ...), each after a few warm-up
    steps; each arm reports its best round (other processes only ever slow a round down).
    """
    import torch

    from gan_service.training.config import make_config
    from gan_service.training.data import load_data

    torch.set_num_threads(threads)
    cfg = make_config(preset, {"limit": 5000, **(overrides or {})})
    data = load_data(cfg.data)
    timers = {"float32": _step_timer(cfg, data, False), "bfloat16 autocast (--cpu-amp)": _step_timer(cfg, data, True)}
    for time_steps in timers.values():
        time_steps(3)                                          # warm-up: first-call allocations, oneDNN kernels
    best = dict.fromkeys(timers, float("inf"))
    for _ in range(rounds):
        for arm, time_steps in timers.items():
            best[arm] = min(best[arm], time_steps(steps))
    fp32 = best["float32"]
    table = ["| arithmetic | ms per step | images/s | speed-up |", "| --- | ---: | ---: | ---: |"]
    images = cfg.optim.batch_size * (cfg.loss.d_steps + 1)
    table += [f"| {arm} | {1000 * s:,.0f} | {images / s:,.0f} | {fp32 / s:.2f}x |" for arm, s in best.items()]
    flags = "".join(f" --{key.replace('_', '-')} {value}" for key, value in (overrides or {}).items())
    cpu_flags = _cpu_flags()
    body = (f"Preset `{preset}`{flags} (batch {cfg.optim.batch_size}), measured "
            f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC on {machine()}, {threads} torch thread(s); "
            f"flags {cpu_flags}. Each arm: 3 warm-up steps, then the best of {rounds} rounds of {steps} steps, "
            f"the arms alternating round by round. A step is one D and one G update (Algorithm 1, k = 1).\n\n"
            f"Command: `{command or 'gan bench train'}`\n\n" + "\n".join(table))
    if cpu_flags.startswith("no "):
        body += ("\n\nWithout these instructions `gan train --cpu-amp` trains in float32 (it says so); the autocast row "
                 "is timed with autocast forced on, to show why.")
    # one section per kind of CPU: autocast is 1.7x faster with bfloat16 instructions and 16x slower without
    title = f"Training step on CPU: float32 against bfloat16 autocast (gan bench train; CPU flags: {cpu_flags})"
    write_section(out, title, body)
    return body


def _cpu_flags() -> str:
    """Which bfloat16 instructions the CPU has (autocast is fast with them, emulated and slow without)."""
    from gan_service.training.loop import BF16_CPU_FLAGS, cpuinfo_bf16_flags

    try:
        have = cpuinfo_bf16_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        return "unknown"
    return ", ".join(have) if have else "no " + " / ".join(BF16_CPU_FLAGS)
