"""The OpenAPI document served at /docs.json: BentoML's generated one, corrected to what the server does.

BentoML documents ``-> bytes`` as ``text/plain``, only 400/404/500 as errors, and a request schema
that drops the ``anyOf`` of optional fields. Here each JSON endpoint gets: its request schema by
reference (body optional: empty means all defaults), the media types it answers, the headers it
sets, and every status it returns with the one error body ``{"error": ..., "field": ...}``.
"""
from __future__ import annotations

import copy

from gan_service.serving.codecs import MEDIA_TYPES

ERROR_SCHEMA = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "string", "description": "what is wrong, in one sentence"},
                   "field": {"type": "string", "description": "the request field (or content-type / body / "
                                                               "model) at fault, when there is one"}},
}
ERRORS = {
    "400": "a field is invalid (named in `field`), the body is not JSON, or it is nested too deeply",
    "404": "unknown model (`field`: model)",
    "413": "request body larger than max_body_bytes",
    "415": "Content-Type is not application/json",
    "429": "more than max_concurrency requests in flight; retry later",
    "503": "models not ready (`field`: model), or the request waited past the batching budget max_latency_ms",
    "504": "not answered within timeout_s",
}
ENDPOINTS = {
    "/generate": {"media": ("png", "jpeg", "webp", "npy", "zip"),
                  "headers": {"X-Seed": "the seed used (random when none was given)", "X-Model": "the model's name",
                              "X-Labels": "conditional models: the class of each image, comma-separated"}},
    "/interpolate": {"media": ("gif", "png"),                   # seeds is required
                     "headers": {"X-Seeds": "the two seeds", "X-Model": "the model's name"}},
}


def _binary(keys) -> dict:
    return {MEDIA_TYPES[k]: {"schema": {"type": "string", "format": "binary"}} for k in keys}


def _error_response(text: str) -> dict:
    return {"description": text, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


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
                           **{code: _error_response(text) for code, text in ERRORS.items()}}
    return doc
