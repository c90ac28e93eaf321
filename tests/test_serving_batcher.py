"""The in-process micro-batcher (serving/batcher.py) tested as a library: limits, budget, order, failures."""
from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from gan_service.serving.batcher import MicroBatcher, Overloaded


class Engine:
    """A fake engine: records each call's row count, returns rows * 10, can be slowed, gated or made to fail."""

    def __init__(self, delay: float = 0.0):
        self.calls: list[list[int]] = []
        self.delay, self.fail_next = delay, False
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        self.gate.wait(10)
        self.calls.append([int(r) for r in rows[:, 0]])
        time.sleep(self.delay)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("engine failure")
        return rows * 10


def rows(first: int, n: int) -> np.ndarray:
    return np.arange(first, first + n, dtype=np.int64)[:, None]


def test_each_request_gets_its_own_rows_and_batches_respect_max_batch_size():
    engine = Engine(delay=0.02)

    async def main():
        batcher = MicroBatcher(engine, max_batch_size=8, max_latency_ms=10_000)
        sizes = [1, 3, 8, 2, 5, 1, 7, 4]
        starts = np.cumsum([0] + sizes[:-1]) * 100
        outs = await asyncio.gather(*(batcher.submit(rows(int(s), n)) for s, n in zip(starts, sizes)))
        for s, n, out in zip(starts, sizes, outs):
            assert np.array_equal(out, rows(int(s), n) * 10)
        with pytest.raises(ValueError):
            await batcher.submit(rows(0, 9))
        with pytest.raises(ValueError):
            await batcher.submit(rows(0, 0))

    asyncio.run(main())
    assert max(len(c) for c in engine.calls) <= 8
    assert len(engine.calls) < 8                              # requests were merged


def test_one_request_alone_is_not_delayed():
    engine = Engine()

    async def main():
        batcher = MicroBatcher(engine, max_batch_size=64, max_latency_ms=5000)
        start = time.monotonic()
        await batcher.submit(rows(0, 1))
        return time.monotonic() - start

    assert asyncio.run(main()) < 0.5 and engine.calls == [[0]]


def test_first_come_first_served_and_a_big_request_is_not_starved():
    engine = Engine(delay=0.01)
    engine.gate.clear()

    async def main():
        batcher = MicroBatcher(engine, max_batch_size=4, max_latency_ms=10_000)
        first = asyncio.ensure_future(batcher.submit(rows(0, 1)))      # occupies the engine (gated)
        await asyncio.sleep(0.05)
        big = asyncio.ensure_future(batcher.submit(rows(100, 4)))
        await asyncio.sleep(0.01)
        small = [asyncio.ensure_future(batcher.submit(rows(200 + i, 1))) for i in range(6)]
        await asyncio.sleep(0.01)
        engine.gate.set()
        await asyncio.gather(first, big, *small)

    asyncio.run(main())
    assert engine.calls[0] == [0]
    assert engine.calls[1] == [100, 101, 102, 103]            # the big one, queued first, goes first
    assert engine.calls[2:] == [[200, 201, 202, 203], [204, 205]]


def test_past_the_latency_budget_requests_get_overloaded_and_the_next_one_is_served():
    engine = Engine(delay=0.2)

    async def main():
        batcher = MicroBatcher(engine, max_batch_size=2, max_latency_ms=50)
        results = await asyncio.gather(*(batcher.submit(rows(10 * i, 2)) for i in range(5)), return_exceptions=True)
        assert isinstance(results[0], np.ndarray)
        assert all(isinstance(r, Overloaded) for r in results[1:]), results
        assert np.array_equal(await batcher.submit(rows(7, 1)), rows(7, 1) * 10)

    asyncio.run(main())
    assert engine.calls == [[0, 1], [7]]                      # expired requests never reached the engine


def test_a_client_that_goes_away_is_skipped():
    engine = Engine()
    engine.gate.clear()

    async def main():
        batcher = MicroBatcher(engine, max_batch_size=8, max_latency_ms=10_000)
        busy = asyncio.ensure_future(batcher.submit(rows(0, 1)))
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(batcher.submit(rows(50, 3)))
        stays = asyncio.ensure_future(batcher.submit(rows(60, 2)))
        await asyncio.sleep(0.01)
        gone.cancel()
        engine.gate.set()
        await busy
        assert np.array_equal(await stays, rows(60, 2) * 10)

    asyncio.run(main())
    assert engine.calls == [[0], [60, 61]]


def test_an_exception_fails_its_batch_only():
    engine = Engine(delay=0.05)

    async def main():
        batcher = MicroBatcher(engine, max_batch_size=4, max_latency_ms=10_000)
        engine.fail_next = True
        first = await asyncio.gather(batcher.submit(rows(0, 2)), return_exceptions=True)
        assert isinstance(first[0], RuntimeError)
        assert np.array_equal(await batcher.submit(rows(5, 3)), rows(5, 3) * 10)

    asyncio.run(main())
