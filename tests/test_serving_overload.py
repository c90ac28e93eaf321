"""Overload provoked on real servers: 503 past the batching budget, 504 past the timeout, 429 past the concurrency
limit; each then serves again.

The engine is slowed down on purpose (tests/slow_engine, via conftest.slow_server), so each case happens because
of the configured limits, not because this machine happens to be slow or fast.
"""
from __future__ import annotations

import concurrent.futures as cf
import socket
import threading
import time

import httpx


def burst(url: str, body: dict, clients: int = 40, path: str = "/generate") -> list[httpx.Response]:
    """``clients`` requests sent at once: each thread opens its connection, then all wait at a barrier and post
    together (without it, a slow client spread the requests out enough to be served one by one: all 200, no 503)."""
    start = threading.Barrier(clients)

    def post(_) -> httpx.Response:
        with httpx.Client(timeout=60) as client:
            client.get(url + "/readyz")                            # connection open before the barrier
            start.wait(timeout=30)                                 # a failed thread breaks it: no hang
            return client.post(url + path, json=body)
    with cf.ThreadPoolExecutor(clients) as pool:
        return list(pool.map(post, range(clients)))


def wait_for(check, what: str, timeout: float = 30.0):
    """Poll ``check()`` until it returns something truthy (a condition on the server, not a guess at its speed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def assert_overload_answer(r: httpx.Response) -> None:
    """An overload answer: the one error body, naming the server as the cause, and when to retry."""
    assert r.headers["content-type"] == "application/json", r.headers
    assert set(r.json()) == {"error", "field"} and r.json()["field"] == "server", r.text
    assert int(r.headers["retry-after"]) >= 1, r.headers


def served_after(srv) -> httpx.Response:
    """With the engine back to full speed and the server ready again (a slow call may still be running: until it
    returns the server is not ready), a lone n=1 request is served (the burst's leftovers drain first)."""
    srv.delay = 0
    wait_for(lambda: httpx.get(srv.url + "/readyz").status_code == 200, "ready again")
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
    assert_overload_answer(err)
    assert served_after(srv).status_code == 200


def test_504_past_the_timeout_then_served(tiny_models, slow_server):
    # Each engine call takes 5 s against a 2 s limit: no request can be answered in time. The requests in the engine
    # call get 504; those queued behind it get 503 first, when the call passes engine_stall_s (timeout_s / 3).
    srv = slow_server({"GAN_MODELS": str(tiny_models["dc"]), "GAN_TIMEOUT_S": "2", "GAN_MAX_LATENCY_MS": "60000"})
    srv.delay = 5.0
    responses = burst(srv.url, {"n": 8, "format": "zip"}, clients=12)
    codes = [r.status_code for r in responses]
    assert 504 in codes and set(codes) <= {503, 504}, codes
    for r in responses:
        assert_overload_answer(r)
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
    assert_overload_answer(next(r for r in responses if r.status_code == 429))
    assert served_after(srv).status_code == 200 and httpx.get(srv.url + "/readyz").status_code == 200


def batching(srv) -> dict:
    return httpx.get(srv.url + "/info", timeout=10).json()["batching"]


def test_interpolate_goes_through_the_batcher(tiny_models, slow_server):
    # One engine thread for both endpoints, so /interpolate meets the latency budget (and merges) like /generate.
    srv = slow_server({"GAN_MODELS": str(tiny_models["dc"]), "GAN_MAX_LATENCY_MS": "100", "GAN_MAX_BATCH_SIZE": "64",
                       "GAN_MAX_N": "64"})
    before = batching(srv)["observed"]["rows"]
    srv.delay = 1.0
    responses = burst(srv.url, {"seeds": [1, 2], "steps": 64}, clients=12, path="/interpolate")
    codes = [r.status_code for r in responses]
    assert 503 in codes and 200 in codes and set(codes) <= {200, 503}, codes
    assert_overload_answer(next(r for r in responses if r.status_code == 503))
    assert batching(srv)["observed"]["rows"] - before == 64 * codes.count(200)     # counted as engine rows
    assert served_after(srv).status_code == 200


def test_a_stalled_engine_call_turns_not_ready_and_answers_queued_requests_503(tiny_models, slow_server):
    srv = slow_server({"GAN_MODELS": str(tiny_models["dc"]), "GAN_ENGINE_STALL_S": "1", "GAN_MAX_LATENCY_MS": "60000"})
    calls = batching(srv)["observed"]["calls"]
    srv.delay = 8.0                                   # one engine call far past the 1 s stall bound
    with cf.ThreadPoolExecutor(1) as pool:
        hung = pool.submit(httpx.post, srv.url + "/generate", json={"n": 1, "seed": 1}, timeout=60)
        wait_for(lambda: batching(srv)["observed"]["calls"] > calls, "the first request reached the engine")
        queued = httpx.post(srv.url + "/generate", json={"n": 3, "format": "npy"}, timeout=60)   # waits behind it
        assert queued.status_code == 503 and "stalled" in queued.json()["error"], queued.status_code
        assert_overload_answer(queued)
        assert httpx.get(srv.url + "/readyz").status_code == 503                   # seen by the probes
        assert httpx.get(srv.url + "/livez").status_code == 200
        late = httpx.post(srv.url + "/generate", json={"n": 1}, timeout=60)         # arrives during the stall
        assert late.status_code == 503 and "stalled" in late.json()["error"], late.status_code
        assert hung.result().status_code == 200                                    # the call returns: served
    wait_for(lambda: httpx.get(srv.url + "/readyz").status_code == 200, "ready again after the call returned")
    assert served_after(srv).status_code == 200


def test_a_client_that_goes_away_releases_its_place(tiny_models, slow_server):
    srv = slow_server({"GAN_MODELS": str(tiny_models["dc"]), "GAN_MAX_LATENCY_MS": "60000"})
    start = batching(srv)["observed"]
    srv.delay = 4.0
    with cf.ThreadPoolExecutor(1) as pool:
        busy = pool.submit(httpx.post, srv.url + "/generate", json={"n": 1, "seed": 1}, timeout=60)
        wait_for(lambda: batching(srv)["observed"]["calls"] > start["calls"], "the first request reached the engine")
        body = b'{"n": 7, "format": "npy"}'
        gone = socket.create_connection(("127.0.0.1", srv.server.port))
        gone.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        wait_for(lambda: batching(srv)["queued"]["rows"] == 7, "the request of 7 rows queued")
        gone.close()                                                                # the client goes away
        wait_for(lambda: batching(srv)["queued"]["rows"] == 0, "its place released")
        assert busy.result().status_code == 200
    assert served_after(srv).status_code == 200
    histogram = batching(srv)["observed"]["histogram"]
    grown = {int(k): v - start["histogram"].get(k, 0) for k, v in histogram.items()}
    assert not any(size >= 7 and count for size, count in grown.items()), histogram   # its rows never ran
