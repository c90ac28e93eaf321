"""Overload provoked on real servers: 503 past the batching budget, 504 past the timeout, each then serves again.

(429 past max_concurrency: tests/test_service.py::test_http_429_past_max_concurrency.)
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


def served_after(url: str, tries: int = 5) -> httpx.Response:
    """A lone n=1 request (retried a few times while the burst's leftovers drain)."""
    for _ in range(tries):
        r = httpx.post(url + "/generate", json={"n": 1, "seed": 3}, timeout=60)
        if r.status_code == 200:
            break
    return r


def test_503_past_the_batching_budget_then_served(tiny_models, start_server):
    srv = start_server({"GAN_MODELS": str(tiny_models["dc"]), "GAN_MAX_LATENCY_MS": "20", "GAN_MAX_N": "64"})
    responses = burst(srv.url, {"n": 64, "format": "npy"})
    codes = [r.status_code for r in responses]
    assert 503 in codes and 200 in codes and set(codes) <= {200, 503}, codes
    err = next(r for r in responses if r.status_code == 503)
    assert err.headers["content-type"] == "application/json" and "budget" in err.json()["error"]
    assert served_after(srv.url).status_code == 200


def test_504_past_the_timeout_then_served(tiny_models, start_server):
    # 48 x 64 images to zip queue for ~0.3 s on an idle 2-core machine: a 0.2 s limit let every one through now and
    # then, so the limit is 0.05 s (one request alone takes ~15 ms; the queue is far longer than the limit)
    srv = start_server({"GAN_MODELS": str(tiny_models["dc"]), "GAN_TIMEOUT_S": "0.05", "GAN_MAX_LATENCY_MS": "60000"})
    responses = burst(srv.url, {"n": 64, "format": "zip"}, clients=48)
    codes = [r.status_code for r in responses]
    assert 504 in codes and set(codes) <= {200, 504}, codes
    assert "error" in next(r for r in responses if r.status_code == 504).json()
    assert served_after(srv.url).status_code == 200
    assert httpx.get(srv.url + "/readyz").status_code == 200
