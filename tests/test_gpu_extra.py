"""The `gpu` extra on a machine without a GPU: a fresh virtual environment with the extra's packages
(onnxruntime-gpu instead of onnxruntime), the service started from this checkout with default settings.

onnxruntime-gpu lists CUDAExecutionProvider whether or not a GPU and driver are there, and a session asked for
CUDA then quietly runs on the CPU: the service must see that, serve on the CPU, and say so in /info; asked
explicitly for CUDA (GAN_PROVIDER=cuda or GAN_REQUIRE_GPU=true) it must refuse to start instead.

onnxruntime-gpu is installed without its [cuda,cudnn] extras (about 2 GB of NVIDIA wheels): without them it
still lists CUDA and the session still falls back to the CPU, the case under test; only the reason differs (the
CUDA libraries are missing instead of the driver). The GPU image (tests/test_container.py, GAN_TEST_GPU_IMAGE=1)
has the extras and was run on this machine the same way. The versions are those of deploy/requirements-gpu.txt.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest

from conftest import free_port

REPO = Path(__file__).resolve().parents[1]


def _has_gpu() -> bool:
    try:
        return shutil.which("nvidia-smi") is not None and subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, timeout=30).returncode == 0
    except subprocess.TimeoutExpired:
        return False


pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(_has_gpu(), reason="this machine has an NVIDIA GPU: the CPU fallback is not "
                                                    "what it would show")]


def gpu_extra_requirements() -> list[str]:
    """The project's dependencies and its gpu extra, onnxruntime-gpu without the [cuda,cudnn] extras."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + project["optional-dependencies"]["gpu"]
    assert any(r.startswith("onnxruntime-gpu[cuda,cudnn]") for r in reqs), reqs
    return [re.sub(r"^onnxruntime-gpu\[[^\]]*\]", "onnxruntime-gpu", r) for r in reqs]


@pytest.fixture(scope="module")
def gpu_venv(tmp_path_factory) -> Path:
    env_dir = tmp_path_factory.mktemp("gpu-extra") / "venv"
    subprocess.run([sys.executable, "-m", "venv", env_dir], check=True, timeout=300)
    pip = subprocess.run([env_dir / "bin" / "pip", "install", "-q", "-c", REPO / "deploy" / "requirements-gpu.txt",
                          *gpu_extra_requirements()], capture_output=True, text=True, timeout=1200)
    assert pip.returncode == 0, pip.stderr[-4000:]
    probe = subprocess.run([env_dir / "bin" / "python", "-c", "import onnxruntime as o; "
                            "print(o.get_device(), o.get_available_providers())"], capture_output=True, text=True)
    assert "CUDAExecutionProvider" in probe.stdout, probe.stdout + probe.stderr   # the case under test
    assert subprocess.run([env_dir / "bin" / "python", "-c", "import torch"], capture_output=True).returncode
    return env_dir


class Serve:
    """`bentoml serve gan_service.serving.app:GAN` from the checkout with the venv's Python; GAN_* of this
    process's environment removed, so only `settings` apply."""

    def __init__(self, venv: Path, log_path: Path, **settings: str):
        self.port, self.log_path = free_port(), log_path
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("GAN_") and k != "PYTHONPATH"}
        env.update(BENTOML_DO_NOT_TRACK="true", **settings)
        self.proc = subprocess.Popen([venv / "bin" / "python", "-m", "bentoml", "serve", "gan_service.serving.app:GAN",
                                      "--host", "127.0.0.1", "--port", str(self.port)], cwd=REPO, env=env,
                                     stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True)

    def ready(self) -> bool:
        try:
            return httpx.get(self.url + "/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def test_default_settings_serve_on_the_cpu(gpu_venv, tmp_path):
    server = Serve(gpu_venv, tmp_path / "serve.log")
    try:
        deadline = time.time() + 180
        while not server.ready():
            assert server.proc.poll() is None, f"the service exited:\n{server.log()[-4000:]}"
            assert time.time() < deadline, f"/readyz never answered 200:\n{server.log()[-4000:]}"
            time.sleep(0.5)
        info = httpx.get(server.url + "/info", timeout=30).json()
        # on the CPU, never the fp16 graph: int8 where this CPU gains from it (precision auto), else fp32
        from gan_service.core.cpu_features import int8_pays
        graph = "generator.int8.onnx" if int8_pays() else "generator.onnx"
        assert [(m["name"], m["provider"], m["model_file"]) for m in info["models"]] == [
            ("fmnist-cdcgan", "CPUExecutionProvider", graph), ("fmnist-dcgan", "CPUExecutionProvider", graph)]
        r = httpx.post(server.url + "/generate", json={"n": 1, "seed": 5}, timeout=60)
        assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n"
        assert "model fmnist-cdcgan runs on CPUExecutionProvider" in server.log()
        assert "on the CPU because onnxruntime lists CUDA but no session can use it" in server.log()
    finally:
        server.stop()


@pytest.mark.parametrize("setting", [{"GAN_PROVIDER": "cuda"}, {"GAN_REQUIRE_GPU": "true"}],
                         ids=["provider-cuda", "require-gpu"])
def test_asking_for_cuda_refuses_to_start(gpu_venv, tmp_path, setting):
    """The worker stops at start-up naming the reason and the service never becomes ready (BentoML restarts
    the worker, which stops again: no request is ever answered from the CPU)."""
    server = Serve(gpu_venv, tmp_path / "serve.log", **setting)
    try:
        deadline = time.time() + 120
        while "Application startup failed" not in server.log():
            assert time.time() < deadline, f"no start-up failure logged:\n{server.log()[-4000:]}"
            assert not server.ready(), "the service became ready without CUDA"
            time.sleep(0.5)
        log = server.log()
        assert re.search(r"EngineError: fmnist-cdcgan: asked for CUDA but the session got \['CPUExecutionProvider'\] "
                         r"\(no usable GPU or NVIDIA driver\)", log), log[-4000:]
        assert not server.ready()
    finally:
        server.stop()
