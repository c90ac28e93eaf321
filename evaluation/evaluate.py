"""``gan evaluate``: quality metrics of a model, a sampler output or a folder of images, beside the real-data floor.

All metrics are computed in the feature space of the project's own Fashion-MNIST classifier (``models/eval``,
ONNX through onnxruntime; no torch, no weights from the internet), except the Parzen window and the
nearest-neighbour check, which work on pixels as in the seed paper:

  fd                  Frechet distance between sample and test-image features
  kid                 unbiased MMD^2, cubic polynomial kernel, mean and std over 100 subsets of <= 1000
  precision_recall    improved precision and recall, k = 3 (Kynkaanniemi et al. 2019), against the test images
  coverage            the classifier's label histogram of the samples vs uniform: KL (nats), smallest share
  per_class_accuracy  conditional models (sampled with balanced labels): how often the classifier finds the
                      requested class
  parzen              the seed paper's Gaussian Parzen-window log-likelihood of the 10k test images under the
                      samples, sigma chosen on 2k held-out training images, with its standard error
  memorisation        median pixel distance of 250 samples to their nearest training image (of all 60k); the
                      floor is that of 250 unseen test images, so a generator that copies shows far below it

The floor is every metric measured the same way with *real training images* in place of the samples
(as many as there are samples, from a fixed permutation of the training set, disjoint from the Parzen
validation images); it is what a perfect generator would score. The floor is cached in memory and on disk
(``$GAN_EVAL_CACHE``, default ``~/.cache/gan-service/eval``), keyed by the classifier, the data files and n.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluation import metrics as M
from evaluation import report as R
from evaluation.features import Classifier, InceptionFeatures
from evaluation.sources import EvaluationError, Samples, data_fingerprint, load_fmnist, load_source
from core.stats import read_stats

__all__ = ["EvaluationError", "evaluate", "measure", "real_data", "floor_metrics", "min_samples"]

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
METRICS_VERSION = 1
PARZEN_VALID = 2000            # held-out training images for choosing the Parzen sigma
PARZEN_TEST = 10000            # test images whose log-likelihood is averaged (all of them)
INCEPTION_REFERENCE = 10000    # test images of the standard-FID reference (all of them)
MEMO_QUERIES = 250             # samples (and test images) whose nearest training image is searched
FLOOR_PERMUTATION_SEED = 20140610
PR_K = 3
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000
METRICS_FILE = "metrics.json"
DEFAULT_OUT = "eval-report"


def min_samples(feature_dim: int = 128) -> list[tuple[str, int, str]]:
    """(metric, least number of samples, why) for every metric; evaluate refuses fewer."""
    return [("the Frechet distance", feature_dim + 1, f"a full-rank covariance of the {feature_dim}-d features"),
            ("KID", 2, "two samples per subset for the unbiased MMD"),
            ("precision/recall", PR_K + 1, f"a {PR_K}-th nearest neighbour of every sample")]


def _check_count(count: int, what: str, feature_dim: int) -> None:
    for metric, least, why in min_samples(feature_dim):
        if count < least:
            raise EvaluationError(f"{what}: {count} sample(s) is too few: {metric} needs at least {least} ({why})")


# ---------------------------------------------------------------- real data (cached per process)

@dataclass
class RealData:
    test_images: np.ndarray        # uint8 [10000, 28, 28, 1]
    test_labels: np.ndarray
    test_logits: np.ndarray
    test_features: np.ndarray
    train_images: np.ndarray       # uint8 [60000, 28, 28, 1]
    train_labels: np.ndarray
    floor_order: np.ndarray        # fixed permutation of the training set: floor samples first
    valid_images: np.ndarray       # the last PARZEN_VALID of floor_order (never floor samples)
    key: str
    _test_radii: np.ndarray | None = None

    @property
    def test_radii(self) -> np.ndarray:
        """k-NN radii of the test features (the real manifold of precision), computed once."""
        if self._test_radii is None:
            self._test_radii = M.knn_radii(self.test_features, PR_K)
        return self._test_radii


_REAL: dict[tuple[str, str], RealData] = {}
_FLOOR: dict[str, dict] = {}


def real_data(classifier: Classifier, data_dir: str | Path = FMNIST_DIR) -> RealData:
    """Fashion-MNIST test images with their classifier outputs, and the training images; cached per process."""
    fingerprint = data_fingerprint(data_dir)
    cache_key = (classifier.sha256, f"{Path(data_dir).resolve()}|{fingerprint}")
    if cache_key not in _REAL:
        test_x, test_y = load_fmnist(data_dir, "test")
        train_x, train_y = load_fmnist(data_dir, "train")
        logits, feats = classifier.run(test_x)
        order = np.random.default_rng(FLOOR_PERMUTATION_SEED).permutation(len(train_x))
        key = hashlib.sha256(f"{classifier.sha256}|{fingerprint}|v{METRICS_VERSION}".encode()).hexdigest()[:20]
        _REAL[cache_key] = RealData(test_x, test_y, logits, feats, train_x, train_y, order,
                                    train_x[order[-PARZEN_VALID:]], key)
    return _REAL[cache_key]


# ---------------------------------------------------------------- measuring one set of images

def measure(images: np.ndarray, requested: np.ndarray | None, real: RealData, classifier: Classifier,
            seed: int = 0, nn_queries: np.ndarray | None = None, parts: tuple[str, ...] | None = None,
            timing: dict | None = None) -> dict:
    """Every metric of uint8 images [N, 28, 28, 1] against the test images (``parts`` picks a subset).

    ``nn_queries``: the images whose nearest training image is searched (default: the first MEMO_QUERIES of
    ``images``; the floor passes unseen test images, since its samples are training images themselves).
    """
    parts = parts or ("fd", "kid", "precision_recall", "coverage", "parzen", "memorisation")
    timing = {} if timing is None else timing
    out: dict = {"n": int(len(images))}

    def timed(name, fn):
        t0 = time.perf_counter()
        value = fn()
        timing[name] = round(timing.get(name, 0.0) + time.perf_counter() - t0, 2)
        return value

    logits, feats = timed("features", lambda: classifier.run(images))
    pred = logits.argmax(1)
    ref = real.test_features
    if "fd" in parts:
        out["fd"] = timed("fd", lambda: M.frechet_distance_features(feats, ref))
    if "kid" in parts:
        out["kid"] = timed("kid", lambda: M.kid(feats, ref, KID_SUBSETS, KID_SUBSET_SIZE, seed=seed))
    if "precision_recall" in parts:
        out["precision_recall"] = timed("precision_recall", lambda: M.precision_recall(ref, feats, k=PR_K,
                                                                                         real_radii=real.test_radii))
    if "coverage" in parts:
        out["coverage"] = M.class_coverage(pred, classifier.num_classes, classifier.class_names)
        if requested is not None:
            out["per_class_accuracy"] = M.per_class_accuracy(pred, requested, classifier.num_classes,
                                                             classifier.class_names)
    if "parzen" in parts:
        out["parzen"] = timed("parzen", lambda: M.parzen(real.test_images[:PARZEN_TEST], images,
                                                         real.valid_images))
    if "memorisation" in parts:
        q = images[:MEMO_QUERIES] if nn_queries is None else nn_queries
        _, dist = timed("memorisation", lambda: M.nearest_neighbours(q, real.train_images, k=1))
        out["memorisation"] = {"queries": int(len(q)), "median_nn_distance": float(np.median(dist)),
                               "min_nn_distance": float(dist.min()), "space": "pixels / 255, L2"}
    out["_predicted"] = pred          # removed before writing; used for plots
    return out


def _cache_dir() -> Path:
    return Path(os.environ.get("GAN_EVAL_CACHE", Path.home() / ".cache" / "gan-service" / "eval"))


def floor_metrics(real: RealData, classifier: Classifier, n: int, seed: int = 0) -> dict:
    """Every metric of n real training images (the floor), cached in memory and on disk."""
    n_floor = min(n, len(real.train_images) - PARZEN_VALID)
    key = f"floor-{real.key}-n{n_floor}-s{seed}-kid{KID_SUBSETS}-nn{MEMO_QUERIES}-pz{PARZEN_TEST}"
    if key in _FLOOR:
        return _FLOOR[key]
    path = _cache_dir() / f"{key}.json"
    if path.is_file():
        try:
            _FLOOR[key] = json.loads(path.read_text())
            return _FLOOR[key]
        except ValueError:
            pass
    timing: dict = {}
    t0 = time.perf_counter()
    idx = real.floor_order[:n_floor]
    floor = measure(real.train_images[idx], None, real, classifier, seed=seed,
                    nn_queries=real.test_images[:MEMO_QUERIES], timing=timing)
    floor["histogram_train"] = floor["coverage"]["histogram"]
    floor.pop("_predicted")
    # For conditional models the floor of "accuracy of the requested label" is the classifier's own accuracy.
    floor["per_class_accuracy"] = M.per_class_accuracy(real.test_logits.argmax(1), real.test_labels,
                                                       classifier.num_classes, classifier.class_names)
    floor["timing"] = {**timing, "total_s": round(time.perf_counter() - t0, 1)}
    _FLOOR[key] = floor
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(floor))
        os.replace(tmp, path)
    except OSError:
        pass                                        # a read-only home only costs the recomputation
    return floor


# ---------------------------------------------------------------- the entry point

def _command(source, n, out, classifier, data_dir, seed, inception_weights) -> str:
    parts = ["gan", "evaluate", str(source), "--n", str(n), "--seed", str(seed)]
    if out is not None:
        parts += ["--out", str(out)]
    if str(classifier) != "models/eval":
        parts += ["--classifier", str(classifier)]
    if str(data_dir) != FMNIST_DIR:
        parts += ["--data", str(data_dir)]
    if inception_weights:
        parts += ["--inception-weights", str(inception_weights)]
    return " ".join(parts)


def _summary(result: dict) -> dict:
    """The headline numbers stored in a model's manifest.json (``metrics``), each with its floor."""
    m, f = result["metrics"], result["floor"]
    out = {"n": result["n"], "seed": result["source"].get("seed"), "evaluated": result["evaluated"],
           "classifier_sha256": result["classifier"]["sha256"], "file": METRICS_FILE}
    for name, get in [("fd", lambda d: d["fd"]), ("kid", lambda d: d["kid"]["mean"]),
                      ("precision", lambda d: d["precision_recall"]["precision"]),
                      ("recall", lambda d: d["precision_recall"]["recall"]),
                      ("class_kl", lambda d: d["coverage"]["kl_uniform"]),
                      ("min_class_share", lambda d: d["coverage"]["min_share"]),
                      ("per_class_accuracy", lambda d: d["per_class_accuracy"]["mean"]),
                      ("parzen_ll", lambda d: d["parzen"]["log_likelihood"]),
                      ("parzen_se", lambda d: d["parzen"]["std_error"]),
                      ("fid_inception", lambda d: d["fid_inception"])]:
        try:
            out[name] = get(m)
        except (KeyError, TypeError):
            continue
        try:
            out[f"{name}_floor"] = get(f)
        except (KeyError, TypeError):
            pass
    return out


def _find_stats(manifest: dict | None) -> tuple[Path | None, str]:
    """The training run's stats.jsonl of an exported model (from its manifest's source checkpoint)."""
    ckpt = ((manifest or {}).get("source") or {}).get("checkpoint")
    if not ckpt:
        return None, "the source has no training run recorded"
    ckpt = Path(ckpt)
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    stats = run_dir / "stats.jsonl"
    return (stats, "") if stats.is_file() else (None, f"training log {stats} not found")


def evaluate(source: str | Path, n: int = 10000, out: str | Path | None = None, classifier: str | Path = "models/eval",
             data_dir: str | Path = FMNIST_DIR, seed: int = 0, inception_weights: str | Path | None = None,
             log=None) -> dict:
    """Evaluate ``source`` (model directory, BentoML tag, sampler output directory or image folder) with n
    samples; write metrics.json, report.md and PNG plots to ``out``; return the metrics dict.

    ``out`` defaults to the model directory itself for a model directory (its manifest then lists the new
    files and carries the headline numbers under "metrics", so the service still verifies it), else
    ./eval-report. Raises EvaluationError naming the problem for bad sources, shapes or counts.
    """
    import sys

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    t_start = time.perf_counter()
    clf = Classifier(classifier)
    if n < 1:
        raise EvaluationError(f"--n {n}: must be >= 1")
    _check_count(n, f"--n {n}", clf.feature_dim)
    if not Path(data_dir).is_dir():
        raise EvaluationError(f"--data {data_dir}: not a directory (expected the Fashion-MNIST IDX files)")
    inception = InceptionFeatures(inception_weights) if inception_weights else None

    timing: dict = {}
    t0 = time.perf_counter()
    samples: Samples = load_source(str(source), n, seed, clf.input_shape)
    timing["load_or_generate"] = round(time.perf_counter() - t0, 2)
    where = f"{source}"
    _check_count(len(samples.images), where, clf.feature_dim)
    log(f"evaluate: {len(samples.images)} images from {samples.kind} {source} "
        f"({timing['load_or_generate']:.1f}s)")

    real = real_data(clf, data_dir)
    t0 = time.perf_counter()
    floor = floor_metrics(real, clf, len(samples.images), seed)
    timing["floor"] = round(time.perf_counter() - t0, 2)
    log(f"evaluate: floor ready ({timing['floor']:.1f}s)")
    result_metrics = measure(samples.images, samples.requested, real, clf, seed=seed, timing=timing)
    predicted = result_metrics.pop("_predicted")

    floor = json.loads(json.dumps(floor))            # a copy: the cached floor stays as computed
    if inception is not None:
        t0 = time.perf_counter()
        ref = inception.run(real.test_images[:INCEPTION_REFERENCE])
        result_metrics["fid_inception"] = M.frechet_distance_features(inception.run(samples.images), ref)
        n_floor = min(len(samples.images), len(real.train_images) - PARZEN_VALID)
        floor_imgs = real.train_images[real.floor_order[:n_floor]]
        floor["fid_inception"] = M.frechet_distance_features(inception.run(floor_imgs), ref)
        timing["fid_inception"] = round(time.perf_counter() - t0, 2)
    if samples.requested is None:
        floor.pop("per_class_accuracy", None)

    # ---- output directory
    if out is None:
        out_dir = samples.model_dir if samples.model_dir is not None else Path(DEFAULT_OUT)
    else:
        out_dir = Path(out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EvaluationError(f"--out {out_dir}: cannot create it ({exc})") from exc

    import datetime as dt

    n_used = len(samples.images)
    result = {
        "version": METRICS_VERSION,
        "evaluated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "source": {"kind": samples.kind, **samples.info},
        "n": n_used,
        "n_requested": n,
        "reference": f"Fashion-MNIST test images ({len(real.test_images)})",
        "floor_description": f"{min(n_used, len(real.train_images) - PARZEN_VALID)} real training images "
                             "in place of the samples, measured the same way",
        "classifier": clf.describe(),
        "metrics": result_metrics,
        "floor": {k: v for k, v in floor.items() if k not in ("timing", "histogram_train")},
        "command": _command(source, n, out, classifier, data_dir, seed, inception_weights),
        "settings": {"kid": {"subsets": KID_SUBSETS, "subset_size": KID_SUBSET_SIZE, "kernel": "(x.y/d + 1)^3"},
                     "precision_recall_k": PR_K, "parzen_valid": PARZEN_VALID,
                     "parzen_sigmas": [round(float(s), 5) for s in M.PARZEN_SIGMAS],
                     "parzen_test": min(PARZEN_TEST, len(real.test_images)), "memorisation_queries": MEMO_QUERIES},
    }
    if n_used < n:
        result["note"] = f"the source holds only {n_used} images; evaluated all of them (asked for {n})"

    # ---- plots
    plots: dict[str, str] = {}
    try:
        groups = samples.requested if samples.requested is not None else predicted
        how = "requested class" if samples.requested is not None else "class predicted by the classifier"
        R.class_grid(samples.images, groups, clf.class_names, out_dir / R.CLASSES_PNG,
                     caption=f"samples by {how} (count in brackets)")
        plots[R.CLASSES_PNG] = R.CLASSES_PNG
        R.coverage_plot(result_metrics["coverage"]["histogram"], floor["coverage"]["histogram"], clf.class_names,
                        out_dir / R.COVERAGE_PNG,
                        caption=f"predicted-class shares; KL to uniform {result_metrics['coverage']['kl_uniform']:.3f}")
        plots[R.COVERAGE_PNG] = R.COVERAGE_PNG
        q = samples.images[:8]
        idx, dist = M.nearest_neighbours(q, real.train_images, k=6)
        R.neighbour_grid(q, real.train_images[idx], dist, out_dir / R.NEIGHBOURS_PNG,
                         caption="generated | 6 nearest training images (pixel L2 on [0,1])")
        plots[R.NEIGHBOURS_PNG] = R.NEIGHBOURS_PNG
        stats, why = _find_stats(samples.manifest)
        if stats is not None and R.training_plot(read_stats(stats), out_dir / R.TRAINING_PNG,
                                                 caption=f"{stats} (pixel FD = the loop's --fd-every record)"):
            plots[R.TRAINING_PNG] = R.TRAINING_PNG
            result["training_log"] = str(stats)
        else:
            result["training_note"] = why or f"{stats} holds no loss or FD records"
    except OSError as exc:
        raise EvaluationError(f"--out {out_dir}: cannot write the plots ({exc})") from exc

    timing["total_s"] = round(time.perf_counter() - t_start, 1)
    result["timing"] = timing
    R.write_markdown(result, out_dir, plots)
    (out_dir / METRICS_FILE).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if samples.model_dir is not None and out_dir.resolve() == Path(samples.model_dir).resolve():
        from service.modeldir import ModelDirError, load_model_dir, write_manifest

        manifest = dict(samples.manifest)
        manifest["metrics"] = _summary(result)
        try:
            write_manifest(out_dir, manifest)
            load_model_dir(out_dir)
        except ModelDirError as exc:
            raise EvaluationError(f"{out_dir}: could not update {out_dir / 'manifest.json'} ({exc})") from exc
    log(f"evaluate: wrote {out_dir / METRICS_FILE} and {out_dir / R.REPORT_MD} ({timing['total_s']:.0f}s)")
    return result
