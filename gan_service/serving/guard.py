"""ASGI middleware for the JSON endpoints: content type and body size are checked before BentoML parses."""
from __future__ import annotations

import json


async def _reply(send, status: int, field: str, message: str) -> None:
    body = json.dumps({"error": message, "field": field}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """Front door of the JSON endpoints, so every rejection is ``{"error": ..., "field": ...}``:

    415 unless the body is JSON; 413 past max_body_bytes (declared or actually streamed); 400 for a
    field the endpoint does not have (pydantic would silently drop it); and BentoML's own 400 for a
    schema violation gets a ``field`` taken from the first error's location.
    """

    def __init__(self, app, max_body_bytes: int, fields: dict[str, set[str]], openapi=None):
        self.app, self.max_body_bytes, self.fields, self.openapi = app, max_body_bytes, fields, openapi

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD") and scope["path"] in ("/", "/docs.json"):
            return await self._own_page(scope, send)
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.fields:
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        ctypes = [v for k, v in scope["headers"] if k.lower() == b"content-type"]
        if len(ctypes) > 1:
            return await _reply(send, 400, "content-type", "send one Content-Type header, not several")
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if ctype != b"application/json":
            return await _reply(send, 415, "content-type",
                                f"send the request as application/json, not {ctype.decode() or 'nothing'}")
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            return await _reply(send, 413, "body", f"request body over {self.max_body_bytes} bytes")
        # Read the (bounded) body here, then replay it to the app.
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                return await _reply(send, 413, "body", f"request body over {self.max_body_bytes} bytes")
            more = message.get("more_body", False)
        body, sent = b"".join(chunks) or b"{}", False          # an empty body means all defaults
        try:
            unknown = _unknown_fields(body, self.fields[scope["path"]])
        except RecursionError:
            return await _reply(send, 400, "body", "JSON nested too deeply")
        if unknown:
            return await _reply(send, 400, unknown[0], f"unknown field {unknown[0]!r}; "
                                                       f"fields: {', '.join(sorted(self.fields[scope['path']]))}")

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, _name_the_field(send))


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


def _unknown_fields(body: bytes, allowed: set[str]) -> list[str]:
    """Top-level keys of a JSON object body that the endpoint does not take (malformed JSON: none here)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return []
    return sorted(set(parsed) - allowed) if isinstance(parsed, dict) else []


def _name_the_field(send):
    """Wrap ``send`` so a pydantic 400 body ``{"error", "detail": [{"loc": [...]}]}`` also gets ``field``."""
    state = {"status": 200, "start": None}

    async def wrapped(message):
        if message["type"] == "http.response.start":
            state["status"], state["start"] = message["status"], message
            if message["status"] != 400:
                await send(message)
            return
        if state["status"] != 400 or message["type"] != "http.response.body":
            return await send(message)
        body = message.get("body", b"")
        try:
            data = json.loads(body)
            first = data["detail"][0] if isinstance(data, dict) and data.get("detail") else None
            if first is not None and "field" not in data:
                data["field"] = ".".join(str(x) for x in first["loc"]) or "body"
                data["error"] = f"{data['field']}: {first['msg']}"
                body = json.dumps(data).encode()
        except (ValueError, KeyError, IndexError, TypeError):
            pass
        headers = [(k, v) for k, v in state["start"]["headers"] if k.lower() != b"content-length"]
        await send({**state["start"], "headers": headers + [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return wrapped
