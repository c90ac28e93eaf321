"""Export: checkpoint -> ONNX model directory (parity, fp16, manifest, samples), model directory checks,
BentoML import and the ``gan export`` command. Tiny models trained for 2 steps keep it fast."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from gan_service.core.fmnist import FMNIST_CLASSES, FMNIST_DIR
from gan_service.serving.latents import latents
from gan_service.serving.modeldir import LabelError, ModelDirError, load_model_dir, write_manifest
from gan_service.training.checkpoint import file_sha256, latest_checkpoint
from gan_service.training.config import make_config
from gan_service.training.export import ExportError, export_model
from gan_service.training.fp16 import decision_nodes
from gan_service.training.loop import train

ROOT = Path(__file__).resolve().parents[1]
SMALL_CONV = {"g_channels": 8, "d_channels": 8}
ARCHS = {
    "mlp": ("paper-mlp", {"g_hidden": [64], "d_hidden": [32], "d_maxout": 2}),
    "dcgan": ("fmnist-dcgan-basic", SMALL_CONV),
    "cdcgan": ("fmnist-cdcgan-basic", SMALL_CONV),
    # the shipped recipe: nearest-resize + conv upsampling in G (an ONNX Resize, whose scales stay float32 in fp16)
    "dcgan-resize": ("fmnist-dcgan-basic", {**SMALL_CONV, "g_upsample": "resize", "d_norm": "spectral"}),
    # self-conditioned: trained on 4 k-means clusters, served unconditional (the cluster drawn from one more latent)
    "selfcond": ("fmnist-cdcgan-basic", {**SMALL_CONV, "g_upsample": "resize", "clusters": 4, "num_classes": 4,
                                   "use_labels": False}),
    # clusters within each class: 10 classes x 2 clusters, served class-conditional (the cluster drawn per class)
    "subclass": ("fmnist-cdcgan-basic", {**SMALL_CONV, "g_upsample": "resize", "clusters": 2, "num_classes": 20}),
}
SELF_CONDITIONED = {"selfcond", "subclass"}
CONDITIONAL = {"cdcgan", "subclass"}          # served with a label input

pytestmark = pytest.mark.skipif(not Path(FMNIST_DIR).is_dir(), reason=f"Fashion-MNIST not installed at {FMNIST_DIR}")


def _train(preset: str, overrides: dict, out: Path) -> Path:
    base = {"steps": 2, "log_every": 1, "sample_every": 0, "fd_every": 0, "out_dir": str(out)}
    if preset not in ("toy-ring", "toy-grid"):
        base["limit"] = 256
    return train(make_config(preset, {**base, **overrides}), log=lambda msg: None)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("runs")
    found = {arch: _train(preset, ov, out) for arch, (preset, ov) in ARCHS.items()}
    found["toy"] = _train("toy-ring", {"g_hidden": [16], "d_hidden": [16], "batch_size": 32}, out)
    return found


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("models")
    return {arch: export_model(runs[arch], f"tiny-{arch}", out_dir=out, command=f"test {arch}", log=lambda m: None)
            for arch in ARCHS}


def _feed(n: int, latent_dim: int, num_classes: int, seed: int = 5) -> dict:
    rng = np.random.default_rng(seed)
    feed = {"z": rng.standard_normal((n, latent_dim), dtype=np.float32)}
    if num_classes:
        feed["label"] = rng.integers(0, num_classes, n, dtype=np.int64)
    return feed


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------- export of each architecture

@pytest.mark.parametrize("arch", list(ARCHS))
def test_export_passes_parity_and_fp16(exported, arch):
    md = load_model_dir(exported[arch])
    parity = md.manifest["parity"]
    assert set(parity["batches"]) == {"1", "7", "512"}
    assert parity["max_abs_diff"] <= 1 and parity["min_identical"] >= 0.999
    fp16 = md.manifest["fp16"]
    assert fp16["exported"] and md.fp16_path is not None and md.fp16_path.is_file()
    cpu = fp16["providers"]["CPUExecutionProvider"]       # onnxruntime CPU runs these fp16 graphs
    assert "skipped" not in cpu, cpu
    assert cpu["within_1"] >= 0.99 and fp16["min_within_1"] >= 0.99
    assert sorted(p.name for p in md.path.iterdir()) == sorted(
        ["generator.onnx", "generator.fp16.onnx", "samples.png", "manifest.json"])


@pytest.mark.parametrize("arch", list(ARCHS))
def test_onnx_io_dtype_and_shape(exported, arch):
    md = load_model_dir(exported[arch])
    model = onnx.load(md.onnx_path)
    inputs = {i.name: i for i in model.graph.input}
    assert list(inputs) == (["z", "label"] if arch in CONDITIONAL else ["z"])
    assert inputs["z"].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in inputs["z"].type.tensor_type.shape.dim] == ["batch", md.latent_dim]
    if arch in CONDITIONAL:
        assert inputs["label"].type.tensor_type.elem_type == onnx.TensorProto.INT64
    (out,) = model.graph.output
    assert out.name == "image" and out.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["batch", 28, 28, 1]
    assert {o.domain: o.version for o in model.opset_import}.get("", 17) == 17 == md.manifest["opset"]
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)   # folded in eval mode
    for path in (md.onnx_path, md.fp16_path):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for n in (1, 3):
            img = sess.run(None, _feed(n, md.latent_dim, md.num_classes))[0]
            assert img.dtype == np.uint8 and img.shape == (n, 28, 28, 1)
    half = onnx.load(md.fp16_path)
    assert half.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT       # z stays float32
    assert half.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    # weights are fp16, but what the graph's discrete choices read (a self-conditioned G's cluster boundaries)
    decision_inputs = {i for n in decision_nodes(list(half.graph.node)) for i in n.input}
    floats = {t.name: t.data_type for t in half.graph.initializer if t.data_type in (1, 10) and len(t.dims) >= 2}
    assert {k for k, v in floats.items() if v == onnx.TensorProto.FLOAT} <= decision_inputs
    assert [v for v in floats.values() if v == onnx.TensorProto.FLOAT16]
    assert bool(decision_inputs) == (arch in SELF_CONDITIONED)


def test_determinism(exported):
    md = load_model_dir(exported["cdcgan"])
    feed = _feed(64, md.latent_dim, md.num_classes, seed=11)
    sess = ort.InferenceSession(str(md.onnx_path), providers=["CPUExecutionProvider"])
    a = sess.run(None, feed)[0]
    one_by_one = np.concatenate([sess.run(None, {k: v[i:i + 1] for k, v in feed.items()})[0] for i in range(64)])
    assert np.array_equal(one_by_one, a)          # an image does not depend on the batch it was made in
    invariance = md.manifest["parity"]["batch_invariance_cpu"]["batch_512_vs_batches_of_7"]
    assert invariance["max_abs_diff"] == 0 and invariance["identical"] == 1.0


def test_batch_invariance_is_enforced():
    """A graph whose image depends on its batch (here: centred on the batch mean) is refused, naming the check."""
    from gan_service.training.export_checks import batch_invariance
    from gan_service.training.onnx_export import ExportError

    class BatchDependent:
        def run(self, names, feed):
            z = feed["z"]
            return [np.clip((z - z.mean(0)) * 40 + 128, 0, 255).astype(np.uint8)]

    class Honest:
        def run(self, names, feed):
            return [np.clip(feed["z"] * 40 + 128, 0, 255).astype(np.uint8)]

    assert batch_invariance(Honest(), 8, 0)["batch_512_vs_batches_of_7"]["identical"] == 1.0
    with pytest.raises(ExportError, match="batch invariance failed"):
        batch_invariance(BatchDependent(), 8, 0)


def test_manifest_fields(exported, runs):
    for arch, path in exported.items():
        m = json.loads((path / "manifest.json").read_text())
        ckpt = latest_checkpoint(runs[arch])
        assert m["name"] == f"tiny-{arch}" and m["format_version"] == 1 and m["version"]
        assert m["created"].endswith("+00:00")
        assert m["source"]["checkpoint"] == str(ckpt.resolve()) and m["source"]["sha256"] == file_sha256(ckpt)
        assert m["source"]["generator"] == ("G" if arch == "mlp" else "G_ema")    # paper-mlp trains without EMA
        assert m["step"] == 2 and m["training"]["steps"] == 2
        assert 0 < m["training"]["wall_time_s"] < 600 and m["training"]["device"].startswith("cpu: ")
        assert m["preset"] == ARCHS[arch][0] == m["training"]["config"]["preset"]
        assert m["data"]["source"] == "fmnist" and m["data"]["split"] == "train"
        assert m["latent_dim"] == {"mlp": 100, "selfcond": 65, "subclass": 65}.get(arch, 64)
        assert ("self_conditioning" in m) == (arch in SELF_CONDITIONED)
        assert m["image_shape"] == [28, 28, 1] and m["dtype"] == "uint8" and m["opset"] == 17
        assert m["command"] == f"test {arch}"
        assert set(m["files"]) == {"generator.onnx", "generator.fp16.onnx", "samples.png"}
        for fname, entry in m["files"].items():
            assert entry == {"sha256": file_sha256(path / fname), "bytes": (path / fname).stat().st_size}
        if arch in CONDITIONAL:
            assert m["num_classes"] == 10 and m["class_names"] == FMNIST_CLASSES
            assert [i["name"] for i in m["inputs"]] == ["z", "label"]
        else:
            assert m["num_classes"] == 0 and m["class_names"] == []
            assert [i["name"] for i in m["inputs"]] == ["z"]
        assert m["outputs"][0]["shape"] == ["batch", 28, 28, 1]


def test_training_time_of_old_checkpoints_from_stats(runs, tmp_path):
    """Checkpoints from before train_seconds existed: the wall time is summed over resumed sessions' stats.jsonl."""
    import torch
    from gan_service.training.checkpoint import load_checkpoint
    from gan_service.training.checkpoint import training_time
    ck = load_checkpoint(runs["dcgan"])
    assert training_time(ck)["wall_time_s"] == round(ck.state["train_seconds"], 3)
    old = tmp_path / "run" / "checkpoints" / "step-00000002.pt"
    old.parent.mkdir(parents=True)
    torch.save({k: v for k, v in ck.state.items() if k not in ("train_seconds", "device")}, old)
    rows = [{"step": 1, "elapsed_s": 5.0}, {"step": 2, "elapsed_s": 9.0},    # first session
            {"step": 1, "elapsed_s": 2.5}, {"step": 2, "elapsed_s": 4.0},    # resumed from step 0 (clock restarts)
            {"step": 2, "pixel_fd": 3.0}, {"step": 3, "elapsed_s": 99.0}]    # not timing rows / past the checkpoint
    torn = '\n{"step": 3, "elaps'                                          # a blank line, then a killed run's torn write
    (tmp_path / "run" / "stats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + torn)
    assert training_time(load_checkpoint(old)) == {"wall_time_s": 13.0, "device": None}


def test_samples_png(exported):
    for arch, path in exported.items():
        with Image.open(path / "samples.png") as im:
            im.verify()
        with Image.open(path / "samples.png") as im:
            assert im.format == "PNG" and im.mode == "L"
            w, h = im.size
            if arch in CONDITIONAL:                 # 10 labelled rows of 10; the labels add a left margin
                assert h == 10 * 30 + 2 and w > 10 * 30 + 2 + 20
            else:                                   # 8 x 8 grid of 28 px images, 2 px padding
                assert (w, h) == (8 * 30 + 2, 8 * 30 + 2)
    # the grid is what the exported model makes (not PyTorch): regenerate it with onnxruntime
    md = load_model_dir(exported["dcgan"])
    z = latents(md.manifest["samples"]["seed"], 0, 64, md.latent_dim)      # the service's latents for seed 0
    images = ort.InferenceSession(str(md.onnx_path), providers=["CPUExecutionProvider"]).run(None, {"z": z})[0]
    grid = np.asarray(Image.open(md.path / "samples.png"))
    assert np.array_equal(grid[2:30, 2:30], images[0, :, :, 0])
    assert np.array_equal(grid[2 + 30:30 + 30, 2 + 60:30 + 60], images[8 + 2, :, :, 0])


def test_fp16_check_runs_on_cpu(exported):
    assert "CPUExecutionProvider" in ort.get_available_providers()
    md = load_model_dir(exported["dcgan"])
    feed = _feed(256, md.latent_dim, 0, seed=3)
    ref = ort.InferenceSession(str(md.onnx_path), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    got = ort.InferenceSession(str(md.fp16_path), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    diff = np.abs(ref.astype(int) - got.astype(int))
    assert (diff <= 1).mean() >= 0.99
    assert md.manifest["fp16"]["checked_on"][0] == "CPUExecutionProvider"


def test_fp16_model_not_shipped_when_no_provider_could_check_it(runs, tmp_path, monkeypatch):
    """An fp16 graph that no onnxruntime provider here can run is unchecked: it is not written, and the log and
    the manifest say why (the fp32 model still ships)."""
    real = ort.InferenceSession

    def no_fp16_kernels(path, *args, **kwargs):
        if str(path).endswith("generator.fp16.onnx"):
            raise RuntimeError("NOT_IMPLEMENTED: no kernel for this fp16 op")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", no_fp16_kernels)
    lines = []
    path = export_model(runs["dcgan"], "no-fp16-check", out_dir=tmp_path, log=lines.append)
    assert not (path / "generator.fp16.onnx").exists()
    md = load_model_dir(path)
    assert md.fp16_path is None and "generator.fp16.onnx" not in md.manifest["files"]
    fp16 = md.manifest["fp16"]
    assert fp16["exported"] is False and "no onnxruntime provider" in fp16["reason"]
    assert any("generator.fp16.onnx not written" in line for line in lines), lines


@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(), reason="needs onnxruntime-gpu + CUDA")
def test_fp16_on_cuda(exported):
    for arch in ARCHS:
        md = load_model_dir(exported[arch])
        feed = _feed(512, md.latent_dim, md.num_classes, seed=4)
        ref = ort.InferenceSession(str(md.onnx_path), providers=["CPUExecutionProvider"]).run(None, feed)[0]
        sess = ort.InferenceSession(str(md.fp16_path), providers=["CUDAExecutionProvider"])
        assert sess.get_providers()[0] == "CUDAExecutionProvider"
        got = sess.run(None, feed)[0]
        assert got.dtype == np.uint8 and got.shape == ref.shape
        assert (np.abs(ref.astype(int) - got.astype(int)) <= 1).mean() >= 0.99
        fp32_cuda = ort.InferenceSession(str(md.onnx_path), providers=["CUDAExecutionProvider"]).run(None, feed)[0]
        diff = np.abs(ref.astype(int) - fp32_cuda.astype(int))
        assert diff.max() <= 1 and (diff == 0).mean() >= 0.999          # DESIGN: CPU vs CUDA agreement


# ---------------------------------------------------------------- model directory checks

def test_label_index(exported):
    md = load_model_dir(exported["cdcgan"])
    assert md.conditional and md.label_index("Trouser") == 1 == md.label_index("trouser")
    assert md.label_index(3) == 3 == md.label_index("3")
    with pytest.raises(LabelError, match="'Hat'"):
        md.label_index("Hat")
    with pytest.raises(ValueError, match="0..9"):
        md.label_index(10)
    with pytest.raises(LabelError, match="unconditional"):
        load_model_dir(exported["dcgan"]).label_index(0)


def test_tampered_file_is_rejected(exported, tmp_path):
    d = _copy(exported["dcgan"], tmp_path / "m")
    data = bytearray((d / "generator.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (d / "generator.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelDirError, match=r"generator\.onnx.*sha256"):
        load_model_dir(d)
    (d / "generator.onnx").write_bytes(bytes(data[:-1]))            # truncated: the size differs
    with pytest.raises(ModelDirError, match=r"generator\.onnx.*size"):
        load_model_dir(d)


def test_missing_listed_file_is_rejected(exported, tmp_path):
    d = _copy(exported["dcgan"], tmp_path / "m")
    (d / "samples.png").unlink()
    with pytest.raises(ModelDirError, match=r"samples\.png.*missing"):
        load_model_dir(d)


def test_bad_manifests_are_rejected(exported, tmp_path):
    d = _copy(exported["cdcgan"], tmp_path / "m")
    good = json.loads((d / "manifest.json").read_text())

    (d / "manifest.json").write_text("{not json")
    with pytest.raises(ModelDirError, match=r"manifest\.json.*invalid JSON"):
        load_model_dir(d)

    for key in ("latent_dim", "files", "image_shape"):
        broken = dict(good)
        del broken[key]
        (d / "manifest.json").write_text(json.dumps(broken))
        with pytest.raises(ModelDirError, match=rf"manifest\.json.*'{key}'"):
            load_model_dir(d)

    broken = json.loads(json.dumps(good))
    broken["latent_dim"] = "64"
    (d / "manifest.json").write_text(json.dumps(broken))
    with pytest.raises(ModelDirError, match="'latent_dim' must be of type int"):
        load_model_dir(d)

    broken = json.loads(json.dumps(good))
    broken["files"]["generator.fp16.onnx"]["sha256"] = "0" * 64
    (d / "manifest.json").write_text(json.dumps(broken))
    with pytest.raises(ModelDirError, match=r"generator\.fp16\.onnx.*sha256"):
        load_model_dir(d)

    (d / "manifest.json").unlink()
    with pytest.raises(ModelDirError, match=r"manifest\.json: missing"):
        load_model_dir(d)
    with pytest.raises(ModelDirError, match="no such model directory"):
        load_model_dir(tmp_path / "nowhere")


def test_adding_metrics_json_relists_files(exported, tmp_path):
    d = _copy(exported["dcgan"], tmp_path / "m")
    (d / "metrics.json").write_text(json.dumps({"fd": 12.5}))
    manifest = load_model_dir(d).manifest
    write_manifest(d, {**manifest, "metrics": {"fd": 12.5}})
    md = load_model_dir(d)
    assert md.files["metrics.json"]["sha256"] == file_sha256(d / "metrics.json") and md.manifest["metrics"]["fd"] == 12.5
    (d / "metrics.json").write_text(json.dumps({"fd": 1.0}))          # edited after listing: refused
    with pytest.raises(ModelDirError, match=r"metrics\.json"):
        load_model_dir(d)


# ---------------------------------------------------------------- refusals

def test_existing_directory_is_refused(runs, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="taken.*already exists"):
        export_model(runs["dcgan"], "taken", out_dir=tmp_path, log=lambda m: None)
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["keep.txt"]


def test_toy_checkpoint_is_refused(runs, tmp_path):
    with pytest.raises(ExportError, match="2-D points"):
        export_model(runs["toy"], "toy", out_dir=tmp_path, log=lambda m: None)
    assert not any(tmp_path.iterdir())


def test_failed_parity_leaves_nothing(runs, exported, tmp_path, monkeypatch):
    """An ONNX graph that disagrees with PyTorch fails the export and no directory (or temp dir) remains."""
    import gan_service.training.export as ex

    wrong = onnx.load(exported["dcgan"] / "generator.onnx")
    bias = next(t for t in wrong.graph.initializer if t.name.endswith("to_image.bias"))
    bias.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(bias) + 0.5, bias.name))
    monkeypatch.setattr(ex, "export_onnx", lambda *a, **k: wrong)
    with pytest.raises(ExportError, match="parity check failed"):
        export_model(runs["dcgan"], "bad", out_dir=tmp_path, log=lambda m: None)
    assert not any(tmp_path.iterdir())


def test_bring_your_own_onnx_generator(tmp_path):
    """README, "Bring your own model": an ONNX graph made without this project's training (here by onnx.helper),
    plus a manifest written by serving.modeldir.write_manifest with the required keys, is a model directory the
    service's loader and engine accept."""
    from onnx import TensorProto, helper, numpy_helper
    from gan_service.serving.engine import Engine, EngineOptions

    w = np.random.default_rng(0).standard_normal((4, 28 * 28)).astype(np.float32) * 0.5
    consts = {"w": w, "one": np.float32(1), "half_scale": np.float32(127.5), "half": np.float32(0.5),
              "lo": np.float32(0), "hi": np.float32(255), "shape": np.array([-1, 28, 28, 1], np.int64)}
    nodes = [helper.make_node("MatMul", ["z", "w"], ["a"]), helper.make_node("Tanh", ["a"], ["t"]),
             helper.make_node("Add", ["t", "one"], ["b"]), helper.make_node("Mul", ["b", "half_scale"], ["c"]),
             helper.make_node("Add", ["c", "half"], ["d"]), helper.make_node("Floor", ["d"], ["e"]),
             helper.make_node("Clip", ["e", "lo", "hi"], ["f"]),
             helper.make_node("Cast", ["f"], ["g"], to=TensorProto.UINT8),
             helper.make_node("Reshape", ["g", "shape"], ["image"])]
    graph = helper.make_graph(nodes, "byo", [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", 28, 28, 1])],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()])
    model_dir = tmp_path / "byo"
    model_dir.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model_dir / "generator.onnx")
    write_manifest(model_dir, {
        "format_version": 1, "name": "byo", "version": "1", "created": "2026-01-01T00:00:00+00:00",
        "latent_dim": 4, "num_classes": 0, "class_names": [], "image_shape": [28, 28, 1], "dtype": "uint8",
        "opset": 17, "inputs": [{"name": "z", "dtype": "float32", "shape": ["batch", 4]}],
        "outputs": [{"name": "image", "dtype": "uint8", "shape": ["batch", 28, 28, 1]}]})
    md = load_model_dir(model_dir)
    z = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    images = Engine(md, EngineOptions(provider="cpu")).generate(z)
    expected = np.clip(np.floor((np.tanh(z @ w) + 1) * 127.5 + 0.5), 0, 255).astype(np.uint8).reshape(5, 28, 28, 1)
    assert images.dtype == np.uint8 and np.array_equal(images, expected)


# ---------------------------------------------------------------- CLI and BentoML (subprocesses)

def _env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    env.update(BENTOML_HOME=str(tmp_path / "bentoml"), BENTOML_DO_NOT_TRACK="true",
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    return env


def test_cli_export_to_bentoml_and_load_by_tag(runs, exported, tmp_path):
    env = _env(tmp_path)
    out = tmp_path / "models"
    proc = subprocess.run([sys.executable, "-m", "gan_service.cli", "export", str(runs["dcgan"]), "--name", "cli-model",
                           "--out-dir", str(out), "--to-bentoml"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(out / "cli-model")
    md = load_model_dir(out / "cli-model")
    assert md.manifest["command"].startswith("gan export ") and "--to-bentoml" in md.manifest["command"]
    # the same checkpoint exported twice gives byte-identical models
    for fname in ("generator.onnx", "generator.fp16.onnx", "samples.png"):
        assert md.files[fname]["sha256"] == file_sha256(exported["dcgan"] / fname)

    script = (
        "import json, sys\n"
        "from gan_service.serving.modeldir import ModelDirError, load_model_dir\n"
        "assert 'torch' not in sys.modules\n"
        "md = load_model_dir('cli-model:latest')\n"
        "try:\n"
        "    load_model_dir('no-such-model:latest'); missing = 'accepted'\n"
        "except ModelDirError as exc:\n"
        "    missing = str(exc)\n"
        "print(json.dumps({'path': str(md.path), 'tag': md.tag, 'sha': md.sha256, 'name': md.name,\n"
        "                  'fp16': md.fp16_path is not None, 'missing': missing}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["path"].startswith(str(tmp_path / "bentoml" / "models" / "cli-model"))
    assert got["tag"] == "cli-model:latest" and got["name"] == "cli-model" and got["fp16"]
    assert got["sha"] == md.sha256
    assert "no-such-model:latest" in got["missing"]


def test_cli_export_errors(runs, tmp_path):
    env = _env(tmp_path)
    missing = tmp_path / "no-such-run"
    proc = subprocess.run([sys.executable, "-m", "gan_service.cli", "export", str(missing), "--name", "x"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert str(missing) in proc.stderr and "Traceback" not in proc.stderr
    for bad in ("../x", "my model", "caf\u00e9", "-x"):      # names the service would refuse are refused up front
        proc = subprocess.run([sys.executable, "-m", "gan_service.cli", "export", str(runs["dcgan"]), "--name", bad],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
        assert proc.returncode == 2 and "--name" in proc.stderr and "Traceback" not in proc.stderr, bad
        assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir()), bad
