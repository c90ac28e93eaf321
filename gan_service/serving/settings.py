"""Service settings: every field documented here, with its default.

Resolution order (later wins): the defaults below, ``GAN_<FIELD>`` environment variables (handy for
``docker run -e``), then BentoML arguments (``bentoml serve ... --arg field=value``).
List fields take comma-separated values (``GAN_MODELS=models/a,models/b``).
"""
from __future__ import annotations

import os

from pydantic import BaseModel, Field, field_validator, model_validator

from gan_service.core.cpus import available_cores, default_engine_threads
from gan_service.core.onnx_runtime import PRECISIONS, PROVIDERS
from gan_service.core.paths import resolve_shipped



class ServeSettings(BaseModel):
    models: list[str] = Field(["models/fmnist-cdcgan", "models/fmnist-dcgan"],
                              description="model directories or BentoML model tags (name:version); the first is "
                                          "the default. A relative directory not found from the working directory "
                                          "is taken from the installed package's shipped models")
    provider: str = Field("auto", description="onnxruntime provider: auto (CUDA when a session really runs on "
                                              "it, else the CPU with one log line saying why), cuda or cpu")
    require_gpu: bool = Field(False, description="refuse to start without the CUDA provider")
    engine_threads: int | None = Field(None, ge=0, description="onnxruntime CPU threads per model; default: every "
                                                              "core a worker may use (available cores / workers, "
                                                              "core.cpus.default_engine_threads, measured in "
                                                              "docs/benchmarks.md); 0: onnxruntime's own choice")
    precision: str = Field("auto", description="which of a model's graphs runs: auto (fp16 on CUDA when the model "
                                               "has generator.fp16.onnx; on the CPU int8 when the model has a "
                                               "checked generator.int8.onnx and the CPU gains from it (AVX2 or "
                                               "VNNI), else fp32), or fp32 / fp16 (CUDA only) / int8 (CPU only) "
                                               "explicitly: a model without that graph is then not ready. Image "
                                               "bytes are fixed within one precision and provider, and differ "
                                               "between them")
    max_n: int = Field(64, ge=1, description="most images one /generate request may ask for")
    max_batch_size: int = Field(256, ge=1, description="micro-batching: most images per merged engine call")
    max_latency_ms: int = Field(1000, ge=1, description="micro-batching budget: a request still waiting for the "
                                                       "engine this long after it arrived gets 503")
    batching: bool = Field(True, description="merge rows of concurrent requests into one engine call (false: "
                                             "each request runs alone, for comparison)")
    pad_to_buckets: bool = Field(True, description="on CUDA, pad merged batches to power-of-two sizes so only "
                                                   "those shapes are ever run (and warmed up); the CPU runs any "
                                                   "size unpadded")
    max_concurrency: int = Field(256, ge=1, description="requests in flight before clients get 429")
    timeout_s: float = Field(30.0, gt=0, description="per-request time limit, from the request's headers to the "
                                                   "start of its answer; past it clients get 504")
    read_timeout_s: float | None = Field(None, gt=0, description="most seconds a client may take to send its request "
                                                                 "headers (from connecting, or from the first byte of "
                                                                 "a next request on a kept-alive connection) and, "
                                                                 "again, its body; past it the client gets 408 and the "
                                                                 "connection is closed. Below timeout_s; default "
                                                                 "timeout_s / 3")
    engine_stall_s: float | None = Field(None, gt=0, description="an engine call still running this long marks the "
                                                                 "server not ready (/readyz 503) and answers every "
                                                                 "waiting and new request 503 until the call "
                                                                 "returns. Below timeout_s; default timeout_s / 3")
    max_body_bytes: int = Field(65536, ge=256, description="largest accepted request body; larger gets 413")
    max_steps: int = Field(64, ge=2, description="most frames one /interpolate request may ask for")
    workers: int = Field(1, ge=1, description="worker processes; each loads every model and batches on its own")

    @field_validator("models", mode="before")
    @classmethod
    def _split(cls, v):
        return [s.strip() for s in v.split(",") if s.strip()] if isinstance(v, str) else v

    @field_validator("provider", "precision")
    @classmethod
    def _one_of(cls, v, info):
        choices = {"provider": PROVIDERS, "precision": PRECISIONS}[info.field_name]
        if v not in choices:
            raise ValueError(f"{info.field_name} must be one of {', '.join(choices)}")
        return v

    @model_validator(mode="after")
    def _limits(self):
        if not self.models:
            raise ValueError("models: at least one model is needed")
        if self.max_n > self.max_batch_size:
            raise ValueError("max_n must not exceed max_batch_size (one request is never split)")
        for name in ("read_timeout_s", "engine_stall_s"):
            if getattr(self, name) is None:
                setattr(self, name, self.timeout_s / 3)
            elif getattr(self, name) >= self.timeout_s:
                raise ValueError(f"{name} must be below timeout_s ({self.timeout_s:g})")
        return self

    def resolve_model(self, ref: str) -> str:
        """A BentoML tag (name:version) passes through; a directory follows ``core.paths.resolve_shipped``."""
        if ":" in ref and not resolve_shipped(ref).exists():
            return ref
        return str(resolve_shipped(ref))

    def engine_threads_resolved(self) -> int:
        """engine_threads, or the default rule on the cores one worker may use (available cores / workers)."""
        if self.engine_threads is not None:
            return self.engine_threads
        return default_engine_threads(max(1, available_cores() // self.workers))

    def bucket_sizes(self) -> list[int]:
        """Batch sizes the runtime may run: powers of two up to max_batch_size, and max_batch_size itself."""
        sizes, b = [], 1
        while b < self.max_batch_size:
            sizes.append(b)
            b *= 2
        return sizes + [self.max_batch_size]


def load_settings(arguments: dict | None = None, environ: dict | None = None) -> ServeSettings:
    """Defaults <- GAN_* environment variables <- BentoML arguments."""
    environ = os.environ if environ is None else environ
    values = {name: environ[f"GAN_{name.upper()}"] for name in ServeSettings.model_fields
              if f"GAN_{name.upper()}" in environ}
    values.update(arguments or {})
    return ServeSettings(**values)
