"""The BentoML service ``GAN``: the public HTTP API, the onnxruntime engines and the micro-batcher in one worker.

    bentoml serve gan_service.serving.app:GAN        (or: gan serve)

A request is validated, turned into rows (model, seed, index, label, truncation) or an interpolation,
queued on the in-process micro-batcher (serving/batcher.py), which merges the requests of many clients
into one engine call in one engine thread, and the images are encoded in the same worker. In front:
serving/guard.py (transport limits, 408/413/415/429/504, the one error shape). Settings:
serving/settings.py (GAN_* env vars or --arg). Why one service and not a front + a batchable runtime:
docs/design.md, "Serving".
"""
from __future__ import annotations

import asyncio
import functools
import gc
import inspect
import logging
import math
import os
import secrets
from pathlib import Path
from typing import Annotated, Literal, Union

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")     # no usage tracking unless a user turns it back on

import bentoml  # noqa: E402
import numpy as np
from annotated_types import Ge, Gt, Le, MaxLen, MinLen
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import StrictBool, StrictInt, StrictStr
from starlette.responses import Response

from gan_service.serving.batcher import MicroBatcher, Overloaded
from gan_service.serving.contract import honest_openapi
from gan_service.serving.codecs import encode_batch, encode_gif, encode_strip
from gan_service.serving.guard import Limits, RequestGuard, install_header_deadline
from gan_service.serving.latents import MAX_INDEX, MAX_SEED, random_labels
from gan_service.serving.modeldir import LabelError
from gan_service.serving.runtime import RANDOM_LABEL, Interpolation, ModelRuntime, Rendered, make_rows
from gan_service.serving.settings import load_settings

log = logging.getLogger("bentoml.gan")     # under "bentoml": BentoML's log configuration shows its INFO lines
SETTINGS = load_settings(vars(bentoml.use_arguments()))
WEB_PAGE = Path(__file__).with_name("web") / "index.html"
INLINE_ENCODE_PIXELS = 65536     # smaller answers are encoded on the event loop (a thread hop costs more)
NOT_READY_RETRY_S = 60           # Retry-After of "models not ready": a model that failed to load needs a restart
BACKSTOP_S = 10                  # BentoML's own timeout, past the guard's timeout_s: only if the guard cannot answer

IMAGES_GENERATED = bentoml.metrics.Counter(
    name="gan_images_generated", documentation="images returned by /generate and /interpolate",
    labelnames=["model"])
RUNTIME_BATCH_ROWS = bentoml.metrics.Histogram(
    name="gan_runtime_batch_rows", documentation="rows per merged engine call (micro-batching)",
    buckets=SETTINGS.bucket_sizes())


@functools.cache                       # one per loaded model: labels() looks the child up anew on every call
def _images_generated(model: str):
    return IMAGES_GENERATED.labels(model=model)


Label = Union[StrictInt, StrictStr]
Seed = Annotated[StrictInt, Ge(0), Le(MAX_SEED)]


GC_YOUNG_THRESHOLD = 20_000     # container allocations between young collections (CPython's default: 700)


def settle_gc() -> tuple[int, int]:
    """Once the models are loaded: freeze every object alive now (modules, engines, the app) so that no collection
    walks them again, and collect the young generation every GC_YOUNG_THRESHOLD allocations. Requests waiting for
    the engine keep their objects alive through young collections, which then walk and promote them again and
    again: with CPython's defaults this cost an n=1 request ~0.25 ms of the event loop (wrk, c=64: ~440 -> ~500 req/s
    with this; docs/benchmarks.md). Cyclic garbage still goes, a little later. Returns (frozen, threshold)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    return gc.get_freeze_count(), GC_YOUNG_THRESHOLD


class RequestError(Exception):
    """A request field that is valid JSON but not acceptable here (4xx naming the field), or a 503 with Retry-After."""

    def __init__(self, field: str, message: str, status: int = 400, retry_after_s: int | None = None):
        super().__init__(message)
        self.field, self.status, self.retry_after_s = field, status, retry_after_s


def _error(exc: RequestError) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
    return JSONResponse({"error": str(exc), "field": exc.field}, status_code=exc.status, headers=headers)


# No FastAPI /docs or /redoc: they load Swagger UI / ReDoc from a CDN (the API contract is /docs.json).
web = FastAPI(title="GAN web page and info", docs_url=None, redoc_url=None, openapi_url=None)


# max_concurrency and timeout_s are enforced by serving/guard.py (its 429/504 carry Retry-After and the error shape).
# The access log leaves out the request's Content-Type: BentoML's access logger decodes it as UTF-8 and, on other
# bytes, raised before the answer was sent (the client waited for timeout_s, then got a plain-text 500).
@bentoml.service(name="gan", workers=SETTINGS.workers, traffic={"timeout": SETTINGS.timeout_s + BACKSTOP_S},
                 logging={"access": {"request_content_type": False}})
@bentoml.asgi_app(web, path="/")
class GAN:
    def __init__(self) -> None:
        self.runtime = ModelRuntime(SETTINGS)
        self._described: list[dict] | None = None
        for model, engine in zip(self.runtime.models, self.runtime.engines):
            log.info("model %s runs on %s, precision %s (%s)%s", model.name, engine.provider, engine.precision,
                     engine.model_file, f"; on the CPU because {engine.why}" if engine.why else "")
        self.batcher = MicroBatcher(self._render_requests, SETTINGS.max_batch_size, SETTINGS.max_latency_ms,
                                    merge=SETTINGS.batching, stall_s=SETTINGS.engine_stall_s)
        log.info("garbage collector: froze %d start-up objects; young generation collected every %d allocations",
                 *settle_gc())

    async def __is_ready__(self) -> bool:
        """/readyz: every model loaded, and no engine call running past engine_stall_s."""
        return self.runtime.ready and not self.batcher.stalled

    def _render_requests(self, works: list) -> list:
        """One merged engine call (runs in the batcher's engine thread): each request's images or its error."""
        RUNTIME_BATCH_ROWS.observe(sum(len(w) if isinstance(w, np.ndarray) else w.steps for w in works))
        return self.runtime.render_requests(works)

    def _models(self) -> list[dict]:
        """Model descriptions, or a 503 naming every model that failed to load."""
        if not self.runtime.ready:
            failed = "; ".join(f"{ref}: {err}" for ref, err in self.runtime.errors.items())
            raise RequestError("model", f"models are not ready: {failed or 'no model loaded'}", 503,
                               NOT_READY_RETRY_S)
        if self._described is None:                     # the models do not change after start-up
            self._described = self.runtime.describe()["models"]
        return self._described

    def _pick(self, name: str | None) -> tuple[int, dict]:
        models = self._models()
        if name is None:
            return 0, models[0]
        for i, m in enumerate(models):
            if name in (m["name"], m["tag"]):
                return i, m
        raise RequestError("model", f"unknown model {name!r}; available: {', '.join(m['name'] for m in models)}", 404)

    def _labels(self, model_id: int, model: dict, labels, n: int) -> list[int]:
        """Class ids for n images: RANDOM_LABEL each when none were given; one label applies to all."""
        if labels is None:
            return [RANDOM_LABEL] * n
        if not model["num_classes"]:
            raise RequestError("labels", f"model {model['name']!r} is unconditional: it takes no labels")
        given = labels if isinstance(labels, list) else [labels]
        if len(given) not in (1, n):
            raise RequestError("labels", f"give one label or n = {n} labels, not {len(given)}")
        ids = [self._label_id(model_id, "labels", label) for label in given]
        return ids * n if len(ids) == 1 else ids

    def _label_id(self, model_id: int, field: str, label) -> int:
        """A class id, decimal string or class name -> class id (serving.modeldir's one resolver), or a 400."""
        try:
            return self.runtime.models[model_id].label_index(label)
        except LabelError as exc:
            raise RequestError(field, str(exc)) from None

    async def _submit(self, work, size: int) -> Rendered:
        """Images uint8 [size, H, W, C] of one request and their classes, through the micro-batcher (503 when
        overloaded)."""
        try:
            return await self.batcher.submit(work, size)
        except Overloaded as exc:
            raise RequestError("server", str(exc), 503, exc.retry_after_s) from None

    @bentoml.api(route="/generate")
    async def generate(self, n: Annotated[StrictInt, Ge(1), Le(SETTINGS.max_n)] = 1, model: StrictStr | None = None,
                       seed: Seed | None = None, labels: Union[Label, list[Label], None] = None,
                       truncation: Annotated[float, Gt(0), Le(1)] = 1.0,
                       format: Literal["png", "jpeg", "webp", "npy", "zip"] = "png",
                       grid: StrictBool = False) -> bytes:
        """Generate n images. Image (seed, i) is the same bytes however requests are batched."""
        try:
            if format in ("png", "jpeg", "webp") and n > 1 and not grid:
                raise RequestError("grid", f"format {format} returns one image: set grid=true, or use zip/npy")
            model_id, info = self._pick(model)
            ids = self._labels(model_id, info, labels, n)
            seed = secrets.randbelow(MAX_SEED + 1) if seed is None else seed
            images, classes = await self._submit(make_rows(model_id, seed, np.arange(n), ids, truncation), n)
        except RequestError as exc:
            return _error(exc)
        names = [f"{info['name']}-{seed}-{i}.png" for i in range(n)]
        body, media = await _offload(images.size, encode_batch, images, format, grid, names)
        _images_generated(info["name"]).inc(n)
        headers = {"X-Seed": str(seed), "X-Model": info["name"], "Cache-Control": "no-store"}
        if classes is not None:                         # the class each image got, drawn ones included
            headers["X-Labels"] = ",".join(map(str, classes.tolist()))
        return Response(body, media_type=media, headers=headers)

    @bentoml.api(route="/interpolate")
    async def interpolate(self, seeds: Annotated[list[Seed], MinLen(2), MaxLen(2)],
                          indices: Annotated[list[Annotated[StrictInt, Ge(0), Le(MAX_INDEX)]], MinLen(2), MaxLen(2)]
                          = [0, 0],
                          model: StrictStr | None = None, label: Label | None = None,
                          steps: Annotated[StrictInt, Ge(2), Le(SETTINGS.max_steps)] = 16,
                          truncation: Annotated[float, Gt(0), Le(1)] = 1.0,
                          format: Literal["gif", "png"] = "gif") -> bytes:
        """Frames along the spherical path between latents (seeds[0], indices[0]) and (seeds[1], indices[1])."""
        try:
            model_id, info = self._pick(model)
            label_id = self._path_label(model_id, info, label, seeds[0], indices[0])
            ends = ((seeds[0], indices[0]), (seeds[1], indices[1]))
            frames, _ = await self._submit(Interpolation(model_id, ends, label_id, steps, truncation), steps)
        except RequestError as exc:
            return _error(exc)
        body = await _offload(frames.size, encode_gif if format == "gif" else encode_strip, frames)
        _images_generated(info["name"]).inc(steps)
        headers = {"X-Seeds": f"{seeds[0]},{seeds[1]}", "X-Model": info["name"], "Cache-Control": "no-store"}
        if info["num_classes"]:
            headers["X-Label"] = str(label_id)
        return Response(body, media_type="image/gif" if format == "gif" else "image/png", headers=headers)

    def _path_label(self, model_id: int, info: dict, label, seed: int, index: int) -> int:
        """The class of every frame: the one given, else the class image (seed, index) gets on /generate."""
        if label is not None and not info["num_classes"]:
            raise RequestError("label", f"model {info['name']!r} is unconditional: it takes no label")
        if label is not None:
            return self._label_id(model_id, "label", label)
        if not info["num_classes"]:
            return 0
        return int(random_labels(seed, index, 1, info["latent_dim"], info["num_classes"])[0])

    @web.get("/info")
    async def info(self):
        """Models, their manifests and metrics, provider in use, batching limits and observed batch sizes."""
        described = self.runtime.describe()
        described["batching"].update(queued=self.batcher.queued(), engine_busy_s=round(self.batcher.busy_s(), 3),
                                     stalled=self.batcher.stalled)
        return {**described, "limits": {k: getattr(SETTINGS, k) for k in (
            "max_n", "max_steps", "max_concurrency", "timeout_s", "read_timeout_s", "engine_stall_s",
            "max_body_bytes")}}

    @web.get("/ui", response_class=HTMLResponse)
    def page(self):
        return HTMLResponse(WEB_PAGE.read_text())


async def _offload(pixels: int, fn, *args):
    """Run a CPU-bound encoder: inline when the answer is small, else in a thread so the loop keeps serving."""
    return fn(*args) if pixels <= INLINE_ENCODE_PIXELS else await asyncio.to_thread(fn, *args)


def _params(api) -> set[str]:
    """The JSON fields a BentoML API method takes (its input model's fields)."""
    return set(api.input_spec.model_fields)


class ClientErrorsOnOneLine(logging.Filter):
    """BentoML logs each rejected request (a client's 4xx) as an ERROR with a traceback: make it one WARNING line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        code = getattr(getattr(exc, "error_code", None), "value", None)
        if exc is not None and (type(exc).__name__ == "ValidationError" or (code is not None and code < 500)):
            record.msg, record.args = "client error on %s: %s", (record.args[0] if record.args else "?",
                                                                  " ".join(str(exc).split())[:300])
            record.exc_info, record.exc_text, record.levelno, record.levelname = None, None, logging.WARNING, "WARNING"
        return True


def _keep_signatures(*apis) -> None:
    """Store each API function's signature on it: BentoML's APIMethod.__get__ runs inspect.signature on every request,
    and inspect returns a stored ``__signature__`` as it is instead of rebuilding it (~65 us of the event loop per
    request for /generate's eight parameters on this machine)."""
    for api in apis:
        api.func.__signature__ = inspect.signature(api.func)


_keep_signatures(GAN.inner.generate, GAN.inner.interpolate)
logging.getLogger("bentoml._internal.server.http_app").addFilter(ClientErrorsOnOneLine())
GAN.add_asgi_middleware(RequestGuard, limits=Limits(
    max_body_bytes=SETTINGS.max_body_bytes, max_concurrency=math.ceil(SETTINGS.max_concurrency / SETTINGS.workers),
    timeout_s=SETTINGS.timeout_s, read_timeout_s=SETTINGS.read_timeout_s,
    retry_after_s=max(1, math.ceil(SETTINGS.max_latency_ms / 1000))),
    fields={"/generate": _params(GAN.inner.generate), "/interpolate": _params(GAN.inner.interpolate)},
    openapi=functools.cache(lambda: honest_openapi(GAN.openapi_spec.asdict())))
install_header_deadline(SETTINGS.read_timeout_s)
