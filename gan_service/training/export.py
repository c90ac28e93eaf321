"""Checkpoint -> parity-checked ONNX model directory (``models/<name>/``), optionally imported into BentoML.

The directory holds:
  generator.onnx        z float32 [batch, latent_dim] (+ label int64 [batch]) -> image uint8 [batch, H, W, C];
                        the uint8 rounding and NCHW -> NHWC permute run inside the graph (training/onnx_export.py)
  generator.fp16.onnx   the same graph with fp16 weights and arithmetic; z float32 in, uint8 out, and the
                        final tanh + rounding kept in fp32 (training/fp16.py); written only when at least one
                        onnxruntime provider here ran it and it passed the check (training/export_checks.py)
  generator.int8.onnx   with --int8 only: static int8 (QDQ) of generator.onnx, written only when it passes the
                        quality gate against it (training/quantize.py, as ``gan quantize``)
  samples.png           a fixed-seed grid rendered by generator.onnx through onnxruntime (training/model_samples.py)
  manifest.json         everything the service needs, and the sha256 + size of every other file

Nothing is left behind unchecked: the directory is built under a temporary name next to its destination, the
ONNX model is compared with PyTorch (batch sizes 1, 7 and 512), the fp16 model with the fp32 one, the result is
re-read with ``serving.modeldir.load_model_dir``, and only then renamed into place. Any failure removes it.
This module orchestrates those steps and writes the manifest.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
from pathlib import Path

from gan_service.core.atomic import atomic_write, publish_dir
from gan_service.serving.modeldir import (FORMAT_VERSION, FP16_FILE, MANIFEST, NAME_PATTERN, ONNX_FILE, file_entry,
                                         load_model_dir, validate_manifest)
from gan_service.training.bentoml_import import import_to_bentoml
from gan_service.training.checkpoint import Checkpoint, ServedGenerator, file_sha256, load_checkpoint, training_time
from gan_service.training.config import train_command
from gan_service.training.export_checks import PARITY_BATCHES, fp16_check, parity_check
from gan_service.training.fp16 import convert_fp16
from gan_service.training.model_samples import SAMPLES_FILE, write_samples_png
from gan_service.training.onnx_export import ExportError, export_onnx
# training/classifier.py imports these two from here until it imports training.onnx_export:
from gan_service.training.onnx_export import quiet_exporter as _quiet_exporter  # noqa: F401
from gan_service.training.onnx_export import rename_batch_dim as _rename_batch_dim  # noqa: F401

__all__ = ["ExportError", "export_model", "import_to_bentoml"]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def export_model(checkpoint: str | Path | Checkpoint, name: str, out_dir: str | Path = "models", opset: int = 17,
                 fp16: bool = True, ema: bool = True, to_bentoml: bool = False, command: str = "",
                 log=None, int8: bool = False, int8_samples: int | None = None,
                 int8_calibration: int | None = None) -> Path:
    """Export a checkpoint (file, run directory or loaded Checkpoint) to ``out_dir/name/``; return that path."""
    log = log or _stderr
    final = _destination(out_dir, name)
    ck = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    _check_exportable(ck)
    use_ema = bool(ema and ck.has_ema)
    served = ck.served_generator(ema=use_ema)
    tmp = final.parent / f".{name}.export-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        log(f"export: {ck.path} (step {ck.step}, {'EMA generator' if use_ema else 'G'}) -> ONNX opset {opset}")
        checks = _write_model_files(tmp, ck, served, opset, fp16, log)
        checks["int8"] = (int8_check(tmp, served.latent_dim, served.num_classes, log, int8_samples, int8_calibration)
                          if int8 else {"exported": False, "reason": "not asked (gan export --int8)"})
        manifest = build_manifest(ck, served, name, opset, use_ema, ema, checks, command)
        manifest["files"] = {p.name: file_entry(p) for p in sorted(tmp.iterdir()) if p.is_file() and p.name != MANIFEST}
        validate_manifest(manifest, tmp / MANIFEST)
        atomic_write(tmp / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        load_model_dir(tmp)                         # what the service will do: schema + every sha256
        if to_bentoml:
            log(f"export: imported into the BentoML model store as {import_to_bentoml(tmp)}")
        try:
            publish_dir(tmp, final)                 # atomic; succeeds onto a missing or empty directory only
        except OSError as exc:
            raise ExportError(f"{final}: could not move the checked export into place ({exc}); "
                              "did another export create it meanwhile?") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _destination(out_dir: str | Path, name: str) -> Path:
    """``out_dir/name``, refused when the name is not a plain directory name or the directory is not empty."""
    if not NAME_PATTERN.fullmatch(name):          # the model directory loader's own rule for a served name
        raise ExportError(f"--name: {name!r} is not a valid model name (letters, digits, '.', '_' and '-', starting "
                          "with a letter or digit, at most 128)")
    final = Path(out_dir) / name
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise ExportError(f"{final}: already exists and is not empty; refusing to overwrite it "
                          "(choose another --name or remove it)")
    return final


def _check_exportable(ck: Checkpoint) -> tuple[int, int, int]:
    """(H, W, C) of the checkpoint's images; a toy (2-D point) generator is refused."""
    cfg = ck.config
    shape = cfg.data_shape()
    if cfg.is_toy or len(shape) != 3:
        raise ExportError(f"{ck.path}: the {cfg.preset!r} generator makes 2-D points [N, 2] (data source "
                          f"{cfg.data.source!r}), not images; only image generators can be exported "
                          "(train an image preset: fmnist-dcgan, fmnist-cdcgan or paper-mlp, on any data source)")
    c, h, w = shape
    return h, w, c


def _write_model_files(tmp: Path, ck: Checkpoint, served: ServedGenerator, opset: int, fp16: bool, log) -> dict:
    """generator.onnx (parity-checked), generator.fp16.onnx (when asked and checked) and samples.png into tmp;
    returns the manifest records {"parity", "fp16", "samples"}."""
    import onnx

    generator, latent_dim, num_classes = served.generator.float().eval(), served.latent_dim, served.num_classes
    model = export_onnx(generator, latent_dim, num_classes, opset)
    onnx.save_model(model, tmp / ONNX_FILE)
    parity = parity_check(generator, tmp / ONNX_FILE, latent_dim, num_classes)
    log(f"export: parity vs PyTorch: max diff {parity['max_abs_diff']}, "
        f"{parity['min_identical']:.5%} identical (batches {', '.join(map(str, PARITY_BATCHES))})")
    fp16_info = _write_fp16(tmp, model, generator, latent_dim, num_classes, log) if fp16 else {"exported": False}
    samples = write_samples_png(tmp / ONNX_FILE, tmp / SAMPLES_FILE, latent_dim, num_classes,
                                _class_names(ck, num_classes))
    return {"parity": parity, "fp16": fp16_info, "samples": samples}


def _write_fp16(tmp: Path, model, generator, latent_dim: int, num_classes: int, log) -> dict:
    """Write and check generator.fp16.onnx; remove it again when no onnxruntime provider here could run it."""
    import onnx

    onnx.save_model(convert_fp16(model), tmp / FP16_FILE)
    check = fp16_check(tmp / ONNX_FILE, tmp / FP16_FILE, latent_dim, num_classes, generator)
    arith = check.get("torch_fp16_arithmetic", {})
    if "within_1" in arith:
        log(f"export: fp16 arithmetic (PyTorch half on CPU): max diff {arith['max_abs_diff']}, "
            f"{arith['within_1']:.4%} within one grey level, {arith['identical']:.4%} identical")
    if not check["checked_on"]:
        (tmp / FP16_FILE).unlink()
        log(f"export: {FP16_FILE} not written: {check['skipped']}")
        return {"exported": False, "reason": check["skipped"], "check": check}
    log(f"export: fp16 vs fp32: max diff {check['max_abs_diff']}, "
        f"{check['min_within_1']:.4%} within one grey level ({', '.join(check['checked_on'])})")
    return {"exported": True, "conversion": "fp16 weights and ops up to the final Tanh; z cast to fp16 in the graph; "
            "Tanh and uint8 rounding in fp32", **check}


def int8_check(tmp: Path, latent_dim: int, num_classes: int, log, samples: int | None = None,
               calibration: int | None = None) -> dict:
    """generator.int8.onnx into tmp when it passes the gate (training/quantize.py); its manifest record. An int8
    graph that cannot be checked here (no Fashion-MNIST or evaluation classifier) is not written, and the
    record says why; the export itself goes on."""
    from gan_service.training import quantize as Q

    try:
        record = Q.build_int8(tmp / ONNX_FILE, latent_dim, num_classes, tmp / Q.INT8_FILE,
                              calibration or Q.DEFAULT_CALIBRATION, samples or Q.DEFAULT_SAMPLES, log=log)
    except Q.QuantizeError as exc:
        log(f"export: {Q.INT8_FILE} not written: {exc}")
        return {"exported": False, "reason": str(exc)}
    log(f"export: {Q.INT8_FILE} " + ("written" if record["exported"] else f"not written: {record['reason']}"))
    return record


def _class_names(ck: Checkpoint, k: int) -> list[str]:
    """The checkpoint's class names, or "0".."K-1" when it has none (or a wrong number) for a served K-class model
    (none for an unconditional one, self-conditioned ones included)."""
    names = list(ck.class_names) if k else []
    return names if len(names) == k else [str(i) for i in range(k)]


def _self_conditioning(ck: Checkpoint) -> dict:
    """The manifest's record of how a self-conditioned model (--clusters) draws its cluster; {} for other models."""
    if not ck.config.data.clusters:
        return {}
    per_class = ck.config.data.use_labels
    return {"self_conditioning": {
        "clusters": ck.config.data.clusters, "per_class": per_class,
        "frequencies": [round(p, 6) for p in ck.label_prior],
        "drawn_from": ("z[:, -1]: cluster = number of the label's cumulative within-class frequencies below "
                       "Phi(z[:, -1]); the generator's id is label * clusters + cluster" if per_class else
                       "z[:, -1]: cluster = number of cumulative frequencies below Phi(z[:, -1])")
                      + "; z[:, :-1] is the generator's latent",
        "clustered_in": "k-means of the training images' pixels on their first 64 principal components"
                        + (", each class on its own" if per_class else "")}}


def build_manifest(ck: Checkpoint, served: ServedGenerator, name: str, opset: int, use_ema: bool, ema: bool,
                   checks: dict, command: str) -> dict:
    """manifest.json without its "files" table (added once every file is written)."""
    import onnx
    import onnxruntime as ort
    import torch

    cfg = ck.config
    h, w, c = _check_exportable(ck)
    latent_dim, num_classes = served.latent_dim, served.num_classes
    created = dt.datetime.now(dt.timezone.utc)
    inputs = [{"name": "z", "dtype": "float32", "shape": ["batch", latent_dim]}]
    if num_classes:
        inputs.append({"name": "label", "dtype": "int64", "shape": ["batch"], "range": [0, num_classes - 1]})
    source = {"checkpoint": str(Path(ck.path).resolve()), "sha256": file_sha256(ck.path),
              "generator": "G_ema" if use_ema else "G",
              **({"note": "checkpoint has no EMA weights; exported G"} if ema and not use_ema else {})}
    return {
        "format_version": FORMAT_VERSION, "name": name, "version": created.strftime("%Y%m%d.%H%M%S"),
        "created": created.isoformat(timespec="seconds"), "source": source, "step": ck.step, "preset": cfg.preset,
        "data": {"source": cfg.data.source, "split": cfg.data.split, "path": cfg.data.path, "limit": cfg.data.limit},
        "latent_dim": latent_dim, "num_classes": num_classes, "class_names": _class_names(ck, num_classes),
        "image_shape": [h, w, c], "dtype": "uint8", "opset": opset, "inputs": inputs,
        "outputs": [{"name": "image", "dtype": "uint8", "shape": ["batch", h, w, c], "layout": "NHWC",
                     "rounding": "clip(floor((tanh_out + 1) * 127.5 + 0.5), 0, 255)"}],
        "exporter": {"method": "torch.export.export(strict=True) -> torch.onnx.export(dynamo=True)",
                     "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__},
        "parity": checks["parity"], "fp16": checks["fp16"], "int8": checks.get("int8", {"exported": False}),
        "samples": {"file": SAMPLES_FILE, "model": ONNX_FILE, **checks["samples"]},
        **_self_conditioning(ck), "metrics": {}, "command": command,
        "training": {"steps": ck.step, "command": train_command(cfg), **training_time(ck), "config": cfg.to_dict()},
    }
