"""Shared fixtures: tiny trained-and-exported models (CPU, seconds) and a real `bentoml serve` launcher."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Model directories {'dc': unconditional conv, 'cdc': class-conditional conv}, trained a few steps and exported."""
    if not FMNIST.exists():
        pytest.skip("apt-get install dataset-fashion-mnist")
    from training.config import make_config
    from training.export import export_model
    from training.loop import train

    root = tmp_path_factory.mktemp("tiny-models")
    out = {}
    for key, preset in (("dc", "fmnist-dcgan"), ("cdc", "fmnist-cdcgan")):
        cfg = make_config(preset, {"g_channels": 8, "d_channels": 8, "latent_dim": 16, "steps": 3, "limit": 256,
                                   "batch_size": 16, "log_every": 1, "sample_every": 0, "fd_every": 0,
                                   "out_dir": str(root / "runs")})
        out[key] = export_model(train(cfg), f"tiny-{key}", out_dir=root / "models", fp16=False)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`bentoml serve service.service:GAN` as a subprocess on a free loopback port."""

    def __init__(self, env: dict[str, str], log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", **env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", "service.service:GAN", "--host", "127.0.0.1",
             "--port", str(self.port)], cwd=REPO, env=full_env, stdout=open(log_path, "wb"),
            stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, path: str = "/readyz", status: int = 200, timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == status:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{path} never answered {status}:\n{self.log()[-4000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)


@pytest.fixture(scope="session")
def start_server(tmp_path_factory):
    """Factory: start_server(env) -> a Server that has passed /readyz (or `ready=False` to skip the wait)."""
    servers = []

    def start(env: dict[str, str], ready: bool = True) -> Server:
        server = Server(env, tmp_path_factory.mktemp("server") / "serve.log")
        servers.append(server)
        if ready:
            server.wait()
        return server

    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="session")
def server(tiny_models, start_server) -> Server:
    """One real server with both tiny models, shared by the HTTP and sampler tests."""
    return start_server({"GAN_MODELS": f"{tiny_models['dc']},{tiny_models['cdc']}", "GAN_MAX_LATENCY_MS": "5000",
                         "GAN_MAX_N": "64", "GAN_MAX_BATCH_SIZE": "256"})
