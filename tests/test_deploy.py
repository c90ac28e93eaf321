"""`bentoml build` turns the repository into a bento with the service, the web page and the shipped models."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_bentoml_build_in_a_temporary_home(tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path), "BENTOML_DO_NOT_TRACK": "true"}
    res = subprocess.run([sys.executable, "-m", "bentoml", "build", "--output", "tag"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    tag = res.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version = tag.split(":")
    bento = tmp_path / "bentos" / name / version
    src = bento / "src"
    pkg = src / "gan_service"
    for shipped in ("fmnist-cdcgan", "fmnist-dcgan"):
        for f in ("generator.onnx", "manifest.json", "samples.png"):
            assert (pkg / "models" / shipped / f).is_file(), f"{shipped}/{f} missing from the bento"
    assert (pkg / "serving" / "app.py").is_file() and (pkg / "serving" / "web" / "index.html").is_file()
    assert not list(src.rglob("*.pt")) and not (pkg / "training").exists()        # no torch, no checkpoints
    meta = yaml.safe_load((bento / "bento.yaml").read_text())
    assert meta["service"] == "gan_service.serving.app:GAN"
    packages = "\n".join(p.read_text() for p in (bento / "env" / "python").rglob("requirements*.txt"))
    assert "onnxruntime-gpu" in packages and "torch" not in packages
