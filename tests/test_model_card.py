"""tools/model_card.py: the card is rendered from the model directory's own manifest.json and metrics.json."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "gan_service" / "models" / "fmnist-cdcgan"


def _model_card():
    spec = importlib.util.spec_from_file_location("model_card", REPO / "tools" / "model_card.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_card_carries_the_numbers_of_metrics_json_and_the_history_when_given():
    card = _model_card().render(SHIPPED, "- **a failure mode**", history="resumed once")
    metrics = json.loads((SHIPPED / "metrics.json").read_text())
    for view in ("classifier", "robust", "pixels_pca"):
        assert f"{metrics['metrics']['views'][view]['fd']:.4g}"[:4] in card, view
    assert "- history: resumed once" in card and "- **a failure mode**" in card
    assert "- recipe: `gan train --preset fmnist-cdcgan`" in card            # the model's own preset
    assert "history" not in _model_card().render(SHIPPED, "- x")


def test_card_splits_each_fd_when_the_metrics_have_the_terms(tmp_path):
    """metrics.json written since the FD breakdown: the card has the mean/covariance/variety table, with the
    numbers of metrics.json; an older metrics.json without the terms gets no such table (and no error)."""
    import shutil
    model = shutil.copytree(SHIPPED, tmp_path / "m")
    metrics = json.loads((model / "metrics.json").read_text())
    for part in ("metrics", "floor"):
        for view in metrics[part]["views"].values():
            view.pop("fd_terms", None)
    (model / "metrics.json").write_text(json.dumps(metrics))
    assert "variety ratio" not in _model_card().render(model, "- x")
    metrics["metrics"]["views"]["pixels_pca"]["fd_terms"] = {"mean_term": 0.0912, "cov_term": 2.034,
                                                             "variety_ratio": 0.9262}
    metrics["floor"]["views"]["pixels_pca"]["fd_terms"] = {"mean_term": 0.009, "cov_term": 0.06,
                                                           "variety_ratio": 1.0068}
    (model / "metrics.json").write_text(json.dumps(metrics))
    card = _model_card().render(model, "- x")
    assert "| pixels, 64 principal components | 0.0912 | 2.034 | 0.926 | 1.01 |" in card, card


def test_missing_failure_modes_file_is_one_line_and_exit_2(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "tools" / "model_card.py"), str(SHIPPED),
                          "--failure-modes", str(tmp_path / "nope.md")], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0 and "nope.md" in out.stderr


def test_writing_the_card_keeps_the_model_directory_verifiable(tmp_path):
    """The card is a file of the model directory: after writing it the manifest lists its new sha256, so the
    service (load_model_dir verifies every file) still loads the directory."""
    import shutil

    from gan_service.serving.modeldir import load_model_dir
    model = shutil.copytree(SHIPPED, tmp_path / "m")
    modes = tmp_path / "modes.md"
    modes.write_text("- **a failure mode written today**\n")
    out = subprocess.run([sys.executable, str(REPO / "tools" / "model_card.py"), str(model), "--failure-modes",
                          str(modes)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "a failure mode written today" in (model / "README.md").read_text()
    assert load_model_dir(model).files["README.md"]["bytes"] == (model / "README.md").stat().st_size


def test_card_names_what_the_model_is_conditioned_on():
    kind = _model_card()._kind
    assert kind({"num_classes": 10}) == "class-conditional (10 classes)"
    assert kind({"num_classes": 0}) == "unconditional"
    selfcond = kind({"num_classes": 0, "self_conditioning": {"clusters": 20}})
    assert selfcond.startswith("unconditional (self-conditioned") and "20 k-means clusters" in selfcond
    per_class = kind({"num_classes": 10, "self_conditioning": {"clusters": 5, "per_class": True}})
    assert per_class.startswith("class-conditional (10 classes; each trained as 5 k-means clusters")


def test_card_says_which_labels_the_model_was_trained_on():
    """The data line: class labels, cluster ids in place of labels, or class labels each split into clusters (a
    class-conditional model trained on clusters within each class used to get both 'class labels' and 'no
    labels')."""
    labels = _model_card()._labels_used
    assert labels({"num_classes": 10}) == "class labels"
    assert labels({"num_classes": 0}) == "no labels"
    assert labels({"num_classes": 0, "self_conditioning": {"clusters": 200}}) == \
        "no labels (200 k-means cluster ids in their place)"
    per_class = labels({"num_classes": 10, "self_conditioning": {"clusters": 10, "per_class": True}})
    assert per_class == "class labels, each class split into 10 k-means clusters of its images"


def test_sample_grid_caption_follows_the_manifest():
    """The caption says what samples.png is from the manifest's own description: 8 x 8 for an unconditional model,
    one row per class for a conditional one (the card of a conditional model used to call its 10 x 10 class grid
    'the first 64 images')."""
    caption = _model_card()._samples_caption
    plain = caption({"samples": {"seed": 0, "rows": 8, "cols": 8}})
    assert plain == "`samples.png`: seed 0, the first 64 images the service returns for that seed (8 x 8, row-major)."
    per_class = caption({"samples": {"seed": 3, "rows": 10, "cols": 10, "labels": "row r shows class r"},
                         "num_classes": 10})
    assert per_class == ("`samples.png`: seed 3, a 10 x 10 grid of the first 100 latents the service draws for that "
                         "seed, row r asking for class r.")
    assert "samples.png" in caption({})                                 # an older manifest without the entry
