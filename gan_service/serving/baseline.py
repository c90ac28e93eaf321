"""A do-nothing BentoML service with /generate's request and response shape: the framework's own ceiling.

``gan bench http`` serves it beside the project (``bentoml serve service.baseline:Baseline``) and
loads both the same way; the project's numbers are read as a fraction of this one's. It validates the
same JSON fields and answers a fixed body: a 28x28 grey PNG for n = 1, an NPY of n such images else.
"""
from __future__ import annotations

import io
from functools import lru_cache
from typing import Annotated, Literal

import bentoml
import numpy as np
from annotated_types import Ge, Le
from PIL import Image
from pydantic import StrictBool, StrictInt, StrictStr
from starlette.responses import Response


@lru_cache(maxsize=None)
def fixed_body(n: int, fmt: str) -> tuple[bytes, str]:
    """The same bytes every time for (n, format): noise, so the PNG is about as large as a generated one."""
    images = np.random.default_rng(0).integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
    if fmt == "npy":
        buf = io.BytesIO()
        np.save(buf, images, allow_pickle=False)
        return buf.getvalue(), "application/x-npy"
    buf = io.BytesIO()
    Image.fromarray(images[0, :, :, 0]).save(buf, format="PNG")
    return buf.getvalue(), "image/png"


@bentoml.service(name="gan-baseline", workers=1, traffic={"timeout": 30, "max_concurrency": 64})
class Baseline:
    @bentoml.api(route="/generate")
    async def generate(self, n: Annotated[StrictInt, Ge(1), Le(64)] = 1, model: StrictStr | None = None,
                       seed: Annotated[StrictInt, Ge(0)] | None = None,
                       format: Literal["png", "jpeg", "webp", "npy", "zip"] = "png",
                       grid: StrictBool = False) -> bytes:
        body, media = fixed_body(n, "npy" if format == "npy" else "png")
        return Response(body, media_type=media, headers={"X-Seed": str(seed)})
