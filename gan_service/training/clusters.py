"""Self-conditioning labels: k-means clusters of the training images, used in place of class labels.

A self-conditioned GAN (Liu et al. 2020, "Diverse Image Generation via Self-Conditioned GANs") trains a conditional
G and D on cluster ids of the real images instead of human labels; at sampling time the cluster is drawn from the
clusters' empirical frequencies, so the model needs no label and covers every cluster by construction (a plain
unconditional G is free to drop whole regions of the data, which is what our variety ratios show). Here the clusters
are fixed before training: k-means in the space of the training images' first principal components of pixels
(no class label is read). With class labels, each class can be split the same way into clusters of its own
(``subclass_labels``): a class-conditional model then learns each class as several look-alike groups.
"""
from __future__ import annotations

import numpy as np

from gan_service.evaluation.views import PixelPCAView

__all__ = ["kmeans", "cluster_labels", "subclass_labels", "label_prior"]
PCA_DIMS = 64           # principal components the images are clustered in
KMEANS_ITERS = 100      # Lloyd iterations at most (stops earlier once no point changes cluster)
KMEANS_RESTARTS = 3     # k-means++ starts; the lowest within-cluster sum of squares wins


def _squared_distances(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """||x_i - c_j||^2 [N, K] for x [N, D] and centres [K, D]."""
    return np.maximum((x * x).sum(1)[:, None] - 2 * x @ centres.T + (centres * centres).sum(1)[None, :], 0.0)


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each next centre drawn with probability ~ squared distance
    to the nearest centre so far; centres [k, D]."""
    centres = [x[rng.integers(len(x))]]
    nearest = _squared_distances(x, centres[0][None])[:, 0]                # [N]
    for _ in range(1, k):
        total = nearest.sum()
        # all points on the centres already chosen (duplicates): any point will do
        idx = rng.integers(len(x)) if total <= 0 else rng.choice(len(x), p=nearest / total)
        centres.append(x[idx])
        nearest = np.minimum(nearest, _squared_distances(x, x[idx][None])[:, 0])
    return np.stack(centres)


def _lloyd(x: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Lloyd iterations from ``centres``: (labels [N], centres [K, D], within-cluster sum of squares)."""
    labels = np.full(len(x), -1)
    for _ in range(KMEANS_ITERS):
        dist = _squared_distances(x, centres)                              # [N, K]
        new = dist.argmin(1)
        if np.array_equal(new, labels):
            break
        labels = new
        for j in range(len(centres)):
            members = x[labels == j]
            # an emptied cluster restarts on the point farthest from its centre, so k clusters stay k
            centres[j] = members.mean(0) if len(members) else x[dist.min(1).argmax()]
    dist = _squared_distances(x, centres)
    labels = dist.argmin(1)
    return labels, centres, float(dist[np.arange(len(x)), labels].sum())


def kmeans(x: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k-means of points x [N, D]: (labels int64 [N] in 0..k-1, centres float64 [k, D]), the best of
    KMEANS_RESTARTS k-means++ starts; the same seed gives the same answer. Clusters are numbered by size,
    largest first."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or not 1 <= k <= len(x):
        raise ValueError(f"k-means needs 1 <= k <= N points of shape [N, D]; got k={k}, x {x.shape}")
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(KMEANS_RESTARTS):
        labels, centres, inertia = _lloyd(x, _kmeans_pp(x, k, rng))
        if best is None or inertia < best[2]:
            best = (labels, centres, inertia)
    labels, centres, _ = best
    # renumber by cluster size (largest first; ties by old id) so the numbering does not depend on seeding order
    order = np.lexsort((np.arange(k), -np.bincount(labels, minlength=k)))
    rank = np.empty(k, dtype=np.int64)
    rank[order] = np.arange(k)
    return rank[labels].astype(np.int64), centres[order]


def cluster_labels(images: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Cluster ids int64 [N] of uint8 images [N, H, W, C]: k-means on their first PCA_DIMS principal components."""
    pca = PixelPCAView(images, components=min(PCA_DIMS, int(np.prod(images.shape[1:])), len(images)))
    return kmeans(pca.features(images), k, seed)[0]


def subclass_labels(images: np.ndarray, classes: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Ids int64 [N] of uint8 images [N, H, W, C] with class labels ``classes`` [N] in 0..C-1: each class clustered
    on its own (cluster_labels), image i of class c in cluster j gets id c * k + j."""
    ids = np.empty(len(images), dtype=np.int64)
    for c in np.unique(classes):
        members = classes == c
        ids[members] = c * k + cluster_labels(images[members], k, seed)
    return ids


def label_prior(labels: np.ndarray, k: int) -> np.ndarray:
    """Empirical frequency of each of the k labels, float64 [k] summing to 1."""
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    return counts / counts.sum()
