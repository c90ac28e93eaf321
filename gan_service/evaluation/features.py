"""The evaluation feature space: the project's Fashion-MNIST classifier (``models/eval/classifier.onnx``)
through onnxruntime, and an optional user-supplied Inception-v3 (ONNX) for standard FID. No torch.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gan_service.core.paths import PACKAGE_ROOT, resolve_shipped
from gan_service.core.onnx_runtime import default_threads, ort_session
from gan_service.evaluation.sources import EvaluationError

CLASSIFIER_FILE, MANIFEST = "classifier.onnx", "manifest.json"
BATCH = 1000


def _session(path: Path):
    """A CPU session with GAN_EVAL_THREADS (else up to 4) intra-op threads."""
    return ort_session(path, "cpu", threads=default_threads("GAN_EVAL_THREADS"))


class Classifier:
    """The verified classifier: uint8 [N, 28, 28, 1] -> logits [N, 10], features [N, 128]."""

    def __init__(self, directory: str | Path = "models/eval"):
        from gan_service.serving.modeldir import ModelDirError, verify_files

        self.path = resolve_shipped(directory)
        mpath = self.path / MANIFEST
        if not mpath.is_file():
            raise EvaluationError(f"{self.path}: no evaluation classifier ({MANIFEST} missing); train one with "
                                  f"`gan evaluate --train-classifier --classifier {directory}`")
        try:
            self.manifest = json.loads(mpath.read_text(encoding="utf-8"))
            entry = self.manifest["files"][CLASSIFIER_FILE]
            self.class_names = list(self.manifest["class_names"])
            self.feature_dim = int(self.manifest["feature_dim"])
            shape = self.manifest["inputs"][0]["shape"][1:]
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise EvaluationError(f"{mpath}: not a classifier manifest ({type(exc).__name__}: {exc})") from exc
        try:                                   # the model-directory loader's own file check (size + sha256)
            verify_files(self.path, self.manifest)
        except ModelDirError as exc:
            raise EvaluationError(f"{exc} (retrain with `gan evaluate --train-classifier`)") from None
        self.sha256 = entry["sha256"]
        onnx_path = self.path / CLASSIFIER_FILE
        self.input_shape = tuple(int(s) for s in shape)           # (28, 28, 1)
        self.session = _session(onnx_path)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits [N, K], features [N, D]) in batches of 1000."""
        if len(images) == 0:
            return np.zeros((0, self.num_classes), np.float32), np.zeros((0, self.feature_dim), np.float32)
        outs = [self.session.run(["logits", "features"], {"image": np.ascontiguousarray(images[i:i + BATCH])})
                for i in range(0, len(images), BATCH)]
        return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])

    def describe(self) -> dict:
        shown = self.path.relative_to(PACKAGE_ROOT) if self.path.is_relative_to(PACKAGE_ROOT) else self.path
        return {"path": str(shown), "sha256": self.sha256, "test_accuracy": self.manifest.get("test_accuracy"),
                "feature_dim": self.feature_dim, "features": "penultimate layer (128-d, after BatchNorm + ReLU)"}


class InceptionFeatures:
    """A user-supplied Inception-v3 FID network as ONNX: float32 [N, 3, 299, 299] in [0, 1] -> pool3 [N, 2048].

    Images are upsampled 28 -> 299 (bilinear, Pillow) and the grey channel repeated three times, as the
    usual FID code does for MNIST-like data. The first output with 2048 values per image is used.
    """

    SIZE = 299

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise EvaluationError(f"--inception-weights {path}: file not found")
        if self.path.suffix.lower() != ".onnx":
            raise EvaluationError(f"--inception-weights {path}: expected an ONNX file (Inception-v3 pool3, "
                                  "input float32 [N, 3, 299, 299] in [0, 1]); see docs/quality.md for converting "
                                  "pytorch-fid's pt_inception weights")
        try:
            self.session = _session(self.path)
        except Exception as exc:   # onnxruntime raises its own exception types
            raise EvaluationError(f"--inception-weights {path}: onnxruntime cannot load it ({exc})") from exc
        self.input_name = self.session.get_inputs()[0].name
        from gan_service.serving.modeldir import file_sha256

        self.sha256 = file_sha256(self.path)

    def _prepare(self, images: np.ndarray) -> np.ndarray:
        from PIL import Image

        out = np.empty((len(images), 3, self.SIZE, self.SIZE), np.float32)
        for i, img in enumerate(images):
            big = Image.fromarray(img[..., 0]).resize((self.SIZE, self.SIZE), Image.Resampling.BILINEAR)
            out[i] = np.asarray(big, np.float32)[None] / 255.0
        return out

    def run(self, images: np.ndarray, batch: int = 50) -> np.ndarray:
        feats = []
        for i in range(0, len(images), batch):
            outs = self.session.run(None, {self.input_name: self._prepare(images[i:i + batch])})
            pool = next((o for o in outs if o.size == len(images[i:i + batch]) * 2048), None)
            if pool is None:
                raise EvaluationError(f"--inception-weights {self.path}: no output has 2048 features per image "
                                      f"(outputs: {[o.shape for o in outs]})")
            feats.append(pool.reshape(len(pool), 2048).astype(np.float64))
        return np.concatenate(feats)
