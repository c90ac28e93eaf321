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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gan_service.core.atomic import atomic_write
from gan_service.core.accuracy import per_class_accuracy
from gan_service.core.fmnist import FMNIST_DIR, fmnist_fingerprint
from gan_service.core.stats import read_stats
from gan_service.evaluation import metrics as M
from gan_service.evaluation import report as R
from gan_service.evaluation.features import Classifier, InceptionFeatures
from gan_service.evaluation.sources import EvaluationError, Samples, load_fmnist, load_source
from gan_service.evaluation.views import ClassifierView, PixelPCAView

__all__ = ["EvaluationError", "evaluate", "measure", "real_data", "floor_metrics", "min_samples"]

METRICS_VERSION = 2            # of metrics.json and the cached floor; 2: every view's FD has its fd_terms
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
class RealReference:
    test_images: np.ndarray        # uint8 [10000, 28, 28, 1]
    test_labels: np.ndarray
    test_logits: np.ndarray
    test_features: np.ndarray
    train_images: np.ndarray       # uint8 [60000, 28, 28, 1]
    train_labels: np.ndarray
    floor_order: np.ndarray        # fixed permutation of the training set: floor samples first
    valid_images: np.ndarray       # the last PARZEN_VALID of floor_order (never floor samples)
    key: str
    views: dict = field(default_factory=dict)     # view name -> ViewReference (the classifier's own included)

    @property
    def test_radii(self) -> np.ndarray:
        """k-NN radii of the classifier features of the test images (the real manifold of precision)."""
        return self.views["classifier"].radii


@dataclass
class ViewReference:
    """One view with the test images' features in it and their k-NN radii (computed once)."""
    view: object                   # ClassifierView | PixelPCAView
    test_features: np.ndarray
    _radii: np.ndarray | None = None

    @property
    def radii(self) -> np.ndarray:
        if self._radii is None:
            self._radii = M.knn_radii(self.test_features, PR_K)
        return self._radii


_REAL: dict[tuple[str, ...], RealReference] = {}
_FLOOR: dict[str, dict] = {}
ROBUST_CLASSIFIER = "models/eval-robust"


def real_data(classifier: Classifier, data_dir: str | Path = FMNIST_DIR,
              extra_classifiers: tuple[Classifier, ...] = ()) -> RealReference:
    """Fashion-MNIST test images with their features in every view, and the training images; cached per process.

    Views: the classifier ("classifier"), each extra classifier (named by its manifest's recipe_name), and the
    test set's pixel PCA ("pixels_pca").
    """
    fingerprint = fmnist_fingerprint(data_dir)
    extra_ids = tuple(c.sha256 for c in extra_classifiers)
    cache_key = (classifier.sha256, *extra_ids, f"{Path(data_dir).resolve()}|{fingerprint}")
    if cache_key not in _REAL:
        test_x, test_y = load_fmnist(data_dir, "test")
        train_x, train_y = load_fmnist(data_dir, "train")
        logits, feats = classifier.run(test_x)
        order = np.random.default_rng(FLOOR_PERMUTATION_SEED).permutation(len(train_x))
        ids = "|".join((classifier.sha256, *extra_ids))
        key = hashlib.sha256(f"{ids}|{fingerprint}|v{METRICS_VERSION}".encode()).hexdigest()[:20]
        real = RealReference(test_x, test_y, logits, feats, train_x, train_y, order, train_x[order[-PARZEN_VALID:]], key)
        # every view with the test images' features in it (the classifier's are already computed)
        real.views["classifier"] = ViewReference(ClassifierView("classifier", classifier), feats)
        for extra in extra_classifiers:
            view = ClassifierView(extra.manifest.get("recipe_name") or extra.path.name, extra)
            real.views[view.name] = ViewReference(view, view.features(test_x))
        pca = PixelPCAView(test_x)
        real.views[pca.name] = ViewReference(pca, pca.features(test_x))
        _REAL[cache_key] = real
    return _REAL[cache_key]


def fd_with_terms(feats: np.ndarray, ref_feats: np.ndarray) -> dict:
    """{"fd": FD, "fd_terms": its mean and covariance terms and the variety ratio} of features [N, D] against
    reference features [M, D]: the one place the report's FD entry is laid out."""
    terms = M.frechet_breakdown(feats, ref_feats)
    return {"fd": terms.pop("fd"), "fd_terms": terms}


def view_metrics(ref: ViewReference, feats: np.ndarray, seed: int) -> dict:
    """FD (with its mean and covariance terms and the variety ratio), KID and precision/recall of features [N, D]
    against the test images' features in one view."""
    return {**fd_with_terms(feats, ref.test_features),
            "kid": M.kid(feats, ref.test_features, KID_SUBSETS, KID_SUBSET_SIZE, seed=seed),
            "precision_recall": M.precision_recall(ref.test_features, feats, k=PR_K, real_radii=ref.radii)}


# ---------------------------------------------------------------- measuring one set of images

def measure(images: np.ndarray, requested: np.ndarray | None, real: RealReference, classifier: Classifier,
            seed: int = 0, nn_queries: np.ndarray | None = None, parts: tuple[str, ...] | None = None,
            timing: dict | None = None) -> dict:
    """Every metric of uint8 images [N, 28, 28, 1] against the test images (``parts`` picks a subset).

    ``nn_queries``: the images whose nearest training image is searched (default: the first MEMO_QUERIES of
    ``images``; the floor passes unseen test images, since its samples are training images themselves).
    """
    parts = parts or ("fd", "kid", "precision_recall", "views", "coverage", "parzen", "memorisation")
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
        out.update(timed("fd", lambda: fd_with_terms(feats, ref)))
    if "kid" in parts:
        out["kid"] = timed("kid", lambda: M.kid(feats, ref, KID_SUBSETS, KID_SUBSET_SIZE, seed=seed))
    if "precision_recall" in parts:
        out["precision_recall"] = timed("precision_recall", lambda: M.precision_recall(ref, feats, k=PR_K,
                                                                                         real_radii=real.test_radii))
    if "views" in parts:
        out["views"] = timed("views", lambda: _all_views(images, feats, out, real, seed))
    if "coverage" in parts:
        out["coverage"] = M.class_coverage(pred, classifier.num_classes, classifier.class_names)
        if requested is not None:
            out["per_class_accuracy"] = per_class_accuracy(pred, requested, classifier.num_classes,
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


def _all_views(images: np.ndarray, classifier_feats: np.ndarray, done: dict, real: RealReference, seed: int) -> dict:
    """FD, KID and precision/recall in every view; the classifier view reuses what ``measure`` computed."""
    views = {}
    for name, ref in real.views.items():
        if name == "classifier" and all(k in done for k in ("fd", "fd_terms", "kid", "precision_recall")):
            views[name] = {k: done[k] for k in ("fd", "fd_terms", "kid", "precision_recall")}
            continue
        feats = classifier_feats if name == "classifier" else ref.view.features(images)
        views[name] = view_metrics(ref, feats, seed)
    return views


def _cache_dir() -> Path:
    return Path(os.environ.get("GAN_EVAL_CACHE", Path.home() / ".cache" / "gan-service" / "eval"))


def floor_metrics(real: RealReference, classifier: Classifier, n: int, seed: int = 0) -> dict:
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
    floor["per_class_accuracy"] = per_class_accuracy(real.test_logits.argmax(1), real.test_labels,
                                                       classifier.num_classes, classifier.class_names)
    floor["timing"] = {**timing, "total_s": round(time.perf_counter() - t0, 1)}
    _FLOOR[key] = floor
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(floor))
    except OSError:
        pass                                        # a read-only home only costs the recomputation
    return floor


# ---------------------------------------------------------------- the entry point

def _command(source, n, out, classifier, data_dir, seed, inception_weights, update_model) -> str:
    parts = ["gan", "evaluate", str(source), "--n", str(n), "--seed", str(seed)]
    if out is not None:
        parts += ["--out", str(out)]
    if update_model:
        parts.append("--update-model")
    if str(classifier) != "models/eval":
        parts += ["--classifier", str(classifier)]
    if str(data_dir) != FMNIST_DIR:
        parts += ["--data", str(data_dir)]
    if inception_weights:
        parts += ["--inception-weights", str(inception_weights)]
    return " ".join(parts)


HEADLINES = [("fd", lambda d: d["fd"]), ("kid", lambda d: d["kid"]["mean"]),
             ("precision", lambda d: d["precision_recall"]["precision"]),
             ("recall", lambda d: d["precision_recall"]["recall"]),
             ("class_kl", lambda d: d["coverage"]["kl_uniform"]),
             ("min_class_share", lambda d: d["coverage"]["min_share"]),
             ("per_class_accuracy", lambda d: d["per_class_accuracy"]["mean"]),
             ("parzen_ll", lambda d: d["parzen"]["log_likelihood"]),
             ("parzen_se", lambda d: d["parzen"]["std_error"]),
             ("fid_inception", lambda d: d["fid_inception"])]
VIEW_HEADLINES = [("fd", lambda v: v["fd"]), ("kid", lambda v: v["kid"]["mean"]),
                  ("precision", lambda v: v["precision_recall"]["precision"]),
                  ("recall", lambda v: v["precision_recall"]["recall"])]


def headline_numbers(result: dict) -> dict:
    """{name: value, name_floor: value}: the classifier's metrics, and per other view ``fd_<view>`` etc."""
    m, f = result["metrics"], result["floor"]
    getters = list(HEADLINES)
    for view in m.get("views", {}):
        if view != "classifier":
            getters += [(f"{name}_{view}", lambda d, g=get, v=view: g(d["views"][v])) for name, get in VIEW_HEADLINES]
    out = {}
    for name, get in getters:
        for key, source in ((name, m), (f"{name}_floor", f)):
            try:
                out[key] = get(source)
            except (KeyError, TypeError):
                continue
    return out


def _summary(result: dict) -> dict:
    """The headline numbers stored in a model's manifest.json (``metrics``), each with its floor."""
    return {"n": result["n"], "seed": result["source"].get("seed"), "evaluated": result["evaluated"],
            "classifier_sha256": result["classifier"]["sha256"], "file": METRICS_FILE, **headline_numbers(result)}


def _find_stats(manifest: dict | None) -> Path | None:
    """The training run's stats.jsonl of an exported model, when its run directory exists on this machine."""
    ckpt = ((manifest or {}).get("source") or {}).get("checkpoint")
    if not ckpt:
        return None
    ckpt = Path(ckpt)
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    stats = run_dir / "stats.jsonl"
    return stats if stats.is_file() else None


def _load_views(classifier, robust_classifier) -> tuple[Classifier, tuple[Classifier, ...]]:
    """The primary classifier and the extra classifier views (none when ``robust_classifier`` is None)."""
    clf = Classifier(classifier)
    try:
        extra = (Classifier(robust_classifier),) if robust_classifier else ()
    except EvaluationError as exc:
        raise EvaluationError(f"--robust-classifier {robust_classifier}: {exc}; train it with `gan evaluate "
                              f"--train-classifier --recipe robust --classifier {robust_classifier}`, or leave the "
                              "view out with --robust-classifier none") from exc
    return clf, extra


def _default_out(samples: Samples, source) -> Path:
    """eval-report/<model name> for a model, else eval-report/<folder name>: never inside the source."""
    name = (samples.manifest or {}).get("name") or Path(str(source)).name or "source"
    return Path(DEFAULT_OUT) / name


def evaluate(source: str | Path, n: int = 10000, out: str | Path | None = None, classifier: str | Path = "models/eval",
             data_dir: str | Path = FMNIST_DIR, seed: int = 0, inception_weights: str | Path | None = None,
             log=None, robust_classifier: str | Path | None = ROBUST_CLASSIFIER, update_model: bool = False) -> dict:
    """Evaluate ``source`` (model directory, BentoML tag, sampler output directory or image folder) with n
    samples in every view; write metrics.json, report.md and PNG plots to ``out``; return the metrics dict.

    ``out`` defaults to ./eval-report/<name>; the source is never written to unless ``update_model`` is set for a
    model directory, which then gets the report and a manifest listing the new files with the headline numbers
    under "metrics" (so the service still verifies it). Raises EvaluationError naming the problem.
    """
    import sys

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    t_start = time.perf_counter()
    clf, extra = _load_views(classifier, robust_classifier)
    _check_args(n, clf, data_dir)
    inception = InceptionFeatures(inception_weights) if inception_weights else None

    # samples, real data and the floor
    timing: dict = {}
    t0 = time.perf_counter()
    samples: Samples = load_source(str(source), n, seed, clf.input_shape)
    timing["load_or_generate"] = round(time.perf_counter() - t0, 2)
    _check_count(len(samples.images), f"{source}", clf.feature_dim)
    log(f"evaluate: {len(samples.images)} images from {samples.kind} {source} ({timing['load_or_generate']:.1f}s)")
    real = real_data(clf, data_dir, extra)
    t0 = time.perf_counter()
    floor = json.loads(json.dumps(floor_metrics(real, clf, len(samples.images), seed)))   # a copy of the cache
    timing["floor"] = round(time.perf_counter() - t0, 2)
    log(f"evaluate: floor ready ({timing['floor']:.1f}s)")
    metrics = measure(samples.images, samples.requested, real, clf, seed=seed, timing=timing)
    predicted = metrics.pop("_predicted")
    if inception is not None:
        _add_inception(inception, samples.images, real, metrics, floor, timing)
    if samples.requested is None:
        floor.pop("per_class_accuracy", None)

    out_dir = _output_dir(samples, source, out, update_model)
    result = _result(samples, n, real, clf, metrics, floor,
                     _command(source, n, out, classifier, data_dir, seed, inception_weights, update_model))
    plots = _write_plots(samples, predicted, real, clf, metrics, floor, out_dir, result)
    timing["total_s"] = round(time.perf_counter() - t_start, 1)
    result["timing"] = timing
    R.write_markdown(result, out_dir, plots)
    (out_dir / METRICS_FILE).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if update_model:
        _update_model_dir(samples, out_dir, result)
    result["report"] = str(out_dir / R.REPORT_MD)           # for the caller only: metrics.json holds no local path
    log(f"evaluate: wrote {out_dir / METRICS_FILE} and {out_dir / R.REPORT_MD} ({timing['total_s']:.0f}s)")
    return result


def _check_args(n: int, clf: Classifier, data_dir) -> None:
    if n < 1:
        raise EvaluationError(f"--n {n}: must be >= 1")
    _check_count(n, f"--n {n}", clf.feature_dim)
    if not Path(data_dir).is_dir():
        raise EvaluationError(f"--data {data_dir}: not a directory (expected the Fashion-MNIST IDX files)")


def _add_inception(inception: InceptionFeatures, images: np.ndarray, real: RealReference, metrics: dict, floor: dict,
                   timing: dict) -> None:
    """Standard FID of the samples and of the floor images against the test images."""
    t0 = time.perf_counter()
    ref = inception.run(real.test_images[:INCEPTION_REFERENCE])
    metrics["fid_inception"] = M.frechet_distance_features(inception.run(images), ref)
    n_floor = min(len(images), len(real.train_images) - PARZEN_VALID)
    floor["fid_inception"] = M.frechet_distance_features(inception.run(real.train_images[real.floor_order[:n_floor]]),
                                                         ref)
    timing["fid_inception"] = round(time.perf_counter() - t0, 2)


def _output_dir(samples: Samples, source, out, update_model: bool) -> Path:
    """--out, or the model directory with --update-model, or eval-report/<name>; created."""
    if update_model and samples.model_dir is None:
        raise EvaluationError(f"--update-model: {source} is not a model directory")
    if update_model and out is not None and Path(out).resolve() != Path(samples.model_dir).resolve():
        raise EvaluationError("--update-model writes into the model directory: leave out --out")
    out_dir = Path(samples.model_dir) if update_model else Path(out) if out is not None else _default_out(samples, source)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EvaluationError(f"--out {out_dir}: cannot create it ({exc})") from exc
    return out_dir


def _result(samples: Samples, n: int, real: RealReference, clf: Classifier, metrics: dict, floor: dict,
            command: str) -> dict:
    """The metrics.json document (without timing)."""
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
        "views": {name: ref.view.describe() for name, ref in real.views.items()},
        "metrics": metrics,
        "floor": {k: v for k, v in floor.items() if k not in ("timing", "histogram_train")},
        "command": command,
        "settings": {"kid": {"subsets": KID_SUBSETS, "subset_size": KID_SUBSET_SIZE, "kernel": "(x.y/d + 1)^3"},
                     "precision_recall_k": PR_K, "parzen_valid": PARZEN_VALID,
                     "parzen_sigmas": [round(float(s), 5) for s in M.PARZEN_SIGMAS],
                     "parzen_test": min(PARZEN_TEST, len(real.test_images)), "memorisation_queries": MEMO_QUERIES},
    }
    if n_used < n:
        result["note"] = f"the source holds only {n_used} images; evaluated all of them (asked for {n})"
    return result


def _write_plots(samples: Samples, predicted, real: RealReference, clf: Classifier, metrics: dict, floor: dict,
                 out_dir: Path, result: dict) -> dict[str, str]:
    """Class grid, coverage, nearest neighbours and (when the run still exists here) training curves."""
    plots: dict[str, str] = {}
    try:
        groups = samples.requested if samples.requested is not None else predicted
        how = "requested class" if samples.requested is not None else "class predicted by the classifier"
        R.class_grid(samples.images, groups, clf.class_names, out_dir / R.CLASSES_PNG,
                     caption=f"samples by {how} (count in brackets)")
        plots[R.CLASSES_PNG] = R.CLASSES_PNG
        R.coverage_plot(metrics["coverage"]["histogram"], floor["coverage"]["histogram"], clf.class_names,
                        out_dir / R.COVERAGE_PNG,
                        caption=f"predicted-class shares; KL to uniform {metrics['coverage']['kl_uniform']:.3f}")
        plots[R.COVERAGE_PNG] = R.COVERAGE_PNG
        q = samples.images[:8]
        idx, dist = M.nearest_neighbours(q, real.train_images, k=6)
        R.neighbour_grid(q, real.train_images[idx], dist, out_dir / R.NEIGHBOURS_PNG,
                         caption="generated | 6 nearest training images (pixel L2 on [0,1])")
        plots[R.NEIGHBOURS_PNG] = R.NEIGHBOURS_PNG
        stats = _find_stats(samples.manifest)
        if stats is not None and R.training_plot(read_stats(stats), out_dir / R.TRAINING_PNG,
                                                 caption="training run's stats.jsonl (pixel FD = --fd-every)"):
            plots[R.TRAINING_PNG] = R.TRAINING_PNG
    except OSError as exc:
        raise EvaluationError(f"--out {out_dir}: cannot write the plots ({exc})") from exc
    return plots


def _update_model_dir(samples: Samples, out_dir: Path, result: dict) -> None:
    """--update-model: the manifest lists the new files and carries the headline numbers; re-verified."""
    from gan_service.serving.modeldir import ModelDirError, load_model_dir, write_manifest

    manifest = dict(samples.manifest)
    manifest["metrics"] = _summary(result)
    try:
        write_manifest(out_dir, manifest)
        load_model_dir(out_dir)
    except ModelDirError as exc:
        raise EvaluationError(f"{out_dir}: could not update {out_dir / 'manifest.json'} ({exc})") from exc
