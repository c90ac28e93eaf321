"""The in-process micro-batcher (serving/batcher.py) tested as a library: limits, budget, order, failures."""
from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from gan_service.serving.batcher import EngineStalled, MicroBatcher, Overloaded


class Engine:
    """A fake engine: records each call's rows, answers rows * 10 per request, can be slowed, gated or made to fail
    (the whole call with ``fail_next``; one request alone when its rows are negative)."""

    def __init__(self, delay: float = 0.0):
        self.calls: list[list[int]] = []
        self.delay, self.fail_next = delay, False
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, works: list[np.ndarray]) -> list:
        self.gate.wait(10)
        self.calls.append([int(r) for w in works for r in w[:, 0]])
        time.sleep(self.delay)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("engine failure")
        return [ValueError("negative rows") if (w < 0).any() else w * 10 for w in works]


def rows(first: int, n: int) -> np.ndarray:
    return np.arange(first, first + n, dtype=np.int64)[:, None]


def submit(batcher: MicroBatcher, work: np.ndarray):
    return batcher.submit(work, len(work))


def test_each_request_gets_its_own_rows_and_batches_respect_max_batch_size():
    engine = Engine(delay=0.02)

    async def main():
        batcher = MicroBatcher(engine, max_batch_size=8, max_latency_ms=10_000)
        sizes = [1, 3, 8, 2, 5, 1, 7, 4]
        starts = np.cumsum([0] + sizes[:-1]) * 100
        outs = await asyncio.gather(*(submit(batcher, rows(int(s), n)) for s, n in zip(starts, sizes)))
        for s, n, out in zip(starts, sizes, outs):
            assert np.array_equal(out, rows(int(s), n) * 10)
        with pytest.raises(ValueError):
            await submit(batcher, rows(0, 0))

    asyncio.run(main())
    assert max(len(c) for c in engine.calls) <= 8
    assert len(engine.calls) < 8                              # requests were merged


def test_one_request_alone_is_not_delayed():
    engine = Engine()

    async def main():
        batcher = MicroBatcher(engine, max_batch_size=64, max_latency_ms=5000)
        start = time.monotonic()
        await submit(batcher, rows(0, 1))
        return time.monotonic() - start

    assert asyncio.run(main()) < 0.5 and engine.calls == [[0]]


def test_first_come_first_served_and_a_big_request_is_not_starved():
    engine = Engine(delay=0.01)
    engine.gate.clear()

    async def main():
        batcher = MicroBatcher(engine, max_batch_size=4, max_latency_ms=10_000)
        first = asyncio.ensure_future(submit(batcher, rows(0, 1)))      # occupies the engine (gated)
        await asyncio.sleep(0.05)
        big = asyncio.ensure_future(submit(batcher, rows(100, 4)))
        await asyncio.sleep(0.01)
        small = [asyncio.ensure_future(submit(batcher, rows(200 + i, 1))) for i in range(6)]
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
        results = await asyncio.gather(*(submit(batcher, rows(10 * i, 2)) for i in range(5)), return_exceptions=True)
        assert isinstance(results[0], np.ndarray)
        assert all(isinstance(r, Overloaded) for r in results[1:]), results
        assert np.array_equal(await submit(batcher, rows(7, 1)), rows(7, 1) * 10)

    asyncio.run(main())
    assert engine.calls == [[0, 1], [7]]                      # expired requests never reached the engine


def test_a_client_that_goes_away_is_skipped():
    engine = Engine()
    engine.gate.clear()

    async def main():
        batcher = MicroBatcher(engine, max_batch_size=8, max_latency_ms=10_000)
        busy = asyncio.ensure_future(submit(batcher, rows(0, 1)))
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(submit(batcher, rows(50, 3)))
        stays = asyncio.ensure_future(submit(batcher, rows(60, 2)))
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
        first = await asyncio.gather(submit(batcher, rows(0, 2)), return_exceptions=True)
        assert isinstance(first[0], RuntimeError)
        assert np.array_equal(await submit(batcher, rows(5, 3)), rows(5, 3) * 10)

    asyncio.run(main())


def test_a_request_that_fails_in_a_merged_call_fails_alone():
    engine = Engine()
    engine.gate.clear()

    async def main():
        batcher = MicroBatcher(engine, max_batch_size=8, max_latency_ms=10_000)
        busy = asyncio.ensure_future(submit(batcher, rows(0, 1)))
        await asyncio.sleep(0.05)
        queued = [asyncio.ensure_future(submit(batcher, w)) for w in (rows(10, 2), -rows(1, 2), rows(20, 3))]
        await asyncio.sleep(0.01)
        engine.gate.set()
        await busy
        return await asyncio.gather(*queued, return_exceptions=True)

    good, bad, other = asyncio.run(main())
    assert engine.calls[1] == [10, 11, -1, -2, 20, 21, 22]                # one merged call
    assert isinstance(bad, ValueError)
    assert np.array_equal(good, rows(10, 2) * 10) and np.array_equal(other, rows(20, 3) * 10)


def test_a_request_larger_than_max_batch_size_runs_alone():
    engine = Engine()

    async def main():
        batcher = MicroBatcher(engine, max_batch_size=4, max_latency_ms=10_000)
        big, small = await asyncio.gather(submit(batcher, rows(0, 9)), submit(batcher, rows(100, 2)))
        assert np.array_equal(big, rows(0, 9) * 10) and np.array_equal(small, rows(100, 2) * 10)

    asyncio.run(main())
    assert engine.calls == [list(range(9)), [100, 101]]


def test_a_stalled_engine_call_answers_the_queue_and_new_requests_until_it_returns():
    engine = Engine()
    engine.gate.clear()                                    # the first call hangs until the gate opens

    async def main():
        batcher = MicroBatcher(engine, max_batch_size=8, max_latency_ms=60_000, stall_s=0.1)
        hung = asyncio.ensure_future(submit(batcher, rows(0, 1)))
        await asyncio.sleep(0.01)
        assert not batcher.stalled
        with pytest.raises(EngineStalled):                  # queued behind the hung call: answered at the bound
            await submit(batcher, rows(10, 2))
        assert batcher.stalled and batcher.queued() == {"requests": 0, "rows": 0}
        with pytest.raises(EngineStalled, match="retry"):   # new requests: answered at once
            await submit(batcher, rows(20, 1))
        engine.gate.set()
        assert np.array_equal(await hung, rows(0, 1) * 10)    # the call returns: its request is served
        assert not batcher.stalled
        assert np.array_equal(await submit(batcher, rows(30, 1)), rows(30, 1) * 10)

    asyncio.run(main())
    assert engine.calls == [[0], [30]] and issubclass(EngineStalled, Overloaded)


def test_a_cancelled_request_leaves_the_queue_at_once():
    engine = Engine()
    engine.gate.clear()

    async def main():
        batcher = MicroBatcher(engine, max_batch_size=8, max_latency_ms=10_000)
        busy = asyncio.ensure_future(submit(batcher, rows(0, 1)))
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(submit(batcher, rows(50, 3)))
        stays = asyncio.ensure_future(submit(batcher, rows(60, 2)))
        await asyncio.sleep(0.01)
        assert batcher.queued() == {"requests": 2, "rows": 5}
        gone.cancel()
        await asyncio.sleep(0)
        assert batcher.queued() == {"requests": 1, "rows": 2}
        engine.gate.set()
        await asyncio.gather(busy, stays)

    asyncio.run(main())
    assert engine.calls == [[0], [60, 61]]


class Opaque:
    """A request's work the batcher must only hand on: comparing or printing it is an error (and counted)."""
    touched: list[str] = []

    def __init__(self, n: int):
        self.rows = rows(0, n)

    def __eq__(self, other):
        Opaque.touched.append("eq")
        raise AssertionError("the batcher compared two works")

    __hash__ = object.__hash__

    def __repr__(self):
        Opaque.touched.append("repr")
        raise AssertionError("the batcher printed a work")


def test_the_batcher_never_compares_or_prints_a_work():
    """Regression: answering a request that was taken into a batch used to look it up in the queue by equality and,
    not finding it, build ValueError's message from repr(request) -- numpy pretty-printing the rows of every request
    on the event loop, which halved n=1 throughput. Queue bookkeeping is by identity and never formats a work."""
    Opaque.touched.clear()

    def engine(works):
        time.sleep(0.01)
        return [w.rows * 10 for w in works]

    async def main():
        batcher = MicroBatcher(engine, max_batch_size=8, max_latency_ms=10_000)
        first = asyncio.ensure_future(batcher.submit(Opaque(1), 1))
        await asyncio.sleep(0)
        waiting = [asyncio.ensure_future(batcher.submit(Opaque(2), 2)) for _ in range(6)]
        await asyncio.sleep(0)
        waiting[2].cancel()                                  # a cancelled one leaves the queue by identity too
        outs = await asyncio.gather(first, *waiting, return_exceptions=True)
        assert isinstance(outs[3], asyncio.CancelledError)
        assert all(np.array_equal(o, rows(0, len(o)) * 10) for i, o in enumerate(outs) if i != 3)
        assert batcher.queued() == {"requests": 0, "rows": 0}

    asyncio.run(main())
    assert Opaque.touched == []
