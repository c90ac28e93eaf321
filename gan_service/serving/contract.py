"""The OpenAPI document served at /docs.json: BentoML's generated one, corrected to what the server does.

BentoML documents ``-> bytes`` as ``text/plain``, only 400/404/500 as errors, and a request schema
that drops the ``anyOf`` of optional fields. Here each JSON endpoint gets: its request schema by
reference (body optional: empty means all defaults), the media types it answers, the headers it
sets, and every status it returns with the one error body ``{"error": ..., "field": ...}`` (and
``Retry-After`` on 429, 503 and 504).
"""
from __future__ import annotations

import copy

from gan_service.serving.codecs import MEDIA_TYPES

ERROR_SCHEMA = {
    "type": "object", "required": ["error", "field"], "additionalProperties": False,
    "properties": {"error": {"type": "string", "description": "what is wrong, in one sentence"},
                   "field": {"type": "string", "description": "what is at fault: a request field (dotted path for "
                                                               "a nested one), or content-type, body, headers or "
                                                               "model; server when the server is overloaded"}},
}
ERRORS = {
    "400": "a field is invalid (named in `field`), the body is not JSON, or it is nested too deeply; or the "
           "request line or headers are not valid HTTP (`field`: headers)",
    "404": "unknown model (`field`: model)",
    "408": "the request headers (`field`: headers) or body (`field`: body) did not arrive within read_timeout_s; "
           "the connection is closed",
    "413": "request body larger than max_body_bytes",
    "415": "Content-Type is not application/json",
    "429": "more than max_concurrency requests in flight (`field`: server); retry after Retry-After seconds",
    "503": "models not ready (`field`: model), or (`field`: server) the request waited past the batching budget "
           "max_latency_ms, or an engine call has run past engine_stall_s; retry after Retry-After seconds",
    "504": "not answered within timeout_s (`field`: server); retry after Retry-After seconds",
}
RETRY_AFTER = ("429", "503", "504")
ENDPOINTS = {
    "/generate": {"media": ("png", "jpeg", "webp", "npy", "zip"),
                  "headers": {"X-Seed": "the seed used (random when none was given)", "X-Model": "the model's name",
                              "X-Labels": "conditional models: the class of each image, comma-separated"}},
    "/interpolate": {"media": ("gif", "png"),                   # seeds is required
                     "headers": {"X-Seeds": "the two seeds", "X-Model": "the model's name",
                                 "X-Label": "conditional models: the class of every frame (without `label`: the "
                                            "class image (seeds[0], indices[0]) gets on /generate)"}},
}


def _binary(keys) -> dict:
    return {MEDIA_TYPES[k]: {"schema": {"type": "string", "format": "binary"}} for k in keys}


def _error_response(code: str, text: str) -> dict:
    response = {"description": text,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    if code in RETRY_AFTER:
        response["headers"] = {"Retry-After": {"description": "seconds to wait before retrying",
                                               "schema": {"type": "integer", "minimum": 1}}}
    return response


def honest_openapi(generated: dict) -> dict:
    """BentoML's OpenAPI dict -> the same with the JSON endpoints' requests and responses as served."""
    doc = copy.deepcopy(generated)
    doc.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    for path, spec in ENDPOINTS.items():
        op = doc["paths"][path]["post"]
        name = op.get("x-bentoml-name", path.strip("/"))
        op["requestBody"] = {
            "required": path == "/interpolate",
            "description": "a JSON object" + ("" if path == "/interpolate" else
                                              "; an empty body or {} means every field's default"),
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}__Input"}}}}
        headers = {h: {"description": d, "schema": {"type": "string"}} for h, d in spec["headers"].items()}
        op["responses"] = {"200": {"description": "the images", "headers": headers, "content": _binary(spec["media"])},
                           **{code: _error_response(code, text) for code, text in ERRORS.items()}}
    return doc
