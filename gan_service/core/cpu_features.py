"""What the CPU offers for int8 inference; torch-free (the service imports it).

onnxruntime's int8 kernels (QLinearConv, QGemm: u8 activations x s8 weights) run on VNNI instructions where the CPU
has them (``avx512_vnni``, or ``avx_vnni`` on newer cores), which multiply-accumulate 8-bit values into 32 bits in one
step. Without VNNI (AVX2 only) they use ``vpmaddubsw``, whose pairwise 16-bit sums can saturate unless the weights
are quantized to 7 bits (onnxruntime's ``reduce_range``), and they gain less over fp32. Whether int8 pays on a CPU
is measured (docs/quality.md, "int8"); these flags only say which case a machine is in.
"""
from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni")


def _read_cpuinfo() -> str:
    try:
        return CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The first processor's feature flags from /proc/cpuinfo (or the given text); empty where there is none."""
    text = _read_cpuinfo() if cpuinfo is None else cpuinfo
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name ("AMD EPYC ..."), else platform.processor() or the machine type."""
    text = _read_cpuinfo() if cpuinfo is None else cpuinfo
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def cpu_has_vnni(cpuinfo: str | None = None) -> bool:
    """True when the CPU has an 8-bit dot-product instruction onnxruntime's int8 kernels use (AVX512-VNNI or
    AVX-VNNI). False where the flags cannot be read (not Linux): unknown is treated as "no"."""
    return any(flag in cpu_flags(cpuinfo) for flag in VNNI_FLAGS)


@lru_cache(maxsize=1)
def cpu_summary() -> dict:
    """{"model", "vnni", "avx2", "avx512f", "logical_cpus"}: what a measurement or a manifest records of the CPU."""
    import os

    flags = cpu_flags()
    return {"model": cpu_model(), "vnni": cpu_has_vnni(), "avx2": "avx2" in flags, "avx512f": "avx512f" in flags,
            "logical_cpus": os.cpu_count() or 0}


INT8_FLAGS = ("avx2", *VNNI_FLAGS)


def int8_pays(cpuinfo: str | None = None) -> bool:
    """Whether ``precision=auto`` runs a model's checked int8 graph on this CPU: onnxruntime's u8 x s8 kernels need
    AVX2 at least (VNNI does the 8-bit multiply-accumulate in one step, AVX2 in two). Measured on an AVX2-only AMD
    EPYC with no VNNI: int8 1.4-1.5x fp32 images/s at batch 64 on both shipped models (docs/quality.md, "int8").
    A CPU whose flags cannot be read, or with neither flag, keeps fp32."""
    return any(flag in cpu_flags(cpuinfo) for flag in INT8_FLAGS)
