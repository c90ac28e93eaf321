"""Mode-collapse metrics on hand-made samples, and one tiny end-to-end benchmark run."""
import math

import numpy as np
import pytest

from gan_service.training.data import toy_modes
from gan_service.training.toybench import (RECIPES, high_quality_mask, modes_captured, pct_high_quality, recipe_for,
                               rejection_config, reverse_kl, run_toy_bench)


def _mixture(kind: str, n: int, seed: int = 0) -> np.ndarray:
    """n samples from the true mixture, n // M per mode (exactly balanced)."""
    modes, std = toy_modes(kind)
    rng = np.random.default_rng(seed)
    which = np.repeat(np.arange(len(modes)), n // len(modes))
    return modes[which] + std * rng.standard_normal((len(which), 2))


@pytest.mark.parametrize("kind", ["ring", "grid"])
def test_true_mixture_scores_perfectly(kind):
    modes, std = toy_modes(kind)
    x = _mixture(kind, 10000)
    assert modes_captured(x, modes, std) == len(modes)
    # A 3-sigma disc in 2-D holds 1 - exp(-4.5) = 98.89% of an isotropic Gaussian.
    assert pct_high_quality(x, modes, std) == pytest.approx(100 * (1 - math.exp(-4.5)), abs=0.5)
    assert reverse_kl(x, modes) == pytest.approx(0.0, abs=1e-9)   # exactly balanced


def test_random_true_mixture_kl_is_small():
    modes, std = toy_modes("grid")
    rng = np.random.default_rng(1)
    x = modes[rng.integers(25, size=2500)] + std * rng.standard_normal((2500, 2))
    assert 0.0 <= reverse_kl(x, modes) < 0.02      # sampling noise only: about (M - 1) / (2N) = 0.005


@pytest.mark.parametrize("kind", ["ring", "grid"])
def test_total_collapse_on_one_mode(kind):
    modes, std = toy_modes(kind)
    x = modes[3] + std * 0.1 * np.random.default_rng(0).standard_normal((500, 2))
    assert modes_captured(x, modes, std) == 1
    assert pct_high_quality(x, modes, std) == 100.0
    assert reverse_kl(x, modes) == pytest.approx(math.log(len(modes)))


def test_far_samples_are_not_high_quality_and_capture_nothing():
    modes, std = toy_modes("grid")
    x = np.array([[1.0, 1.0], [3.0, -1.0], [10.0, 10.0], [0.0, -1.5]])   # between modes or outside the grid
    assert not high_quality_mask(x, modes, std).any()
    assert pct_high_quality(x, modes, std) == 0.0
    assert modes_captured(x, modes, std) == 0
    # KL still counts all samples by their nearest mode: 4 distinct modes of 25.
    assert reverse_kl(x, modes) == pytest.approx(math.log(25 / 4))


def test_hq_boundary_and_half_split():
    modes, std = toy_modes("ring")
    x = np.array([modes[0] + [2.9 * std, 0], modes[1] + [0, 3.1 * std]])
    assert high_quality_mask(x, modes, std).tolist() == [True, False]
    assert modes_captured(x, modes, std) == 1
    assert pct_high_quality(x, modes, std) == 50.0
    assert reverse_kl(x, modes) == pytest.approx(math.log(8 / 2))   # two modes, half each


def test_recipes_contract():
    for name in ("minimax", "nonsaturating", "mle", "best"):
        assert name in RECIPES
    from gan_service.training.config import make_config
    for name in RECIPES:
        for ds in ("ring", "grid"):
            make_config(f"toy-{ds}", recipe_for(name, ds))    # valid overrides on both mixtures


def test_recipe_for_merges_per_dataset_overrides():
    recipe = {"loss": "hinge", "r1_gamma": 0.5, "per_dataset": {"ring": {"r1_gamma": 0.01}}}
    assert recipe_for(recipe, "ring") == {"loss": "hinge", "r1_gamma": 0.01}
    assert recipe_for(recipe, "grid") == {"loss": "hinge", "r1_gamma": 0.5}
    assert "per_dataset" in recipe                              # the recipe itself is left as it was
    from gan_service.training.config import make_config
    assert make_config("toy-ring", recipe_for("best", "ring")).loss.r1_gamma != \
        make_config("toy-grid", recipe_for("best", "grid")).loss.r1_gamma


def test_tiny_end_to_end(tmp_path):
    md = run_toy_bench(datasets=["ring"], recipes=["nonsaturating"], seeds=1, baseline_seeds=1, steps=30, workers=1,
                       out=tmp_path, log=lambda msg: None)
    table = (tmp_path / "toy-benchmark.md").read_text()
    assert table == md
    assert "| ring | nonsaturating | 1 |" in table
    assert "reverse KL" in table and "command:" in table
    png = tmp_path / "toy" / "ring-nonsaturating-seed0.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*bench*/"))   # no run directories left behind in out


def test_tiny_end_to_end_with_rejection_rows(tmp_path, monkeypatch):
    # A recipe with D* rejection sampling gives two rows per run from the same trained G: its own and "+drs".
    monkeypatch.setitem(RECIPES, "tiny", {"loss": "nonsaturating", "rejection": {"steps": 30, "calibration": 2000}})
    md = run_toy_bench(datasets=["ring"], recipes=["tiny"], seeds=1, baseline_seeds=1, steps=30, workers=1,
                       out=tmp_path, log=lambda msg: None)
    assert "| ring | tiny | 1 |" in md and "| ring | tiny+drs | 1 |" in md
    assert "`tiny+drs`: the same runs' EMA generators, sampled through D* rejection sampling" in md
    kept = [line for line in md.splitlines() if line.startswith("| ring | tiny+drs | 0 |")][0].split("|")[7]
    assert 0.0 < float(kept) <= 100.0
    for name in ("ring-tiny-seed0.png", "ring-tiny+drs-seed0.png"):
        assert (tmp_path / "toy" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_recipe_for_leaves_out_entries_that_are_not_config():
    assert "rejection" not in recipe_for("best", "grid") and "per_dataset" not in recipe_for("best", "grid")
    assert rejection_config("best") is not None and rejection_config("mle") is None
    assert rejection_config({"rejection": {"steps": 7}}).steps == 7
