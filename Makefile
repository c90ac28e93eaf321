# Set-up and the two jobs of the README. Everything a fresh Debian + Python 3.11 machine needs is installed here.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PKGS := dataset-fashion-mnist chromium chromium-driver wrk podman runc mmdebstrap

.PHONY: setup system-deps run test train-demo container container-gpu test-gpu-image clean

setup: system-deps $(VENV)/.installed

# Debian packages: the Fashion-MNIST IDX files, headless Chromium for the web-page test, wrk for the load test,
# podman (with runc) to build and run the container images where Docker cannot, mmdebstrap to build their base
# image from the Debian mirror where no container registry is reachable (deploy/container.py).
system-deps:
	@if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || ! command -v chromium >/dev/null || ! command -v wrk >/dev/null \
	   || ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v mmdebstrap >/dev/null; then \
	  $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PKGS); fi

# One virtual environment with every extra (train: torch==2.13.0 CPU build; serve; ray; dev). The serving
# packages are held at the versions the images ship (deploy/requirements-cpu.txt, written by deploy/lock.py).
$(VENV)/.installed: pyproject.toml deploy/requirements-cpu.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c deploy/requirements-cpu.txt -e '.[train,serve,ray,dev]'
	touch $@

# The main job: serve the shipped models (the first, fmnist-cdcgan, is the default) on http://127.0.0.1:3000.
# With an NVIDIA driver (nvidia-smi) it serves from its own environment .venv-gpu with the `gpu` extra
# (onnxruntime-gpu with CUDA and cuDNN from PyPI): onnxruntime and onnxruntime-gpu never share one environment.
GPU_VENV := .venv-gpu
run: system-deps
	@if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then \
	  $(MAKE) --no-print-directory $(GPU_VENV)/.installed && $(GPU_VENV)/bin/gan serve --port $(or $(PORT),3000); \
	else \
	  $(MAKE) --no-print-directory $(VENV)/.installed && $(BIN)/gan serve --port $(or $(PORT),3000); fi

$(GPU_VENV)/.installed: pyproject.toml deploy/requirements-gpu.txt
	$(PY) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/pip install -q -c deploy/requirements-gpu.txt -e '.[gpu]'
	touch $@

# A short CPU run of the default model's recipe on Fashion-MNIST (writes runs/NNNNN-fmnist-cdcgan/ with a
# checkpoint and a sample grid); the full recipe is `gan train --preset fmnist-cdcgan`.
train-demo: setup
	$(BIN)/gan train --preset fmnist-cdcgan --steps 300 --log-every 50 --fd-every 0

test: setup
	$(BIN)/python -m pytest -q

# Container images (docs/deploy.md), with Docker or else podman; each prints its name (also tagged :latest).
# container: the CPU image gan (onnxruntime, about 0.55 GB); container-gpu: gan-gpu (onnxruntime-gpu with CUDA
# and cuDNN from PyPI, about 3 GB; a GPU with the host's NVIDIA driver, else the CPU).
container: setup
	$(BIN)/python deploy/container.py build

container-gpu: setup
	$(BIN)/python deploy/container.py build --gpu

# The container test with the GPU image too (`make test` builds and runs only the CPU image).
test-gpu-image: setup
	GAN_TEST_GPU_IMAGE=1 $(BIN)/python -m pytest -q -rs tests/test_container.py

clean:
	rm -rf $(VENV) $(GPU_VENV) runs .pytest_cache
