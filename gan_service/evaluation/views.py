"""The feature spaces ("views") in which ``gan evaluate`` compares samples with real images; torch-free.

One small classifier's feature space can rank generators wrongly (it may barely see artefacts that leave the
class readable), so every distribution metric is measured in several independent views:

  classifier   the 128-d penultimate layer of the project's Fashion-MNIST classifier (``models/eval``)
  robust       the same layer of a second classifier with another architecture and seed, trained on degraded
               images with a head that must regress how strong each degradation is (``models/eval-robust``): its
               features encode image quality, not only the class
  pixels_pca   raw pixels (/255) projected on the first 64 principal components of the 10,000 test images

Each view maps uint8 images [N, 28, 28, 1] to float features [N, D].
"""
from __future__ import annotations

import numpy as np

from gan_service.evaluation.features import Classifier

PCA_COMPONENTS = 64


class ClassifierView:
    """A verified ONNX classifier's feature layer."""

    def __init__(self, name: str, classifier: Classifier):
        self.name, self.classifier = name, classifier

    def features(self, images: np.ndarray) -> np.ndarray:
        return self.classifier.run(images)[1]                                     # [N, 128]

    def describe(self) -> dict:
        return {"kind": "classifier", **self.classifier.describe()}


class PixelPCAView:
    """Pixels / 255 centred on the reference mean and projected on its first ``components`` principal axes."""

    def __init__(self, reference: np.ndarray, components: int = PCA_COMPONENTS):
        x = reference.reshape(len(reference), -1).astype(np.float64) / 255.0      # [M, 784]
        self.name, self.components = "pixels_pca", components
        self.mean = x.mean(axis=0)                                                # [784]
        # principal axes from the SVD of the centred reference; rows of vt are unit axes, largest variance first
        _, s, vt = np.linalg.svd(x - self.mean, full_matrices=False)
        self.axes = vt[:components]                                               # [components, 784]
        self.explained = float((s[:components] ** 2).sum() / (s ** 2).sum())

    def features(self, images: np.ndarray) -> np.ndarray:
        x = images.reshape(len(images), -1).astype(np.float64) / 255.0            # [N, 784]
        return (x - self.mean) @ self.axes.T                                      # [N, components]

    def describe(self) -> dict:
        return {"kind": "pixels_pca", "components": self.components, "feature_dim": self.components,
                "explained_variance": round(self.explained, 4),
                "features": f"pixels/255 on the first {self.components} principal components of the test images"}
