"""Sample-quality evaluation (``gan evaluate``): numpy + onnxruntime + Pillow, no torch.

- ``evaluate``: the entry point ``evaluate(source, n, out, ...)`` and ``EvaluationError``
- ``views``: the three feature views (the project's classifier, the robust classifier, pixels on principal components)
- ``metrics``: FD (from core.frechet), KID, precision/recall, coverage, Parzen window, nearest neighbours
- ``features``: the shipped Fashion-MNIST classifiers (models/eval, models/eval-robust), loaded through
  serving.modeldir's file verification, and an optional Inception-v3 ONNX
- ``sources``: model directories / BentoML tags / sampler outputs / image folders
- ``report``: Markdown report and Pillow plots
"""
from gan_service.evaluation.sources import EvaluationError

__all__ = ["EvaluationError"]
