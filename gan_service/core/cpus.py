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
    """onnxruntime intra-op threads for the HTTP service's engine on ``cores`` cores: every core but one, at least 1.

    The rule, and what it rests on (docs/benchmarks.md, "Engine threads of the service"):

    - The service is one Python process per worker. Its HTTP handling, request parsing, latent making and image
      encoding run under the GIL, so together they use at most about one core, while onnxruntime's intra-op threads
      run outside it. Leaving exactly one core to the Python side and giving the engine the rest keeps both busy
      without the two fighting over a core.
    - Measured on a 2-core VM (the only machine this project has measured): the engine with 1 thread (the rule's
      answer for 2 cores) against 2 threads (every core): see the benchmark section above; with 2 threads the
      engine's threads and the Python side share both cores, and onnxruntime's thread pool waits on the one the GIL
      side holds.
    - Inferred, not measured: on 8 cores 7 threads and on 64 cores 63. onnxruntime's own default is one thread per
      physical core, so the rule stays at or below it; the service's engine threads sleep when idle (no spinning),
      so threads the model cannot use cost nothing. Whether this model's small convolutions scale past ~8 threads
      at the service's batch sizes (<= 256) is unmeasured; ``gan bench engine`` on the target machine measures it
      (images/s at 1..all threads side by side), and ``GAN_ENGINE_THREADS`` overrides the default.

    ``cores`` is what one worker process may use: ``available_cores() // workers`` with several workers.
    """
    return max(1, int(cores) - 1)
