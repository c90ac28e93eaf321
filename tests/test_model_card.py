"""tools/model_card.py: the card is rendered from the model directory's own manifest.json and metrics.json."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "fmnist-cdcgan"


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
    assert "history" not in _model_card().render(SHIPPED, "- x")


def test_missing_failure_modes_file_is_one_line_and_exit_2(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "tools" / "model_card.py"), str(SHIPPED),
                          "--failure-modes", str(tmp_path / "nope.md")], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0 and "nope.md" in out.stderr
