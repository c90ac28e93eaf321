"""An in-process asyncio micro-batcher: rows from many requests -> one engine call, in arrival order.

Why in-process: BentoML's own batching lives behind a second service reached over HTTP
(``bentoml.depends``); that hop cost 60-75% of the throughput on this machine, and bentoml >= 1.4.30
answered 500 under concurrency there (its dependency client renews its HTTP session while requests are
in flight). Here the batch is formed in the worker that took the request:

- Greedy, no fill timer: when the engine is idle the next batch starts at once with everything that
  waits (up to ``max_batch_size`` rows); while it is busy, new rows pile up for the next call. One
  request alone therefore pays no batching delay, and under load batches grow by themselves.
- First come, first served: requests are never reordered nor split, and a batch stops at the first
  request that does not fit, so a large request is never starved by a stream of small ones.
- Latency budget: a request still waiting ``max_latency_ms`` after it arrived is answered
  ``Overloaded`` (HTTP 503) instead of being run late.
- A client that goes away (its awaiting task is cancelled) is skipped; an exception in one engine
  call fails that call's requests only, and the next batch runs as usual.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np


class Overloaded(RuntimeError):
    """The request waited longer than the batching latency budget; the client should retry."""


@dataclass
class _Pending:
    rows: np.ndarray
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


class MicroBatcher:
    """``await submit(rows)`` -> ``run(rows)``'s output for those rows; ``run`` sees merged batches."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], max_batch_size: int, max_latency_ms: float,
                 merge: bool = True):
        self.run, self.max_batch_size, self.budget_s = run, max_batch_size, max_latency_ms / 1000.0
        self.merge = merge                  # False: one request per engine call (batching off)
        self._queue: deque[_Pending] = deque()
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="engine")   # one engine call at a time

    async def submit(self, rows: np.ndarray) -> np.ndarray:
        """Queue rows (one request: 1 .. max_batch_size of them) and wait for their output."""
        if not 1 <= len(rows) <= self.max_batch_size:
            raise ValueError(f"a request has 1..{self.max_batch_size} rows, not {len(rows)}")
        self._start()
        pending = _Pending(rows, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        self._wake.set()
        return await pending.future

    def _start(self) -> None:
        """Start the batching task on the running loop (first call, or after it died)."""
        if self._worker is None or self._worker.done():
            self._wake = asyncio.Event()
            self._worker = asyncio.get_running_loop().create_task(self._loop(), name="micro-batcher")

    async def _loop(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            batch = self._take()
            if batch:
                await self._run(batch)

    def _take(self) -> list[_Pending]:
        """The next batch: waiting requests in arrival order while their rows fit; expired ones get Overloaded."""
        batch, size, now = [], 0, time.monotonic()
        while self._queue and size + len(self._queue[0].rows) <= self.max_batch_size:
            pending = self._queue.popleft()
            if pending.future.done():                       # the client went away
                continue
            if now - pending.arrived > self.budget_s:
                pending.future.set_exception(Overloaded(
                    f"waited {1000 * (now - pending.arrived):.0f} ms for the engine, past the "
                    f"{1000 * self.budget_s:.0f} ms batching budget (server overloaded); retry"))
                continue
            batch.append(pending)
            size += len(pending.rows)
            if not self.merge:
                break
        return batch

    async def _run(self, batch: list[_Pending]) -> None:
        """One engine call in the engine thread; its output (or its exception) goes to each request."""
        rows = np.concatenate([p.rows for p in batch]) if len(batch) > 1 else batch[0].rows
        try:
            out = await asyncio.get_running_loop().run_in_executor(self._pool, self.run, rows)
        except Exception as exc:          # noqa: BLE001 - handed to the requests of this batch only
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        start = 0
        for p in batch:
            if not p.future.done():
                p.future.set_result(out[start:start + len(p.rows)])
            start += len(p.rows)
