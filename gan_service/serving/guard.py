"""The service's front door: ASGI middleware in front of BentoML's request handling, and a request-header deadline in
the HTTP protocol below it. Every error it gives or passes on is JSON ``{"error": ..., "field": ...}``.

RequestGuard (every HTTP path but the probes ``/livez`` ``/healthz`` ``/readyz`` ``/metrics``):

- JSON endpoints: 415 unless the body is JSON, 413 past max_body_bytes (declared or streamed), 408 when the body
  has not all arrived ``read_timeout_s`` after the headers, 400 for a field the endpoint does not have (pydantic
  would silently drop it) or JSON nested too deeply. The body is read *before* the request takes a place among
  ``max_concurrency``, so clients trickling their bodies hold no place; it is then replayed to the app.
- 429 (with Retry-After) past ``max_concurrency`` requests in flight; 504 (with Retry-After) when the app has not
  begun its answer ``timeout_s`` after the request's headers (the app is cancelled: a request waiting in the
  micro-batcher leaves its queue). A client that disconnects cancels its request the same way.
- The app's own error bodies (BentoML's validation errors ``{"error", "detail": [...]}``, plain-text 404/405, ...)
  are rewritten into the one shape; an app that fails without answering gets a 500 at once, not a hang.

These limits replace BentoML's own traffic middlewares (whose 429/504 bodies and headers cannot be changed): the
service gives BentoML no max_concurrency and a timeout past ``timeout_s`` as a backstop (serving/app.py).

``install_header_deadline``: uvicorn never times out a connection whose request headers do not all arrive
(encode/uvicorn#157; its keep-alive timer only runs between requests, and any byte stops it), so its HTTP protocol
is subclassed to close such a connection after ``read_timeout_s`` (408 when some bytes came), and to answer HTTP it
cannot parse with the JSON 400 instead of its plain-text one. The subclass uses the protocol's own attributes
(``cycle``, ``loop``, ``transport``, ``send_400_response``) of uvicorn 0.55 (h11 or httptools);
tests/test_transport.py fails if a uvicorn release changes them.
"""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from http import HTTPStatus

log = logging.getLogger("bentoml.gan")
PROBES = frozenset({"/livez", "/healthz", "/readyz", "/metrics"})
TRANSPORT_RECEIVE = "gan.transport_receive"   # scope key: the server's own receive, put there by the protocol layer
FIELD_OF_STATUS = {404: "path", 405: "method", 408: "body", 413: "body", 415: "content-type"}   # else body / server


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int
    max_concurrency: int          # requests in flight in this worker
    timeout_s: float              # headers received -> answer begun
    read_timeout_s: float         # headers received -> body received
    retry_after_s: int            # the Retry-After of 429 and 504


class Refused(Exception):
    """A request answered by the guard itself: status, the field at fault, and whether to close the connection."""

    def __init__(self, status: int, field: str, message: str, close: bool = False):
        super().__init__(message)
        self.status, self.field, self.close = status, field, close


def error_head(status: int, body: bytes, retry_after: int | None = None, close: bool = False) -> list:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(b"retry-after", str(retry_after).encode())] if retry_after is not None else []
    return headers + ([(b"connection", b"close")] if close else [])


async def reply(send, status: int, field: str, message: str, retry_after: int | None = None,
                close: bool = False) -> None:
    body = json.dumps({"error": message, "field": field}).encode()
    await send({"type": "http.response.start", "status": status, "headers": error_head(status, body, retry_after,
                                                                                       close)})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """See the module docstring. ``fields``: {JSON endpoint path: the fields it takes}."""

    def __init__(self, app, limits: Limits, fields: dict[str, set[str]], openapi=None):
        self.app, self.limits, self.fields, self.openapi = app, limits, fields, openapi
        self.in_flight = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in PROBES:
            return await self.app(scope, receive, send)
        if scope["method"] in ("GET", "HEAD") and scope["path"] in ("/", "/docs.json"):
            return await self._own_page(scope, send)
        deadline = asyncio.get_running_loop().time() + self.limits.timeout_s
        gone = None                                  # set when the client disconnects (JSON endpoints)
        if scope["method"] == "POST" and scope["path"] in self.fields:
            try:
                body = await self._json_body(scope, receive)
            except Refused as exc:
                return await reply(send, exc.status, exc.field, str(exc), close=exc.close)
            if body is None:                         # the client went away while sending
                return
            # Watched on the server's own receive when the protocol layer passed it on: through BentoML's
            # middleware every receive is one more OpenTelemetry span.
            gone = asyncio.ensure_future(_disconnected(scope.get(TRANSPORT_RECEIVE, receive)))
            receive = _replay(body, gone)
        try:
            if self.in_flight >= self.limits.max_concurrency:
                return await reply(send, 429, "server", f"more than {self.limits.max_concurrency} requests in "
                                   "flight (max_concurrency; server overloaded); retry", self.limits.retry_after_s)
            self.in_flight += 1
            try:
                await self._serve(scope, receive, send, deadline, gone)
            finally:
                self.in_flight -= 1
        finally:
            if gone is not None:
                gone.cancel()

    async def _json_body(self, scope, receive) -> bytes | None:
        """The checked body of a JSON endpoint (b"{}" when empty: all defaults), None if the client went away."""
        ctypes = [v for k, v in scope["headers"] if k == b"content-type"]
        if len(ctypes) > 1:
            raise Refused(400, "content-type", "send one Content-Type header, not several")
        ctype = (ctypes or [b""])[0].split(b";")[0].strip().lower()
        if ctype != b"application/json":
            shown = ctype.decode("latin-1")[:60] if ctype else "nothing"
            raise Refused(415, "content-type", f"send the request as application/json, not {shown!r}")
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or len(declared) > 18
                                     or int(declared) > self.limits.max_body_bytes):
            raise Refused(413, "body", f"request body over {self.limits.max_body_bytes} bytes", close=True)
        try:
            async with asyncio.timeout(self.limits.read_timeout_s):     # in this task (wait_for would start one)
                body = await _read(receive, self.limits.max_body_bytes)
        except TimeoutError:
            raise Refused(408, "body", f"the request body did not arrive within {self.limits.read_timeout_s:g} s "
                                       "(read_timeout_s)", close=True) from None
        if body is None:
            return None
        _check_fields(body or b"{}", self.fields[scope["path"]])
        return body or b"{}"

    async def _serve(self, scope, receive, send, deadline: float, gone: asyncio.Future | None) -> None:
        """Run the app in this task until it begins its answer: past the deadline it is cancelled and answered 504;
        a client that goes away first cancels it (no answer). No second task and no timeout object: a timer handle
        and a done-callback cancel this task, and ``stopped`` says why (a request's fixed cost is the service's)."""
        task, stopped = asyncio.current_task(), []

        def stop(reason: str) -> None:
            if not responder.begun and not stopped:
                stopped.append(reason)
                task.cancel()

        def left(_) -> None:
            stop("left")

        timer = asyncio.get_running_loop().call_at(deadline, stop, "deadline")
        responder = _Responder(send, on_begin=timer.cancel)    # the deadline is for beginning the answer
        if gone is not None:
            gone.add_done_callback(left)
        try:
            await self.app(scope, receive, responder)
        except asyncio.CancelledError:
            if not stopped or task.uncancel() > 0:    # cancelled from outside too (server shutdown)
                raise
            if stopped[0] == "left":
                return None
            return await reply(send, 504, "server", f"not answered within {self.limits.timeout_s:g} s (timeout_s; "
                               "server overloaded); retry", self.limits.retry_after_s)
        except Exception as exc:                      # noqa: BLE001 - answered here unless the answer has begun
            if responder.begun:
                raise
            log.error("%s %s failed without an answer", scope["method"], scope["path"], exc_info=exc)
            return await reply(send, 500, "server", "the server failed to answer this request (logged)")
        finally:
            timer.cancel()
            if gone is not None:
                gone.remove_done_callback(left)
        if stopped:                                   # the app swallowed the cancellation: take it back
            task.uncancel()

    async def _own_page(self, scope, send) -> None:
        """``/``: a redirect to the project's page (BentoML's index loads a tag-manager script from the internet);
        ``/docs.json``: the API contract as this server enforces it (serving/contract.py)."""
        if scope["path"] == "/":
            await send({"type": "http.response.start", "status": 307,
                        "headers": [(b"location", b"/ui"), (b"content-length", b"0")]})
            return await send({"type": "http.response.body", "body": b""})
        body = json.dumps(self.openapi()).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body if scope["method"] == "GET" else b""})


async def _read(receive, limit: int) -> bytes | None:
    """The whole request body (413 past ``limit`` bytes), or None when the client disconnects first."""
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > limit:
            raise Refused(413, "body", f"request body over {limit} bytes", close=True)
        more = message.get("more_body", False)
    return b"".join(chunks)


def _check_fields(body: bytes, allowed: set[str]) -> None:
    """400 for top-level keys of a JSON object body that the endpoint does not take, or JSON nested too deeply
    (malformed JSON passes: the app's parser names the error)."""
    try:
        parsed = json.loads(body)
    except RecursionError:
        raise Refused(400, "body", "JSON nested too deeply") from None
    except ValueError:
        return
    unknown = sorted(set(parsed) - allowed) if isinstance(parsed, dict) else []
    if unknown:
        raise Refused(400, unknown[0][:100], f"unknown field {unknown[0][:100]!r}; fields: {', '.join(sorted(allowed))}")


async def _disconnected(receive) -> None:
    """Returns when the client disconnects (after the body was read, ``receive`` has nothing else to say)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _replay(body: bytes, gone: asyncio.Future):
    """A ``receive`` for the app: the body already read, then (like the server's) a disconnect once it happens."""
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.shield(gone)
        return {"type": "http.disconnect"}

    return receive


class _Responder:
    """The app's ``send``: notes when the answer begins (``begun``, and calls ``on_begin`` once); holds an error answer
    (status >= 400) until its body is complete, then sends it in the one error shape with the app's other headers
    (Retry-After included)."""

    def __init__(self, send, on_begin):
        self.send, self.begun, self.on_begin = send, False, on_begin
        self.held: dict | None = None
        self.body = b""

    async def __call__(self, message) -> None:
        if message["type"] == "http.response.start":
            if not self.begun:
                self.begun = True
                self.on_begin()
            if message["status"] < 400:
                return await self.send(message)
            self.held = message
            return None
        if self.held is None or message["type"] != "http.response.body":
            return await self.send(message)
        self.body += message.get("body", b"")
        if message.get("more_body", False):
            return None
        body = json.dumps(one_shape(self.held["status"], self.body)).encode()
        kept = [(k, v) for k, v in self.held["headers"] if k.lower() not in (b"content-type", b"content-length")]
        await self.send({**self.held, "headers": kept + error_head(self.held["status"], body)})
        await self.send({"type": "http.response.body", "body": body})


def one_shape(status: int, raw: bytes) -> dict:
    """An error body as {"error", "field"}: ours pass as they are; pydantic's errors (BentoML's
    ``{"error", "detail": [{"loc", "msg"}]}``) name the first error's location; anything else keeps its message."""
    try:
        data = json.loads(raw)
    except ValueError:
        data = raw.decode("utf-8", "replace").strip()
    if isinstance(data, list) and len(data) == 1:                    # BentoML answers some errors as [{"error"}]
        data = data[0]
    if isinstance(data, dict) and set(data) == {"error", "field"}:
        return data
    detail = data.get("detail") if isinstance(data, dict) else None
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        field = ".".join(str(x) for x in detail[0].get("loc", ())) or "body"
        return {"error": f"{field}: {detail[0].get('msg', 'invalid value')}", "field": field}
    message = data.get("error") if isinstance(data, dict) else data
    default = "server" if status >= 500 else "body"
    return {"error": str(message or HTTPStatus(status).phrase), "field": FIELD_OF_STATUS.get(status, default)}


def raw_error(status: int, field: str, message: str) -> bytes:
    """A whole HTTP/1.1 error answer that closes the connection, for the protocol layer (no ASGI there)."""
    body = json.dumps({"error": message, "field": field}).encode()
    head = b"".join(k + b": " + v + b"\r\n" for k, v in error_head(status, body, close=True))
    return b"HTTP/1.1 %d %s\r\n%s\r\n%s" % (status, HTTPStatus(status).phrase.encode(), head, body)


class _HeaderDeadline:
    """Mixin over uvicorn's HTTP protocol: request headers must all arrive within ``header_deadline_s`` of the
    connection opening, or of the first byte of a next request on a kept-alive connection (an idle kept-alive
    connection is uvicorn's own timeout_keep_alive's business)."""

    header_deadline_s = 10.0

    def connection_made(self, transport) -> None:
        self._deadline, self._partial = None, False
        super().connection_made(transport)
        self.app = _text_headers_only(self.app)       # this connection's requests, before any middleware
        self._arm()

    def data_received(self, data: bytes) -> None:
        self._partial = True
        super().data_received(data)
        if not self._awaiting_headers():
            self._disarm()
        elif self._deadline is None and not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self, *args) -> None:
        self._disarm()                               # the connection now belongs to the WebSocket protocol
        super().handle_websocket_upgrade(*args)

    def send_400_response(self, msg: str) -> None:
        """HTTP the server cannot parse (bad request line or headers, headers over h11_max_incomplete_event_size)."""
        self.transport.write(raw_error(400, "headers", f"{msg.rstrip('.')}: the request line or headers are not "
                                                       "valid HTTP/1.1"))
        self.transport.close()

    def _awaiting_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(self.header_deadline_s, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._partial = None, False

    def _expire(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or not self._awaiting_headers():
            return
        if self._partial:
            self.transport.write(raw_error(408, "headers", "the request headers did not arrive within "
                                                           f"{self.header_deadline_s:g} s (read_timeout_s)"))
        self.transport.close()


def _text_headers_only(app):
    """Refuse a request whose header values are not UTF-8 text before BentoML's middleware sees it: its
    OpenTelemetry instrumentation decodes User-Agent and other headers and raises on some byte strings (e.g.
    ``\\x80\\\\``: not UTF-8, and not a valid ``unicode_escape`` either), which became a plain-text 500.
    It also puts the server's own ``receive`` in the scope (TRANSPORT_RECEIVE) for the guard's disconnect watch."""
    async def checked(scope, receive, send):
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                try:
                    value.decode("utf-8")
                except UnicodeDecodeError:
                    if name == b"content-type":
                        return await reply(send, 415, "content-type", "send the request as application/json, not "
                                           f"{value.decode('latin-1')!r}")
                    return await reply(send, 400, "headers", f"header {name.decode('latin-1')!r}: the value is not "
                                       "UTF-8 text")
            scope[TRANSPORT_RECEIVE] = receive
        return await app(scope, receive, send)
    return checked


def install_header_deadline(seconds: float) -> None:
    """Make the HTTP protocol uvicorn's "auto" setting picks (looked up when the server starts, after the service
    module is imported) enforce ``_HeaderDeadline`` with ``seconds``."""
    from uvicorn.protocols.http import auto

    base = auto.AutoHTTPProtocol
    if issubclass(base, _HeaderDeadline):
        base.header_deadline_s = seconds
        return
    auto.AutoHTTPProtocol = type(f"HeaderDeadline{base.__name__}", (_HeaderDeadline, base),
                                 {"header_deadline_s": seconds})
