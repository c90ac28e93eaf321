"""The container image the bento makes, built and run for real: `python deploy/container.py build` (what `make
container` runs: bentoml build + bentoml containerize with Docker, or podman where Docker cannot run containers),
started with default settings by `python deploy/container.py run` on this machine without a GPU, then removed.

The CPU image (bentofile.yaml) is built on every run where Docker or podman can run containers; the GPU image
(bentofile-gpu.yaml, 3+ GB of CUDA and cuDNN wheels) only on request: GAN_TEST_GPU_IMAGE=1 (make test-gpu-image).
The images it builds are removed at the end; a base image it had to build (localhost/gan-base:bookworm, from the
Debian mirror when no registry is reachable, about 200 MB) is kept for the next run.
"""
from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import free_port

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("deploy_container", REPO / "deploy" / "container.py")
container = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(container)

ENGINE = next((e for e in ("docker", "podman") if container.engine_works(e)), None)
CPU_IMAGE_MAX_BYTES = 1 << 30          # the slim image: at most 1 GiB
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(ENGINE is None, reason="neither docker nor podman can run containers here "
                                                        "(make system-deps installs podman on Debian)")]


def _cli(*args, timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(REPO / "deploy" / "container.py"), "--engine", ENGINE, *args],
                          capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{args}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module", params=["cpu", "gpu"])
def image(request, tmp_path_factory):
    """(flavor, image name): built from this checkout under a throw-away tag, removed afterwards."""
    flavor = request.param
    if flavor == "gpu" and os.environ.get("GAN_TEST_GPU_IMAGE") != "1":
        pytest.skip("the GPU image (3+ GB) is built only on request: GAN_TEST_GPU_IMAGE=1")
    tag = f"gan-test-{flavor}:{uuid.uuid4().hex[:12]}"
    env = {**os.environ, "BENTOML_HOME": str(tmp_path_factory.mktemp("bentoml-home"))}
    try:
        out = _cli("build", *(["--gpu"] if flavor == "gpu" else []), "--tag", tag, timeout=1500, env=env)
        assert out.stdout.strip().splitlines()[-1] == tag
        yield flavor, tag
    finally:
        subprocess.run([ENGINE, "rmi", "-f", tag], capture_output=True, timeout=300)
        assert not container.image_exists(ENGINE, tag), f"{tag} was not removed"


def _engine(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([ENGINE, *args], capture_output=True, text=True, timeout=timeout)


def test_image_is_slim_and_has_no_compiler(image):
    flavor, tag = image
    size = int(_engine("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())
    print(f"{flavor} image {tag}: {size / 1e9:.2f} GB")
    if flavor == "cpu":
        assert size <= CPU_IMAGE_MAX_BYTES, f"the CPU image is {size / 1e9:.2f} GB"
    probe = ["run", "--rm", *(container.podman_limits() if ENGINE == "podman" else []), "--entrypoint", "sh", tag,
             "-c", "for t in gcc cc c++ make git; do command -v $t; done; "
                   "python -c 'import onnxruntime as o; print(o.__version__, o.get_available_providers())'"]
    out = _engine(*probe, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1, f"a compiler toolchain in the served image: {lines[:-1]}"
    assert ("CUDAExecutionProvider" in lines[0]) == (flavor == "gpu"), lines[0]


def test_image_serves_with_default_settings_on_the_cpu(image):
    flavor, tag = image
    port, name = free_port(), f"gan-test-{uuid.uuid4().hex[:8]}"
    _cli("run", tag, "--port", str(port), "--detach", "--name", name, timeout=300)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, f"/readyz never answered 200:\n{_engine('logs', name).stderr[-4000:]}"
            time.sleep(1)
        info = httpx.get(url + "/info", timeout=30).json()
        assert [m["name"] for m in info["models"]] == ["fmnist-cdcgan", "fmnist-dcgan"]
        assert {m["provider"] for m in info["models"]} == {"CPUExecutionProvider"}      # no GPU on this machine
        png = httpx.post(url + "/generate", json={"n": 1, "seed": 3, "labels": "Bag"}, timeout=60)
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(png.content)).size == (28, 28)
        npy = httpx.post(url + "/generate", json={"n": 4, "seed": 3, "format": "npy"}, timeout=60)
        assert npy.status_code == 200
        images = np.load(io.BytesIO(npy.content))
        assert images.shape == (4, 28, 28, 1) and images.dtype == np.uint8 and images.std() > 0
        bad = httpx.post(url + "/generate", json={"n": 0}, timeout=30)
        assert bad.status_code == 400 and bad.json()["field"] == "n"
        logs = _engine("logs", name)
        assert "model fmnist-cdcgan runs on CPUExecutionProvider" in logs.stdout + logs.stderr
    finally:
        _engine("rm", "-f", name, timeout=120)
    assert name not in _engine("ps", "-a", "--format", "{{.Names}}").stdout
