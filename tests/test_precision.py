"""The precision setting: which graph of a model runs (auto / fp32 / fp16 / int8), and the determinism contract
within one precision. Torch-free: the shipped default model carries a checked int8 graph; the tiny test models
carry none."""
from __future__ import annotations

import json
import shutil

import httpx
import numpy as np
import pytest

import gan_service
from gan_service.core import cpu_features
from gan_service.serving import engine as engine_module
from gan_service.serving.engine import Engine, EngineError, EngineOptions, choose_graph
from gan_service.serving.modeldir import INT8_FILE, load_model_dir, write_manifest
from gan_service.serving.runtime import RANDOM_LABEL, ModelRuntime, make_rows
from gan_service.serving.settings import ServeSettings

SHIPPED = gan_service.core.paths.PACKAGE_ROOT / "models" / "fmnist-cdcgan"


@pytest.fixture
def shipped(tmp_path):
    return load_model_dir(shutil.copytree(SHIPPED, tmp_path / "fmnist-cdcgan"))


def test_auto_takes_int8_only_where_the_cpu_gains(shipped, monkeypatch):
    monkeypatch.setattr(engine_module, "int8_pays", lambda: True)
    assert choose_graph(shipped, "cpu", "auto") == ("int8", shipped.int8_path)
    monkeypatch.setattr(engine_module, "int8_pays", lambda: False)          # a CPU told int8 does not pay
    assert choose_graph(shipped, "cpu", "auto") == ("fp32", shipped.onnx_path)
    assert choose_graph(shipped, "cpu", "fp32") == ("fp32", shipped.onnx_path)
    assert choose_graph(shipped, "cpu", "int8") == ("int8", shipped.int8_path)   # explicit: no CPU check
    assert choose_graph(shipped, "cuda", "auto") == ("fp16", shipped.fp16_path)


def test_int8_pays_reads_the_cpu_flags():
    assert cpu_features.int8_pays("flags\t: fpu sse2 avx2 fma\n")
    assert cpu_features.int8_pays("flags\t: fpu avx512f avx512_vnni\n")
    assert not cpu_features.int8_pays("flags\t: fpu sse2 sse4_2 avx\n")
    assert not cpu_features.int8_pays("")


def test_explicit_precision_the_model_or_provider_cannot_run_is_refused(shipped, tiny_models):
    tiny = load_model_dir(tiny_models["dc"])
    assert tiny.int8_path is None
    with pytest.raises(EngineError, match="precision int8 asked for, but the model directory has no checked int8"):
        Engine(tiny, EngineOptions(provider="cpu", precision="int8"))
    with pytest.raises(EngineError, match="fp16 runs on CUDA only"):
        Engine(shipped, EngineOptions(provider="cpu", precision="fp16"))
    with pytest.raises(EngineError, match="int8 runs on the CPU only"):
        choose_graph(shipped, "cuda", "int8")
    assert Engine(tiny, EngineOptions(provider="cpu", precision="auto")).precision == "fp32"


def test_an_int8_graph_whose_gate_failed_is_never_run(shipped):
    manifest = dict(shipped.manifest, int8={**shipped.manifest["int8"], "passed": False})
    write_manifest(shipped.path, manifest)
    again = load_model_dir(shipped.path)
    assert (again.path / INT8_FILE).is_file() and again.int8_path is None


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_same_bytes_however_batched_within_one_precision(precision):
    runtime = ModelRuntime(ServeSettings(models=[str(SHIPPED)], provider="cpu", precision=precision,
                                         max_batch_size=512, max_n=64), warmup=False)
    assert runtime.engines[0].precision == precision
    rows = make_rows(0, 2024, np.arange(512), [RANDOM_LABEL] * 512, 1.0)
    whole = runtime.render(rows)
    for size in (1, 7, 64):
        parts = np.concatenate([runtime.render(rows[i:i + size]) for i in range(0, 512, size)])
        assert np.array_equal(parts, whole), f"batch {size}"


def test_precisions_give_different_bytes_and_info_says_which(start_server):
    fp32 = start_server({"GAN_MODELS": str(SHIPPED), "GAN_PRECISION": "fp32", "GAN_PROVIDER": "cpu"})
    int8 = start_server({"GAN_MODELS": str(SHIPPED), "GAN_PRECISION": "int8", "GAN_PROVIDER": "cpu"})
    body = {"n": 16, "seed": 5, "format": "npy"}
    a, b = (httpx.post(s.url + "/generate", json=body, timeout=60) for s in (fp32, int8))
    assert a.status_code == b.status_code == 200 and a.content != b.content
    for server, precision in ((fp32, "fp32"), (int8, "int8")):
        model = httpx.get(server.url + "/info").json()["models"][0]
        assert model["precision"] == precision
        assert model["model_file"] == ("generator.onnx" if precision == "fp32" else INT8_FILE)
        assert f"runs on CPUExecutionProvider, precision {precision}" in server.log()
    bad = start_server({"GAN_MODELS": str(SHIPPED), "GAN_PRECISION": "fp16x"}, ready=False)
    bad.proc.wait(timeout=120)
    assert bad.proc.returncode != 0 and "precision must be one of" in bad.log()


def test_settings_name_the_precisions():
    assert json.dumps(ServeSettings().precision) == '"auto"'
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, fp16, int8"):
        ServeSettings(precision="bf16")
