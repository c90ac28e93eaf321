"""What a user gets from pip: the wheel built from this checkout, installed with the serve extra alone into a fresh
virtual environment (no torch, no checkout on the path), installs one top-level package, serves the shipped models
from any directory with `gan serve`, and passes the torch-free tests (they serve tests/data's tiny models)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from conftest import free_port

REPO = Path(__file__).resolve().parents[1]
# The tests that need neither torch nor the dataset: the service, the sampler, the web page, the API contract.
TORCH_FREE_TESTS = ["test_service.py", "test_sampler.py", "test_web.py", "test_contract.py", "test_serving_batcher.py",
                    "test_transport.py", "test_guard.py", "test_fuzz.py", "test_http_bound.py",
                    "test_serving_overload.py", "test_serving_bench.py"]
TEST_TOOLS = ["pytest>=8", "pytest-timeout>=2.3", "selenium>=4.20", "hypothesis>=6"]


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{cmd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh virtual environment holding the wheel with the serve extra (and the test tools), nothing else."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"                       # build from a copy: the checkout gets no build/ or egg-info
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv*", "build", "*.egg-info", "__pycache__",
                                                             "runs", ".pytest_cache", "tests", "docs"))
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", root / "dist", src],
         timeout=600)
    wheel = next((root / "dist").glob("gan_service-*.whl"))
    env_dir = root / "venv"
    _run([sys.executable, "-m", "venv", env_dir], timeout=300)
    _run([env_dir / "bin" / "pip", "install", "-q", f"{wheel}[serve]", *TEST_TOOLS], timeout=900)
    return env_dir


def _site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def test_wheel_installs_one_package_and_no_torch(venv):
    record = next(_site_packages(venv).glob("gan_service-*.dist-info")) / "RECORD"
    tops = {line.split(",")[0].split("/")[0] for line in record.read_text().splitlines()}
    assert {t for t in tops if not t.endswith(".dist-info") and t != ".."} == {"gan_service"}
    installed = _site_packages(venv) / "gan_service"
    for shipped in ("serving/web/index.html", "models/fmnist-cdcgan/generator.onnx", "models/fmnist-dcgan/manifest.json",
                    "models/eval/classifier.onnx", "models/eval-robust/manifest.json"):
        assert (installed / shipped).is_file(), f"{shipped} is not in the wheel"
    probe = subprocess.run([venv / "bin" / "python", "-c", "import torch"], capture_output=True)
    assert probe.returncode != 0, "the serve extra must not pull in torch"


def test_installed_gan_serve_answers_from_any_directory(venv, tmp_path):
    port, elsewhere = free_port(), tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GAN_", "PYTHON"))}
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([venv / "bin" / "gan", "serve", "--port", str(port)], cwd=elsewhere, stdout=log,
                            stderr=subprocess.STDOUT, env={**env, "BENTOML_HOME": str(tmp_path / "bentoml")},
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        from conftest import Server
        waiter = Server.__new__(Server)                      # reuse the readiness loop on this process
        waiter.proc, waiter.url, waiter.log_path = proc, url, tmp_path / "serve.log"
        waiter.wait(timeout=240)
        page = httpx.get(url + "/ui", timeout=30)
        assert page.status_code == 200 and "<html" in page.text.lower()
        info = httpx.get(url + "/info", timeout=30).json()
        assert [m["name"] for m in info["models"]] == ["fmnist-cdcgan", "fmnist-dcgan"]   # the default first
        got = httpx.post(url + "/generate", json={"seed": 7}, timeout=60)
        assert got.status_code == 200 and got.content.startswith(b"\x89PNG")
        assert got.headers["x-model"] == "fmnist-cdcgan"
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=60)


def test_torch_free_tests_pass_against_the_installed_wheel(venv, tmp_path):
    suite = tmp_path / "suite"
    shutil.copytree(REPO / "tests", suite / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    where = _run([venv / "bin" / "python", "-c", "import gan_service; print(gan_service.__file__)"], cwd=suite)
    assert where.stdout.strip().startswith(str(_site_packages(venv))), where.stdout
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GAN_", "PYTHON"))}
    proc = subprocess.run([venv / "bin" / "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                           *[f"tests/{t}" for t in TORCH_FREE_TESTS]], cwd=suite, env=env, capture_output=True,
                          text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout.splitlines()[-1]
