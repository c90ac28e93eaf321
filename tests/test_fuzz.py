"""Property-based: whatever a client sends to /generate and /interpolate of a real server (any JSON value, fields
with values of any type near and past their bounds, any Unicode, bodies that are not UTF-8 or not JSON, odd bytes
in the Content-Type and other headers), the server answers within a bound, never with a 5xx, and every error is
the one JSON body {"error", "field"}.

Requests go over raw loopback sockets so the test, not an HTTP client's own checks, decides the bytes sent.
hypothesis runs derandomized (the same examples on every run) with a fixed number of examples.
"""
from __future__ import annotations

import json
import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

BOUND_S = 15.0                # an answer slower than this is a hang (read_timeout_s is 2 s on this server)
SETTINGS = settings(max_examples=1500, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

unicode = st.text(st.characters(blacklist_categories=()), max_size=12)          # surrogates and controls included
scalars = (st.none() | st.booleans() | st.integers() | st.integers(-2**70, 2**70) | st.floats() | unicode
           | st.sampled_from([0.9999999999999999, 5e-324, 1e308, -0.0, 2**63, 2**63 - 1, "--1", "²", "٣", "Bag", "3",
                              "tiny-cdc", "tiny-dc", "png", "npy", "zip", "gif", "", " 3 ", "9" * 40]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(unicode, inner, max_size=3),
                      max_leaves=8)
small_ints = st.integers(-3, 70)
FIELD_VALUES = {
    "n": small_ints, "seed": st.integers(-1, 2**64), "model": st.sampled_from(["tiny-dc", "tiny-cdc"]) | unicode,
    "labels": scalars | st.lists(scalars, max_size=9), "label": scalars, "truncation": st.floats(-0.1, 1.1) | scalars,
    "format": st.sampled_from(["png", "jpeg", "webp", "npy", "zip", "gif", "bmp"]), "grid": st.booleans() | scalars,
    "seeds": st.lists(st.integers(-1, 2**63), max_size=3), "indices": st.lists(st.integers(-1, 2**63), max_size=3),
    "steps": small_ints,
}
FIELDS = {"/generate": ["n", "seed", "model", "labels", "truncation", "format", "grid"],
          "/interpolate": ["seeds", "indices", "model", "label", "steps", "truncation", "format"]}


@st.composite
def bodies(draw, path: str) -> bytes:
    """A request body: mostly a JSON object of the endpoint's fields (values of the right kind or any kind), else
    any JSON value, any bytes, or JSON encoded in a way that is not UTF-8."""
    kind = draw(st.sampled_from(["fields", "fields", "fields", "any-json", "bytes", "not-utf8"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "any-json":
        return json.dumps(draw(values)).encode()
    chosen = draw(st.lists(st.sampled_from(FIELDS[path]), unique=True, max_size=len(FIELDS[path])))
    body = {name: draw(FIELD_VALUES[name] | values if draw(st.booleans()) else FIELD_VALUES[name])
            for name in chosen}
    if path == "/interpolate" and draw(st.booleans()):
        body["seeds"] = draw(st.lists(st.integers(0, 2**63 - 1), min_size=2, max_size=2))
    if draw(st.integers(0, 9)) == 0:
        body[draw(unicode)] = draw(values)                               # an unknown field
    text = json.dumps(body, ensure_ascii=draw(st.booleans()))
    return text.encode("utf-16" if kind == "not-utf8" else "utf-8", "surrogatepass")


header_bytes = st.binary(max_size=24).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
content_types = (st.sampled_from([b"application/json", b"application/json; charset=utf-8", b"APPLICATION/JSON",
                                  b"text/plain", b"", b"application/json;", b"application/json\xff"])
                 | header_bytes)
extra_headers = st.lists(st.tuples(st.sampled_from([b"X-Odd", b"Accept", b"User-Agent", b"Expect", b"Cookie",
                                                    b"Content-Type", b"Accept-Encoding", b"Origin"]),
                                   header_bytes), max_size=3)


def exchange(port: int, path: str, content_type: bytes, body: bytes, extra: list[tuple[bytes, bytes]]) -> tuple:
    """Send one request (Connection: close) and read until the server closes: (status, headers, body, seconds)."""
    head = [b"POST " + path.encode() + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close",
            b"Content-Type: " + content_type, b"Content-Length: %d" % len(body)]
    head += [name + b": " + value for name, value in extra]
    start, data = time.monotonic(), b""
    with socket.create_connection(("127.0.0.1", port), timeout=BOUND_S) as sock:
        sock.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
        while chunk := sock.recv(65536):
            data += chunk
    took = time.monotonic() - start
    head_bytes, _, payload = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:] if ": " in line)}
    return int(lines[0].split()[1]), headers, payload, took


def check(status: int, headers: dict, payload: bytes, took: float, sent) -> None:
    assert took < BOUND_S, (took, sent)
    assert status < 500, (status, payload[:300], sent)
    if status >= 400:
        assert headers["content-type"] == "application/json", (headers, sent)
        error = json.loads(payload)
        assert set(error) == {"error", "field"} and all(isinstance(v, str) for v in error.values()), (error, sent)


@pytest.fixture(scope="module")
def fuzz_server(tiny_models, start_server):
    return start_server({"GAN_MODELS": f"{tiny_models['dc']},{tiny_models['cdc']}", "GAN_MAX_N": "8",
                         "GAN_MAX_STEPS": "8", "GAN_READ_TIMEOUT_S": "2", "GAN_MAX_LATENCY_MS": "10000"})


@pytest.mark.parametrize("path", ["/generate", "/interpolate"])
def test_any_json_body_is_answered_without_5xx(fuzz_server, path):
    @SETTINGS
    @given(body=bodies(path))
    def run(body):
        check(*exchange(fuzz_server.port, path, b"application/json", body, []), body)

    run()


@pytest.mark.parametrize("path", ["/generate", "/interpolate"])
def test_odd_headers_are_answered_without_5xx(fuzz_server, path):
    @settings(SETTINGS, max_examples=500)
    @given(content_type=content_types, extra=extra_headers, body=st.sampled_from([b"{}", b'{"n": 1}', b"",
                                                                                 b'{"seeds": [1, 2], "steps": 2}']))
    def run(content_type, extra, body):
        check(*exchange(fuzz_server.port, path, content_type, body, extra), (content_type, extra, body))

    run()
