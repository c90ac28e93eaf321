"""Sample-quality evaluation (``gan evaluate``): numpy + onnxruntime + Pillow, no torch.

- ``evaluation.evaluate``: the entry point ``evaluate(source, n, out, ...)`` and ``EvaluationError``
- ``evaluation.metrics``: FD (from core.frechet), KID, precision/recall, coverage, Parzen window, nearest neighbours
- ``evaluation.features``: the project's Fashion-MNIST classifier (models/eval) and optional Inception-v3 ONNX
- ``evaluation.sources``: model directories / BentoML tags / sampler outputs / image folders; IDX reader
- ``evaluation.report``: Markdown report and Pillow plots
"""
from evaluation.sources import EvaluationError

__all__ = ["EvaluationError"]
