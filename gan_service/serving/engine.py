"""One onnxruntime session per model: provider choice and fallback, warm-up, latents in, uint8 images out.

No torch here. The exported graph already does tanh -> [0, 255] rounding and NCHW -> NHWC, so
``Engine.generate`` returns exactly the bytes the service encodes. The engine reads a graph file once, checks
those bytes against the manifest's sha256 and hands the same bytes to onnxruntime (a file swapped after
verification is refused, never run), then checks the session's inputs and outputs against the manifest
(``ModelDirError`` naming what differs: such a model is refused at start-up instead of failing every request).
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gan_service.core.cpu_features import int8_pays
from gan_service.core.onnx_runtime import CUDA, PRECISIONS, PROVIDERS, available_providers, ort_session
from gan_service.serving.modeldir import MANIFEST, ModelDir, ModelDirError

log = logging.getLogger("gan.engine")


class EngineError(RuntimeError):
    """The model cannot be run as configured (e.g. a GPU is required but there is none)."""


@dataclass
class EngineOptions:
    provider: str = "auto"        # auto: CUDA when a session really runs on it, else CPU (one log line says why)
    require_gpu: bool = False     # no CUDA session is a start-up error instead of a CPU fallback
    precision: str = "auto"       # auto | fp32 | fp16 | int8: which graph runs (choose_graph)
    intra_op_threads: int = 0     # onnxruntime CPU threads (0 = its default: one per core)


class Engine:
    """Runs one model directory's generator; thread-compatible (onnxruntime sessions allow concurrent run)."""

    def __init__(self, model: ModelDir, options: EngineOptions | None = None):
        import onnxruntime as ort

        self.model, self.options = model, options or EngineOptions()
        want = self.options.provider
        if want not in PROVIDERS:
            raise EngineError(f"provider must be one of {PROVIDERS}, not {want!r}")
        if self.options.precision not in PRECISIONS:
            raise EngineError(f"precision must be one of {PRECISIONS}, not {self.options.precision!r}")
        strict = want == "cuda" or self.options.require_gpu      # no CUDA session is an error, not a fallback
        if want != "cpu" and hasattr(ort, "preload_dlls"):
            # onnxruntime-gpu wheels find the CUDA/cuDNN libraries of the nvidia-* pip packages only after this.
            ort.preload_dlls()
        listed = available_providers()
        if strict and CUDA not in listed:
            raise EngineError(f"{model.name}: CUDAExecutionProvider is not available in onnxruntime ({listed}); "
                              "install the gpu extra (onnxruntime-gpu) or use provider=cpu")
        self.session, why_cpu = None, "provider=cpu"
        if want != "cpu" and CUDA in listed and (strict or self.options.precision != "int8"):
            self.precision, path = choose_graph(model, "cuda", self.options.precision)
            self.session = self._open(path, "cuda")
            got = self.session.get_providers()
            if got[0] != CUDA:
                # onnxruntime-gpu lists CUDA even with no GPU or driver; the session then silently runs on the CPU.
                if strict:
                    raise EngineError(f"{model.name}: asked for CUDA but the session got {got} (no usable GPU "
                                      "or NVIDIA driver)")
                self.session, why_cpu = None, "onnxruntime lists CUDA but no session can use it (no GPU or driver)"
        elif want != "cpu":
            why_cpu = "no CUDA provider in this onnxruntime"
        if self.session is None:                          # the CPU runs the fp32 or int8 graph, never the fp16 one
            self.precision, path = choose_graph(model, "cpu", self.options.precision)
            self.session = self._open(path, "cpu")
        self.provider = self.session.get_providers()[0]
        self.why = None if self.provider == CUDA else why_cpu     # the start-up log line says why it runs on the CPU
        self.input_names = {i.name for i in self.session.get_inputs()}
        check_graph(self.session, model, self.model_file)

    def _open(self, path: Path, provider: str):
        """A session on ``path``'s verified bytes (CPU behind CUDA as onnxruntime's own fallback); remembers which
        file it runs."""
        self.model_file = path.name
        graph = verified_bytes(self.model, path)
        # Idle engine threads sleep instead of spinning: the same cores serve HTTP and encode images.
        return ort_session(graph, provider, threads=self.options.intra_op_threads, fallback_cpu=True, spinning=False)

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


def choose_graph(model: ModelDir, provider: str, precision: str) -> tuple[str, Path]:
    """(precision, graph file) for a session on ``provider`` ("cpu" or "cuda"). auto: fp16 on CUDA when the model
    has the graph; int8 on the CPU when the model has a checked int8 graph and the CPU gains from it
    (core.cpu_features.int8_pays); else fp32. An explicit precision the model or provider cannot run is an error."""
    graphs = {"fp32": model.onnx_path, "fp16": model.fp16_path, "int8": model.int8_path}
    if precision == "auto":
        if provider == "cuda":
            precision = "fp16" if model.fp16_path else "fp32"
        else:
            precision = "int8" if model.int8_path and int8_pays() else "fp32"
    if precision == "fp16" and provider != "cuda":
        raise EngineError(f"{model.name}: precision fp16 runs on CUDA only (this session is on the CPU); use "
                          "precision auto, fp32 or int8")
    if precision == "int8" and provider != "cpu":
        raise EngineError(f"{model.name}: precision int8 runs on the CPU only; use provider=cpu")
    if graphs[precision] is None:
        raise EngineError(f"{model.name}: precision {precision} asked for, but the model directory has no checked "
                          f"{precision} graph (`gan quantize` adds int8, `gan export` fp16); use precision auto")
    return precision, graphs[precision]


def verified_bytes(model: ModelDir, path: Path) -> bytes:
    """The file's bytes, read once, if their sha256 is the manifest's; else ModelDirError (changed since loaded)."""
    data = path.read_bytes()
    want = model.files.get(path.name, {}).get("sha256")
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        raise ModelDirError(f"{path}: sha256 {got[:16]}... is not the {MANIFEST} entry ({str(want)[:16]}...): the "
                            "file changed after the directory was verified; it is not run")
    return data


def check_graph(session, model: ModelDir, file: str) -> None:
    """The session's inputs and outputs must be what the manifest describes (names, element types, fixed sizes)."""
    want_inputs = {"z": ("tensor(float)", [None, model.latent_dim], "latent_dim")}
    if model.num_classes:
        want_inputs["label"] = ("tensor(int64)", [None], "num_classes")
    want_outputs = {"image": ("tensor(uint8)", [None, *model.image_shape], "image_shape")}
    problems = (_differences("input", session.get_inputs(), want_inputs, f"num_classes {model.num_classes}")
                + _differences("output", session.get_outputs(), want_outputs, "outputs"))
    if problems:
        raise ModelDirError(f"{model.path}: {file} does not match {MANIFEST}: " + "; ".join(problems))


def _differences(kind: str, got, want: dict[str, tuple[str, list, str]], why: str) -> list[str]:
    """What differs between onnxruntime's NodeArgs and {name: (type, shape, manifest key)}; None and symbolic sizes
    match any size."""
    names = [arg.name for arg in got]
    if sorted(names) != sorted(want):
        return [f"the graph's {kind}s are {names}, the manifest ({why}) describes {list(want)}"]
    problems = []
    for arg in got:
        typ, shape, key = want[arg.name]
        sizes_differ = len(arg.shape) != len(shape) or any(
            w is not None and isinstance(g, int) and g != w for g, w in zip(arg.shape, shape))
        if arg.type != typ or sizes_differ:
            problems.append(f"{kind} {arg.name!r} is {arg.type} {arg.shape}, the manifest's {key} makes it {typ} "
                            f"{['batch' if w is None else w for w in shape]}")
    return problems
