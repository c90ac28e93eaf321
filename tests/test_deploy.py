"""`bentoml build` turns the repository into two bentos, the CPU image's (bentofile.yaml) and the GPU image's
(bentofile-gpu.yaml): the same service, web page and shipped models, every Python package pinned to the versions
the suite runs on (deploy/requirements-*.txt), and a Dockerfile without BentoML's compiler toolchain.
Building and running the images themselves: tests/test_container.py."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
FLAVORS = {"cpu": ("bentofile.yaml", "gan"), "gpu": ("bentofile-gpu.yaml", "gan-gpu")}


@pytest.mark.parametrize("flavor", FLAVORS)
def test_bentoml_build_in_a_temporary_home(tmp_path, flavor):
    bentofile, bento_name = FLAVORS[flavor]
    env = {**os.environ, "BENTOML_HOME": str(tmp_path), "BENTOML_DO_NOT_TRACK": "true"}
    res = subprocess.run([sys.executable, "-m", "bentoml", "build", "-f", bentofile, "--output", "tag"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    tag = res.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version_ = tag.split(":")
    assert name == bento_name
    bento = tmp_path / "bentos" / name / version_
    src = bento / "src"
    pkg = src / "gan_service"
    for shipped in ("fmnist-cdcgan", "fmnist-dcgan"):
        for f in ("generator.onnx", "manifest.json", "samples.png"):
            assert (pkg / "models" / shipped / f).is_file(), f"{shipped}/{f} missing from the bento"
    assert (pkg / "serving" / "app.py").is_file() and (pkg / "serving" / "web" / "index.html").is_file()
    assert not list(src.rglob("*.pt")) and not (pkg / "training").exists()        # no torch, no checkpoints
    meta = yaml.safe_load((bento / "bento.yaml").read_text())
    assert meta["service"] == "gan_service.serving.app:GAN"

    lines = [ln for ln in (bento / "env" / "python" / "requirements.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==\S+", ln) for ln in lines), f"unpinned: {lines}"
    names = {ln.split("==")[0].lower() for ln in lines}
    assert "torch" not in names and "bentoml" in names and "pillow" in names
    assert ("onnxruntime-gpu" in names, "onnxruntime" in names) == ((True, False) if flavor == "gpu" else (False, True))
    assert (flavor == "gpu") == any(n.startswith("nvidia-cudnn") for n in names)    # cuDNN from PyPI, GPU only

    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    assert "FROM ${BASE_IMAGE}" in dockerfile and "ARG BASE_IMAGE=python:3.11-slim" in dockerfile
    assert not re.search(r"build-essential|\bgcc\b|\bgit\b|apt-get install", dockerfile), \
        "the served image would get a compiler toolchain"


def test_lock_files_match_the_tested_environment():
    """deploy/requirements-*.txt hold what this environment has installed (`make test` installs it with
    requirements-cpu.txt as constraints): the image ships the versions the suite passed on."""
    res = subprocess.run([sys.executable, str(REPO / "deploy" / "lock.py"), "--check"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr


def test_dependency_floors_admit_the_locked_versions_and_exclude_the_flawed_ones():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = {}
    for r in project["dependencies"] + project["optional-dependencies"]["serve"]:
        req = Requirement(r)
        reqs[req.name] = req.specifier
    lock = dict(ln.split("==") for ln in (REPO / "deploy" / "requirements-cpu.txt").read_text().splitlines()
                if "==" in ln)
    for name, spec in reqs.items():
        assert spec.contains(lock[name]), f"{name} {lock[name]} (locked) is outside {spec}"
    # Releases with published advisories or the 500-under-concurrency dependency client are excluded.
    for name, bad in {"bentoml": ["1.4.2", "1.4.30", "1.4.34"], "pillow": ["10.0.1", "10.2.0"],
                      "h11": ["0.14.0", "0.15.0"], "starlette": ["0.47.1", "0.49.0"]}.items():
        assert not any(reqs[name].contains(v) for v in bad), f"{name} {reqs[name]} admits one of {bad}"
