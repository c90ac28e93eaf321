"""The one way this project opens an onnxruntime session: provider by short name, thread count, quiet logs."""
from __future__ import annotations

import os
from pathlib import Path

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
PROVIDER_NAMES = {"cpu": CPU, "cuda": CUDA}
PROVIDERS = ("auto", *PROVIDER_NAMES)      # what users choose: auto = CUDA when a session really runs on it
PRECISIONS = ("auto", "fp32", "fp16", "int8")   # which graph of a model runs (serving.engine decides auto)


def provider_name(provider: str) -> str:
    """"cpu" / "cuda" or a full onnxruntime provider name -> the full name."""
    full = PROVIDER_NAMES.get(provider, provider)
    if full not in PROVIDER_NAMES.values():
        raise ValueError(f"provider {provider!r}: expected one of {', '.join(PROVIDER_NAMES)} "
                         f"or {', '.join(PROVIDER_NAMES.values())}")
    return full


def available_providers() -> list[str]:
    """The execution providers this onnxruntime build offers (full names)."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def default_threads(env: str = "GAN_ORT_THREADS", cap: int = 4) -> int:
    """Intra-op threads: the environment variable ``env`` when set, else the machine's cores up to ``cap``."""
    value = os.environ.get(env)
    return max(1, int(value)) if value else min(cap, os.cpu_count() or 1)


def ort_session(path: str | Path | bytes, provider: str = "cpu", threads: int | None = None, fallback_cpu: bool = False,
                spinning: bool = True):
    """An onnxruntime.InferenceSession on ``path`` (or the model's bytes) with warnings silenced (log severity 3).

    provider: "cpu", "cuda" or a full provider name; fallback_cpu adds the CPU provider behind CUDA.
    threads: intra-op threads (None or 0 = onnxruntime's own choice: one per core).
    spinning: False makes idle intra-op threads sleep instead of spinning (for cores shared with other work).
    """
    import onnxruntime as ort

    ort.set_default_logger_severity(3)      # onnxruntime-gpu without a GPU prints its CUDA load errors otherwise
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = max(1, int(threads))
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = [provider_name(provider)]
    if fallback_cpu and providers[0] != PROVIDER_NAMES["cpu"]:
        providers.append(PROVIDER_NAMES["cpu"])
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, opts, providers=providers)
