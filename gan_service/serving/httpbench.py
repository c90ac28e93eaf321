"""`gan bench http`: the project's server against a do-nothing BentoML endpoint, side by side, under wrk.

One run starts three loopback servers (the project with batching on, with batching off, and
service/baseline.py), loads ``/generate`` with n=1 PNG and n=64 NPY at each concurrency on each of
them in turn, stops them, and returns the rows of one Markdown table: successful requests/s, p50/p95/p99
and non-2xx responses by status; then the two target cells again, project and do-nothing endpoint
alternating three times (medians: this machine is shared). Bounded: ``seconds`` per level, all listed in advance.

The right reference for the project is not the do-nothing endpoint alone but the two costs one after the other:
BentoML's own per-request work (the do-nothing endpoint's rate) and the engine's work for the batch sizes the
server actually ran (read from its ``/info`` batch histogram during each target cell, then timed in-process on the
same model, settings and precision). That combined bound is 1 / (1/do-nothing + 1/engine).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from gan_service.serving.loadgen import run_wrk

PROJECT_ENV = {"GAN_BATCHING": "true"}

SHAPES = ((1, "png"), (64, "npy"))
LEVELS = (1, 16, 64, 256)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """``bentoml serve TARGET`` on a free 127.0.0.1 port until the ``with`` block ends."""

    def __init__(self, target: str, env: dict[str, str], log_path: Path):
        self.target, self.env, self.log_path = target, env, log_path
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "Served":
        env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", **self.env}
        self.proc = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", self.target, "--host", "127.0.0.1",
                                      "--port", str(self.port)], env=env, start_new_session=True,
                                     stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"{self.target} did not become ready; log: {self.log_path}")

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def bench_http(seconds: float = 4.0, log_dir: str | Path = "/tmp", levels=LEVELS) -> tuple[dict[str, list], list]:
    """({server name: [(n, format, LoadResult), ...]} for the project (batching on/off) and the do-nothing
    endpoint, the target rounds of ``target_rounds``).

    All three servers run at once (idle ones cost no CPU) and each (shape, concurrency) cell is measured
    on the three back to back, so a load change on the machine hits all three alike.
    """
    servers = {"project, batching on": ("gan_service.serving.app:GAN", PROJECT_ENV),
               "project, batching off": ("gan_service.serving.app:GAN", {"GAN_BATCHING": "false"}),
               "do-nothing BentoML": ("gan_service.serving.baseline:Baseline", {})}
    results: dict[str, list] = {name: [] for name in servers}
    with ExitStack() as stack:
        urls = {name: stack.enter_context(Served(target, env, Path(log_dir) / f"bench-http-{i}.log")).url
                for i, (name, (target, env)) in enumerate(servers.items())}
        for n, fmt in SHAPES:
            for url in urls.values():
                run_wrk(url, "/generate", n, fmt, 4, 1)                     # warm-up
            for c in levels:
                for name, url in urls.items():
                    results[name].append((n, fmt, run_wrk(url, "/generate", n, fmt, c, seconds)))
        rounds = target_rounds(urls["project, batching on"], urls["do-nothing BentoML"], seconds)
    runtime = _project_runtime()              # the servers are stopped: the engine is timed on an idle machine
    rounds = [(c, p, b, engine_rows_per_s(runtime, sizes)) for c, p, b, sizes in rounds]
    return results, rounds


def target_rounds(project: str, baseline: str, seconds: float, rounds: int = 3) -> list[tuple]:
    """The two target cells (n=1 PNG at concurrency 16 and 64), project and do-nothing endpoint alternating,
    ``rounds`` times: [(concurrency, project LoadResult, baseline LoadResult, {batch size: engine calls}), ...]."""
    out = []
    for _ in range(rounds):
        for c in (16, 64):
            before = _histogram(project)
            served = run_wrk(project, "/generate", 1, "png", c, seconds)
            sizes = histogram_delta(before, _histogram(project))
            out.append((c, served, run_wrk(baseline, "/generate", 1, "png", c, seconds), sizes))
    return out


def _histogram(url: str) -> dict[int, int]:
    """The server's engine calls so far by batch size (/info's observed histogram)."""
    observed = httpx.get(url + "/info", timeout=30).json()["batching"]["observed"]["histogram"]
    return {int(k): int(v) for k, v in observed.items()}


def histogram_delta(before: dict[int, int], after: dict[int, int]) -> dict[int, int]:
    """Engine calls by batch size made between two histogram snapshots."""
    return {size: n - before.get(size, 0) for size, n in after.items() if n > before.get(size, 0)}


def _project_runtime():
    """The project's runtime as the benchmarked server built it (same settings, models, provider, threads)."""
    from gan_service.serving.runtime import ModelRuntime
    from gan_service.serving.settings import load_settings

    return ModelRuntime(load_settings(environ={**os.environ, **PROJECT_ENV}))


def engine_rows_per_s(runtime, sizes: dict[int, int], min_s: float = 0.3) -> float | None:
    """Rows/s the engine thread sustains at the batch-size mix ``sizes`` ({size: calls}, default model, random
    classes): each size's ``runtime.render`` time (the median of repeated calls) weighted by its calls."""
    import numpy as np

    from gan_service.serving.runtime import RANDOM_LABEL, make_rows

    if not sizes:
        return None
    seconds = 0.0
    for size, calls in sizes.items():
        rows = make_rows(0, 7, np.arange(size), [RANDOM_LABEL] * size, 1.0)
        times, spent = [], 0.0
        while spent < min_s or len(times) < 3:
            t0 = time.perf_counter()
            runtime.render(rows)
            times.append(time.perf_counter() - t0)
            spent += times[-1]
        seconds += calls * sorted(times)[len(times) // 2]
    return sum(size * calls for size, calls in sizes.items()) / seconds


def combined_bound(baseline_per_s: float, engine_per_s: float) -> float:
    """Requests/s of a server doing the do-nothing endpoint's work and then the engine's, one after the other."""
    return 1.0 / (1.0 / baseline_per_s + 1.0 / engine_per_s)


def markdown(results: dict[str, list], rounds: list[tuple]) -> str:
    """One table row per (server, request shape, concurrency), then the target rounds and their medians."""
    lines = ["| server | request | concurrency | ok req/s | p50 ms | p95 ms | p99 ms | non-2xx | socket errors |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for name, rows in results.items():
        for n, fmt, r in rows:
            errors = {k: v for k, v in r.errors.items() if v}
            lines.append(f"| {name} | n={n} {fmt} | {r.concurrency} | {r.ok_per_s:,.0f} | {r.p50_ms:.1f} | "
                         f"{r.p95_ms:.1f} | {r.p99_ms:.1f} | {r.non_2xx() or '-'} | {errors or '-'} |")
    return "\n".join(lines) + "\n\n" + targets(rounds) + "\n"


def targets(rounds: list[tuple]) -> str:
    """Issue 13's two targets from alternating rounds: req/s ratio at concurrency 64, p50 ratio at 16 (medians)."""
    if not rounds:
        return ""
    rate = sorted(p.ok_per_s / b.ok_per_s for c, p, b, *_ in rounds if c == 64)
    p50 = sorted(p.p50_ms / b.p50_ms for c, p, b, *_ in rounds if c == 16)
    cells = "; ".join(f"c={c}: {p.ok_per_s:,.0f} vs {b.ok_per_s:,.0f} req/s, p50 {p.p50_ms:.1f} vs {b.p50_ms:.1f} ms"
                      for c, p, b, *_ in rounds)
    text = (f"Target rounds, n=1 PNG, project (batching on) vs do-nothing endpoint, alternating: {cells}.\n\n"
            f"Median over {len(rate)} rounds: successful req/s at concurrency 64 = {rate[len(rate) // 2]:.0%} of the "
            f"do-nothing endpoint (rounds {', '.join(f'{r:.0%}' for r in rate)}); p50 at concurrency "
            f"16 = {p50[len(p50) // 2]:.2f}x its p50 (rounds {', '.join(f'{r:.2f}' for r in p50)}).")
    return text + bound_text(rounds)


def bound_text(rounds: list[tuple]) -> str:
    """The project's n=1 rate against the combined bound 1 / (1/do-nothing + 1/engine), per concurrency (medians)."""
    measured = [(r[0], r[1], r[2], r[3]) for r in rounds if len(r) > 3 and r[3]]
    if not measured:
        return ""
    parts = []
    for c in sorted({r[0] for r in measured}):
        cells = [(p.ok_per_s, combined_bound(b.ok_per_s, e), e) for cc, p, b, e in measured if cc == c]
        ratios = sorted(ok / bound for ok, bound, _ in cells)
        engines = sorted(e for _, _, e in cells)
        bounds = sorted(bound for _, bound, _ in cells)
        parts.append(f"concurrency {c}: {ratios[len(ratios) // 2]:.0%} of the bound (bound {bounds[len(bounds) // 2]:,.0f} "
                     f"req/s from an engine at {engines[len(engines) // 2]:,.0f} rows/s at the batch sizes the server "
                     f"ran; rounds {', '.join(f'{r:.0%}' for r in ratios)})")
    return ("\n\nAgainst the combined bound 1 / (1/do-nothing + 1/engine), the engine timed in-process at the "
            "batch sizes the server ran in each cell (target >= 85%): " + "; ".join(parts) + ".")
