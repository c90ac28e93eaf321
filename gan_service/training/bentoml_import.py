"""Importing a verified model directory into the local BentoML model store (``gan export --to-bentoml``)."""
from __future__ import annotations

import shutil
from pathlib import Path

from gan_service.serving.modeldir import MANIFEST, ModelDirError, load_model_dir
from gan_service.training.onnx_export import ExportError


def import_to_bentoml(model_dir: str | Path) -> str:
    """Copy a verified model directory into the BentoML model store under the manifest's name; return the tag."""
    import bentoml

    try:
        md = load_model_dir(model_dir)
    except ModelDirError as exc:
        raise ExportError(f"not importing into BentoML: {exc}") from exc
    m = md.manifest
    labels = {"preset": str(m.get("preset", "")), "conditional": "yes" if md.conditional else "no",
              "format": "onnx"}
    metadata = {
        "model_version": md.version, "created": m["created"], "latent_dim": md.latent_dim,
        "num_classes": md.num_classes, "class_names": list(md.class_names), "image_shape": list(md.image_shape),
        "dtype": m["dtype"], "opset": m["opset"], "step": m.get("step", 0),
        "generator_onnx_sha256": md.sha256, "fp16": md.fp16_path is not None,
        "source_checkpoint_sha256": m.get("source", {}).get("sha256", ""),
    }
    try:
        with bentoml.models.create(md.name, labels=labels, metadata=metadata) as bento_model:
            for fname in list(md.files) + [MANIFEST]:
                shutil.copy2(md.path / fname, Path(bento_model.path) / fname)
    except Exception as exc:   # invalid tag name, unwritable store, ...
        raise ExportError(f"BentoML import of {md.name!r} failed ({type(exc).__name__}: {exc})") from exc
    tag = str(bento_model.tag)
    try:
        load_model_dir(tag)                        # the stored copy verifies like the original
    except ModelDirError as exc:
        raise ExportError(f"BentoML import of {md.name!r}: the stored copy does not verify: {exc}") from exc
    return tag
