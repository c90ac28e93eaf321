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
- Stall bound: an engine call still running ``stall_s`` after it started marks the batcher
  ``stalled``: every queued request, and every new one until the call returns, is answered
  ``EngineStalled`` (503) at once instead of waiting for it (the call itself cannot be interrupted).
- A client that goes away (its awaiting task is cancelled) leaves the queue at once; ``run`` returns one
  outcome per request, so a request that fails alone fails only itself; an exception raised by ``run``
  fails that call's requests only, and the next batch runs as usual.
"""
from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


class Overloaded(RuntimeError):
    """The server cannot serve the request now; the client should retry after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = max(1, math.ceil(retry_after_s))


class EngineStalled(Overloaded):
    """The engine call in progress has run past the stall bound."""


@dataclass(eq=False, repr=False)
class _Pending:
    """One queued request. Compared by identity and never printed: its work (numpy rows) is only handed on."""
    work: Any
    size: int
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)
    queued: bool = True                 # still in the queue (False once taken into a batch or answered from it)


class MicroBatcher:
    """``await submit(work, size)`` -> ``run``'s outcome for that work; ``run`` gets merged batches: a list of works
    (at most ``max_batch_size`` rows in all, or one larger request alone) and returns one result or exception each."""

    def __init__(self, run: Callable[[list], list], max_batch_size: int, max_latency_ms: float, merge: bool = True,
                 stall_s: float | None = None):
        self.run, self.max_batch_size, self.budget_s = run, max_batch_size, max_latency_ms / 1000.0
        self.merge = merge                  # False: one request per engine call (batching off)
        self.stall_s = stall_s              # None: an engine call may run forever unseen
        self._queue: deque[_Pending] = deque()
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._busy_since: float | None = None   # monotonic start of the engine call in progress
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="engine")   # one engine call at a time

    @property
    def stalled(self) -> bool:
        """True while an engine call has been running longer than ``stall_s``."""
        return self.stall_s is not None and self.busy_s() > self.stall_s

    def busy_s(self) -> float:
        """Seconds the engine call in progress has run (0 when idle)."""
        return 0.0 if self._busy_since is None else time.monotonic() - self._busy_since

    def queued(self) -> dict:
        """Requests waiting for the engine, and their rows."""
        return {"requests": len(self._queue), "rows": sum(p.size for p in self._queue)}

    async def submit(self, work, size: int):
        """Queue one request of ``size`` rows and wait for its outcome (raised when it is an exception)."""
        if size < 1:
            raise ValueError(f"a request has at least one row, not {size}")
        if self.stalled:
            raise self._stall_error()
        self._start()
        pending = _Pending(work, size, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        self._wake.set()
        try:
            return await pending.future
        finally:
            if pending.queued:              # cancelled while queued: give the place back at once
                self._queue.remove(pending)
                pending.queued = False

    def _pop(self) -> _Pending:
        pending = self._queue.popleft()
        pending.queued = False
        return pending

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
        """The next batch: waiting requests in arrival order while their rows fit (a larger one alone); expired
        ones get Overloaded."""
        batch, size, now = [], 0, time.monotonic()
        while self._queue:
            pending = self._queue[0]
            if pending.future.done():                       # cancelled: its task has not cleaned up yet
                self._pop()
                continue
            if now - pending.arrived > self.budget_s:
                self._pop()
                pending.future.set_exception(Overloaded(
                    f"waited {1000 * (now - pending.arrived):.0f} ms for the engine, past the "
                    f"{1000 * self.budget_s:.0f} ms batching budget (server overloaded); retry", self.budget_s))
                continue
            if batch and size + pending.size > self.max_batch_size:
                break
            batch.append(self._pop())
            size += pending.size
            if not self.merge or size >= self.max_batch_size:
                break
        return batch

    async def _run(self, batch: list[_Pending]) -> None:
        """One engine call in the engine thread; each request gets its own outcome (or the call's exception)."""
        loop = asyncio.get_running_loop()
        self._busy_since = time.monotonic()
        watchdog = loop.call_later(self.stall_s, self._stall) if self.stall_s is not None else None
        try:
            outcomes = await loop.run_in_executor(self._pool, self.run, [p.work for p in batch])
        except Exception as exc:          # noqa: BLE001 - handed to the requests of this batch only
            outcomes = [exc] * len(batch)
        finally:
            self._busy_since = None
            if watchdog is not None:
                watchdog.cancel()
        for p, outcome in zip(batch, outcomes):
            if p.future.done():                             # the client went away meanwhile
                continue
            if isinstance(outcome, BaseException):
                p.future.set_exception(outcome)
            else:
                p.future.set_result(outcome)

    def _stall(self) -> None:
        """The engine call has run past stall_s: answer every queued request now (new ones are refused in submit)."""
        while self._queue:
            future = self._pop().future
            if not future.done():
                future.set_exception(self._stall_error())

    def _stall_error(self) -> EngineStalled:
        return EngineStalled(f"engine stalled: its call in progress has run {self.busy_s():.1f} s, past the "
                             f"{self.stall_s:g} s bound (engine_stall_s; server not ready); retry", self.stall_s)
