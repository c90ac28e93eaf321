"""Overload provoked on real servers: 503 past the batching budget, 504 past the timeout, 429 past the concurrency
limit; each then serves again.

The engine is slowed down on purpose (tests/slow_engine, via conftest.slow_server), so each case happens because
of the configured limits, not because this machine happens to be slow or fast.
"""
from __future__ import annotations

import concurrent.futures as cf
import threading

import httpx


def burst(url: str, body: dict, clients: int = 40) -> list[httpx.Response]:
    """``clients`` requests sent at once: each thread opens its connection, then all wait at a barrier and post
    together (without it, a slow client spread the requests out enough to be served one by one: all 200, no 503)."""
    start = threading.Barrier(clients)

    def post(_) -> httpx.Response:
        with httpx.Client(timeout=60) as client:
            client.get(url + "/readyz")                            # connection open before the barrier
            start.wait(timeout=30)                                 # a failed thread breaks it: no hang
            return client.post(url + "/generate", json=body)
    with cf.ThreadPoolExecutor(clients) as pool:
        return list(pool.map(post, range(clients)))


def served_after(srv) -> httpx.Response:
    """With the engine back to full speed, a lone n=1 request is served (the burst's leftovers drain first)."""
    srv.delay = 0
    for _ in range(10):
        r = httpx.post(srv.url + "/generate", json={"n": 1, "seed": 3}, timeout=60)
        if r.status_code == 200:
            break
    return r


def test_503_past_the_batching_budget_then_served(tiny_models, slow_server):
    # Each engine call takes 1 s against a 100 ms budget: the first batch (4 requests of 64 rows) is served, every
    # request still queued behind it has waited past the budget when its turn comes.
    srv = slow_server({"GAN_MODELS": str(tiny_models["dc"]), "GAN_MAX_LATENCY_MS": "100", "GAN_MAX_N": "64"})
    srv.delay = 1.0
    responses = burst(srv.url, {"n": 64, "format": "npy"})
    codes = [r.status_code for r in responses]
    assert 503 in codes and 200 in codes and set(codes) <= {200, 503}, codes
    err = next(r for r in responses if r.status_code == 503)
    assert err.headers["content-type"] == "application/json" and "budget" in err.json()["error"]
    assert served_after(srv).status_code == 200


def test_504_past_the_timeout_then_served(tiny_models, slow_server):
    # Each engine call takes 2 s against a 0.3 s limit: no request can be answered in time.
    srv = slow_server({"GAN_MODELS": str(tiny_models["dc"]), "GAN_TIMEOUT_S": "0.3", "GAN_MAX_LATENCY_MS": "60000"})
    srv.delay = 2.0
    responses = burst(srv.url, {"n": 8, "format": "zip"}, clients=12)
    codes = [r.status_code for r in responses]
    assert set(codes) == {504}, codes
    assert "error" in responses[0].json()
    assert served_after(srv).status_code == 200
    assert httpx.get(srv.url + "/readyz").status_code == 200


def test_429_past_max_concurrency_then_served(tiny_models, slow_server):
    # Two requests in flight at most; each engine call takes 2 s, so the burst's other requests find both slots
    # taken. The budget is long: nothing admitted is late.
    srv = slow_server({"GAN_MODELS": str(tiny_models["dc"]), "GAN_MAX_CONCURRENCY": "2", "GAN_MAX_N": "64",
                       "GAN_MAX_LATENCY_MS": "60000"})
    srv.delay = 2.0
    responses = burst(srv.url, {"n": 64, "format": "zip"}, clients=20)
    codes = [r.status_code for r in responses]
    assert set(codes) == {200, 429} and codes.count(200) <= 2, codes
    assert served_after(srv).status_code == 200 and httpx.get(srv.url + "/readyz").status_code == 200
