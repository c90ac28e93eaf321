"""The model runtime: loads and warms the onnxruntime engines, renders rows, keeps batch statistics.

It takes work as *rows* (model, seed, index, label, truncation) rather than latents, and makes
the latents itself with ``serving.latents``: an image is then a pure function of its row, however
the micro-batcher (serving/batcher.py) groups requests from different clients into one
``render_requests`` call (latents made for all its requests in one vectorised pass, request by request when
that fails, so a request that cannot be prepared fails alone; then one engine call per model). An
``Interpolation`` (frames between two latents) is one more kind of request in the same calls. The sampler calls
``render`` directly, shard by shard.
"""
from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from gan_service.core.onnx_runtime import CUDA
from gan_service.serving.engine import Engine, EngineOptions
from gan_service.serving.latents import latents, latents_and_labels_of_spans, latents_of_spans
from gan_service.serving.modeldir import ModelDir, ModelDirError, load_model_dir
from gan_service.serving.settings import ServeSettings

log = logging.getLogger("gan.runtime")

# Row layout: int64 [N, 5], one row per image.
COL_MODEL, COL_SEED, COL_INDEX, COL_LABEL, COL_PSI = range(5)
RANDOM_LABEL = -1


def make_rows(model_id: int, seed: int, indices, labels, truncation: float) -> np.ndarray:
    """int64 [n, 5] rows; labels [n] (RANDOM_LABEL = derive from (seed, index)); psi kept bit-exact."""
    n = len(indices)
    rows = np.empty((n, 5), dtype=np.int64)
    rows[:, COL_MODEL], rows[:, COL_SEED], rows[:, COL_INDEX] = model_id, seed, indices
    rows[:, COL_LABEL] = labels
    rows[:, COL_PSI] = np.float64(truncation).view(np.int64)
    return rows


@dataclass
class BatchStats:
    """How the micro-batcher grouped work: evidence that merging happened."""
    sizes: Counter = field(default_factory=Counter)   # rows per merged call -> number of calls
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, size: int) -> None:
        with self.lock:
            self.sizes[size] += 1

    def summary(self) -> dict:
        with self.lock:
            calls = sum(self.sizes.values())
            return {"calls": calls, "rows": sum(k * v for k, v in self.sizes.items()),
                    "max_rows": max(self.sizes, default=0), "histogram": {str(k): v for k, v in sorted(self.sizes.items())}}


class Rendered(NamedTuple):
    """One request's outcome: images uint8 [n, H, W, C] and the class each got (None for unconditional models)."""
    images: np.ndarray
    labels: np.ndarray | None


@dataclass(frozen=True)
class Interpolation:
    """A request for ``steps`` frames along the great circle between the latents (seed, index) of two ``ends``."""
    model_id: int
    ends: tuple[tuple[int, int], tuple[int, int]]
    label: int                      # the class of every frame (ignored by unconditional models)
    steps: int
    truncation: float


class ModelRuntime:
    """Loads and warms every configured model; a model that fails verification keeps the runtime not-ready."""

    def __init__(self, settings: ServeSettings, warmup: bool = True, loaded: list[ModelDir] | None = None):
        """loaded: model directories the caller has already loaded and verified (instead of settings.models); a
        graph that does not match its manifest then raises ModelDirError instead of leaving the runtime not ready."""
        self.settings = settings
        self.models: list[ModelDir] = []
        self.engines: list[Engine] = []
        self.errors: dict[str, str] = {}
        self.stats = BatchStats()
        options = EngineOptions(provider=settings.provider, require_gpu=settings.require_gpu, precision=settings.precision,
                                intra_op_threads=settings.engine_threads_resolved())
        for ref in loaded or settings.models:
            try:
                model = ref if isinstance(ref, ModelDir) else load_model_dir(settings.resolve_model(ref))
                engine = Engine(model, options)  # EngineError (e.g. require_gpu without GPU) stops start-up
            except ModelDirError as exc:
                if loaded:
                    raise
                log.error("model %s failed to load (not ready): %s", ref, exc)
                self.errors[ref] = str(exc)
                continue
            if warmup:
                engine.warmup(settings.bucket_sizes())
            log.info("model %s ready on %s (%s)%s", model.name, engine.provider, engine.model_file,
                     f", warmed batch sizes {settings.bucket_sizes()}" if warmup else "")
            self.models.append(model)
            self.engines.append(engine)

    @property
    def ready(self) -> bool:
        return bool(self.engines) and not self.errors

    def _bucket(self, n: int, engine: Engine) -> int:
        """The padded batch size: the next warmed power of two on CUDA; n itself on the CPU, where a new shape
        costs nothing and padding would only add compute (up to 2x)."""
        if not self.settings.pad_to_buckets or engine.provider != CUDA:
            return n
        return next(b for b in self.settings.bucket_sizes() if b >= n)

    def _run(self, model_id: int, z: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        """Engine calls of at most max_batch_size rows, each padded to a warmed bucket size (padding dropped)."""
        step = self.settings.max_batch_size
        if len(z) > step:
            return np.concatenate([self._run(model_id, z[i:i + step], None if labels is None else labels[i:i + step])
                                   for i in range(0, len(z), step)])
        n, engine = len(z), self.engines[model_id]
        size = self._bucket(n, engine)
        if size > n:
            z = np.concatenate([z, np.zeros((size - n, z.shape[1]), np.float32)])
            labels = None if labels is None else np.concatenate([labels, np.zeros(size - n, np.int64)])
        return engine.generate(z, labels)[:n]

    def latents_for(self, model_id: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """z [n, d] and labels [n] of rows that all belong to one model."""
        model = self.models[model_id]
        # One Philox stream per run of consecutive indices of one (seed, truncation); the maths once for all.
        spans = [(int(rows[a, COL_SEED]), int(rows[a, COL_INDEX]), b - a,
                  float(rows[a:a + 1, COL_PSI].view(np.float64)[0])) for a, b in _runs(rows)]
        if not model.num_classes:
            return latents_of_spans(spans, model.latent_dim), None
        z, derived = latents_and_labels_of_spans(spans, model.latent_dim, model.num_classes)
        labels = rows[:, COL_LABEL]
        return z, np.where(labels == RANDOM_LABEL, derived, labels)

    def render(self, rows: np.ndarray) -> np.ndarray:
        """int64 rows [N, 5] (merged from many requests) -> uint8 [N, P], P = widest model's H*W*C (zero-padded)."""
        self.stats.add(len(rows))
        width = max(int(np.prod(m.image_shape)) for m in self.models)
        out = np.zeros((len(rows), width), np.uint8)
        for model_id in np.unique(rows[:, COL_MODEL]):
            mask = rows[:, COL_MODEL] == model_id
            z, labels = self.latents_for(int(model_id), rows[mask])
            images = self._run(int(model_id), z, labels)                     # [k, H, W, C]
            out[mask, : images[0].size] = images.reshape(len(images), -1)
        return out

    def interpolation_latents(self, work: Interpolation) -> tuple[np.ndarray, np.ndarray | None]:
        """z [steps, d] and labels [steps] of an interpolation request."""
        model = self.models[work.model_id]
        za, zb = (latents(seed, index, 1, model.latent_dim, work.truncation)[0] for seed, index in work.ends)
        z = slerp(za, zb, np.linspace(0.0, 1.0, work.steps)).astype(np.float32)   # [steps, d]
        return z, np.full(work.steps, work.label, np.int64) if model.num_classes else None

    def interpolate(self, model_id: int, ends: list[tuple[int, int]], label: int, steps: int, truncation: float):
        """Frames uint8 [steps, H, W, C] along the great circle between two (seed, index) latents."""
        z, labels = self.interpolation_latents(Interpolation(model_id, tuple(map(tuple, ends)), label, steps,
                                                             truncation))
        return self._run(model_id, z, labels)

    def _model_of(self, work: np.ndarray) -> int:
        """The one loaded model a request's rows name (ValueError otherwise)."""
        model_id = int(work[0, COL_MODEL])
        if not 0 <= model_id < len(self.models) or (work[:, COL_MODEL] != model_id).any():
            raise ValueError("a request's rows must all name one loaded model")
        return model_id

    def _prepare(self, work) -> tuple[int, np.ndarray, np.ndarray | None]:
        """(model id, z, labels) of one request: rows of one model, or an Interpolation."""
        if isinstance(work, Interpolation):
            return (work.model_id, *self.interpolation_latents(work))
        model_id = self._model_of(work)
        return (model_id, *self.latents_for(model_id, work))

    def _prepare_all(self, works: list) -> list:
        """``_prepare`` of every request, or the exception it alone raised. The rows of requests that name one model
        are prepared together (one vectorised pass: per request it would cost more than the engine's own work on a
        merged batch of n=1 requests); if that fails, request by request, so only the one at fault fails."""
        prepared: list = [None] * len(works)
        together: dict[int, list[int]] = {}
        for i, work in enumerate(works):
            if isinstance(work, Interpolation):
                prepared[i] = _outcome(self._prepare, work)
                continue
            model_id = _outcome(self._model_of, work)
            if isinstance(model_id, Exception):
                prepared[i] = model_id
            else:
                together.setdefault(model_id, []).append(i)
        for model_id, members in together.items():
            try:
                z, labels = self.latents_for(model_id, np.concatenate([works[i] for i in members]))
            except Exception:                    # noqa: BLE001 - find the request at fault
                for i in members:
                    prepared[i] = _outcome(self._prepare, works[i])
                continue
            start = 0
            for i in members:
                stop = start + len(works[i])
                prepared[i] = (model_id, z[start:stop], None if labels is None else labels[start:stop])
                start = stop
        return prepared

    def render_requests(self, works: list) -> list:
        """Each request's ``Rendered`` (images and classes), or the exception it alone raised: latents are made for
        all requests at once (request by request when that fails), then one engine call per model serves all of that
        model's requests (its failure fails those)."""
        outcomes: list = [None] * len(works)
        groups: dict[int, list[tuple[int, np.ndarray, np.ndarray | None]]] = {}
        for i, prepared in enumerate(self._prepare_all(works)):
            if isinstance(prepared, Exception):  # this request's own fault, answered to it alone
                outcomes[i] = prepared
                continue
            model_id, z, labels = prepared
            groups.setdefault(model_id, []).append((i, z, labels))
        if groups:
            self.stats.add(sum(len(z) for members in groups.values() for _, z, _ in members))
        for model_id, members in groups.items():
            labels = None if members[0][2] is None else np.concatenate([m[2] for m in members])
            try:
                images = self._run(model_id, np.concatenate([m[1] for m in members]), labels)
            except Exception as exc:             # noqa: BLE001 - fails this model's requests only
                images = exc
            start = 0
            for i, z, classes in members:
                outcomes[i] = images if isinstance(images, Exception) else Rendered(images[start:start + len(z)],
                                                                                     classes)
                start += len(z)
        return outcomes

    def describe(self) -> dict:
        return {
            "ready": self.ready,
            "errors": self.errors,
            "models": [{"name": m.name, "version": m.version, "tag": m.tag,
                        "latent_dim": m.latent_dim, "num_classes": m.num_classes, "class_names": m.class_names,
                        "image_shape": list(m.image_shape), "sha256": m.sha256,
                        "provider": e.provider, "precision": e.precision, "model_file": e.model_file,
                        "manifest": public_manifest(m.manifest), "metrics": m.manifest.get("metrics", {})}
                       for m, e in zip(self.models, self.engines)],
            "batching": {"max_batch_size": self.settings.max_batch_size,
                         "max_latency_ms": self.settings.max_latency_ms,
                         "pad_to_buckets": self.settings.pad_to_buckets,
                         "buckets": self.settings.bucket_sizes(), "observed": self.stats.summary()},
        }


PRIVATE_MANIFEST_KEYS = ("source", "data", "command", "training")   # server paths, training host and command


def public_manifest(manifest: dict) -> dict:
    """The manifest as /info shows it: no server paths, no training command or host; training steps and time kept."""
    public = {k: v for k, v in manifest.items() if k not in PRIVATE_MANIFEST_KEYS}
    training = manifest.get("training") or {}
    public["training"] = {k: training[k] for k in ("steps", "wall_time_s") if k in training}
    return public


def _outcome(fn, *args):
    """fn(*args), or the exception it raised."""
    try:
        return fn(*args)
    except Exception as exc:                     # noqa: BLE001 - returned to the caller as this request's outcome
        return exc


def _runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """[(start, stop), ...] spans of rows with one seed and truncation and indices increasing by one."""
    if not len(rows):
        return []
    new = np.ones(len(rows), bool)
    new[1:] = ((rows[1:, COL_SEED] != rows[:-1, COL_SEED]) | (rows[1:, COL_PSI] != rows[:-1, COL_PSI])
               | (rows[1:, COL_INDEX] != rows[:-1, COL_INDEX] + 1))
    starts = np.flatnonzero(new).tolist()
    return list(zip(starts, starts[1:] + [len(rows)]))


def slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Spherical interpolation [len(t), d] between vectors a and b (linear when they are parallel)."""
    a64, b64, t = a.astype(np.float64), b.astype(np.float64), t[:, None]
    cos = np.dot(a64, b64) / (np.linalg.norm(a64) * np.linalg.norm(b64))
    omega = np.arccos(np.clip(cos, -1.0, 1.0))
    if omega < 1e-6:
        return (1 - t) * a64 + t * b64
    return (np.sin((1 - t) * omega) * a64 + np.sin(t * omega) * b64) / np.sin(omega)
