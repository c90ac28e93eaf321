"""How many cores this process may use, and how many of them an engine should take.

Torch-free and onnxruntime-free: the sampler, the service settings and the benchmarks all ask here, so there is one
answer to "how many cores" (the affinity mask and a cgroup CPU quota, not the host's core count).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")      # cgroup v2: "QUOTA PERIOD" or "max PERIOD" (docker --cpus)


def cgroup_cpu_limit(path: str | Path = CGROUP_CPU_MAX) -> int | None:
    """The CPU quota of this process's cgroup rounded up to whole cores; None when there is none or it is unreadable."""
    try:
        fields = Path(path).read_text().split()
    except OSError:
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except (IndexError, ValueError):                 # "max 100000" (no quota) or a malformed file
        return None
    return max(1, math.ceil(quota / period)) if quota > 0 and period > 0 else None


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity mask (``taskset``, container cpusets), lowered to the cgroup's
    CPU quota when one is set; at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):                # platforms without sched_getaffinity
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return max(1, min(cores, limit) if limit else cores)


def default_engine_threads(cores: int) -> int:
    """onnxruntime intra-op threads for the HTTP service's engine on ``cores`` cores: every one of them, at least 1.

    Measured (docs/benchmarks.md, "Engine threads of the HTTP service"): the service on a 2-core VM (AMD EPYC, AVX2,
    the default model's int8 graph, both shipped models loaded) with 1 and with 2 engine threads, side by side
    under wrk, 3 alternating rounds, medians: n=1 PNG 172 vs 166 req/s at concurrency 16 and 163 vs 169 at 64 (a
    wash: within the rounds' spread), n=64 NPY at concurrency 16 16 vs 27 req/s (p50 962 vs 549 ms). Leaving a
    core to the Python side (HTTP, latents, encoding: under the GIL, so about one core at most) bought nothing
    measurable for one-image requests and cost 40% of the throughput of engine-heavy ones, because the engine's
    idle threads sleep (no spinning) and the Python side gets a core whenever it needs one. So: every core.

    Inferred, not measured (no bigger machine was available): every core on 8 and 64 cores as well, which is also
    onnxruntime's own default (one thread per core). Whether this model's small convolutions scale past ~8
    threads at the service's batch sizes (<= 256) is unmeasured: ``gan bench engine`` on the target machine
    prints images/s at 1, 2, 4, ... and all threads side by side, and ``GAN_ENGINE_THREADS`` overrides the rule.

    ``cores`` is what one worker process may use: ``available_cores() // workers`` with several workers.
    """
    return max(1, int(cores))
