"""int8: static QDQ quantization of generator.onnx (training/quantize.py), its quality gate and `gan quantize`.

The structure tests run on the checked-in tiny models (tests/data) and on a small self-conditioned generator
exported here; the gate tests need Fashion-MNIST and the evaluation classifiers, and use a few hundred samples
instead of the shipped 10,000 (the shipped models' numbers are in docs/quality.md).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from gan_service.cli import main
from gan_service.core.cpu_features import cpu_flags, cpu_has_vnni, cpu_model
from gan_service.core.fmnist import FMNIST_DIR
from gan_service.core.onnx_runtime import ort_session
from gan_service.serving.latents import latents
from gan_service.serving.modeldir import load_model_dir
from gan_service.training import quantize as Q

DATA = Path(__file__).resolve().parent / "data"
needs_fmnist = pytest.mark.skipif(not Path(FMNIST_DIR).is_dir(), reason=f"Fashion-MNIST not installed at {FMNIST_DIR}")
GATE_N = 300                 # > the 129 samples a 128-d FD needs; the shipped gate uses 10,000


def _copy(key: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(DATA / f"tiny-{key}", tmp_path / f"tiny-{key}"))


def _fed_by_dequantize(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes that read a DequantizeLinear output (i.e. run on int8-rounded values)."""
    dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name for n in model.graph.node if n.op_type != "QuantizeLinear" and any(i in dq for i in n.input)}


@pytest.fixture(scope="module")
def selfcond_onnx(tmp_path_factory) -> Path:
    """An untrained self-conditioned generator (4 clusters drawn from z's last coordinate), exported as
    `gan export` does: its graph has the discrete choice (Erf, Greater, ReduceSum -> Gather) int8 must keep."""
    torch = pytest.importorskip("torch")
    from gan_service.training.nets import ClusterDrawingGenerator, DCGANGenerator
    from gan_service.training.onnx_export import export_onnx

    torch.manual_seed(0)
    g = DCGANGenerator(8, 1, 28, 8, num_classes=4, cond="cbn", upsample="resize")
    for p in g.parameters():                 # an untrained BN would make every image flat: spread the gains
        if p.dim() == 2 and p.shape[0] == 4:
            torch.nn.init.normal_(p, 1.0, 0.5)
    wrapper = ClusterDrawingGenerator(g, [0.4, 0.3, 0.2, 0.1], classes=1).eval()
    path = tmp_path_factory.mktemp("selfcond") / "generator.onnx"
    onnx.save_model(export_onnx(wrapper, 9, 0, 17), path)
    return path


# ---------------------------------------------------------------- CPU features (torch-free, for the service)

def test_cpu_features_parse_cpuinfo():
    avx2 = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx avx2 fma\n"
    vnni = "processor\t: 0\nmodel name\t: Intel Xeon\nflags\t\t: avx2 avx512f avx512_vnni\n"
    assert cpu_model(avx2) == "AMD EPYC 7B13" and "avx2" in cpu_flags(avx2)
    assert not cpu_has_vnni(avx2)
    assert cpu_has_vnni(vnni)
    assert cpu_has_vnni("flags : avx2 avx_vnni\n")
    assert not cpu_has_vnni("")                     # unknown (no /proc/cpuinfo) counts as no VNNI


# ---------------------------------------------------------------- calibration latents

def test_calibration_latents_are_the_services_and_balanced():
    feed = Q.calibration_feeds(latent_dim=16, num_classes=10, n=512)
    np.testing.assert_array_equal(feed["z"], latents(Q.CALIBRATION_SEED, 0, 512, 16))
    counts = np.bincount(feed["label"], minlength=10)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 512
    assert "label" not in Q.calibration_feeds(latent_dim=16, num_classes=0, n=512)
    with pytest.raises(Q.QuantizeError, match="--calibration"):
        Q.calibration_feeds(latent_dim=16, num_classes=10, n=100)


# ---------------------------------------------------------------- the graph: what stays float, and why

def test_conv_transpose_stays_float_with_its_reason(tmp_path):
    model = load_model_dir(_copy("dc", tmp_path))
    int8, record = Q.quantize_graph(model.onnx_path, model.latent_dim, 0, calibration=512)
    layers = record["layers"]
    transposed = [name for name, layer in layers.items() if layer["op"] == "ConvTranspose"]
    assert transposed, layers
    for name in transposed:
        assert layers[name]["precision"] == "float" and "no int8 CPU kernel" in layers[name]["reason"]
    assert not set(transposed) & _fed_by_dequantize(int8)
    quantized = [name for name, layer in layers.items() if layer["precision"] == "int8"]
    assert quantized and set(quantized) <= _fed_by_dequantize(int8)
    assert record["float_nodes"] == sorted(n for n, layer in layers.items() if layer["precision"] == "float")
    # the calibration and the method are recorded
    assert record["calibration"]["latents"] == 512 and record["calibration"]["seed"] == Q.CALIBRATION_SEED
    assert record["settings"]["format"] == "QDQ"


def test_each_layer_choice_is_measured(tmp_path):
    model = load_model_dir(_copy("cdc", tmp_path))
    _, record = Q.quantize_graph(model.onnx_path, model.latent_dim, model.num_classes, calibration=512)
    sens = record["sensitivity"]
    assert sens["all_quantized_mean_abs_diff"] >= 0
    for name, layer in record["layers"].items():
        if layer["op"] in Q.QUANTIZABLE:
            # every candidate was measured in float, beside all the others in int8
            assert "mean_abs_diff_when_float" in layer, (name, layer)
            assert layer["reason"]


def test_discrete_choice_stays_float_and_agrees(selfcond_onnx):
    int8, record = Q.quantize_graph(selfcond_onnx, 9, 0, calibration=512)
    fp32 = onnx.load(selfcond_onnx)
    decisions = Q.decision_node_names(fp32)
    assert {n.name for n in fp32.graph.node if n.op_type == "Greater"} <= decisions
    assert not decisions & _fed_by_dequantize(int8)            # they read the float z, not an int8-rounded one
    assert set(record["discrete_choices"]["float_nodes"]) == decisions
    feed = Q.service_feeds(0, 0, 2000, 9, 0)
    agree = Q.choice_agreement(fp32, int8, feed)
    assert agree["tensors"] and agree["agreement"] == 1.0 and agree["n"] == 2000


def test_choice_agreement_sees_a_flipped_choice(selfcond_onnx):
    """The agreement check can fail: a graph whose decision thresholds moved picks other clusters."""
    from onnx import numpy_helper

    fp32 = onnx.load(selfcond_onnx)
    moved = onnx.load(selfcond_onnx)
    for init in moved.graph.initializer:
        if "thresholds" in init.name:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + 0.05, init.name))
    agree = Q.choice_agreement(fp32, moved, Q.service_feeds(0, 0, 2000, 9, 0))
    assert agree["agreement"] < 1.0


def test_batch_invariance_of_int8(tmp_path):
    model = load_model_dir(_copy("cdc", tmp_path))
    int8, _ = Q.quantize_graph(model.onnx_path, model.latent_dim, model.num_classes, calibration=512)
    check = Q.batch_invariance(int8.SerializeToString(), model.latent_dim, model.num_classes)
    assert check["batches"] == [1, 7, 64, 512] and check["identical"] is True, check


def test_batch_invariance_check_can_fail(tmp_path, monkeypatch):
    model = load_model_dir(_copy("dc", tmp_path))

    class Drifting:            # adds the batch size to every pixel: batching changes the bytes
        def __init__(self, path):
            self.sess = ort_session(path)

        def run(self, names, feed):
            out = self.sess.run(names, feed)
            return [(out[0].astype(np.int32) + len(feed["z"])).clip(0, 255).astype(np.uint8)]

    monkeypatch.setattr(Q, "ort_session", lambda path, *a, **k: Drifting(path))
    check = Q.batch_invariance(model.onnx_path.read_bytes(), model.latent_dim, 0)
    assert check["identical"] is False


# ---------------------------------------------------------------- the gate and `gan quantize`

@needs_fmnist
def test_gan_quantize_adds_int8_and_relists_the_manifest(tmp_path, capsys):
    d = _copy("cdc", tmp_path)
    before = load_model_dir(d)
    rc = main(["quantize", str(d), "--samples", str(GATE_N), "--calibration", "512"])
    out = capsys.readouterr()
    record = json.loads((d / "manifest.json").read_text())["int8"]
    assert rc == 0, (out.err, record.get("reason"))
    after = load_model_dir(d)                                  # every file verified, the int8 graph listed
    assert Q.INT8_FILE in after.files and after.sha256 == before.sha256
    assert after.files["generator.onnx"] == before.files["generator.onnx"]
    assert record["exported"] is True and record["file"] == Q.INT8_FILE
    gate = record["gate"]
    assert gate["n"] == GATE_N and gate["passed"] is True
    assert set(gate["views"]) == {"classifier", "robust", "pixels_pca"}
    for view in gate["views"].values():
        assert {"fd_fp32", "fd_int8", "fd_change", "precision_fp32", "precision_int8", "recall_fp32",
                "recall_int8", "passed"} <= set(view)
    assert record["onnxruntime"] and record["calibration"]["latents"] == 512
    assert record["discrete_choices"]["agreement"] == 1.0
    assert record["pixels"]["mean_abs_diff"] >= 0
    assert record["batch_invariance_cpu"]["identical"] is True
    assert record["cpu"]["model"]
    # the int8 graph is the one recorded, and it runs: uint8 images of the model's shape
    sess = ort_session(d / Q.INT8_FILE)
    img = sess.run(["image"], Q.service_feeds(0, 0, 3, after.latent_dim, after.num_classes))[0]
    assert img.dtype == np.uint8 and img.shape == (3, *after.image_shape)


@needs_fmnist
def test_refused_gate_writes_no_graph_and_names_the_view(tmp_path):
    d = _copy("dc", tmp_path)
    record = Q.quantize_model_dir(d, calibration=512, samples=GATE_N, fd_tolerance=0.0, pr_tolerance=0.0,
                                  log=lambda m: None)
    assert record["exported"] is False
    assert not (d / Q.INT8_FILE).exists()
    failed = record["gate"]["failed"]
    assert failed and all(v in ("classifier", "robust", "pixels_pca") for v in failed)
    assert failed[0] in record["reason"]
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["int8"]["exported"] is False and manifest["int8"]["reason"] == record["reason"]
    load_model_dir(d)                                          # still a valid, verified directory


@needs_fmnist
def test_dry_run_writes_nothing(tmp_path, capsys):
    d = _copy("dc", tmp_path)
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    rc = main(["quantize", str(d), "--samples", str(GATE_N), "--calibration", "512", "--dry-run"])
    assert rc in (0, 2)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    assert "classifier" in capsys.readouterr().out


@pytest.mark.parametrize("argv, flag", [
    (["--calibration", "100"], "--calibration"),
    (["--samples", "50"], "--samples"),
    (["--data", "/nonexistent/fashion-mnist"], "--data"),
])
def test_cli_errors_name_the_flag(tmp_path, capsys, argv, flag):
    d = _copy("dc", tmp_path)
    assert main(["quantize", str(d), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag in err


def test_cli_error_names_a_missing_directory(tmp_path, capsys):
    assert main(["quantize", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope" in err


@needs_fmnist
def test_export_can_write_int8(tmp_path):
    pytest.importorskip("torch")
    from gan_service.training.config import make_config
    from gan_service.training.export import export_model
    from gan_service.training.loop import train

    cfg = make_config("fmnist-dcgan-basic", {"g_channels": 8, "d_channels": 8, "steps": 2, "log_every": 1,
                                             "sample_every": 0, "fd_every": 0, "limit": 256,
                                             "out_dir": str(tmp_path / "runs")})
    run = train(cfg, log=lambda m: None)
    out = export_model(run, "tiny", out_dir=tmp_path / "models", fp16=False, int8=True, int8_samples=GATE_N,
                       int8_calibration=512, log=lambda m: None)
    model = load_model_dir(out)
    record = model.manifest["int8"]
    assert record["gate"]["n"] == GATE_N
    assert (Q.INT8_FILE in model.files) == record["exported"]
    without = export_model(run, "tiny-fp32", out_dir=tmp_path / "models", fp16=False, log=lambda m: None)
    assert Q.INT8_FILE not in load_model_dir(without).files
    assert load_model_dir(without).manifest["int8"] == {"exported": False, "reason": "not asked (gan export --int8)"}


def test_cli_export_int8_samples_is_checked(tmp_path, capsys):
    ckpt = tmp_path / "step-1.pt"
    ckpt.write_bytes(b"")
    assert main(["export", str(ckpt), "--name", "m", "--out-dir", str(tmp_path), "--int8", "--int8-samples", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--int8-samples" in err
