"""Slow and malformed clients on a real server, over raw loopback sockets: request headers and bodies must arrive
within read_timeout_s (else 408 JSON, then the connection is closed), a body still arriving holds no place among
max_concurrency, and HTTP the server cannot parse is answered with the one JSON error body.

Each client below is cut by the server's own deadline; the tests only bound how long that may take (generously),
they never race it.
"""
from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest

READ_TIMEOUT_S = 2.0
BOUND_S = 20.0                 # far above READ_TIMEOUT_S: an answer later than this is a hang, not a slow machine


@pytest.fixture(scope="module")
def srv(tiny_models, start_server):
    return start_server({"GAN_MODELS": str(tiny_models["dc"]), "GAN_READ_TIMEOUT_S": str(READ_TIMEOUT_S),
                         "GAN_MAX_CONCURRENCY": "2"})


def connect(srv) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=BOUND_S + 10)
    return sock


def read_answer(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    start, data = time.monotonic(), b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        data += chunk
    return data, time.monotonic() - start


def parse(data: bytes) -> tuple[int, dict, dict]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, json.loads(body)


def served(srv) -> int:
    return httpx.post(srv.url + "/generate", json={"n": 1, "seed": 1}, timeout=30).status_code


def trickle(sock: socket.socket, stop: threading.Event) -> None:
    """One byte of body every 0.2 s (never the whole body) until the server closes the connection."""
    while not stop.is_set():
        try:
            sock.sendall(b" ")
        except OSError:
            return
        stop.wait(0.2)


def test_a_trickled_body_is_cut_with_408_and_holds_no_place(srv):
    headers = (b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: 60000\r\n\r\n{")
    socks, stop = [connect(srv) for _ in range(3)], threading.Event()        # more than max_concurrency (2)
    threads = []
    for sock in socks:
        sock.sendall(headers)
        threads.append(threading.Thread(target=trickle, args=(sock, stop), daemon=True))
        threads[-1].start()
    try:
        assert served(srv) == 200                      # the trickling bodies take none of the two places
        for sock in socks:
            data, took = read_answer(sock)
            assert took < BOUND_S, took
            status, head, body = parse(data)
            assert status == 408 and body["field"] == "body" and set(body) == {"error", "field"}, data
            assert head["connection"] == "close" and head["content-type"] == "application/json"
    finally:
        stop.set()
        for sock in socks:
            sock.close()
    assert served(srv) == 200


@pytest.mark.parametrize("sent", [b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Ty", b"GET /info HTTP/1.1\r\n",
                                  b"P"])
def test_partial_request_headers_are_cut_with_408(srv, sent):
    with connect(srv) as sock:
        sock.sendall(sent)
        assert served(srv) == 200                      # meanwhile others are served
        data, took = read_answer(sock)
    assert took < BOUND_S, took
    status, head, body = parse(data)
    assert status == 408 and body["field"] == "headers" and head["connection"] == "close", data


def test_a_silent_connection_is_closed(srv):
    with connect(srv) as sock:
        data, took = read_answer(sock)
    assert data == b"" and took < BOUND_S, (data, took)


def test_partial_headers_after_a_kept_alive_request_are_cut(srv):
    body = b'{"n": 1, "seed": 2, "format": "npy"}'
    with connect(srv) as sock:
        sock.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        first = b""
        while b"\r\n\r\n" not in first:
            first += sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first[:200]
        sock.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\n")                # the next request stalls
        data, took = read_answer(sock)
    assert took < BOUND_S and b"HTTP/1.1 408" in data, (data[-300:], took)


@pytest.mark.parametrize("request_bytes", [b"\x00\x01 garbage\r\n\r\n", (b"POST /generate HTTP/1.1\r\nHost: x\r\n"
                                           b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n{}"),
                                           b"GET /info HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
                                           b"GET /info HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"])
def test_http_the_server_cannot_parse_is_400_json(srv, request_bytes):
    with connect(srv) as sock:
        sock.sendall(request_bytes)
        data, _ = read_answer(sock)
    status, _, body = parse(data)
    assert status == 400 and set(body) == {"error", "field"}, data


@pytest.mark.parametrize("user_agent", [b"\x80\\", b"\xff", b"ok\xc3("])
def test_header_bytes_that_are_not_utf8_get_a_json_400(server, user_agent):
    """Found by the fuzz test: BentoML's OpenTelemetry middleware raised on User-Agent b'\\x80\\\\' (plain-text 500)."""
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nUser-Agent: "
                     + user_agent + b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and json.loads(body) == {
        "error": "header 'user-agent': the value is not UTF-8 text", "field": "headers"}
