"""The front door (serving/guard.py) in-process, with fake ASGI apps: what it answers when the app fails, never
answers, or its client leaves, and how other error bodies are put into the one shape."""
from __future__ import annotations

import asyncio
import json

import pytest

from gan_service.serving.guard import Limits, RequestGuard, one_shape

LIMITS = Limits(max_body_bytes=1024, max_concurrency=2, timeout_s=0.2, read_timeout_s=0.1, retry_after_s=3)
FIELDS = {"/generate": {"n", "seed"}}


def scope(path: str = "/generate", method: str = "POST", ctype: bytes = b"application/json") -> dict:
    return {"type": "http", "method": method, "path": path, "headers": [(b"content-type", ctype)]}


class Client:
    """The server's side of one request: a receive that gives ``body`` then waits for ``leave``; a recording send."""

    def __init__(self, body: bytes | None = b"{}"):
        self.body, self.sent, self.leave = body, [], asyncio.Event()

    async def receive(self):
        if self.body is not None:
            body, self.body = self.body, None
            return {"type": "http.request", "body": body, "more_body": False}
        await self.leave.wait()
        return {"type": "http.disconnect"}

    async def send(self, message):
        self.sent.append(message)

    def answer(self) -> tuple[int, dict, dict]:
        start = self.sent[0]
        return start["status"], dict(start["headers"]), json.loads(b"".join(m.get("body", b"") for m in self.sent[1:]))


def run(app, client: Client, request: dict | None = None, guard: RequestGuard | None = None):
    guard = guard or RequestGuard(app, LIMITS, FIELDS)
    asyncio.run(asyncio.wait_for(guard(request or scope(), client.receive, client.send), 5))
    return client.answer() if client.sent else None


def test_an_app_that_fails_without_answering_gets_a_500_at_once():
    async def app(scope, receive, send):
        raise RuntimeError("bug")

    status, _, body = run(app, Client())
    assert status == 500 and body == {"error": body["error"], "field": "server"}


def test_an_app_that_does_not_answer_in_time_is_cancelled_and_answered_504():
    cancelled = []

    async def app(scope, receive, send):
        try:
            await asyncio.sleep(60)
        finally:
            cancelled.append(True)

    status, headers, body = run(app, Client())
    assert status == 504 and body["field"] == "server" and headers[b"retry-after"] == b"3" and cancelled == [True]


def test_a_client_that_leaves_cancels_its_request_and_gets_nothing():
    cancelled, client = [], Client()

    async def main():
        started = asyncio.Event()

        async def app(scope, receive, send):
            started.set()
            try:
                await asyncio.sleep(60)
            finally:
                cancelled.append(True)

        guard = RequestGuard(app, Limits(1024, 2, 30.0, 1.0, 1), FIELDS)
        task = asyncio.ensure_future(guard(scope(), client.receive, client.send))
        await started.wait()
        client.leave.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
    assert cancelled == [True] and client.sent == []


def test_a_body_that_does_not_arrive_in_time_is_408_and_closes():
    async def app(scope, receive, send):
        raise AssertionError("never reached")

    status, headers, body = run(app, Client(body=None))
    assert status == 408 and body["field"] == "body" and headers[b"connection"] == b"close"


def test_past_max_concurrency_is_429_with_retry_after():
    async def main():
        gate = asyncio.Event()

        async def app(scope, receive, send):
            await gate.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

        guard = RequestGuard(app, Limits(1024, 2, 30.0, 1.0, 4), FIELDS)
        clients = [Client() for _ in range(3)]
        busy = [asyncio.ensure_future(guard(scope(), c.receive, c.send)) for c in clients[:2]]
        while guard.in_flight < 2:
            await asyncio.sleep(0)
        await guard(scope(), clients[2].receive, clients[2].send)
        gate.set()
        await asyncio.gather(*busy)
        return clients

    clients = asyncio.run(main())
    status, headers, body = clients[2].answer()
    assert status == 429 and body["field"] == "server" and headers[b"retry-after"] == b"4"
    assert [c.sent[0]["status"] for c in clients[:2]] == [200, 200]


def test_an_error_answer_of_the_app_is_put_into_the_one_shape():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 400,
                    "headers": [(b"content-type", b"application/json"), (b"x-kept", b"1")]})
        await send({"type": "http.response.body", "body": b'{"error": "1 validation error", "detail": ', "more_body": True})
        await send({"type": "http.response.body", "body": b'[{"loc": ["seeds", 0], "msg": "too big"}]}'})

    status, headers, body = run(app, Client())
    assert status == 400 and body == {"error": "seeds.0: too big", "field": "seeds.0"} and headers[b"x-kept"] == b"1"


@pytest.mark.parametrize("status, raw, field", [(404, b"Not Found", "path"), (405, b"Method Not Allowed", "method"),
                                                (400, b'[{"error": "bad input"}]', "body"),
                                                (500, b'{"error": "An unexpected error"}', "server"),
                                                (400, b'{"error": "x", "field": "n"}', "n"), (413, b"", "body")])
def test_one_shape(status, raw, field):
    shaped = one_shape(status, raw)
    assert set(shaped) == {"error", "field"} and shaped["field"] == field and shaped["error"], shaped


def test_an_answer_begun_before_the_deadline_is_finished_and_a_client_leaving_then_does_not_cut_it():
    client = Client()

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        client.leave.set()                           # the client goes away once the answer has begun ...
        await asyncio.sleep(2 * LIMITS.timeout_s)   # ... and the body comes after the deadline
        await send({"type": "http.response.body", "body": b"late but whole"})

    asyncio.run(asyncio.wait_for(RequestGuard(app, LIMITS, FIELDS)(scope(), client.receive, client.send), 5))
    assert client.sent[0]["status"] == 200 and client.sent[1]["body"] == b"late but whole"


def test_a_cancellation_from_outside_is_not_swallowed():
    """Server shutdown cancels the request's task: the guard passes that on instead of answering."""
    async def main():
        started = asyncio.Event()

        async def app(scope, receive, send):
            started.set()
            await asyncio.sleep(60)

        client = Client()
        task = asyncio.ensure_future(RequestGuard(app, Limits(1024, 2, 30.0, 1.0, 1), FIELDS)(
            scope(), client.receive, client.send))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return client

    assert asyncio.run(main()).sent == []


def test_the_disconnect_watch_listens_on_the_servers_own_receive_when_given():
    """BentoML's middleware makes each receive an OpenTelemetry span: the protocol layer passes the server's own
    receive in the scope, and the guard waits for the disconnect there; the app's receive serves the body only."""
    calls, transport = [], Client()

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def through_middleware():
        calls.append("receive")
        if len(calls) > 1:                           # nothing more to say until the client leaves
            await asyncio.Event().wait()
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def main():
        request = {**scope(), "gan.transport_receive": transport.receive}
        transport.body = None                        # the body was read already: the next message is the disconnect
        await RequestGuard(app, LIMITS, FIELDS)(request, through_middleware, transport.send)

    asyncio.run(main())
    assert calls == ["receive"] and transport.sent[1]["body"] == b"ok"
