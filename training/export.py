"""Checkpoint -> parity-checked ONNX model directory (``models/<name>/``), optionally imported into BentoML.

The directory holds:
  generator.onnx        z float32 [batch, latent_dim] (+ label int64 [batch]) -> image uint8 [batch, H, W, C];
                        the uint8 rounding and NCHW -> NHWC permute run inside the graph
  generator.fp16.onnx   the same graph with fp16 weights and arithmetic; z float32 in, uint8 out, and the
                        final tanh + rounding kept in fp32
  samples.png           a fixed-seed grid rendered by generator.onnx through onnxruntime (what the service shows)
  manifest.json         everything the service needs, and the sha256 + size of every other file

Nothing is left behind unchecked: the directory is built under a temporary name next to its destination, the
ONNX model is compared with PyTorch (batch sizes 1, 7 and 512), the fp16 model with the fp32 one, the result is
re-read with ``service.modeldir.load_model_dir``, and only then renamed into place. Any failure removes it.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from core.imaging import tile_grid, to_uint8
from core.onnx_runtime import ort_session
from core.stats import read_stats
from service.modeldir import (FORMAT_VERSION, FP16_FILE, MANIFEST, ONNX_FILE, ModelDirError, file_entry,
                              load_model_dir, validate_manifest)
from training.checkpoint import Checkpoint, file_sha256, load_checkpoint
from training.config import train_command

SAMPLES_FILE = "samples.png"
PARITY_BATCHES = (1, 7, 512)
PARITY_MAX_DIFF = 1             # grey levels, on every pixel
PARITY_MIN_IDENTICAL = 0.999    # fraction of pixels bit-identical
FP16_MIN_WITHIN_1 = 0.99        # fraction of pixels within one grey level of the fp32 model
FP16_CHECK_BATCH = 512
SAMPLES_SEED = 0
EXAMPLE_BATCH = 3               # torch.export specialises sizes 0 and 1; trace with a batch that is neither


class ExportError(ValueError):
    """A checkpoint that cannot be exported, or an export that failed a check (nothing was written)."""


class ImageGenerator(torch.nn.Module):
    """G plus the post-processing the service would otherwise do: [-1, 1] NCHW float -> uint8 NHWC.

    The rounding is exactly core.imaging.to_uint8: clip(floor((x + 1) * 127.5 + 0.5), 0, 255).
    """

    def __init__(self, generator: torch.nn.Module, conditional: bool):
        super().__init__()
        self.generator, self.conditional = generator, conditional

    def forward(self, z: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        x = self.generator(z, label if self.conditional else None).float()       # [N, C, H, W] in [-1, 1]
        x = torch.clamp(torch.floor((x + 1.0) * 127.5 + 0.5), 0.0, 255.0)
        return x.to(torch.uint8).permute(0, 2, 3, 1)                           # [N, H, W, C] uint8


# ---------------------------------------------------------------- ONNX export

@contextlib.contextmanager
def _quiet_exporter():
    """torch.onnx prints progress to stdout and warns about its own internals; keep stdout for the CLI's result."""
    noisy = ["torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript"]
    old = {n: logging.getLogger(n).level for n in noisy}
    buf = io.StringIO()
    try:
        for n in noisy:
            logging.getLogger(n).setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*opset.*")
            yield buf
    finally:
        for n, level in old.items():
            logging.getLogger(n).setLevel(level)


def _rename_batch_dim(model, name: str = "batch") -> None:
    """Give the symbolic batch dimension one readable name in every input, output and value_info."""
    first = model.graph.input[0].type.tensor_type.shape.dim[0]
    if not first.dim_param:
        raise ExportError(f"the exported graph has a fixed batch size ({first.dim_value}); expected a dynamic axis")
    old = first.dim_param
    for vi in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param == old:
                d.dim_param = name


def export_onnx(generator: torch.nn.Module, latent_dim: int, num_classes: int, opset: int):
    """Trace the wrapped generator and return an onnx.ModelProto (checked, dynamic batch axis named "batch").

    Exporter choice (torch 2.13): torch.export.export(strict=True) -> torch.onnx.export(ExportedProgram, dynamo=True).
    - The legacy TorchScript exporter (dynamo=False) is deprecated ("will be removed") and *traces* the nets'
      ``.view(len(z), ...)`` into a constant, so the model only runs at the traced batch size; it also leaves
      BatchNormalization nodes unfolded.
    - The dynamo exporter on its own uses non-strict torch.export, where ``len(z)`` turns the symbolic batch
      into an int and specialises it (torch.onnx then silently emits a fixed batch). Strict torch.export traces
      bytecode with dynamo, which keeps ``len(z)`` symbolic, so we build the ExportedProgram ourselves.
    - The result is clean: eval-mode BatchNorm folded into Gemm/ConvTranspose by the ONNX optimiser, Embedding
      as Gather, then Tanh, the rounding ops, Cast and Transpose. Its native opset is 18; a lower --opset is
      converted by onnx's version converter and verified below.
    """
    import onnx

    wrapper = ImageGenerator(generator.eval(), num_classes > 0).eval()
    z = torch.randn(EXAMPLE_BATCH, latent_dim, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch")
    if num_classes:
        args = (z, torch.arange(EXAMPLE_BATCH, dtype=torch.int64) % num_classes)
        names, dynamic = ["z", "label"], {"z": {0: batch}, "label": {0: batch}}
    else:
        args, names, dynamic = (z,), ["z"], {"z": {0: batch}}
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.export.export(wrapper, args, dynamic_shapes=dynamic, strict=True)
            onnx_program = torch.onnx.export(program, args, dynamo=True, opset_version=opset, input_names=names,
                                             output_names=["image"], optimize=True, verify=False, report=False)
        model = onnx_program.model_proto
    except Exception as exc:  # torch raises many types from tracing/translation
        first = (str(exc).strip().splitlines() or [""])[0][:500]
        raise ExportError(f"ONNX export failed ({type(exc).__name__}: {first})") from exc
    got = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if got != opset:
        raise ExportError(f"--opset {opset}: the exporter produced opset {got} (its native opset is 18; "
                          "the conversion to the requested opset failed); choose a higher --opset (18 always works)")
    _rename_batch_dim(model)
    model.producer_name, model.doc_string = "gan-service training/export.py", "GAN generator: z[, label] -> uint8 NHWC"
    onnx.checker.check_model(model, full_check=True)
    return model


def convert_fp16(model):
    """The fp16 variant: weights and arithmetic in fp16 up to the final Tanh; z stays a float32 input (cast inside
    the graph); the Tanh and the uint8 rounding run in fp32 (fp16's spacing of 0.125 near 255 would move pixels by
    a grey level at random). The generators use only type-generic ops (Gemm, Conv, ConvTranspose, Relu, Gather,
    Concat, Reshape), so converting float initializers and constants is enough; the checker's type inference
    rejects anything that is not. (onnxruntime.transformers.float16 / onnxconverter-common's converter was tried:
    with the tail blocked it casts back to fp16 between every blocked node and writes inconsistent value_info.)
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    half = onnx.ModelProto()
    half.CopyFrom(model)
    graph = half.graph
    nodes = list(graph.node)
    tanh = [i for i, n in enumerate(nodes) if n.op_type == "Tanh"]
    if not tanh:
        raise ExportError("fp16: the graph has no final Tanh to split the fp16 body from the fp32 rounding")
    body, tail = nodes[:tanh[-1]], nodes[tanh[-1]:]
    body_in = {i for n in body for i in n.input}
    tail_in = {i for n in tail for i in n.input}
    extra = []
    for init in list(graph.initializer):
        if init.data_type != TensorProto.FLOAT or init.name not in body_in:
            continue
        arr = numpy_helper.to_array(init)
        arr16 = arr.astype(np.float16)
        if not np.isfinite(arr16).all():
            raise ExportError(f"fp16: weight {init.name!r} has values beyond the fp16 range "
                              f"(max |w| = {np.abs(arr).max():.4g}); export with --no-fp16")
        if init.name in tail_in:              # shared with the fp32 tail: give the body its own fp16 copy
            new_name = f"{init.name}__fp16"
            extra.append(numpy_helper.from_array(arr16, new_name))
            _rename_inputs(body, init.name, new_name)
        else:
            init.CopyFrom(numpy_helper.from_array(arr16, init.name))
    graph.initializer.extend(extra)
    for n in body:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                    a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16), a.t.name))
        elif n.op_type == "Cast":
            for a in n.attribute:
                if a.name == "to" and a.i == TensorProto.FLOAT:
                    a.i = TensorProto.FLOAT16
    _rename_inputs(body, "z", "z_fp16")
    head = [helper.make_node("Cast", ["z"], ["z_fp16"], name="cast_z_to_fp16", to=TensorProto.FLOAT16)]
    produced = {o for n in body for o in n.output}
    bridge = []
    for name in sorted(tail_in & produced):
        bridge.append(helper.make_node("Cast", [name], [f"{name}_fp32"], name=f"cast_{name}_to_fp32",
                                       to=TensorProto.FLOAT))
        _rename_inputs(tail, name, f"{name}_fp32")
    del graph.node[:]
    graph.node.extend(head + body + bridge + tail)
    del graph.value_info[:]                    # stale float32 annotations; shapes are re-inferred
    try:
        onnx.checker.check_model(half, full_check=True)
    except Exception as exc:
        raise ExportError(f"fp16: the converted graph does not type-check ({exc}); export with --no-fp16") from exc
    return half


def _rename_inputs(nodes, old: str, new: str) -> None:
    for n in nodes:
        for i, name in enumerate(n.input):
            if name == old:
                n.input[i] = new


# ---------------------------------------------------------------- checks

def _latents(seed: int, n: int, latent_dim: int, num_classes: int) -> dict:
    rng = np.random.default_rng(seed)
    feed = {"z": rng.standard_normal((n, latent_dim), dtype=np.float32)}
    if num_classes:
        feed["label"] = rng.integers(0, num_classes, n, dtype=np.int64)
    return feed


def _compare(a: np.ndarray, b: np.ndarray) -> dict:
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return {"max_abs_diff": int(d.max()), "identical": float((d == 0).mean()), "within_1": float((d <= 1).mean()),
            "pixels": int(d.size)}


def parity_check(generator: torch.nn.Module, onnx_path: Path, latent_dim: int, num_classes: int) -> dict:
    """onnxruntime CPU vs PyTorch (+ core.imaging.to_uint8) on fixed latents at batch 1, 7 and 512."""
    sess = ort_session(onnx_path)
    per_batch, worst_max, min_identical = {}, 0, 1.0
    for n in PARITY_BATCHES:
        feed = _latents(1000 + n, n, latent_dim, num_classes)
        got = sess.run(["image"], feed)[0]
        with torch.no_grad():
            labels = torch.from_numpy(feed["label"]) if num_classes else None
            ref = to_uint8(generator(torch.from_numpy(feed["z"]), labels).float().numpy())
        if got.shape != ref.shape or got.dtype != np.uint8:
            raise ExportError(f"parity: onnxruntime returned {got.dtype} {got.shape}, expected uint8 {ref.shape}")
        per_batch[str(n)] = stats = _compare(got, ref)
        worst_max, min_identical = max(worst_max, stats["max_abs_diff"]), min(min_identical, stats["identical"])
    result = {"reference": "PyTorch fp32 + core.imaging.to_uint8", "provider": "CPUExecutionProvider",
              "batches": per_batch, "max_abs_diff": worst_max, "min_identical": min_identical,
              "tolerance": {"max_abs_diff": PARITY_MAX_DIFF, "min_identical": PARITY_MIN_IDENTICAL}}
    if worst_max > PARITY_MAX_DIFF or min_identical < PARITY_MIN_IDENTICAL:
        raise ExportError(f"parity check failed: ONNX vs PyTorch max difference {worst_max} grey levels, "
                          f"{min_identical:.5%} of pixels identical (need <= {PARITY_MAX_DIFF} and "
                          f">= {PARITY_MIN_IDENTICAL:.1%}); per batch: {per_batch}")
    # Recorded, not enforced here (the engine owns batching): is image i the same alone as inside a batch?
    feed = _latents(1000 + 512, 512, latent_dim, num_classes)
    full = sess.run(["image"], feed)[0]
    split = np.concatenate([sess.run(["image"], {k: v[i:i + 7] for k, v in feed.items()})[0]
                            for i in range(0, 512, 7)])
    result["batch_invariance_cpu"] = {"batch_512_vs_batches_of_7": _compare(split, full)}
    return result


def fp16_check(fp32_path: Path, fp16_path: Path, latent_dim: int, num_classes: int,
               generator: torch.nn.Module | None = None) -> dict:
    """fp16 vs fp32 model (both through onnxruntime) on the same latents: within one grey level on >= 99%.

    onnxruntime's CPU provider has no fp16 kernels for these ops: it computes them in fp32 from the fp16-rounded
    weights (verified: its optimised graph keeps no fp16 node). So the CPU run checks the weights only, and the
    fp16 *arithmetic* is estimated by running the PyTorch generator in half precision on CPU (activations fp16,
    tanh too, which is harsher than the ONNX fp16 graph); CUDA, when present, runs the fp16 graph itself.
    """
    import onnxruntime as ort

    feed = _latents(2024, FP16_CHECK_BATCH, latent_dim, num_classes)
    ref = ort_session(fp32_path).run(["image"], feed)[0]
    result = {"reference": "generator.onnx on CPUExecutionProvider", "batch": FP16_CHECK_BATCH,
              "tolerance": {"min_within_1": FP16_MIN_WITHIN_1}, "providers": {}}
    if generator is not None:
        import copy

        half = copy.deepcopy(generator).half().eval()
        try:
            with torch.no_grad():
                labels = torch.from_numpy(feed["label"]) if num_classes else None
                out = half(torch.from_numpy(feed["z"]).half(), labels).float().numpy()
        except (RuntimeError, NotImplementedError) as exc:   # an op without a CPU half kernel
            result["torch_fp16_arithmetic"] = {"skipped": f"{type(exc).__name__}: {str(exc)[:300]}"}
        else:
            stats = _compare(to_uint8(out), ref)
            stats["note"] = "PyTorch generator in float16 on CPU (fp16 activations) vs the fp32 ONNX model"
            result["torch_fp16_arithmetic"] = stats
            if stats["within_1"] < FP16_MIN_WITHIN_1:
                raise ExportError(f"fp16 check failed: in fp16 arithmetic only {stats['within_1']:.3%} of pixels stay "
                                  f"within one grey level of fp32 (need {FP16_MIN_WITHIN_1:.0%}), max difference "
                                  f"{stats['max_abs_diff']}; export with --no-fp16")
    providers = ["CPUExecutionProvider"] + [p for p in ("CUDAExecutionProvider",) if p in ort.get_available_providers()]
    for provider in providers:
        try:
            got = ort_session(fp16_path, provider).run(["image"], feed)[0]
        except Exception as exc:   # e.g. an fp16 op with no kernel on this provider
            result["providers"][provider] = {"skipped": f"{type(exc).__name__}: {str(exc)[:300]}"}
            continue
        stats = _compare(got, ref)
        if provider == "CPUExecutionProvider":
            stats["note"] = ("onnxruntime's CPU provider has no fp16 kernels for these ops and computes them in fp32 "
                             "from the fp16-rounded weights: this checks the fp16 weights; see "
                             "torch_fp16_arithmetic (and CUDAExecutionProvider when present) for fp16 arithmetic")
        result["providers"][provider] = stats
        if stats["within_1"] < FP16_MIN_WITHIN_1:
            raise ExportError(f"fp16 check failed on {provider}: only {stats['within_1']:.3%} of pixels within one "
                              f"grey level of the fp32 model (need {FP16_MIN_WITHIN_1:.0%}), max difference "
                              f"{stats['max_abs_diff']}; export with --no-fp16")
    checked = [p for p, s in result["providers"].items() if "skipped" not in s]
    result["checked_on"] = checked
    if not checked:
        result["skipped"] = "no onnxruntime provider here could run the fp16 model: " + "; ".join(
            f"{p}: {s['skipped']}" for p, s in result["providers"].items())
    else:
        result["max_abs_diff"] = max(result["providers"][p]["max_abs_diff"] for p in checked)
        result["min_within_1"] = min(result["providers"][p]["within_1"] for p in checked)
    return result


# ---------------------------------------------------------------- samples

def write_samples(onnx_path: Path, path: Path, latent_dim: int, num_classes: int, class_names: list[str]) -> dict:
    """samples.png from the exported model via onnxruntime: 8x8, or one labelled row of 10 per class."""
    from PIL import Image, ImageDraw

    from service.latents import latents   # the service's (seed, index) -> z, so the grid is what it serves

    sess = ort_session(onnx_path)
    how = f"service.latents.latents(seed={SAMPLES_SEED}, start=0, count=rows*cols), row-major"
    if not num_classes:
        images = sess.run(["image"], {"z": latents(SAMPLES_SEED, 0, 64, latent_dim)})[0]
        grid = tile_grid(images, ncol=8)
        _save(grid, path)
        return {"seed": SAMPLES_SEED, "rows": 8, "cols": 8, "latents": how}
    cols = 10
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), cols)
    z = latents(SAMPLES_SEED, 0, len(labels), latent_dim)
    images = sess.run(["image"], {"z": z, "label": labels})[0]
    grid = tile_grid(images, ncol=cols)
    names = class_names or [str(i) for i in range(num_classes)]
    mode = "L" if grid.shape[2] == 1 else "RGB"
    probe = ImageDraw.Draw(Image.new(mode, (1, 1)))
    boxes = [probe.textbbox((0, 0), n) for n in names]
    margin = max(b[2] - b[0] for b in boxes) + 8
    canvas = Image.new(mode, (grid.shape[1] + margin, grid.shape[0]), 0)
    canvas.paste(Image.fromarray(grid[:, :, 0] if mode == "L" else grid), (margin, 0))
    draw = ImageDraw.Draw(canvas)
    h, pad = images.shape[1], 2
    for row, (name, box) in enumerate(zip(names, boxes)):
        y = pad + row * (h + pad) + (h - (box[3] - box[1])) // 2 - box[1]
        draw.text((4, y), name, fill=255 if mode == "L" else (255, 255, 255))
    canvas.save(path)
    return {"seed": SAMPLES_SEED, "rows": num_classes, "cols": cols, "labels": "row r shows class r",
            "latents": how}


def _save(grid: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(grid[:, :, 0] if grid.shape[2] == 1 else grid).save(path)


# ---------------------------------------------------------------- the export

def _check_exportable(ck: Checkpoint) -> tuple[int, int, int]:
    cfg = ck.config
    shape = cfg.data_shape()
    if cfg.is_toy or len(shape) != 3:
        raise ExportError(f"{ck.path}: the {cfg.preset!r} generator makes 2-D points [N, 2] (data source "
                          f"{cfg.data.source!r}), not images; only image generators can be exported")
    c, h, w = shape
    return h, w, c


def training_time(ck: Checkpoint) -> dict:
    """Wall time and device of the training run behind a checkpoint, for the manifest.

    Checkpoints written since these fields existed carry them; for older ones the wall time is summed from the run's
    stats.jsonl (each resumed session restarts its ``elapsed_s`` clock) and the device is unknown (None).
    """
    if "train_seconds" in ck.state:
        return {"wall_time_s": round(float(ck.state["train_seconds"]), 3), "device": ck.state.get("device") or None}
    stats = Path(ck.path).resolve().parent.parent / "stats.jsonl"
    total, last = 0.0, 0.0
    if stats.is_file():
        for row in read_stats(stats):
            if "elapsed_s" not in row or row.get("step", 0) > ck.step:
                continue
            if row["elapsed_s"] < last:         # a resumed session: its clock started again from 0
                total += last
            last = row["elapsed_s"]
    return {"wall_time_s": round(total + last, 3) if last else None, "device": None}


def export_model(checkpoint: str | Path | Checkpoint, name: str, out_dir: str | Path = "models", opset: int = 17,
                 fp16: bool = True, ema: bool = True, to_bentoml: bool = False, command: str = "",
                 log=None) -> Path:
    """Export a checkpoint (file, run directory or loaded Checkpoint) to ``out_dir/name/``; return that path."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ExportError(f"--name: {name!r} is not a valid directory name")
    final = Path(out_dir) / name
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise ExportError(f"{final}: already exists and is not empty; refusing to overwrite it "
                          "(choose another --name or remove it)")
    ck = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    h, w, c = _check_exportable(ck)
    cfg = ck.config
    latent_dim, num_classes = cfg.model.latent_dim, cfg.model.num_classes
    class_names = list(ck.class_names) if num_classes else []
    if num_classes and len(class_names) != num_classes:
        class_names = [str(i) for i in range(num_classes)]
    use_ema = bool(ema and ck.has_ema)
    generator = ck.generator(ema=use_ema).float().eval()

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{name}.export-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        import onnx
        import onnxruntime as ort

        log(f"export: {ck.path} (step {ck.step}, {'EMA generator' if use_ema else 'G'}) -> ONNX opset {opset}")
        model = export_onnx(generator, latent_dim, num_classes, opset)
        onnx.save_model(model, tmp / ONNX_FILE)
        parity = parity_check(generator, tmp / ONNX_FILE, latent_dim, num_classes)
        log(f"export: parity vs PyTorch: max diff {parity['max_abs_diff']}, "
            f"{parity['min_identical']:.5%} identical (batches {', '.join(map(str, PARITY_BATCHES))})")
        fp16_info: dict = {"exported": False}
        if fp16:
            onnx.save_model(convert_fp16(model), tmp / FP16_FILE)
            fp16_info = {"exported": True, "conversion": "fp16 weights and ops up to the final Tanh; z cast to fp16 "
                         "in the graph; Tanh and uint8 rounding in fp32",
                         **fp16_check(tmp / ONNX_FILE, tmp / FP16_FILE, latent_dim, num_classes, generator)}
            if "skipped" in fp16_info:
                log(f"export: fp16 check skipped: {fp16_info['skipped']}")
            else:
                log(f"export: fp16 vs fp32: max diff {fp16_info['max_abs_diff']}, "
                    f"{fp16_info['min_within_1']:.4%} within one grey level ({', '.join(fp16_info['checked_on'])})")
            arith = fp16_info.get("torch_fp16_arithmetic", {})
            if "within_1" in arith:
                log(f"export: fp16 arithmetic (PyTorch half on CPU): max diff {arith['max_abs_diff']}, "
                    f"{arith['within_1']:.4%} within one grey level, {arith['identical']:.4%} identical")
        samples = write_samples(tmp / ONNX_FILE, tmp / SAMPLES_FILE, latent_dim, num_classes, class_names)

        created = dt.datetime.now(dt.timezone.utc)
        inputs = [{"name": "z", "dtype": "float32", "shape": ["batch", latent_dim]}]
        if num_classes:
            inputs.append({"name": "label", "dtype": "int64", "shape": ["batch"], "range": [0, num_classes - 1]})
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": name,
            "version": created.strftime("%Y%m%d.%H%M%S"),
            "created": created.isoformat(timespec="seconds"),
            "source": {"checkpoint": str(Path(ck.path).resolve()), "sha256": file_sha256(ck.path),
                       "generator": "G_ema" if use_ema else "G",
                       **({"note": "checkpoint has no EMA weights; exported G"} if ema and not use_ema else {})},
            "step": ck.step,
            "preset": cfg.preset,
            "data": {"source": cfg.data.source, "split": cfg.data.split, "path": cfg.data.path,
                     "limit": cfg.data.limit},
            "latent_dim": latent_dim,
            "num_classes": num_classes,
            "class_names": class_names,
            "image_shape": [h, w, c],
            "dtype": "uint8",
            "opset": opset,
            "inputs": inputs,
            "outputs": [{"name": "image", "dtype": "uint8", "shape": ["batch", h, w, c], "layout": "NHWC",
                         "rounding": "clip(floor((tanh_out + 1) * 127.5 + 0.5), 0, 255)"}],
            "exporter": {"method": "torch.export.export(strict=True) -> torch.onnx.export(dynamo=True)",
                         "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__},
            "parity": parity,
            "fp16": fp16_info,
            "samples": {"file": SAMPLES_FILE, "model": ONNX_FILE, **samples},
            "metrics": {},
            "command": command,
            "training": {"steps": ck.step, "command": train_command(cfg), **training_time(ck),
                         "config": cfg.to_dict()},
        }
        manifest["files"] = {p.name: file_entry(p) for p in sorted(tmp.iterdir())
                             if p.is_file() and p.name != MANIFEST}
        validate_manifest(manifest, tmp / MANIFEST)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        load_model_dir(tmp)                         # what the service will do: schema + every sha256
        if to_bentoml:
            tag = import_to_bentoml(tmp)
            log(f"export: imported into the BentoML model store as {tag}")
        try:
            os.replace(tmp, final)                  # atomic; succeeds onto a missing or empty directory only
        except OSError as exc:
            raise ExportError(f"{final}: could not move the checked export into place ({exc}); "
                              "did another export create it meanwhile?") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


# ---------------------------------------------------------------- BentoML

def import_to_bentoml(model_dir: str | Path) -> str:
    """Copy a verified model directory into the BentoML model store under the manifest's name; return the tag."""
    import bentoml

    try:
        md = load_model_dir(model_dir)
    except ModelDirError as exc:
        raise ExportError(f"not importing into BentoML: {exc}") from exc
    m = md.manifest
    labels = {"preset": str(m.get("preset", "")), "conditional": "yes" if md.conditional else "no",
              "format": "onnx"}
    metadata = {
        "model_version": md.version, "created": m["created"], "latent_dim": md.latent_dim,
        "num_classes": md.num_classes, "class_names": list(md.class_names), "image_shape": list(md.image_shape),
        "dtype": m["dtype"], "opset": m["opset"], "step": m.get("step", 0),
        "generator_onnx_sha256": md.sha256, "fp16": md.fp16_path is not None,
        "source_checkpoint_sha256": m.get("source", {}).get("sha256", ""),
    }
    try:
        with bentoml.models.create(md.name, labels=labels, metadata=metadata) as bento_model:
            for fname in list(md.files) + [MANIFEST]:
                shutil.copy2(md.path / fname, Path(bento_model.path) / fname)
    except Exception as exc:   # invalid tag name, unwritable store, ...
        raise ExportError(f"BentoML import of {md.name!r} failed ({type(exc).__name__}: {exc})") from exc
    tag = str(bento_model.tag)
    try:
        load_model_dir(tag)                        # the stored copy verifies like the original
    except ModelDirError as exc:
        raise ExportError(f"BentoML import of {md.name!r}: the stored copy does not verify: {exc}") from exc
    return tag
