"""Training: data readers, run directories, checkpoints, resume, signals, NaN guard, DDP, and real learning."""
from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gan_service.core.errors import DataError
from gan_service.core.fmnist import FMNIST_DIR, read_idx
from gan_service.core.frechet import frechet_distance_features
from gan_service.core.image_folder import load_image_folder as load_folder
from gan_service.training import checkpoint as ckpt_io
from gan_service.training.config import DataConfig, make_config
from gan_service.training.data import load_data, load_npz, toy_modes
import gan_service.training.loop
from gan_service.training.loop import TrainingDiverged, autocast_for, cpu_has_bf16, cpuinfo_bf16_flags, new_run_dir, train
from gan_service.training.sampling import generate, sample_latents

HAVE_FMNIST = Path(FMNIST_DIR, "train-images-idx3-ubyte.gz").exists()
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason="apt-get install dataset-fashion-mnist")
REPO = Path(__file__).resolve().parents[1]


def _write_idx(path: Path, arr: np.ndarray, gz: bool = True) -> Path:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    raw = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


# ---------------------------------------------------------------- data readers

def test_idx_roundtrip_gz_and_raw(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(read_idx(_write_idx(tmp_path / "a.gz", arr)), arr)
    assert np.array_equal(read_idx(_write_idx(tmp_path / "a", arr, gz=False)), arr)


@pytest.mark.parametrize("content, message", [
    (b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00", "bad magic"),                 # float IDX, not uint8
    (b"\x00\x00\x08\x03\x00\x00\x00\x02", "truncated IDX header"),
    (bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]), r"declares shape \(5,\)"),      # header says 5 bytes, has 2
])
def test_idx_corrupt_files_named(tmp_path, content, message):
    bad = tmp_path / "bad-idx"
    bad.write_bytes(content)
    with pytest.raises(DataError, match=message) as exc:
        read_idx(bad)
    assert str(bad) in str(exc.value)


def test_idx_missing_and_not_gzip(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_idx(tmp_path / "nope.gz")
    (tmp_path / "x.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"x\.gz: cannot read"):
        read_idx(tmp_path / "x.gz")


def test_fmnist_dir_with_mismatched_labels(tmp_path):
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((4, 28, 28), np.uint8))
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros((3,), np.uint8))
    with pytest.raises(DataError, match="3 labels do not match"):
        load_data(DataConfig(source="fmnist", path=str(tmp_path)))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte: file not found"):
        load_data(DataConfig(source="fmnist", path=str(tmp_path), split="test"))


@needs_fmnist
def test_fmnist_real_files():
    data = load_data(DataConfig(source="fmnist", path=FMNIST_DIR, use_labels=True, limit=1000))
    assert data.images.shape == (1000, 1, 28, 28) and data.images.dtype == torch.float32
    assert -1.0 <= data.images.min() < -0.99 and 0.99 < data.images.max() <= 1.0
    assert set(data.labels.tolist()) == set(range(10)) and data.class_names[9] == "Ankle boot"
    rgb = load_data(DataConfig(source="fmnist", path=FMNIST_DIR, resolution=32, channels=3, limit=8))
    assert rgb.images.shape == (8, 3, 32, 32)


def test_image_folder_any_size_grey_or_rgb(tmp_path):
    for cls, size, mode in [("cats", (40, 30), "RGB"), ("dogs", (16, 16), "L"), ("dogs", (64, 100), "RGBA")]:
        (tmp_path / cls).mkdir(exist_ok=True)
        Image.new(mode, size, 128).save(tmp_path / cls / f"{size[0]}x{size[1]}.png")
    Image.new("RGB", (20, 20), (255, 0, 0)).save(tmp_path / "cats" / "red.jpg")
    images, labels, names = load_folder(tmp_path, resolution=28, channels=3)
    assert images.shape == (4, 28, 28, 3) and names == ["cats", "dogs"]
    assert sorted(labels.tolist()) == [0, 0, 1, 1]
    grey, _, _ = load_folder(tmp_path, resolution=16, channels=1)
    assert grey.shape == (4, 16, 16, 1)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="no PNG or JPEG images"):
        load_folder(tmp_path, 28, 1)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match=r"broken\.png: not a readable PNG/JPEG"):
        load_folder(tmp_path, 28, 1)
    with pytest.raises(DataError, match="not a directory"):
        load_folder(tmp_path / "missing", 28, 1)


def test_npz_reader(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, images=np.zeros((5, 28, 28), np.uint8), labels=np.arange(5))
    images, labels = load_npz(good, 28, 1)
    assert images.shape == (5, 28, 28, 1) and labels.tolist() == [0, 1, 2, 3, 4]
    np.savez(tmp_path / "nokey.npz", x=np.zeros(3))
    with pytest.raises(DataError, match=r"nokey\.npz: no 'images' array \(found: x\)"):
        load_npz(tmp_path / "nokey.npz", 28, 1)
    np.savez(tmp_path / "shape.npz", images=np.zeros((5, 32, 32, 3), np.uint8))
    with pytest.raises(DataError, match=r"shape\.npz: 'images' has shape \(5, 32, 32, 3\); expected \[N, 28, 28, 1\]"):
        load_npz(tmp_path / "shape.npz", 28, 1)
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"junk\.npz: not a readable \.npz"):
        load_npz(tmp_path / "junk.npz", 28, 1)


def test_toy_mixtures_match_design():
    ring, ring_std = toy_modes("ring")
    grid, grid_std = toy_modes("grid")
    assert ring.shape == (8, 2) and np.allclose(np.linalg.norm(ring, axis=1), 1.0) and ring_std == 0.01
    assert grid.shape == (25, 2) and set(grid[:, 0]) == {-4, -2, 0, 2, 4} and grid_std == 0.05
    data = load_data(DataConfig(source="grid", path=""))
    x, _ = data.sample(10_000, torch.Generator().manual_seed(0))
    dist = torch.cdist(x, data.modes).min(dim=1).values
    assert x.shape == (10_000, 2) and (dist < 3 * 0.05 * 1.5).float().mean() > 0.99


# ---------------------------------------------------------------- config and CLI

def test_presets_resolve_and_validate():
    from gan_service.training.config import PRESETS
    assert {"fmnist-cdcgan", "fmnist-dcgan"} <= set(PRESETS)          # each shipped model has its own preset
    for preset in PRESETS:
        cfg = make_config(preset)
        assert cfg.preset == preset
    with pytest.raises(ValueError, match="--steps: must be >= 1"):
        make_config("toy-ring", {"steps": 0})
    with pytest.raises(ValueError, match="--loss: 'bogus' is not one of"):
        make_config("toy-ring", {"loss": "bogus"})
    with pytest.raises(ValueError, match="--use-labels"):
        make_config("fmnist-dcgan-basic", {"num_classes": 10})
    with pytest.raises(ValueError, match="unknown preset"):
        make_config("nope")
    with pytest.raises(ValueError, match="--g-cond: cbn .* needs --arch dcgan"):
        make_config("paper-mlp", {"g_cond": "cbn"})


@pytest.mark.parametrize("g_cond", ["cbn", "concat"])
def test_conditional_generator_uses_label_and_z(g_cond):
    """Both conditioning modes: the label and z each change the image; cbn starts as plain BatchNorm."""
    from gan_service.training.nets import build_generator
    cfg = make_config("fmnist-cdcgan-basic", {"g_cond": g_cond, "g_channels": 8})
    G = build_generator(cfg).eval()
    assert (G.embed is None) == (g_cond == "cbn")
    z = torch.randn(4, cfg.model.latent_dim)
    with torch.no_grad():
        base = G(z, torch.zeros(4, dtype=torch.long))                                # [4, 1, 28, 28]
        other_label = G(z, torch.full((4,), 3))
        other_z = G(torch.randn(4, cfg.model.latent_dim), torch.zeros(4, dtype=torch.long))
    assert base.shape == (4, 1, 28, 28)
    assert (base - other_z).abs().mean() > 1e-3
    if g_cond == "concat":
        assert (base - other_label).abs().mean() > 1e-3
    else:   # untrained cbn: gains 1, biases 0 for every class, so the label has no effect yet ...
        assert torch.equal(base, other_label)
        with torch.no_grad():   # ... until one class's bias moves
            G.norms[1].bias.weight[3] += 0.5
            assert (G(z, torch.full((4,), 3)) - base).abs().mean() > 1e-3


def test_minibatch_std_sees_variety_within_consecutive_groups_only():
    """The appended map is ~0 for a group of identical samples, > 0 for a varied one, constant over the map, and one
    group's value never depends on another group's samples (D sees [reals; fakes] in one batch)."""
    from gan_service.training.nets import MinibatchStd
    layer = MinibatchStd(4)
    same = torch.randn(1, 3, 5, 5).expand(4, 3, 5, 5)                                # one group, no variety
    varied = torch.randn(4, 3, 5, 5)
    out = layer(torch.cat([same, varied]))                                           # [8, 4, 5, 5]
    assert out.shape == (8, 4, 5, 5)
    assert torch.equal(out[:, :3], torch.cat([same, varied]))
    assert out[:4, 3].max() < 1e-3 < out[4:, 3].min()
    assert torch.allclose(out[4:, 3], out[4, 3, 0, 0].expand(4, 5, 5))
    other = layer(torch.cat([same, torch.randn(4, 3, 5, 5) * 5]))
    assert torch.equal(other[:4, 3], out[:4, 3])
    with pytest.raises(ValueError, match="group 4 does not divide the batch of 6"):
        layer(torch.randn(6, 3, 5, 5))


def test_discriminator_with_minibatch_std_scores_reals_without_looking_at_fakes():
    from gan_service.training.nets import build_discriminator
    cfg = make_config("fmnist-dcgan-basic", {"d_channels": 8, "d_mbstd": 4, "batch_size": 16})
    D = build_discriminator(cfg)
    real = torch.randn(16, 1, 28, 28)
    a = D(torch.cat([real, torch.randn(16, 1, 28, 28)]))                           # [32]
    b = D(torch.cat([real, torch.zeros(16, 1, 28, 28)]))
    assert a.shape == (32,) and torch.equal(a[:16], b[:16]) and not torch.equal(a[16:], b[16:])
    for bad in ({"d_mbstd": 1}, {"d_mbstd": 3}, {"d_mbstd": 4, "pack": 8, "batch_size": 16}):
        with pytest.raises(ValueError, match="--d-mbstd: must be 0 or >= 2"):
            make_config("fmnist-dcgan-basic", bad)
    with pytest.raises(ValueError, match="--d-mbstd"):
        make_config("paper-mlp", {"d_mbstd": 4})


def _discriminate_by_concatenation(D, x, labels):
    """The concat discriminator written out: one-hot label maps appended as input channels, through D's layers."""
    maps = torch.nn.functional.one_hot(labels, D.num_classes).to(x.dtype)[:, :, None, None]
    x = torch.cat([x, maps.expand(-1, -1, *x.shape[2:])], dim=1)                   # [N, C + K, H, W]
    return D.head(D.features(x)).squeeze(1)


@pytest.mark.parametrize("classes, norm", [(10, "none"), (200, "spectral"), (7, "spectral")])
def test_concat_discriminator_equals_label_maps_as_input_channels(classes, norm):
    """D with --d-cond concat computes what one-hot label maps concatenated to its input would give (logits, the
    gradient G trains on and the first layer's gradients), without convolving K constant channels per sample."""
    from gan_service.training.nets import build_discriminator
    cfg = make_config("fmnist-cdcgan-basic", {"num_classes": classes, "d_channels": 8, "d_norm": norm})
    D = build_discriminator(cfg).eval()          # eval: spectral norm's power iteration stands still between calls
    torch.manual_seed(1)
    x = torch.randn(12, 1, 28, 28, requires_grad=True)
    labels = torch.randint(0, classes, (12,))
    first_conv = list(D.features[0].parameters())          # weight (or its spectral-norm original) and bias
    fast = D(x, labels)                                                            # [12]
    grads_fast = torch.autograd.grad(fast.sum(), [x, *first_conv])
    slow = _discriminate_by_concatenation(D, x, labels)
    grads_slow = torch.autograd.grad(slow.sum(), [x, *first_conv])
    assert fast.shape == (12,)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    for grad_fast, grad_slow in zip(grads_fast, grads_slow):     # what G and D's first layer train on
        torch.testing.assert_close(grad_fast, grad_slow, rtol=1e-5, atol=1e-5)
    assert D.features[0].in_channels == 1 + classes         # the weights (and so checkpoints) keep their shapes


@needs_fmnist
def test_training_with_minibatch_std_and_packing_runs(tmp_path):
    run = train(_tiny("fmnist-dcgan-basic", tmp_path, steps=3, d_mbstd=2, pack=2, ckpt_every=100))
    state = ckpt_io.load_checkpoint(run)
    assert state.step == 3 and state.config.model.d_mbstd == 2


@pytest.mark.parametrize("cpu_amp, amp, cpu_bf16, dtype", [(False, True, True, torch.float32),
                                                            (True, True, True, torch.bfloat16),
                                                            (True, False, True, torch.float32),
                                                            (True, True, False, torch.float32)])
def test_cpu_autocast_only_when_asked_and_native(cpu_amp, amp, cpu_bf16, dtype):
    # on a CPU without bfloat16 instructions --cpu-amp falls back to float32 (emulated bf16 is over 10x slower)
    cfg = make_config("fmnist-dcgan-basic", {"cpu_amp": cpu_amp, "amp": amp})
    conv = torch.nn.Conv2d(1, 4, 3)
    with autocast_for(cfg, torch.device("cpu"), cpu_bf16=cpu_bf16)():
        out = conv(torch.randn(2, 1, 8, 8))                                # [2, 4, 6, 6]
    assert out.dtype == dtype


@pytest.mark.parametrize("flags, expected", [("fpu avx2 fma", []), ("avx2 avx512f avx512_bf16 vnni", ["avx512_bf16"]),
                                             ("avx512_bf16 amx_bf16 amx_tile", ["avx512_bf16", "amx_bf16"]),
                                             ("", [])])
def test_cpuinfo_bf16_flags(flags, expected):
    text = f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n"
    assert cpuinfo_bf16_flags(text) == expected


def test_cpu_has_bf16_agrees_with_proc_cpuinfo():
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo")
    assert cpu_has_bf16() == bool(cpuinfo_bf16_flags(cpuinfo.read_text()))


def test_cpu_has_bf16_falls_back_to_proc_cpuinfo_without_torchs_query(monkeypatch, tmp_path):
    # a torch build without the private CPU-capability queries: the answer comes from /proc/cpuinfo's flags
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    real_path = Path
    for flags, expected in (("avx2 fma", False), ("avx2 avx512_bf16", True)):
        fake = tmp_path / f"cpuinfo-{expected}"
        fake.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr(gan_service.training.loop, "Path", lambda p, fake=fake: fake if p == "/proc/cpuinfo" else real_path(p))
        assert cpu_has_bf16() is expected


@needs_fmnist
def test_cpu_amp_without_bf16_instructions_warns_and_trains_in_float32(tmp_path, monkeypatch):
    monkeypatch.setattr(gan_service.training.loop, "cpu_has_bf16", lambda: False)
    lines = []
    run = train(_tiny("fmnist-dcgan-basic", tmp_path, steps=2, cpu_amp=True, ckpt_every=100), log=lines.append)
    warning = [line for line in lines if "--cpu-amp" in line]
    assert len(warning) == 1 and "float32" in warning[0] and "bfloat16" in warning[0]
    assert autocast_for(make_config("fmnist-dcgan-basic", {"cpu_amp": True}), torch.device("cpu")) is nullcontext
    assert ckpt_io.load_checkpoint(run).step == 2


@needs_fmnist
def test_training_with_cpu_autocast_keeps_float32_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(gan_service.training.loop, "cpu_has_bf16", lambda: True)       # the autocast path on any CPU
    run = train(_tiny("fmnist-cdcgan-basic", tmp_path, steps=3, cpu_amp=True, ckpt_every=100))
    state = ckpt_io.load_checkpoint(run)
    G = state.generator()
    assert state.step == 3 and state.config.run.cpu_amp
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in G.parameters())
    rows = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss_d"]) and np.isfinite(r["loss_g"]) for r in rows)


def test_cli_dry_run_and_bad_flag():
    out = subprocess.run([sys.executable, "-m", "gan_service.cli", "train", "--preset", "fmnist-cdcgan-basic", "--steps", "7",
                          "--dry-run"], capture_output=True, text=True, check=True).stdout
    cfg = json.loads(out)
    assert cfg["run"]["steps"] == 7 and cfg["model"]["num_classes"] == 10 and cfg["preset"] == "fmnist-cdcgan-basic"
    bad = subprocess.run([sys.executable, "-m", "gan_service.cli", "train", "--batch-size", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--batch-size: must be >= 1" in bad.stderr and "Traceback" not in bad.stderr
    help_text = subprocess.run([sys.executable, "-m", "gan_service.cli", "train", "--help"], capture_output=True,
                               text=True, check=True).stdout
    for flag in ("--loss", "--d-steps", "--r1-gamma", "--ema-decay", "--resume", "--pack", "(default: 1)"):
        assert flag in help_text


def _cli(capsys, *argv) -> tuple[int, str, str]:
    from gan_service.cli import main
    try:
        rc = main(list(argv))
    except SystemExit as exc:
        rc = exc.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_help_shows_each_presets_own_default(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")                               # no line wrapping inside the help texts
    _, out, _ = _cli(capsys, "train", "--help")
    flat = " ".join(out.split())
    assert "--steps STEPS generator steps to train in total (default by preset: toy-ring, toy-grid 3000; " \
           "paper-mlp, fmnist-dcgan-basic, fmnist-cdcgan-basic 2000; fmnist-cdcgan 36000; fmnist-dcgan 48000)" in flat
    assert "--arch {mlp,dcgan} network family" in flat and "default by preset: toy-ring, toy-grid, paper-mlp mlp;" \
           " fmnist-dcgan-basic, fmnist-cdcgan-basic, fmnist-cdcgan, fmnist-dcgan dcgan" in flat
    assert "(default: 200)" not in flat                                   # the dataclass default no preset uses


@pytest.mark.parametrize("argv, said", [
    (["train", "--step", "5", "--dry-run"], "gan train: error: unrecognized arguments: --step (did you mean --steps?)"),
    (["train", "--lr=0.1"], "gan train: error: unrecognized arguments: --lr=0.1 (did you mean --lr-g?)"),
    (["bench", "toy", "--seed", "3"], "gan bench toy: error: unrecognized arguments: --seed (did you mean --seeds?)"),
    (["export", "run", "--nme", "x"], "gan export: error: unrecognized arguments: --nme (did you mean --name?)"),
])
def test_cli_no_abbreviations_and_closest_flag_from_the_subcommand(capsys, argv, said):
    rc, out, err = _cli(capsys, *argv)
    assert rc == 2 and out == "" and err.startswith(said) and err.count("\n") == 1, err


def test_cli_dry_run_leaves_out_what_the_architecture_ignores(capsys):
    _, out, _ = _cli(capsys, "train", "--preset", "fmnist-dcgan-basic", "--dry-run")
    dc = json.loads(out)
    assert "g_channels" in dc["model"] and not {"g_hidden", "d_maxout", "d_fourier", "g_cond"} & set(dc["model"])
    _, out, _ = _cli(capsys, "train", "--preset", "paper-mlp", "--dry-run")
    mlp = json.loads(out)
    assert "g_hidden" in mlp["model"] and not {"g_channels", "g_upsample", "d_norm"} & set(mlp["model"])
    assert "ema_decay" not in mlp["run"] and mlp["run"]["fd_every"] == 500
    _, out, _ = _cli(capsys, "train", "--preset", "toy-ring", "--dry-run")
    assert json.loads(out)["data"] == {"source": "ring"}


def test_train_command_reproduces_the_config(capsys):
    """The command the export writes into a manifest resolves, through the real CLI, to the same config."""
    import shlex
    from gan_service.cli import main
    from gan_service.training.config import train_command
    cfg = make_config("fmnist-cdcgan-basic", {"g_channels": 32, "d_hidden": [64, 32], "ema": False, "lr_d": 1e-3,
                                        "name": "a b", "lr_decay_start": 0.5})
    cmd = train_command(cfg)
    assert cmd.startswith("gan train --preset fmnist-cdcgan-basic ") and "--no-ema" in cmd and "'a b'" in cmd
    assert "--loss" not in cmd                                    # equal to the preset: left out
    from gan_service.training.config import effective_dict
    assert main(shlex.split(cmd)[1:] + ["--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out) == effective_dict(cfg)


def test_run_dirs_are_numbered_never_reused(tmp_path):
    a, b = new_run_dir(tmp_path, "x"), new_run_dir(tmp_path, "y")
    assert (a.name, b.name) == ("00000-x", "00001-y")
    (tmp_path / "00007-old").mkdir()
    assert new_run_dir(tmp_path, "x").name == "00008-x"


# ---------------------------------------------------------------- loop, checkpoints, resume

def _tiny(preset: str, tmp_path: Path, **overrides):
    small = {"toy-ring": {}, "paper-mlp": {"g_hidden": [64], "d_hidden": [32], "d_maxout": 2, "limit": 512},
             "fmnist-dcgan-basic": {"g_channels": 8, "d_channels": 8, "limit": 512, "batch_size": 16},
             "fmnist-cdcgan-basic": {"g_channels": 8, "d_channels": 8, "limit": 512, "batch_size": 16}}[preset]
    return make_config(preset, {**small, "out_dir": str(tmp_path), "log_every": 1, "sample_every": 0, "fd_every": 0,
                                **overrides})


def _assert_same_state(a: dict, b: dict) -> None:
    assert (a["G_ema"] is None) == (b["G_ema"] is None)
    for key in ("G", "D") + (("G_ema",) if a["G_ema"] is not None else ()):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"
    assert torch.equal(a["rng"]["data"], b["rng"]["data"])


@pytest.mark.parametrize("preset", ["toy-ring", "paper-mlp", "fmnist-cdcgan-basic"])
def test_resume_equals_uninterrupted(tmp_path, preset):
    if preset != "toy-ring" and not HAVE_FMNIST:
        pytest.skip("needs Fashion-MNIST")
    full = train(_tiny(preset, tmp_path / "full", steps=8, ckpt_every=100))
    part = train(_tiny(preset, tmp_path / "part", steps=5, ckpt_every=100))
    cfg = ckpt_io.load_checkpoint(part).config
    cfg.run.steps = 8
    resumed = train(cfg, resume=part)
    assert resumed == part
    a, b = ckpt_io.load_checkpoint(full), ckpt_io.load_checkpoint(resumed)
    assert a.step == b.step == 8
    _assert_same_state(a.state, b.state)
    steps = [json.loads(line)["step"] for line in (resumed / "stats.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))    # no step recorded twice


def test_resume_from_an_earlier_checkpoint_branches_a_new_run(tmp_path):
    """Resuming from a checkpoint that is not its run's latest (to give it a longer schedule, say) starts a new run
    directory holding that checkpoint and the stats up to it; the original run's files are left exactly as they
    were, and the branch equals an uninterrupted run of the new length."""
    original = train(_tiny("toy-ring", tmp_path / "orig", steps=6, ckpt_every=2, keep_ckpts=0,
                          lr_decay_start=0.5))    # rates constant to step 3, so step 2 is on any longer schedule
    before = {p.relative_to(original): p.read_bytes() for p in original.rglob("*") if p.is_file()}
    earlier = ckpt_io.checkpoint_path(original, 2)
    cfg = ckpt_io.load_checkpoint(earlier).config
    cfg.run.steps = 9
    branch = train(cfg, resume=earlier, log=lambda m: None)

    assert branch != original and branch.parent == original.parent
    after = {p.relative_to(original): p.read_bytes() for p in original.rglob("*") if p.is_file()}
    assert after == before                                      # nothing of the original run rewritten or added
    assert json.loads((branch / "branch.json").read_text()) == {"from": str(earlier.resolve()), "step": 2}
    steps = [json.loads(line)["step"] for line in (branch / "stats.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 10))
    assert sorted(p.name for p in (branch / "checkpoints").glob("step-*.pt")) == \
        [f"step-{s:08d}.pt" for s in (2, 4, 6, 8, 9)]
    full = train(_tiny("toy-ring", tmp_path / "full", steps=9, ckpt_every=2, keep_ckpts=0, lr_decay_start=0.5))
    _assert_same_state(ckpt_io.load_checkpoint(full).state, ckpt_io.load_checkpoint(branch).state)
    # Resuming the branch's own latest checkpoint (or the directory) continues it in place.
    cfg.run.steps = 10
    assert train(cfg, resume=branch, log=lambda m: None) == branch


def test_resume_after_a_kill_tore_the_last_stats_line(tmp_path):
    """A kill mid-write leaves half a JSON line at the end of stats.jsonl; --resume must still work."""
    part = train(_tiny("toy-ring", tmp_path, steps=5, ckpt_every=100))
    stats = part / "stats.jsonl"
    stats.write_text(stats.read_text() + '{"step": 6, "loss_d": 0.69, "lo')          # torn, no newline
    cfg = ckpt_io.load_checkpoint(part).config
    cfg.run.steps = 7
    train(cfg, resume=part)
    steps = [json.loads(line)["step"] for line in stats.read_text().splitlines()]
    assert steps == list(range(1, 8))


def test_checkpoint_is_self_describing_and_safe(tmp_path):
    run = train(_tiny("toy-ring", tmp_path, steps=3))
    path = ckpt_io.latest_checkpoint(run)
    raw = torch.load(path, weights_only=True)
    assert raw["format_version"] == ckpt_io.FORMAT_VERSION and raw["step"] == 3
    assert {"G", "D", "G_ema", "opt_G", "opt_D", "config", "rng"} <= set(raw)
    ck = ckpt_io.load_checkpoint(run)
    assert ck.config.preset == "toy-ring" and ck.has_ema
    z = torch.randn(4, ck.config.model.latent_dim)
    assert ck.generator()(z).shape == (4, 2)
    assert json.loads((run / "config.json").read_text())["run"]["steps"] == 3
    assert not list(path.parent.glob(".*tmp*"))               # atomic write left no temp file
    path.write_bytes(path.read_bytes()[:100])                 # truncated file -> clear error
    with pytest.raises(ckpt_io.CheckpointError, match="not a readable checkpoint"):
        ckpt_io.load_checkpoint(path)
    with pytest.raises(ckpt_io.CheckpointError, match="no checkpoint found"):
        ckpt_io.load_checkpoint(tmp_path)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    import gan_service.training.loop as loop

    real_g_loss, calls = loop.g_loss, {"n": 0}

    def poisoned(kind, logits):
        calls["n"] += 1
        loss = real_g_loss(kind, logits)
        return loss * float("nan") if calls["n"] == 7 else loss

    monkeypatch.setattr(loop, "g_loss", poisoned)
    cfg = _tiny("toy-ring", tmp_path, steps=20, ckpt_every=2)
    with pytest.raises(TrainingDiverged, match=r"loss_g became nan at step 7.*step-00000006\.pt"):
        train(cfg)
    run = next(tmp_path.iterdir())
    assert ckpt_io.latest_checkpoint(run).name == "step-00000006.pt"
    assert ckpt_io.load_checkpoint(run).step == 6


def test_sigterm_saves_checkpoint_then_resume(tmp_path):
    cmd = [sys.executable, "-m", "gan_service.cli", "train", "--preset", "toy-ring", "--steps", "1000000",
           "--log-every", "10", "--out-dir", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob("*/stats.jsonl")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    run = next(tmp_path.iterdir())
    step = ckpt_io.load_checkpoint(run).step
    assert step >= 10 and "gan train --resume" in err
    more = subprocess.run([sys.executable, "-m", "gan_service.cli", "train", "--resume", str(run), "--steps", str(step + 5)],
                          capture_output=True, text=True, timeout=120)
    assert more.returncode == 0, more.stderr
    assert ckpt_io.load_checkpoint(run).step == step + 5


def test_ddp_two_processes_gloo(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # Each rank runs the CLI, then writes to its own file whether training left its process group behind (a live
    # gloo group at interpreter exit can abort a rank). A file per rank, not stdout: the two ranks share one pipe and
    # their prints interleave mid-line.
    # No Python-level collective may run in a rank (training's gradient all-reduces are DDP's own, in C++): the last
    # one, the end-of-run weight check, left its work for a gloo worker thread to free, and a rank whose interpreter
    # was already exiting then aborted (SIGABRT, "terminate called without an active exception", 1 run in 20).
    rank_script = ("import os, sys, torch.distributed as d; from gan_service.cli import main\n"
                   "def refuse(*a, **k): raise AssertionError('a collective through the process group')\n"
                   "d.all_gather = d.all_reduce = d.barrier = d.broadcast = refuse\n"
                   "d.broadcast_object_list = d.all_gather_object = refuse\n"
                   "rc = main()\n"
                   "open(os.path.join(sys.argv[-1], 'group-left.' + os.environ['RANK']), 'w')"
                   ".write(str(d.is_initialized())); sys.exit(rc)")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--no-python",
           sys.executable, "-c", rank_script, "train", "--preset", "toy-ring", "--steps", "20", "--log-every", "5",
           "--out-dir"]
    out_dir = tmp_path / "first"
    res = subprocess.run([*cmd, str(out_dir)], capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    left = {f.name: f.read_text() for f in out_dir.glob("group-left.*")}
    assert left == {"group-left.0": "False", "group-left.1": "False"}, left
    runs = [d for d in out_dir.iterdir() if d.is_dir()]
    assert len(runs) == 1                          # rank 0 made the one run directory
    rows = [json.loads(line) for line in (runs[0] / "stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10, 15, 20] and all(r["world_size"] == 2 for r in rows)
    assert ckpt_io.load_checkpoint(runs[0]).step == 20


@needs_fmnist
@pytest.mark.slow
@pytest.mark.timeout(1800)   # ~1 min on an idle 2-core machine; much longer when the machine is shared
def test_short_fmnist_run_gets_closer_to_real_images(tmp_path):
    """A few hundred CPU steps must move G's samples measurably towards the data (pixel Frechet distance)."""
    cfg = make_config("fmnist-dcgan-basic", {"g_channels": 16, "d_channels": 16, "steps": 300, "log_every": 100,
                                        "sample_every": 0, "out_dir": str(tmp_path), "limit": 10000})
    run = train(cfg)
    n = 2000
    real = load_data(cfg.data).images[torch.randperm(10000, generator=torch.Generator().manual_seed(1))[:n]]
    z, labels = sample_latents(cfg, n, torch.Generator().manual_seed(2), "cpu")
    from gan_service.training.nets import build_generator
    torch.manual_seed(cfg.run.seed)
    untrained = build_generator(cfg)
    trained = ckpt_io.load_checkpoint(run).generator()
    flat = lambda x: np.asarray(x).reshape(n, -1)
    fd_untrained = frechet_distance_features(flat(real), flat(generate(untrained, z, labels)))
    fd_trained = frechet_distance_features(flat(real), flat(generate(trained, z, labels)))
    print(f"pixel FD: untrained {fd_untrained:.1f}, trained {fd_trained:.1f}")
    assert fd_trained < 0.5 * fd_untrained
    assert (run / "samples" / "step-00000300.png").exists()


@pytest.mark.skipif(not HAVE_FMNIST, reason="needs Fashion-MNIST")
def test_best_checkpoint_is_ranked_in_the_evaluation_classifier_features(tmp_path):
    """--fd-every records pixel and classifier FD; best.pt is the step with the lowest classifier FD."""
    lines = []
    run = train(_tiny("fmnist-dcgan-basic", tmp_path, steps=6, fd_every=2, fd_samples=256, ckpt_every=100), log=lines.append)
    rows = [r for r in map(json.loads, (run / "stats.jsonl").read_text().splitlines()) if "classifier_fd" in r]
    assert [r["step"] for r in rows] == [2, 4, 6] and all(r["pixel_fd"] > 0 for r in rows)
    best_row = min(rows, key=lambda r: r["classifier_fd"])
    best = ckpt_io.load_checkpoint(run / "checkpoints" / "best.pt")
    assert (best.step, best.state["best_by"]) == (best_row["step"], "classifier_fd")
    assert best.state["best_fd"] == pytest.approx(best_row["classifier_fd"])
    assert any("best.pt is chosen by FD in the features of" in line for line in lines), lines


def test_best_checkpoint_falls_back_to_pixel_fd_with_a_reason(tmp_path):
    lines = []
    run = train(_tiny("toy-ring", tmp_path, steps=4, fd_every=2, fd_samples=256), log=lines.append)
    rows = [json.loads(r) for r in (run / "stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "pixel_fd" in r] == [2, 4] and not any("classifier_fd" in r for r in rows)
    assert ckpt_io.load_checkpoint(run / "checkpoints" / "best.pt").state["best_by"] == "pixel_fd"
    assert any("chosen by pixel FD" in line and "28x28 grey" in line for line in lines), lines
    from gan_service.training.best_fd import load_fd_classifier
    cfg = _tiny("fmnist-dcgan-basic", tmp_path, fd_classifier=str(tmp_path / "no-classifier"))
    classifier, why = load_fd_classifier(cfg)
    assert classifier is None and "no-classifier" in why and "manifest.json missing" in why


def test_linear_lr_decay_is_a_function_of_the_step(tmp_path):
    from gan_service.training.loop import build_state, set_learning_rates, Dist

    cfg = _tiny("toy-ring", tmp_path, steps=100, lr_decay_start=0.6, lr_g=1e-3, lr_d=4e-3)
    st = build_state(cfg, torch.device("cpu"), Dist())
    seen = {}
    for step in (0, 59, 60, 80, 100):
        st.step = step
        set_learning_rates(cfg, st)
        seen[step] = (st.opt_G.param_groups[0]["lr"], st.opt_D.param_groups[0]["lr"])
    assert seen[0] == seen[59] == seen[60] == (1e-3, 4e-3)
    assert seen[80] == pytest.approx((5e-4, 2e-3)) and seen[100] == (0.0, 0.0)


def test_bench_train_times_both_arithmetics_side_by_side(tmp_path, monkeypatch):
    import gan_service.training.benchmarks
    from gan_service.training.benchmarks import bench_train

    out = tmp_path / "benchmarks.md"
    tiny = {"g_channels": 8, "d_channels": 8, "batch_size": 8}
    bodies = {}
    # one section per kind of CPU: a run on a CPU without bfloat16 instructions keeps the other kind's numbers
    for flags in ("avx512_bf16", "no avx512_bf16 / amx_bf16"):
        monkeypatch.setattr(gan_service.training.benchmarks, "_cpu_flags", lambda flags=flags: flags)
        bodies[flags] = bench_train("fmnist-dcgan-basic", tiny, steps=2, rounds=2, out=str(out),
                                    command="gan bench train tiny")
    text = out.read_text()
    for flags, body in bodies.items():
        title = f"## Training step on CPU: float32 against bfloat16 autocast (gan bench train; CPU flags: {flags})"
        assert text.count(title) == 1
        rows = [line.split("|")[1:-1] for line in body.splitlines() if line.startswith("| ") and "---" not in line][1:]
        assert [r[0].strip() for r in rows] == ["float32", "bfloat16 autocast (--cpu-amp)"]
        assert rows[0][3].strip() == "1.00x" and all(float(r[1].replace(",", "")) > 0 for r in rows)


@pytest.mark.parametrize("argv, said", [(["--steps", "0"], "--steps"), (["--preset", "toy-ring"], "--preset")])
def test_bench_train_rejects_bad_flags_in_one_line(argv, said):
    res = subprocess.run([sys.executable, "-m", "gan_service.cli", "bench", "train", *argv, "--out", os.devnull],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert res.returncode == 2 and said in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("name", ["fmnist-cdcgan", "fmnist-dcgan"])
def test_each_shipped_model_is_made_by_the_preset_of_its_name(name):
    """The preset with a shipped model's name resolves to the config that trained it (recorded in its manifest),
    but for where the run was written and the preset's own name; --cpu-amp is the machine's choice."""
    recorded = json.loads((REPO / "gan_service" / "models" / name / "manifest.json").read_text())["training"]["config"]
    made = make_config(name, {"cpu_amp": True}).to_dict()
    for section, fields in recorded.items():
        if not isinstance(fields, dict):
            continue
        differ = {k for k in set(fields) | set(made[section]) if fields.get(k) != made[section].get(k)}
        assert differ <= ({"name", "out_dir"} if section == "run" else set()), (section, differ)
