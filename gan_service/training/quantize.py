"""generator.int8.onnx: static int8 quantization (QDQ) of an exported generator.onnx, written only when it passes
a quality gate against the fp32 graph; ``gan quantize MODEL_DIR`` and ``gan export --int8``.

How it is made (onnxruntime's own tools, ``onnxruntime.quantization.quantize_static``):
  - QDQ format; weights int8 per output channel with ``reduce_range`` (7 bits: the u8 x s8 products' pairwise
    16-bit sums of CPUs without VNNI cannot saturate), activations uint8 per tensor, MinMax calibration;
  - calibrated on latents drawn exactly as the service draws them: ``serving.latents.latents(CALIBRATION_SEED,
    0..N-1)``, and for a conditional model balanced classes (index mod K, as ``gan sample --labels balanced``);
  - only Conv, Gemm and MatMul are candidates (onnxruntime's CPU provider has int8 kernels for them: QLinearConv,
    QGemm, QLinearMatMul); ConvTranspose has none (it would run as DequantizeLinear + float), Resize and every
    elementwise op stay float, so a linear Resize never interpolates rounded values;
  - the graph's discrete choices (comparisons and every node they read, e.g. a self-conditioned generator's cluster
    from Phi(z[:, -1]); ``training.fp16.decision_nodes``) are excluded and read the float z, so int8 picks the same
    cluster as fp32 (checked per image: ``discrete_choices.agreement``);
  - which candidates stay float is measured: all candidates in int8, then each one kept in float in turn; the one
    whose float copy removes the most error is kept in float when it removes at least half of the remaining error
    (mean |int8 - fp32| grey levels on SENSITIVITY_N latents of SENSITIVITY_SEED), and the step repeats. Every
    layer's measurement and the reason for its precision go to the manifest (``int8.layers``).

The gate, on ``samples`` latents of seed 0 (``gan evaluate``'s: indices 0..n-1, balanced classes): in each of the
three evaluation views (classifier, robust, pixels_pca) the int8 graph's FD must lie within FD_TOLERANCE (5%) of
the fp32 graph's, and its precision and recall within PR_TOLERANCE (0.02) of fp32's; every latent must make the
same discrete choices; and each image must be the same bytes at batch 1, 7, 64 and 512, and on one thread as on
onnxruntime's default (the service's determinism contract). Otherwise no int8 graph is written and the
manifest's ``int8`` record says why.
"""
from __future__ import annotations

import datetime as dt
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

from gan_service.core.atomic import atomic_write
from gan_service.core.cpu_features import cpu_summary
from gan_service.core.fmnist import FMNIST_DIR
from gan_service.core.onnx_runtime import ort_session
from gan_service.serving.latents import latents
from gan_service.serving.modeldir import (
    INT8_FILE,
    ONNX_FILE,
    ModelDirError,
    file_sha256,
    load_model_dir,
    write_manifest,
)

CALIBRATION_SEED = 1             # the service's seed 1, indices 0..N-1 (the gate uses seed 0: unseen latents)
MIN_CALIBRATION, DEFAULT_CALIBRATION = 512, 1024
CALIBRATION_BATCH = 128
SENSITIVITY_SEED, SENSITIVITY_N = 2, 512
FLOAT_SHARE = 0.5                # a layer stays float when that removes at least this share of the remaining error
GATE_SEED, DEFAULT_SAMPLES = 0, 10000
MIN_SAMPLES = 129                # a full-rank covariance of the 128-d classifier features (FD)
FD_TOLERANCE = 0.05              # relative, both ways
PR_TOLERANCE = 0.02              # absolute, precision and recall
INVARIANCE_BATCHES = (1, 7, 64, 512)
INVARIANCE_SEED = 3
RENDER_BATCH = 1000
QUANTIZABLE = ("Conv", "Gemm", "MatMul")          # int8 CPU kernels: QLinearConv, QGemm, QLinearMatMul
NO_INT8_KERNEL = {"ConvTranspose": "no int8 CPU kernel in onnxruntime (it would run as DequantizeLinear + float "
                                   "ConvTranspose: rounding error, no speed)"}
RESIZE_REASON = ("Resize stays float (not an op type to quantize): a linear Resize would interpolate rounded "
                 "values; a nearest one only copies them, with nothing to gain")
VIEWS = ("classifier", "robust", "pixels_pca")


class QuantizeError(ValueError):
    """An int8 quantization that cannot run (bad arguments, a missing model directory or evaluation data)."""


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- latents, as the service draws them

def service_feeds(seed: int, start: int, count: int, latent_dim: int, num_classes: int) -> dict:
    """The graph inputs of indices start..start+count-1 of ``seed``: z from ``serving.latents`` and, for a
    conditional model, balanced classes (index mod K: ``gan sample --labels balanced``, ``gan evaluate``)."""
    feed = {"z": latents(seed, start, count, latent_dim)}
    if num_classes:
        feed["label"] = np.arange(start, start + count, dtype=np.int64) % num_classes
    return feed


def calibration_feeds(latent_dim: int, num_classes: int, n: int = DEFAULT_CALIBRATION) -> dict:
    """The calibration inputs: n >= MIN_CALIBRATION latents of CALIBRATION_SEED, balanced classes."""
    if n < MIN_CALIBRATION:
        raise QuantizeError(f"--calibration {n}: must be >= {MIN_CALIBRATION} latents")
    return service_feeds(CALIBRATION_SEED, 0, n, latent_dim, num_classes)


def _slices(feed: dict, batch: int):
    n = len(feed["z"])
    for i in range(0, n, batch):
        yield {k: v[i:i + batch] for k, v in feed.items()}


def _reader(feed: dict):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = _slices(feed, CALIBRATION_BATCH)

        def get_next(self):
            return next(self.batches, None)

    return Reader()


# ---------------------------------------------------------------- the graph's discrete choices

def decision_node_names(model) -> set[str]:
    """Names of the comparisons and every node they read (``training.fp16.decision_nodes``)."""
    from gan_service.training.fp16 import decision_nodes

    return {n.name for n in decision_nodes(list(model.graph.node))}


def decision_outputs(model) -> list[str]:
    """The tensors through which the discrete choices reach the rest of the graph (e.g. a Greater's output read
    by the Cast that counts clusters): equal tensors mean equal choices."""
    names = decision_node_names(model)
    produced = {o for n in model.graph.node if n.name in names for o in n.output}
    read_by_rest = {i for n in model.graph.node if n.name not in names for i in n.input}
    graph_out = {o.name for o in model.graph.output}
    return sorted(produced & (read_by_rest | graph_out))


def _with_outputs(model, names: list[str]) -> bytes:
    """The model's bytes with ``names`` added as graph outputs (after "image")."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    have = {o.name for o in copy.graph.output}
    copy.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in have)
    return copy.SerializeToString()


def _load(model):
    import onnx

    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))


def _render(model_bytes: bytes, feed: dict, extra: list[str], batch: int = RENDER_BATCH):
    """(images uint8 [N, H, W, C], {tensor: values [N, ...]}) of a model at ``batch`` rows per run."""
    sess = ort_session(model_bytes)
    names = ["image", *extra]
    parts = [sess.run(names, b) for b in _slices(feed, batch)]
    images = np.concatenate([p[0] for p in parts])
    return images, {n: np.concatenate([p[i + 1] for p in parts]) for i, n in enumerate(extra)}


def _choices_agree(a: dict, b: dict, n: int) -> np.ndarray:
    """bool [N]: every discrete-choice tensor equal for that latent."""
    same = np.ones(n, bool)
    for name, values in a.items():
        same &= (values.reshape(n, -1) == b[name].reshape(n, -1)).all(axis=1)
    return same


def choice_agreement(fp32_model, int8_model, feed: dict) -> dict:
    """The fraction of latents whose discrete choices (``decision_outputs``) the int8 graph makes as fp32 does."""
    fp32, int8 = _load(fp32_model), _load(int8_model)
    names, n = decision_outputs(fp32), len(feed["z"])
    if not names:
        return {"tensors": [], "n": n, "agreement": 1.0, "note": "the graph makes no discrete choice"}
    _, a = _render(_with_outputs(fp32, names), feed, names)
    _, b = _render(_with_outputs(int8, names), feed, names)
    same = _choices_agree(a, b, n)
    return {"tensors": names, "n": n, "agreement": float(same.mean()), "differing": int((~same).sum())}


# ---------------------------------------------------------------- pixels and batching

def compare_images(a: np.ndarray, b: np.ndarray) -> dict:
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return {"mean_abs_diff": float(d.mean()), "max_abs_diff": int(d.max()), "identical": float((d == 0).mean()),
            "within_1": float((d <= 1).mean()), "p99_abs_diff": float(np.percentile(d, 99)), "pixels": int(d.size)}


def batch_invariance(model_bytes: bytes, latent_dim: int, num_classes: int,
                     batches: tuple[int, ...] = INVARIANCE_BATCHES) -> dict:
    """Whether image i is the same bytes made at every batch size in ``batches`` (on max(batches) latents of
    INVARIANCE_SEED) in a CPU session with onnxruntime's default threads, as the service opens it, and at the
    largest batch in a one-thread session."""
    n = max(batches)
    feed = service_feeds(INVARIANCE_SEED, 0, n, latent_dim, num_classes)
    sess = ort_session(model_bytes)
    ref = sess.run(["image"], feed)[0]

    def stats(got: np.ndarray) -> dict:
        d = np.abs(got.astype(np.int16) - ref.astype(np.int16))
        return {"max_abs_diff": int(d.max()), "identical_images": float((d.reshape(n, -1) == 0).all(axis=1).mean())}

    per_batch = {str(b): stats(np.concatenate([sess.run(["image"], part)[0] for part in _slices(feed, b)]))
                 for b in batches if b != n}
    one_thread = stats(ort_session(model_bytes, threads=1).run(["image"], feed)[0])
    return {"batches": list(batches), "latents": n, "reference_batch": n, "provider": "CPUExecutionProvider",
            "identical": all(v["max_abs_diff"] == 0 for v in (*per_batch.values(), one_thread)),
            "vs_reference": per_batch, "one_thread_vs_default_threads": one_thread}


# ---------------------------------------------------------------- quantization with measured float layers

SETTINGS = {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ",
            "weights": "int8, per output channel, reduce_range (7-bit)",
            "activations": "uint8, asymmetric, per tensor", "calibration_method": "MinMax",
            "op_types_to_quantize": list(QUANTIZABLE),
            "reduce_range_reason": "7-bit weights keep the u8 x s8 pairwise 16-bit sums of non-VNNI CPUs (AVX2 "
                                   "vpmaddubsw) from saturating, so int8 makes the same images with and without "
                                   "VNNI; onnxruntime's advice for CPUs without VNNI"}


def _quantize(fp32_path: Path, out: Path, feed: dict, cache: Path, float_nodes: set[str], op_types: list[str]):
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)            # "consider pre-processing" warnings: the exported graph is clean
    try:
        quantize_static(str(fp32_path), str(out), _reader(feed), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=op_types, per_channel=True, reduce_range=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=sorted(float_nodes), calibrate_method=CalibrationMethod.MinMax,
                        calibration_cache_path=str(cache))
    finally:
        logger.setLevel(level)
    return onnx.load(str(out))


def quantize_graph(fp32_path, latent_dim: int, num_classes: int, calibration: int = DEFAULT_CALIBRATION,
                   log=None) -> tuple:
    """(int8 onnx.ModelProto, record): the QDQ graph with the float layers chosen by measurement (module
    docstring), and the manifest's record of the settings, calibration, layers and discrete choices."""
    import onnx

    log = log or (lambda msg: None)
    fp32_path = Path(fp32_path)
    fp32 = onnx.load(str(fp32_path))
    feed = calibration_feeds(latent_dim, num_classes, calibration)
    decisions = decision_node_names(fp32)
    layers: dict[str, dict] = {}
    for n in fp32.graph.node:
        if n.op_type in NO_INT8_KERNEL:
            layers[n.name] = {"op": n.op_type, "precision": "float", "reason": NO_INT8_KERNEL[n.op_type]}
        elif n.op_type == "Resize":
            layers[n.name] = {"op": n.op_type, "precision": "float", "reason": RESIZE_REASON}
        elif n.op_type in QUANTIZABLE:
            layers[n.name] = {"op": n.op_type, "precision": "int8", "reason": ""}
            if n.name in decisions:
                layers[n.name].update(precision="float", reason="a discrete choice reads it")
    candidates = [name for name, layer in layers.items() if layer["precision"] == "int8"]
    if not candidates:
        raise QuantizeError(f"{fp32_path}: no Conv, Gemm or MatMul outside the discrete choices: nothing to quantize")
    op_types = sorted({layers[c]["op"] for c in candidates})
    sens_feed = service_feeds(SENSITIVITY_SEED, 0, SENSITIVITY_N, latent_dim, num_classes)
    ref = ort_session(fp32_path).run(["image"], sens_feed)[0]

    with tempfile.TemporaryDirectory(prefix="gan-int8-") as work:
        work, trial_no = Path(work), [0]
        cache = work / "calibration.json"

        def trial(kept_float: set[str]):
            trial_no[0] += 1
            model = _quantize(fp32_path, work / f"trial-{trial_no[0]}.onnx", feed, cache,
                              kept_float | decisions, op_types)
            got = ort_session(model.SerializeToString()).run(["image"], sens_feed)[0]
            return model, compare_images(got, ref)["mean_abs_diff"]

        model, error = trial(set())
        all_error, kept, rounds = error, set(), []
        log(f"quantize: all {len(candidates)} candidate layers in int8: mean |int8 - fp32| {error:.3f} grey levels")
        while True:
            remaining = [c for c in candidates if c not in kept]
            if len(remaining) <= 1 or error == 0:
                break
            tried = {c: trial(kept | {c}) for c in remaining}
            for c, (_, e) in tried.items():
                layers[c]["mean_abs_diff_when_float"] = round(e, 4)
                layers[c]["measured_beside_float"] = sorted(kept)
            best = min(tried, key=lambda c: tried[c][1])
            best_error = tried[best][1]
            rounds.append({"float_before": sorted(kept), "mean_abs_diff": round(error, 4),
                           "float_one_more": {c: round(e, 4) for c, (_, e) in tried.items()}})
            if error - best_error < FLOAT_SHARE * error:
                break
            log(f"quantize: {best} ({layers[best]['op']}) stays float: {error:.3f} -> {best_error:.3f} grey levels")
            layers[best].update(precision="float", reason=(
                f"measured: in float it cut the mean |int8 - fp32| from {error:.3f} to {best_error:.3f} grey levels "
                f"(at least {FLOAT_SHARE:.0%} of the remaining error)"))
            kept.add(best)
            model, error = tried[best]
        for c in candidates:
            if c not in kept:
                measured = layers[c].get("mean_abs_diff_when_float")
                layers[c]["reason"] = (
                    "measured: in float it would only cut the mean |int8 - fp32| from "
                    f"{error:.3f} to {measured:.3f} grey levels (less than {FLOAT_SHARE:.0%})"
                    if measured is not None else "the only candidate left in int8")
    float_layers = sorted(name for name, layer in layers.items() if layer["precision"] == "float")
    record = {
        "settings": SETTINGS,
        "calibration": {"latents": calibration, "seed": CALIBRATION_SEED, "indices": [0, calibration - 1],
                        "drawn_by": "serving.latents.latents (the service's z of seed, index)",
                        "labels": (f"balanced: index mod {num_classes}" if num_classes else "none (unconditional)"),
                        "batch": CALIBRATION_BATCH},
        "layers": layers, "float_nodes": float_layers,
        "sensitivity": {"metric": f"mean |int8 - fp32| grey levels on {SENSITIVITY_N} latents of seed "
                                  f"{SENSITIVITY_SEED}, balanced classes", "rule": (
                                      f"a layer stays float when keeping it float removes at least {FLOAT_SHARE:.0%} "
                                      "of the remaining error; repeated, most effective layer first"),
                        "all_quantized_mean_abs_diff": round(all_error, 4), "final_mean_abs_diff": round(error, 4),
                        "rounds": rounds},
        "discrete_choices": {"float_nodes": sorted(decisions), "tensors": decision_outputs(fp32),
                             "why": "comparisons and what they read stay float on the float z, so int8 picks the "
                                    "same cluster/class as fp32"},
    }
    return model, record


# ---------------------------------------------------------------- the quality gate

def quality_gate(fp32_images: np.ndarray, int8_images: np.ndarray, data_dir=FMNIST_DIR, seed: int = GATE_SEED,
                 fd_tolerance: float = FD_TOLERANCE, pr_tolerance: float = PR_TOLERANCE) -> dict:
    """FD, KID, precision and recall of both image sets in every evaluation view, and whether int8 passes."""
    from gan_service.evaluation.evaluate import (
        ROBUST_CLASSIFIER,
        real_data,
        view_metrics,
    )
    from gan_service.evaluation.features import Classifier
    from gan_service.evaluation.sources import EvaluationError

    try:
        real = real_data(Classifier("models/eval"), data_dir, (Classifier(ROBUST_CLASSIFIER),))
    except EvaluationError as exc:
        raise QuantizeError(f"--data {data_dir}: {exc}") from exc
    views, failed = {}, []
    for name, ref in real.views.items():
        a = view_metrics(ref, ref.view.features(fp32_images), seed)
        b = view_metrics(ref, ref.view.features(int8_images), seed)
        pa, pb = a["precision_recall"], b["precision_recall"]
        change = (b["fd"] - a["fd"]) / a["fd"] if a["fd"] > 0 else float("inf")
        v = {"fd_fp32": a["fd"], "fd_int8": b["fd"], "fd_change": change,
             "precision_fp32": pa["precision"], "precision_int8": pb["precision"],
             "recall_fp32": pa["recall"], "recall_int8": pb["recall"],
             "kid_fp32": a["kid"]["mean"], "kid_int8": b["kid"]["mean"]}
        why = []
        if not abs(change) <= fd_tolerance:
            why.append(f"FD {b['fd']:.4g} int8 vs {a['fd']:.4g} fp32 ({change:+.1%}, limit +-{fd_tolerance:.0%})")
        for key in ("precision", "recall"):
            if not abs(v[f"{key}_int8"] - v[f"{key}_fp32"]) <= pr_tolerance:
                why.append(f"{key} {v[f'{key}_int8']:.3f} int8 vs {v[f'{key}_fp32']:.3f} fp32 "
                           f"(limit +-{pr_tolerance})")
        v["passed"] = not why
        if why:
            v["failed"] = "; ".join(why)
            failed.append(name)
        views[name] = v
    return {"n": len(fp32_images), "seed": seed, "views": views, "passed": not failed, "failed": failed,
            "tolerance": {"fd_relative": fd_tolerance, "precision_recall_absolute": pr_tolerance}}


# ---------------------------------------------------------------- one graph, checked

def _versions() -> dict:
    import onnx
    import onnxruntime as ort

    return {"onnxruntime": ort.__version__, "onnx": onnx.__version__}


def _check_counts(calibration: int, samples: int, data_dir=None) -> None:
    """Arguments that would fail late, refused before any work (messages name the flag)."""
    if data_dir is not None and not Path(data_dir).is_dir():
        raise QuantizeError(f"--data {data_dir}: not a directory (the Fashion-MNIST IDX files the gate measures "
                            "against; apt-get install dataset-fashion-mnist)")
    if calibration < MIN_CALIBRATION:
        raise QuantizeError(f"--calibration {calibration}: must be >= {MIN_CALIBRATION} latents")
    if samples < MIN_SAMPLES:
        raise QuantizeError(f"--samples {samples}: must be >= {MIN_SAMPLES} (the Frechet distance of the 128-d "
                            "classifier features needs a full-rank covariance)")


def build_int8(fp32_path, latent_dim: int, num_classes: int, out_path=None, calibration: int = DEFAULT_CALIBRATION,
               samples: int = DEFAULT_SAMPLES, data_dir=FMNIST_DIR, fd_tolerance: float = FD_TOLERANCE,
               pr_tolerance: float = PR_TOLERANCE, log=None) -> dict:
    """Quantize ``fp32_path``, check it (gate, discrete choices, batching) and write it to ``out_path`` when it
    passes (None: check only). Returns the manifest's ``int8`` record: "passed", "exported" and, if refused,
    "reason" naming every failed check (a failed view by name)."""
    import onnx

    log = log or _stderr
    _check_counts(calibration, samples, data_dir)
    fp32_path = Path(fp32_path)
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    int8, made = quantize_graph(fp32_path, latent_dim, num_classes, calibration, log)
    int8_bytes = int8.SerializeToString()
    invariance = batch_invariance(int8_bytes, latent_dim, num_classes)
    log(f"quantize: same bytes at batch {', '.join(map(str, INVARIANCE_BATCHES))}: {invariance['identical']}")

    fp32 = onnx.load(str(fp32_path))
    names = made["discrete_choices"]["tensors"]
    feed = service_feeds(GATE_SEED, 0, samples, latent_dim, num_classes)
    log(f"quantize: rendering {samples} images with each graph (seed {GATE_SEED}, indices 0..{samples - 1})")
    img32, dec32 = _render(_with_outputs(fp32, names), feed, names)
    img8, dec8 = _render(_with_outputs(int8, names), feed, names)
    same = _choices_agree(dec32, dec8, samples)
    made["discrete_choices"].update(n=samples, agreement=float(same.mean()), differing=int((~same).sum()))
    pixels = compare_images(img8, img32)
    log(f"quantize: mean |int8 - fp32| {pixels['mean_abs_diff']:.3f} grey levels, "
        f"discrete choices agree on {same.mean():.4%} of latents; measuring every view")
    gate = quality_gate(img32, img8, data_dir, GATE_SEED, fd_tolerance, pr_tolerance)
    gate["labels"] = f"balanced: index mod {num_classes}" if num_classes else "none (unconditional)"

    reasons = [f"view {v}: {gate['views'][v]['failed']}" for v in gate["failed"]]
    if same.mean() < 1.0:
        reasons.append(f"discrete choices: {int((~same).sum())} of {samples} latents pick another cluster/class "
                       "in int8")
    if not invariance["identical"]:
        reasons.append(f"batch invariance: images differ between batch sizes {invariance['vs_reference']}")
    passed = not reasons
    exported = passed and out_path is not None
    record = {"exported": exported, "passed": passed, **({"file": INT8_FILE} if exported else {}),
              **({"reason": "refused: " + "; ".join(reasons)} if reasons else {}),
              "created": created, "source": {"file": ONNX_FILE, "sha256": file_sha256(fp32_path)},
              **_versions(), "cpu": cpu_summary(), "gate": gate, "pixels": pixels,
              "batch_invariance_cpu": invariance, **made}
    if exported:
        atomic_write(out_path, int8_bytes)
    return record


def gate_summary(record: dict) -> str:
    """A few lines: each view's FD, precision and recall fp32 -> int8, and the verdict."""
    lines = [f"{'view':<12} {'FD fp32':>9} {'FD int8':>9} {'change':>7}   {'P fp32/int8':>13}   {'R fp32/int8':>13}"]
    for name, v in record["gate"]["views"].items():
        lines.append(f"{name:<12} {v['fd_fp32']:>9.4f} {v['fd_int8']:>9.4f} {v['fd_change']:>+7.1%}   "
                     f"{v['precision_fp32']:.3f}/{v['precision_int8']:.3f}   {v['recall_fp32']:.3f}/"
                     f"{v['recall_int8']:.3f}" + ("" if v["passed"] else "   FAILED"))
    px, dc = record["pixels"], record["discrete_choices"]
    lines.append(f"mean |int8 - fp32| {px['mean_abs_diff']:.3f} grey levels; discrete choices agree on "
                 f"{dc['agreement']:.4%}; float layers: {', '.join(record['float_nodes']) or 'none'}")
    lines.append("passed" if record["passed"] else record["reason"])
    return "\n".join(lines)


# ---------------------------------------------------------------- gan quantize MODEL_DIR

def quantize_model_dir(model_dir, calibration: int = DEFAULT_CALIBRATION, samples: int = DEFAULT_SAMPLES,
                       dry_run: bool = False, data_dir=FMNIST_DIR, fd_tolerance: float = FD_TOLERANCE,
                       pr_tolerance: float = PR_TOLERANCE, command: str = "", log=None) -> dict:
    """Add generator.int8.onnx to an exported model directory when it passes (``build_int8``), and its record
    to the manifest (re-listing every file) either way; with ``dry_run`` nothing is written. generator.onnx and
    every other file stay as they are; a refused graph also removes a generator.int8.onnx of an earlier run."""
    log = log or _stderr
    _check_counts(calibration, samples, data_dir)
    try:
        model = load_model_dir(model_dir)
    except ModelDirError as exc:
        raise QuantizeError(str(exc)) from exc
    out = None if dry_run else model.path / INT8_FILE
    record = build_int8(model.onnx_path, model.latent_dim, model.num_classes, out, calibration, samples, data_dir,
                        fd_tolerance, pr_tolerance, log)
    record["command"] = command
    if dry_run:
        record["dry_run"] = True
        return record
    if not record["exported"] and (model.path / INT8_FILE).exists():
        (model.path / INT8_FILE).unlink()
        log(f"quantize: removed the {INT8_FILE} of an earlier run (refused now)")
    manifest = dict(model.manifest)
    manifest["int8"] = record
    write_manifest(model.path, manifest)
    load_model_dir(model.path)                     # what the service will do: every file against the manifest
    return record
