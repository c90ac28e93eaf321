"""gan evaluate: the metric functions on hand-checked inputs, and proof that the numbers mean something.

- KID / FD / precision-recall / coverage / Parzen against values worked out by hand;
- degrading real test images (Gaussian noise, blur) makes FD and KID rise and precision fall, step by step;
- a "generator" that only makes one class is caught by coverage (KL near log 10, smallest share 0) and recall;
- the real-data floor is far below a barely-trained generator (exported tiny models);
- the sources (model dir, sampler output, folder) give the service's images; bad input gives clear errors.
Uses the shipped classifier in models/eval.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from gan_service.core.accuracy import per_class_accuracy
from gan_service.evaluation import metrics as M
from gan_service.evaluation.evaluate import EvaluationError, evaluate, real_data
from gan_service.evaluation.features import Classifier
from gan_service.evaluation.sources import load_source

REPO = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist")
CLASSIFIER = REPO / "gan_service" / "models" / "eval"
ROBUST = REPO / "gan_service" / "models" / "eval-robust"

pytestmark = pytest.mark.skipif(not (FMNIST / "t10k-images-idx3-ubyte.gz").exists(),
                                reason="apt-get install dataset-fashion-mnist")


@pytest.fixture(scope="module")
def clf() -> Classifier:
    return Classifier(CLASSIFIER)


@pytest.fixture(scope="module")
def real(clf):
    return real_data(clf, FMNIST)


@pytest.fixture(autouse=True)
def _own_cache_and_lighter_settings(tmp_path_factory, monkeypatch):
    """Floor results are cached on disk: keep the tests' cache out of the user's home. Fewer KID subsets,
    nearest-neighbour queries, Parzen test images and Inception reference images than `gan evaluate` uses keep
    the suite fast; nothing tested depends on them."""
    import gan_service.evaluation.evaluate as E

    monkeypatch.setenv("GAN_EVAL_CACHE", str(tmp_path_factory.getbasetemp() / "eval-cache"))
    monkeypatch.setattr(E, "KID_SUBSETS", 20)
    monkeypatch.setattr(E, "MEMO_QUERIES", 100)
    monkeypatch.setattr(E, "PARZEN_TEST", 2000)
    monkeypatch.setattr(E, "INCEPTION_REFERENCE", 300)


def _write_pngs(folder: Path, images: np.ndarray, labels=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        name = f"{i:06d}" + (f"_c{labels[i]}" if labels is not None else "") + ".png"
        Image.fromarray(img[..., 0] if img.ndim == 3 and img.shape[2] == 1 else img).save(folder / name)
    return folder


# ---------------------------------------------------------------- the shipped classifier

def test_classifier_manifest_and_accuracy(clf, real):
    m = clf.manifest
    assert m["test_accuracy"] >= 0.93 and m["feature_dim"] == 128 and len(m["class_names"]) == 10
    assert m["command"].startswith("gan evaluate --train-classifier")
    acc = float((real.test_logits.argmax(1) == real.test_labels).mean())    # re-measured through onnxruntime
    assert acc == pytest.approx(m["test_accuracy"], abs=1e-4)
    assert real.test_features.shape == (10000, 128)


# ---------------------------------------------------------------- metric functions, by hand

def test_kid_hand_checked_and_unbiased():
    x = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    y = np.array([[2.0, 0.0], [0.0, 0.0]])
    k = lambda a, b: (a @ b / 2 + 1) ** 3                            # cubic kernel, d = 2
    kxx = sum(k(x[i], x[j]) for i in range(3) for j in range(3) if i != j) / 6
    kyy = sum(k(y[i], y[j]) for i in range(2) for j in range(2) if i != j) / 2
    kxy = sum(k(a, b) for a in x for b in y) / 6
    assert M.mmd2_unbiased(x, y) == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-6)

    rng = np.random.default_rng(0)
    same = [M.mmd2_unbiased(rng.standard_normal((100, 8)), rng.standard_normal((100, 8))) for _ in range(300)]
    se = np.std(same) / math.sqrt(len(same))
    assert abs(np.mean(same)) < 3 * se                                # zero in expectation: unbiased
    a = rng.standard_normal((100, 8))
    b = rng.standard_normal((100, 8))
    biased = (M._poly_kernel(a, a).mean() + M._poly_kernel(b, b).mean() - 2 * M._poly_kernel(a, b).mean())
    assert biased > 10 * se                                           # the V-statistic is not
    # Identical sets: exactly -2/(m-1) (mean of the diagonal - mean of all kernel values), -> 0 as 1/m.
    a = rng.standard_normal((1000, 8))
    kaa = (a @ a.T / 8 + 1) ** 3
    assert M.mmd2_unbiased(a, a) == pytest.approx(-2 / 999 * (np.diag(kaa).mean() - kaa.mean()), rel=1e-5)
    identical = M.kid(a, a, subsets=5, subset_size=1000)
    shifted = M.kid(a, a + 1.0, subsets=5, subset_size=1000)
    assert abs(identical["mean"]) < 0.01 * shifted["mean"] and identical["subset_size"] == 1000


def test_frechet_distance_of_gaussians():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5000, 16))
    mu = np.linspace(-1, 1, 16)
    assert M.frechet_distance_features(x, x + mu) == pytest.approx(float((mu ** 2).sum()), rel=1e-9)
    assert M.frechet_distance_features(x, x) == pytest.approx(0.0, abs=1e-9)
    # x vs 2x: covariances C and 4C, (C 4C)^1/2 = 2C, so FD = Tr(C + 4C - 4C) = Tr(C) (= 16 for N(0, I))
    trace = float(np.trace(np.cov(x, rowvar=False)))
    mean_term = float((x.mean(0) ** 2).sum())                        # means m and 2m
    assert M.frechet_distance_features(x, 2 * x) == pytest.approx(trace + mean_term, rel=1e-9)
    assert trace == pytest.approx(16.0, rel=0.05)
    # the breakdown: the same FD in its two terms, and the variety ratio Tr(C_a) / Tr(C_b)
    doubled = M.frechet_breakdown(2 * x, x)
    assert doubled["fd"] == pytest.approx(M.frechet_distance_features(2 * x, x), rel=1e-12)
    assert doubled["mean_term"] == pytest.approx(mean_term, rel=1e-9)
    assert doubled["cov_term"] == pytest.approx(trace, rel=1e-9)
    assert doubled["variety_ratio"] == pytest.approx(4.0, rel=1e-9)
    shifted = M.frechet_breakdown(x + mu, x)
    assert shifted["cov_term"] == pytest.approx(0.0, abs=1e-9) and shifted["variety_ratio"] == pytest.approx(1.0)
    assert M.frechet_breakdown(0.5 * x, x)["variety_ratio"] == pytest.approx(0.25, rel=1e-9)


def test_precision_recall_hand_checked():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((500, 8))
    assert M.precision_recall(x, x) == {"precision": 1.0, "recall": 1.0, "k": 3}
    assert M.precision_recall(x, x + 100.0) == {"precision": 0.0, "recall": 0.0, "k": 3}
    real = np.arange(5.0)[:, None]                # 0..4 on a line: k=1 radii are all 1
    fake = np.array([[0.5], [10.0]])              # one inside, one far: precision 1/2
    # fake radii (k=1) are 9.5: every real point lies within 9.5 of 0.5 -> recall 1
    assert M.precision_recall(real, fake, k=1) == {"precision": 0.5, "recall": 1.0, "k": 1}
    assert M.knn_radii(real, 2).tolist() == [2.0, 1.0, 1.0, 1.0, 2.0]


def test_coverage_and_per_class_accuracy_hand_checked():
    cov = M.class_coverage(np.array([0, 1] * 50), 10)
    assert cov["kl_uniform"] == pytest.approx(math.log(5)) and cov["min_share"] == 0.0
    assert cov["classes_present"] == 2 and len(cov["missing_classes"]) == 8
    assert M.class_coverage(np.arange(1000) % 10, 10)["kl_uniform"] == pytest.approx(0.0, abs=1e-12)
    acc = per_class_accuracy(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2]), 3)
    assert acc["per_class"] == {"0": 1.0, "1": 0.5, "2": 1.0} and acc["overall"] == 0.75


def test_parzen_hand_checked():
    test = np.zeros((1, 2, 2, 1), np.uint8)
    samples = np.array([[[[255], [0]], [[0], [0]]], [[[0], [0]], [[0], [0]]]], np.uint8)   # distances^2: 1 and 0
    sigma, d = 0.5, 4
    expected = math.log(0.5 * (math.exp(-1 / (2 * sigma ** 2)) + 1.0)) - d / 2 * math.log(2 * math.pi * sigma ** 2)
    assert M.parzen_log_likelihoods(test, samples, [sigma])[0, 0] == pytest.approx(expected, rel=1e-6)
    valid = np.zeros((3, 2, 2, 1), np.uint8)
    out = M.parzen(np.zeros((4, 2, 2, 1), np.uint8), samples, valid, sigmas=[0.1, 0.5, 1.0])
    assert out["sigma"] == 0.1 and out["std_error"] == pytest.approx(0.0, abs=1e-9)   # smallest sigma wins at 0


# ---------------------------------------------------------------- the metrics mean something

def _noise(images, std, rng):
    return np.clip(images.astype(np.float64) + rng.normal(0, std, images.shape), 0, 255).round().astype(np.uint8)


def _blur(images, radius):
    if radius == 0:
        return images
    return np.stack([np.asarray(Image.fromarray(im[..., 0]).filter(ImageFilter.GaussianBlur(radius)))[..., None]
                     for im in images])


@pytest.mark.parametrize("kind,levels,falls", [("noise", [0, 8, 16, 32, 48], (0, 32)),
                                                ("blur", [0, 0.5, 0.75, 1.0, 1.5, 2.0], (0.5, 1.0))])
def test_degradation_is_monotone(clf, real, kind, levels, falls):
    """2000 real test images, increasingly degraded (Gaussian noise of std `level` grey levels, or a Gaussian
    blur of radius `level` pixels), against 3000 real training images: FD and KID rise and recall falls at every
    step. Precision falls by at least 0.03 at every step between the levels `falls` and stays below 0.6x the clean
    images' after; elsewhere it does not move on its own (measured: 0.824 -> 0.822 at blur radius 0.5, 0.286 ->
    0.276 from noise 32 to 48; under blur it bottoms out at ~0.44 from radius 1 and creeps back up, 0.52 at radius 3:
    heavily blurred images land where outlier real images have wide k-NN balls, a known weakness of k-NN precision;
    FD, KID and recall are not fooled)."""
    rng = np.random.default_rng(3)
    reference = clf.run(real.train_images[real.floor_order[:3000]])[1]
    radii = M.knn_radii(reference, 3)
    base = real.test_images[:2000]
    rows = []
    for level in levels:
        images = _noise(base, level, rng) if kind == "noise" else _blur(base, level)
        feats = clf.run(images)[1]
        pr = M.precision_recall(reference, feats, real_radii=radii)
        rows.append((M.frechet_distance_features(feats, reference), M.kid(feats, reference, 20, 1000)["mean"],
                     pr["precision"], pr["recall"]))
    fd, kid, precision, recall = map(np.array, zip(*rows))
    print(f"\n{kind} {levels}: FD {fd.round(2)}, KID {kid.round(4)}, precision {precision.round(3)}, "
          f"recall {recall.round(3)}")
    assert (np.diff(fd) > 0).all() and (np.diff(kid) > 0).all() and (np.diff(recall) < 0).all()
    first, last = levels.index(falls[0]), levels.index(falls[1])
    assert (np.diff(precision[first:last + 1]) < -0.03).all(), precision
    assert (precision[last:] < 0.6 * precision[0]).all(), precision
    assert fd[-1] > 50 * fd[0] and kid[0] < 0.01 * kid[-1]


def _checkerboard(images, amplitude):
    """A period-2 checkerboard of +-amplitude grey levels: the transposed-convolution artefact."""
    checker = ((np.arange(28)[:, None] + np.arange(28)[None, :]) % 2 * 2 - 1)[None, :, :, None]
    return np.clip(images.astype(np.float64) + amplitude * checker, 0, 255).round().astype(np.uint8)


# Levels of each degradation; the first is the clean image. Noise in grey levels (std), blur radius in pixels,
# checkerboard amplitude in grey levels.
LEVELS = {"noise": [0, 5, 10, 25, 50], "blur": [0, 0.5, 1.0, 1.5, 2.0], "checkerboard": [0, 4, 8, 16, 32]}


@pytest.fixture(scope="module")
def every_view(clf):
    return real_data(clf, FMNIST, (Classifier(ROBUST),))


# Least rise of FD from the clean images to the mildest and to the strongest level of each degradation, per view
# (measured, 2026-12-02: mildest noise / blur / checkerboard 1.9x / 5.2x / 1.7x for the classifier, 1.9x / 4.6x /
# 1.9x for the robust classifier; strongest 75-111x for both). Pixel PCA keeps the top 64 components only, so it is
# almost blind to mild pixel-level noise and checkerboards (1.04x at noise 5 and checkerboard 4): it must rise at
# every step, and by 4x at the strongest level (7.6x / 45x / 5.1x measured).
MILDEST_RISE = {"classifier": 1.4, "robust": 1.4, "pixels_pca": 1.0}
STRONGEST_RISE = {"classifier": 20.0, "robust": 20.0, "pixels_pca": 4.0}


@pytest.mark.parametrize("kind", list(LEVELS))
def test_every_view_rises_steeply_with_degradation(every_view, kind):
    """2000 test images, increasingly degraded, against 3000 training images, in every view (the classifier, the
    robust classifier and pixel PCA): FD rises at every step (and KID in both classifier views), the mildest
    degradation already lifts FD well above the clean images' in the classifier views, the strongest by 20x."""
    from gan_service.evaluation.evaluate import view_metrics

    rng = np.random.default_rng(5)
    base, reference = every_view.test_images[:2000], every_view.train_images[every_view.floor_order[:3000]]
    degraded = {"noise": lambda lv: _noise(base, lv, rng), "blur": lambda lv: _blur(base, lv),
                "checkerboard": lambda lv: _checkerboard(base, lv)}[kind]
    images = [degraded(level) for level in LEVELS[kind]]
    table = {}
    for name, ref in every_view.views.items():
        ref3k = type(ref)(ref.view, ref.view.features(reference))
        rows = [view_metrics(ref3k, ref.view.features(im), seed=0) for im in images]
        fd = np.array([r["fd"] for r in rows])
        kid = np.array([r["kid"]["mean"] for r in rows])
        table[name] = fd
        print(f"\n{kind} {LEVELS[kind]} {name}: FD {fd.round(3)} ({(fd / fd[0]).round(1)}x), KID {kid.round(5)}")
        assert (np.diff(fd) > 0).all() and (name == "pixels_pca" or (np.diff(kid) > 0).all()), name
        assert fd[1] > MILDEST_RISE[name] * fd[0] and fd[-1] > STRONGEST_RISE[name] * fd[0], name
    assert set(table) == {"classifier", "robust", "pixels_pca"}


def test_views_agree_on_a_ranked_set_of_generators(tiny_models, every_view):
    """Real training images, the two shipped models and a 3-step model (5000 samples each): every view puts the
    real images first, the untrained model last and both shipped models between them. The two shipped models are
    not ranked against each other: since the self-conditioned default model (2026-12-02) the views disagree on them
    (pixels_pca puts the default model ahead, the classifier views the conditional one; docs/quality.md says so).
    (The two 3-step models are not both in the set either: equally bad, within 2-5%, ordered differently.)"""
    from gan_service.core.frechet import frechet_distance_features

    # 5000 each: FD's small-sample bias grows as n shrinks, and at 1500 it put real images (0.25) within 1.5x of the
    # 28,000-step default model (0.38) in pixels_pca, though at 10,000 they are 0.07 against 0.23
    sets = {"real": every_view.train_images[every_view.floor_order[:5000]]}
    for name, model in (("fmnist-dcgan", REPO / "gan_service" / "models" / "fmnist-dcgan"),
                        ("fmnist-cdcgan", REPO / "gan_service" / "models" / "fmnist-cdcgan"),
                        ("tiny-dc", tiny_models["dc"])):
        sets[name] = load_source(str(model), 5000, 0, (28, 28, 1)).images
    for view, ref in every_view.views.items():
        fd = {name: frechet_distance_features(ref.view.features(images), ref.test_features)
              for name, images in sets.items()}
        print(f"\n{view}: " + ", ".join(f"{k} {fd[k]:.3f}" for k in sorted(fd, key=fd.get)))
        for shipped in ("fmnist-dcgan", "fmnist-cdcgan"):
            # at least 1.5x apart from each end (the closest: real against the default model in pixels_pca)
            assert 1.5 * fd["real"] < fd[shipped] and 2 * fd[shipped] < fd["tiny-dc"], (view, shipped, fd)


def test_one_class_generator_is_caught(real, tmp_path):
    """Real trousers only: perfect images, so precision stays high, but coverage and recall expose it."""
    trousers = real.train_images[real.train_labels == 1][:500]
    folder = _write_pngs(tmp_path / "trousers", trousers)
    result = evaluate(folder, n=500, out=tmp_path / "report", classifier=CLASSIFIER, data_dir=FMNIST, log=print)
    m, f = result["metrics"], result["floor"]
    print(json.dumps({"model": {k: m[k] for k in ("fd", "precision_recall")}, "cov": m["coverage"]["kl_uniform"],
                      "floor": {k: f[k] for k in ("fd", "precision_recall")}}, indent=1))
    assert m["coverage"]["kl_uniform"] > 2.0 and m["coverage"]["kl_uniform"] <= math.log(10) + 1e-9
    assert m["coverage"]["min_share"] < 0.005 and max(m["coverage"]["histogram"]) > 0.9
    assert f["coverage"]["kl_uniform"] < 0.02 and f["coverage"]["min_share"] > 0.07
    assert m["precision_recall"]["recall"] < 0.5 * f["precision_recall"]["recall"]
    assert f["precision_recall"]["recall"] > 0.6
    assert m["memorisation"]["median_nn_distance"] < 0.01 < f["memorisation"]["median_nn_distance"]  # copies
    assert m["precision_recall"]["precision"] > 0.6                     # each image alone looks real
    assert m["fd"] > 20 * f["fd"]
    for name in ("metrics.json", "report.md", "eval-classes.png", "eval-coverage.png", "eval-neighbours.png"):
        assert (tmp_path / "report" / name).is_file(), name
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["n"] == 500


def test_floor_is_far_below_an_untrained_generator(tiny_models, real, tmp_path):
    """Barely-trained (3 steps) exported models, evaluated with --update-model (copies: the fixture is shared): the
    model directory gets metrics.json, the report and plots, and its manifest lists them (the service still verifies
    it) with the headline numbers of every view."""
    import shutil

    from gan_service.serving.modeldir import load_model_dir

    results = {}
    for key in ("dc", "cdc"):
        model = shutil.copytree(tiny_models[key], tmp_path / key)
        results[key] = r = evaluate(model, n=500, classifier=CLASSIFIER, data_dir=FMNIST, log=print,
                                    update_model=True)
        m, f = r["metrics"], r["floor"]
        print(key, {"fd": (m["fd"], f["fd"]), "kid": (m["kid"]["mean"], f["kid"]["mean"]),
                    "precision": (m["precision_recall"]["precision"], f["precision_recall"]["precision"]),
                    "recall": (m["precision_recall"]["recall"], f["precision_recall"]["recall"]),
                    "parzen": (m["parzen"]["log_likelihood"], f["parzen"]["log_likelihood"])})
        assert m["fd"] > 20 * f["fd"]
        assert m["kid"]["mean"] > 20 * max(f["kid"]["mean"], f["kid"]["std"])
        assert m["precision_recall"]["recall"] < f["precision_recall"]["recall"] - 0.3
        assert m["parzen"]["log_likelihood"] < f["parzen"]["log_likelihood"] - 5 * f["parzen"]["std_error"]
        md = load_model_dir(model)                                         # sha256 of every file still match
        for name in ("metrics.json", "report.md", "eval-classes.png"):
            assert name in md.files, name
        assert md.manifest["metrics"]["fd"] == m["fd"] and md.manifest["metrics"]["fd_floor"] == f["fd"]
        for view in ("robust", "pixels_pca"):
            assert md.manifest["metrics"][f"fd_{view}"] == m["views"][view]["fd"]
            assert md.manifest["metrics"][f"fd_{view}"] > 20 * md.manifest["metrics"][f"fd_{view}_floor"], view
        assert sorted(m["views"]) == ["classifier", "pixels_pca", "robust"]
        for view, vm in m["views"].items():        # every view's FD in its two terms; the floor varies like real data
            terms = vm["fd_terms"]
            assert terms["mean_term"] + terms["cov_term"] == pytest.approx(vm["fd"], rel=1e-9)
            floor_ratio = f["views"][view]["fd_terms"]["variety_ratio"]
            assert abs(floor_ratio - 1) < 0.1 and abs(terms["variety_ratio"] - 1) > 0.1, (view, terms, floor_ratio)
    assert "per_class_accuracy" in results["cdc"]["metrics"] and "per_class_accuracy" not in results["dc"]["metrics"]
    assert results["cdc"]["source"]["labels"] == "balanced"
    assert results["cdc"]["floor"]["per_class_accuracy"]["mean"] > 0.9      # the classifier on real test images


def test_evaluate_leaves_the_model_directory_alone_by_default(tiny_models, tmp_path, monkeypatch):
    """Without --out the report goes to ./eval-report/<model name>; every file of the model keeps its bytes, and
    the report names no directory of this machine. --update-model with a non-model source is refused."""
    import hashlib
    import shutil

    model = shutil.copytree(tiny_models["dc"], tmp_path / "tiny-dc")
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in model.iterdir()}
    monkeypatch.chdir(tmp_path)
    result = evaluate(model, n=300, classifier=CLASSIFIER, data_dir=FMNIST)
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in model.iterdir()}
    assert after == before
    report = tmp_path / "eval-report" / "tiny-dc"
    assert Path(result["report"]) == Path("eval-report/tiny-dc/report.md") and (report / "metrics.json").is_file()
    text = (report / "report.md").read_text()
    given = text.replace(str(model), "").replace(str(CLASSIFIER), "")        # paths the caller passed in
    assert "not found" not in text and str(Path.home()) not in given and "/tmp" not in given, text
    assert "| view | mean term | covariance term | variety ratio | floor |" in text
    _write_pngs(tmp_path / "imgs", real_data(Classifier(CLASSIFIER), FMNIST).test_images[:200])
    with pytest.raises(EvaluationError, match="--update-model: .* is not a model directory"):
        evaluate(tmp_path / "imgs", n=200, classifier=CLASSIFIER, data_dir=FMNIST, update_model=True)


# ---------------------------------------------------------------- sources give the service's images

def test_sources_agree_with_the_sampler(tiny_models, tmp_path):
    from gan_service.serving.sampler import SampleOptions, sample

    direct = load_source(str(tiny_models["cdc"]), 150, 7, (28, 28, 1))
    assert direct.images.shape == (150, 28, 28, 1) and direct.requested.tolist() == [i % 10 for i in range(150)]
    for fmt in ("npy", "png-tar", "png"):
        out = tmp_path / fmt
        sample(str(tiny_models["cdc"]), 150, 7, out, labels="balanced", fmt=fmt, shard_size=64,
               options=SampleOptions(batch=64, workers=1, progress=False))
        got = load_source(str(out), 150, 0, (28, 28, 1))
        assert got.kind == "sampler" and np.array_equal(got.images, direct.images), fmt
        assert np.array_equal(got.requested, direct.requested), fmt
    folder = load_source(str(tmp_path / "png" / "png"), 100, 0, (28, 28, 1))     # a plain folder of its PNGs
    assert folder.kind == "folder" and np.array_equal(folder.images, direct.images[:100])


# ---------------------------------------------------------------- bad input

def test_bad_inputs_name_the_problem(real, tmp_path):
    def fails(source, match, n=200):
        with pytest.raises(EvaluationError, match=match):
            evaluate(source, n=n, out=tmp_path / "out", classifier=CLASSIFIER, data_dir=FMNIST)

    (tmp_path / "empty").mkdir()
    fails(tmp_path / "empty", "no images found")
    _write_pngs(tmp_path / "big", np.zeros((3, 32, 32, 1), np.uint8))
    fails(tmp_path / "big", "32x32 pixels")
    _write_pngs(tmp_path / "rgb", np.zeros((3, 28, 28, 3), np.uint8))
    fails(tmp_path / "rgb", "3-channel")
    _write_pngs(tmp_path / "few", real.test_images[:50])
    fails(tmp_path / "few", "50 sample.*Frechet distance needs at least 129", n=1000)
    fails(tmp_path / "few", "--n 20.*needs at least 129", n=20)
    fails(tmp_path / "missing", "no such model directory")
    fails(CLASSIFIER, "evaluation classifier")
    (tmp_path / "notes.txt").write_text("x")
    fails(tmp_path / "notes.txt", "not a directory")
    from gan_service.serving.sampler import SampleOptions, sample

    sampler = tmp_path / "sampler"                   # a real sampler output whose index lists no finished shard yet
    sample(str(REPO / "tests" / "data" / "tiny-dc"), 10, 1, sampler, fmt="npy", shard_size=10,
           options=SampleOptions(batch=16, workers=1, progress=False))
    index = json.loads((sampler / "index.json").read_text())
    (sampler / "index.json").write_text(json.dumps({**index, "shards": [], "complete": False}))
    fails(sampler, "no finished shards")
    (sampler / "index.json").write_text(json.dumps({"format": "npy", "shards": []}))
    fails(sampler, "damaged index")
    with pytest.raises(EvaluationError, match="no evaluation classifier"):
        evaluate(tmp_path / "few", n=200, classifier=tmp_path / "nothing", data_dir=FMNIST)


def test_cli_exit_code_2_with_a_message(tmp_path):
    (tmp_path / "empty").mkdir()
    for args, match in (([str(tmp_path / "empty")], "no images found"),
                        ([str(tmp_path / "empty"), "--n", "10"], "needs at least 129")):
        proc = subprocess.run([sys.executable, "-m", "gan_service.cli", "evaluate", *args], cwd=REPO, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("gan evaluate: error: ") and match in proc.stderr, proc.stderr


def test_cli_prints_a_summary_of_every_view(real, tmp_path):
    folder = _write_pngs(tmp_path / "imgs", real.train_images[real.floor_order[-2500:-2200]])
    proc = subprocess.run([sys.executable, "-m", "gan_service.cli", "evaluate", str(folder), "--n", "300", "--out",
                           str(tmp_path / "r")], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "GAN_EVAL_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) < 15, proc.stdout
    for title in ("classifier (models/eval)", "robust classifier", "pixels, 64 principal components"):
        assert any(line.startswith(title) for line in lines), (title, proc.stdout)


# ---------------------------------------------------------------- standard FID (Inception-v3, user-supplied)

def _fake_inception(path: Path) -> Path:
    """A stand-in with the real network's interface: [N, 3, 299, 299] -> [N, 2048] (average colour, projected)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((3, 2048)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("MatMul", ["f", "w"], ["pool3"])], "fake_inception",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 299, 299])],
        [helper.make_tensor_value_info("pool3", TensorProto.FLOAT, ["n", 2048])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.slow
def test_inception_fid_plumbing(real, tmp_path):
    folder = _write_pngs(tmp_path / "imgs", _noise(real.test_images[:200], 64, np.random.default_rng(0)))
    result = evaluate(folder, n=200, out=tmp_path / "r", classifier=CLASSIFIER, data_dir=FMNIST,
                      inception_weights=_fake_inception(tmp_path / "fake.onnx"))
    assert result["metrics"]["fid_inception"] > result["floor"]["fid_inception"] >= 0
    with pytest.raises(EvaluationError, match="expected an ONNX file"):
        evaluate(folder, n=200, out=tmp_path / "r", classifier=CLASSIFIER, data_dir=FMNIST,
                 inception_weights=tmp_path / "imgs" / "000000.png")


INCEPTION = Path(os.environ.get("GAN_INCEPTION_WEIGHTS", REPO / "gan_service" / "models" / "inception" / "inception-fid.onnx"))


@pytest.mark.slow
@pytest.mark.skipif(not INCEPTION.is_file(), reason="no Inception-v3 FID weights (set GAN_INCEPTION_WEIGHTS)")
def test_standard_fid_with_real_inception_weights(real, tmp_path):
    # 500 real images that are not the floor's (the floor is the first 500 of the permutation): close to the floor
    folder = _write_pngs(tmp_path / "imgs", real.train_images[real.floor_order[-2500:-2000]])
    result = evaluate(folder, n=500, out=tmp_path / "r", classifier=CLASSIFIER, data_dir=FMNIST,
                      inception_weights=INCEPTION)
    assert result["metrics"]["fid_inception"] < 1.3 * result["floor"]["fid_inception"]
    blurred = _write_pngs(tmp_path / "blurred", _blur(real.test_images[:500], 1.5))
    result = evaluate(blurred, n=500, out=tmp_path / "r2", classifier=CLASSIFIER, data_dir=FMNIST,
                      inception_weights=INCEPTION)
    assert result["metrics"]["fid_inception"] > 2 * result["floor"]["fid_inception"]


def test_classifier_directory_is_verified_by_the_model_directory_loader(tmp_path):
    """A modified classifier file is refused with the model-directory loader's own size/sha256 message."""
    import shutil

    bad = shutil.copytree(CLASSIFIER, tmp_path / "eval")
    data = bytearray((bad / "classifier.onnx").read_bytes())
    data[-5] ^= 0xFF                                            # same size, different bytes
    (bad / "classifier.onnx").write_bytes(bytes(data))
    with pytest.raises(EvaluationError, match="sha256 .* does not match manifest.json"):
        Classifier(bad)
    (bad / "classifier.onnx").unlink()
    with pytest.raises(EvaluationError, match="listed in manifest.json but missing"):
        Classifier(bad)


def test_crafted_sampler_index_cannot_point_outside_its_directory(tmp_path):
    """gan evaluate reads a sampler output through the sampler's own index reader: a shard name with '..' is refused."""
    from gan_service.evaluation.sources import load_source
    from gan_service.serving.sampler import SampleOptions, sample

    out = tmp_path / "s"
    sample(str(REPO / "tests" / "data" / "tiny-dc"), 20, 1, out, fmt="npy", shard_size=10,
           options=SampleOptions(batch=16, workers=1, progress=False))
    assert load_source(str(out), 20, 0, (28, 28, 1)).images.shape[0] == 20
    index = json.loads((out / "index.json").read_text())
    (tmp_path / "secret.npy").write_bytes((out / "shard-00000.npy").read_bytes())
    index["shards"][0]["name"] = "../secret.npy"
    (out / "index.json").write_text(json.dumps(index))
    with pytest.raises(EvaluationError, match="damaged index"):
        load_source(str(out), 20, 0, (28, 28, 1))
