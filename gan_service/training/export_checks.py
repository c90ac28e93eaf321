"""The checks an export must pass before anything ships: the ONNX model against PyTorch (parity), and the fp16
model against the fp32 one on every onnxruntime provider here (plus PyTorch half precision for fp16 arithmetic).
Each returns the record the manifest keeps, or raises ExportError.
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from gan_service.core.imaging import to_uint8
from gan_service.core.onnx_runtime import CPU, CUDA, available_providers, ort_session
from gan_service.training.nets import ClusterDrawingGenerator
from gan_service.training.onnx_export import ExportError

PARITY_BATCHES = (1, 7, 512)
PARITY_MAX_DIFF = 1             # grey levels, on every pixel
PARITY_MIN_IDENTICAL = 0.999    # fraction of pixels bit-identical
FP16_MIN_WITHIN_1 = 0.99        # fraction of pixels within one grey level of the fp32 model
FP16_CHECK_BATCH = 512


def check_latents(seed: int, n: int, latent_dim: int, num_classes: int) -> dict:
    rng = np.random.default_rng(seed)
    feed = {"z": rng.standard_normal((n, latent_dim), dtype=np.float32)}
    if num_classes:
        feed["label"] = rng.integers(0, num_classes, n, dtype=np.int64)
    return feed


def _compare(a: np.ndarray, b: np.ndarray) -> dict:
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return {"max_abs_diff": int(d.max()), "identical": float((d == 0).mean()), "within_1": float((d <= 1).mean()),
            "pixels": int(d.size)}


def parity_check(generator: torch.nn.Module, onnx_path, latent_dim: int, num_classes: int) -> dict:
    """onnxruntime CPU vs PyTorch (+ core.imaging.to_uint8) on fixed latents at batch 1, 7 and 512."""
    sess = ort_session(onnx_path)
    per_batch, worst_max, min_identical = {}, 0, 1.0
    for n in PARITY_BATCHES:
        feed = check_latents(1000 + n, n, latent_dim, num_classes)
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
    result["batch_invariance_cpu"] = batch_invariance(sess, latent_dim, num_classes)
    return result


def batch_invariance(sess, latent_dim: int, num_classes: int) -> dict:
    """Enforced: image i is the same bytes made at batch 512 as in batches of 7 (the service's and the sampler's
    determinism contract rests on it); a graph that breaks it is not exported."""
    feed = check_latents(1000 + 512, 512, latent_dim, num_classes)
    full = sess.run(["image"], feed)[0]
    split = np.concatenate([sess.run(["image"], {k: v[i:i + 7] for k, v in feed.items()})[0]
                            for i in range(0, 512, 7)])
    stats = _compare(split, full)
    if stats["max_abs_diff"]:
        raise ExportError(f"batch invariance failed: images made at batch 512 differ from the same latents in "
                          f"batches of 7 (up to {stats['max_abs_diff']} grey levels, {stats['identical']:.5%} "
                          "identical); the served bytes would depend on how requests are batched")
    return {"batch_512_vs_batches_of_7": stats}


def fp16_check(fp32_path, fp16_path, latent_dim: int, num_classes: int,
               generator: torch.nn.Module | None = None) -> dict:
    """fp16 vs fp32 model (both through onnxruntime) on the same latents: within one grey level on >= 99%.

    onnxruntime's CPU provider has no fp16 kernels for these ops: it computes them in fp32 from the fp16-rounded
    weights (verified: its optimised graph keeps no fp16 node). So the CPU run checks the weights only, and the
    fp16 *arithmetic* is estimated by running the PyTorch generator in half precision on CPU (activations fp16,
    tanh too, which is harsher than the ONNX fp16 graph); CUDA, when present, runs the fp16 graph itself.
    ``result["checked_on"]`` lists the providers that ran the fp16 model; empty means nothing here could check it.
    """
    feed = check_latents(2024, FP16_CHECK_BATCH, latent_dim, num_classes)
    ref = ort_session(fp32_path).run(["image"], feed)[0]
    result = {"reference": "generator.onnx on CPUExecutionProvider", "batch": FP16_CHECK_BATCH,
              "tolerance": {"min_within_1": FP16_MIN_WITHIN_1}, "providers": {}}
    if generator is not None:
        result["torch_fp16_arithmetic"] = _torch_half_check(generator, feed, ref, num_classes)
    providers = [CPU] + [p for p in (CUDA,) if p in available_providers()]
    result["providers"] = {p: _provider_check(fp16_path, p, feed, ref) for p in providers}
    checked = [p for p, s in result["providers"].items() if "skipped" not in s]
    result["checked_on"] = checked
    if not checked:
        result["skipped"] = "no onnxruntime provider here could run the fp16 model: " + "; ".join(
            f"{p}: {s['skipped']}" for p, s in result["providers"].items())
    else:
        result["max_abs_diff"] = max(result["providers"][p]["max_abs_diff"] for p in checked)
        result["min_within_1"] = min(result["providers"][p]["within_1"] for p in checked)
    return result


def _torch_half_check(generator: torch.nn.Module, feed: dict, ref: np.ndarray, num_classes: int) -> dict:
    """The PyTorch generator in float16 on CPU against the fp32 ONNX images; raises past the tolerance."""
    half = _in_half_as_exported(copy.deepcopy(generator).eval())
    try:
        with torch.no_grad():
            labels = torch.from_numpy(feed["label"]) if num_classes else None
            out = half(torch.from_numpy(feed["z"]), labels).float().numpy()
    except (RuntimeError, NotImplementedError) as exc:   # an op without a CPU half kernel
        return {"skipped": f"{type(exc).__name__}: {str(exc)[:300]}"}
    stats = _compare(to_uint8(out), ref)
    stats["note"] = "PyTorch generator in float16 on CPU (fp16 activations) vs the fp32 ONNX model"
    if stats["within_1"] < FP16_MIN_WITHIN_1:
        raise ExportError(f"fp16 check failed: in fp16 arithmetic only {stats['within_1']:.3%} of pixels stay "
                          f"within one grey level of fp32 (need {FP16_MIN_WITHIN_1:.0%}), max difference "
                          f"{stats['max_abs_diff']}; export with --no-fp16")
    return stats


class _HalfInput(torch.nn.Module):
    """``generator`` in float16, fed float32 latents (cast on the way in)."""

    def __init__(self, generator: torch.nn.Module):
        super().__init__()
        self.generator = generator.half()

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.generator(z.half(), labels)


def _in_half_as_exported(generator: torch.nn.Module) -> torch.nn.Module:
    """The generator in float16 the way the fp16 graph runs it (training.fp16): a cluster-drawing wrapper keeps its
    cluster choice on the fp32 z and only its generator goes to half; rounding z first would move latents across
    cluster boundaries, a different image that the fp16 graph never makes."""
    if isinstance(generator, ClusterDrawingGenerator):
        generator.generator = _HalfInput(generator.generator)
        return generator
    return _HalfInput(generator)


def _provider_check(fp16_path, provider: str, feed: dict, ref: np.ndarray) -> dict:
    """The fp16 model on one provider against the fp32 images: its stats, {"skipped": why}, or ExportError."""
    try:
        got = ort_session(fp16_path, provider).run(["image"], feed)[0]
    except Exception as exc:   # e.g. an fp16 op with no kernel on this provider
        return {"skipped": f"{type(exc).__name__}: {str(exc)[:300]}"}
    stats = _compare(got, ref)
    if provider == CPU:
        stats["note"] = ("onnxruntime's CPU provider has no fp16 kernels for these ops and computes them in fp32 "
                         "from the fp16-rounded weights: this checks the fp16 weights; see "
                         "torch_fp16_arithmetic (and CUDAExecutionProvider when present) for fp16 arithmetic")
    if stats["within_1"] < FP16_MIN_WITHIN_1:
        raise ExportError(f"fp16 check failed on {provider}: only {stats['within_1']:.3%} of pixels within one "
                          f"grey level of the fp32 model (need {FP16_MIN_WITHIN_1:.0%}), max difference "
                          f"{stats['max_abs_diff']}; export with --no-fp16")
    return stats
