"""Real responses checked against the served /docs.json (a property test over the documented request schema).

For each JSON endpoint, requests are drawn from the document itself: every field at its documented
bounds, just past them, of the wrong type, or left out. Each response must carry a documented
status and media type; an error must match the documented error schema; a value the document
forbids must be refused with 400 naming that field. (schemathesis does this generically; this is
the same idea in ~100 lines, without the dependency.)
"""
from __future__ import annotations

import random

import httpx
import pytest

CASES = 60
CROSS_FIELD_RULES = {"grid", "labels", "label"}     # n > 1 needs grid for one-image formats; labels need a class


@pytest.fixture(scope="module")
def doc(server):
    r = httpx.get(server.url + "/docs.json")
    assert r.status_code == 200
    return r.json()


def resolve(doc: dict, schema: dict) -> dict:
    while "$ref" in schema:
        node = doc
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def valid(schema: dict, value) -> bool:
    """The subset of JSON Schema the document uses: anyOf, enum, type, bounds, array length."""
    if "anyOf" in schema:
        return any(valid(s, value) for s in schema["anyOf"])
    if "enum" in schema:
        return value in schema["enum"] and type(value) is type(schema["enum"][0])
    kind = schema.get("type")
    types = {"integer": (int,), "number": (int, float), "string": (str,), "boolean": (bool,), "array": (list,),
             "null": (type(None),)}
    if kind in types and (not isinstance(value, types[kind]) or (kind != "boolean" and isinstance(value, bool))):
        return False
    if kind in ("integer", "number"):
        return (value >= schema.get("minimum", value) and value <= schema.get("maximum", value)
                and ("exclusiveMinimum" not in schema or value > schema["exclusiveMinimum"]))
    if kind == "array":
        return (schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value))
                and all(valid(schema.get("items", {}), v) for v in value))
    return True


def candidates(schema: dict) -> list:
    """Values at a schema's bounds, just past them, and of the wrong type."""
    if "anyOf" in schema:
        return [v for s in schema["anyOf"] for v in candidates(s)]
    kind = schema.get("type")
    if "enum" in schema:
        return list(schema["enum"]) + ["bmp", 3]
    if kind == "integer":
        lo, hi = schema.get("minimum", -5), schema.get("maximum", 10**6)
        return [lo, hi, lo - 1, hi + 1, 0, 3, 5, "7", 2.5]
    if kind == "number":
        lo = schema.get("exclusiveMinimum", schema.get("minimum", -1.0))
        hi = schema.get("maximum", 2.0)
        return [lo, lo + 1e-6, 0.5, hi, hi + 0.01, "x"]
    if kind == "string":
        return ["tiny-cdc", "tiny-dc", "Bag", "", "3", 5]
    if kind == "boolean":
        return [True, False, "yes"]
    if kind == "array":
        items = [v for v in candidates(schema.get("items", {})) if not isinstance(v, list)]
        lo, hi = schema.get("minItems", 0), schema.get("maxItems", 3)
        return [[random.choice(items) for _ in range(n)] for n in sorted({lo, hi, hi + 1, 1})] + [[0] * lo]
    if kind == "null":
        return [None]
    return [1]


def check_response(doc: dict, op: dict, r: httpx.Response) -> None:
    documented = op["responses"]
    assert str(r.status_code) in documented, (r.status_code, r.text[:300])
    media = r.headers["content-type"].split(";")[0]
    assert media in documented[str(r.status_code)].get("content", {}), (r.status_code, media)
    if r.status_code >= 400:
        body, schema = r.json(), resolve(doc, documented[str(r.status_code)]["content"][media]["schema"])
        assert set(body) == set(schema["properties"]) == set(schema["required"]), body      # exactly error, field
        assert all(isinstance(body[k], str) for k in body), body
    for header in documented[str(r.status_code)].get("headers", {}):
        if header not in ("X-Labels", "X-Label") or r.status_code != 200:     # X-Label(s): conditional models only
            assert header.lower() in r.headers, (r.status_code, header)


@pytest.mark.parametrize("path", ["/generate", "/interpolate"])
def test_responses_match_the_served_document(server, doc, path):
    op = doc["paths"][path]["post"]
    schema = resolve(doc, op["requestBody"]["content"]["application/json"]["schema"])
    required = set(schema.get("required", []))
    assert op["requestBody"]["required"] == bool(required)
    rng = random.Random(13)
    random.seed(13)
    fields = {name: resolve(doc, s) for name, s in schema["properties"].items()}
    good = {name: [v for v in candidates(s) if valid(s, v)] for name, s in fields.items()}
    wrong = {name: [v for v in candidates(s) if not valid(s, v)] or good[name] for name, s in fields.items()}
    codes = []
    for _ in range(CASES):
        body, bad = {}, []
        for name, field in fields.items():
            if name in required or rng.random() < 0.4:
                body[name] = rng.choice(good[name] if rng.random() < 0.8 else wrong[name])
                if not valid(field, body[name]):
                    bad.append(name)
        r = httpx.post(server.url + path, json=body, timeout=60)
        check_response(doc, op, r)
        codes.append(r.status_code)
        if bad:
            assert r.status_code == 400 and r.json()["field"].split(".")[0] in bad, (body, r.text)
        elif r.status_code == 400:          # allowed by the schema: only a rule across fields may refuse it
            assert r.json()["field"] in CROSS_FIELD_RULES, (body, r.text)
    assert codes.count(200) >= 5 and codes.count(400) >= 5, codes


def test_document_states_the_enforced_constraints(doc):
    generate = resolve(doc, {"$ref": "#/components/schemas/generate__Input"})["properties"]
    assert generate["truncation"]["exclusiveMinimum"] == 0 and "minimum" not in generate["truncation"]
    interpolate = resolve(doc, {"$ref": "#/components/schemas/interpolate__Input"})
    assert interpolate["required"] == ["seeds"]
    indices = interpolate["properties"]["indices"]
    assert indices["maxItems"] == indices["minItems"] == 2 and indices["items"]["maximum"] == 2**63 - 1
    media = doc["paths"]["/generate"]["post"]["responses"]["200"]["content"]
    assert set(media) == {"image/png", "image/jpeg", "image/webp", "application/x-npy", "application/zip"}
    assert set(doc["paths"]["/interpolate"]["post"]["responses"]["200"]["content"]) == {"image/gif", "image/png"}
    for path in ("/generate", "/interpolate"):
        responses = doc["paths"][path]["post"]["responses"]
        for code in ("400", "404", "408", "413", "415", "429", "503", "504"):
            assert responses[code]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
            assert ("Retry-After" in responses[code].get("headers", {})) == (code in ("429", "503", "504")), code
    assert doc["components"]["schemas"]["Error"]["required"] == ["error", "field"]
    assert "X-Label" in doc["paths"]["/interpolate"]["post"]["responses"]["200"]["headers"]
