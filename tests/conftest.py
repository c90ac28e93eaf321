"""Shared fixtures: tiny exported models (checked in, torch-free) and a real `bentoml serve` launcher."""
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
DATA = REPO / "tests" / "data"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Model directories {'dc': unconditional conv, 'cdc': class-conditional conv}: copies of the real, tiny
    exports checked in under tests/data (tests/data/make_tiny_models.py makes them), so the service, sampler and
    web tests need neither torch nor the dataset."""
    import shutil

    root = tmp_path_factory.mktemp("tiny-models")
    return {key: Path(shutil.copytree(DATA / f"tiny-{key}", root / f"tiny-{key}")) for key in ("dc", "cdc")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`bentoml serve gan_service.serving.app:GAN` as a subprocess on a free loopback port."""

    def __init__(self, env: dict[str, str], log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", **env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", "gan_service.serving.app:GAN", "--host", "127.0.0.1",
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


class SlowServer:
    """A real server whose engine calls first sleep ``delay`` seconds (tests/slow_engine): settable while it runs."""

    def __init__(self, start_server, tmp_path: Path, env: dict[str, str]):
        self.delay_file = tmp_path / "engine-delay"
        self.delay = 0
        self.server = start_server({**env, "PYTHONPATH": str(REPO / "tests" / "slow_engine"),
                                    "GAN_TEST_ENGINE_DELAY_FILE": str(self.delay_file)})
        self.url = self.server.url

    @property
    def delay(self) -> float:
        return float(self.delay_file.read_text())

    @delay.setter
    def delay(self, seconds: float) -> None:
        self.delay_file.write_text(str(seconds))


@pytest.fixture
def slow_server(start_server, tmp_path):
    """Factory: slow_server(env) -> a SlowServer with its delay at 0 (set ``.delay`` to slow the engine)."""
    return lambda env: SlowServer(start_server, tmp_path, env)


@pytest.fixture(scope="session")
def server(tiny_models, start_server) -> Server:
    """One real server with both tiny models, shared by the HTTP and sampler tests."""
    return start_server({"GAN_MODELS": f"{tiny_models['dc']},{tiny_models['cdc']}", "GAN_MAX_LATENCY_MS": "5000",
                         "GAN_MAX_N": "64", "GAN_MAX_BATCH_SIZE": "256"})
