"""One onnxruntime session per model: provider choice and fallback, warm-up, latents in, uint8 images out.

No torch here. The exported graph already does tanh -> [0, 255] rounding and NCHW -> NHWC, so
``Engine.generate`` returns exactly the bytes the service encodes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from service.modeldir import ModelDir

log = logging.getLogger("gan.engine")
PROVIDERS = ("auto", "cuda", "cpu")


class EngineError(RuntimeError):
    """The model cannot be run as configured (e.g. a GPU is required but there is none)."""


@dataclass
class EngineOptions:
    provider: str = "auto"        # auto: CUDA when onnxruntime has it, else CPU (one log line says so)
    require_gpu: bool = False     # a missing CUDA provider is a start-up error instead of a CPU fallback
    fp16: bool = True             # use generator.fp16.onnx on the GPU when the model directory has one
    intra_op_threads: int = 0     # onnxruntime CPU threads (0 = its default: one per core)


def _cuda_available(ort) -> bool:
    return "CUDAExecutionProvider" in ort.get_available_providers()


class Engine:
    """Runs one model directory's generator; thread-compatible (onnxruntime sessions allow concurrent run)."""

    def __init__(self, model: ModelDir, options: EngineOptions | None = None):
        import onnxruntime as ort

        self.model, self.options = model, options or EngineOptions()
        want = self.options.provider
        if want not in PROVIDERS:
            raise EngineError(f"provider must be one of {PROVIDERS}, not {want!r}")
        if want in ("auto", "cuda") and hasattr(ort, "preload_dlls"):
            # onnxruntime-gpu wheels find the CUDA/cuDNN libraries of the nvidia-* pip packages only after this.
            ort.preload_dlls()
        use_cuda = want == "cuda" or (want == "auto" and _cuda_available(ort))
        if (use_cuda or self.options.require_gpu) and not _cuda_available(ort):
            raise EngineError(f"{model.name}: CUDAExecutionProvider is not available in onnxruntime "
                              f"({ort.get_available_providers()}); install onnxruntime-gpu or use provider=cpu")
        path = model.fp16_path if (use_cuda and self.options.fp16 and model.fp16_path) else model.onnx_path
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.options.intra_op_threads
        # Idle engine threads sleep instead of spinning: the same cores serve HTTP and encode images.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        self.provider = self.session.get_providers()[0]
        if use_cuda and self.provider != "CUDAExecutionProvider":
            raise EngineError(f"{model.name}: asked for CUDA but the session got {self.session.get_providers()}")
        if not use_cuda:
            log.info("%s: running on CPUExecutionProvider (no CUDA provider in this onnxruntime)", model.name)
        self.model_file = path.name
        self.input_names = {i.name for i in self.session.get_inputs()}

    def generate(self, z: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        """z float32 [N, latent_dim] (+ labels int64 [N]) -> uint8 images [N, H, W, C]."""
        feeds = {"z": np.ascontiguousarray(z, dtype=np.float32)}
        if "label" in self.input_names:
            if labels is None:
                raise EngineError(f"{self.model.name} is conditional: labels are required")
            feeds["label"] = np.ascontiguousarray(labels, dtype=np.int64)
        return self.session.run(["image"], feeds)[0]

    def warmup(self, batch_sizes) -> None:
        """Run each batch size once so per-shape set-up (cuDNN algorithm search, allocations) is paid now."""
        for n in sorted(set(batch_sizes)):
            z = np.zeros((n, self.model.latent_dim), np.float32)
            labels = np.zeros(n, np.int64) if self.model.num_classes else None
            self.generate(z, labels)
