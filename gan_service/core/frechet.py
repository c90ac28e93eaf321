"""Distribution distances on feature vectors, numpy only (usable by training, evaluation and the service)."""
from __future__ import annotations

import numpy as np


def mean_cov(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] of features [N, D], in float64."""
    f = np.asarray(features, dtype=np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_terms(mu1, cov1, mu2, cov2) -> tuple[float, float]:
    """The two terms of the Frechet distance: ||mu1 - mu2||^2 and Tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2).

    The first says how far the average sample is off, the second how the spread differs (too little variety
    shows here). Tr((C1 C2)^1/2) equals Tr((C1^1/2 C2 C1^1/2)^1/2), whose argument is symmetric PSD, so eigh
    is exact and stable where a general sqrtm would return complex noise.
    """
    w1, v1 = np.linalg.eigh(cov1)
    sqrt1 = (v1 * np.sqrt(np.clip(w1, 0, None))) @ v1.T
    middle = sqrt1 @ cov2 @ sqrt1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum()), float(np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt)


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """||mu1 - mu2||^2 + Tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2): the sum of ``frechet_terms``."""
    return sum(frechet_terms(mu1, cov1, mu2, cov2))


def frechet_distance_features(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between two feature sets [N, D] and [M, D]."""
    return frechet_distance(*mean_cov(a), *mean_cov(b))


def frechet_breakdown(a: np.ndarray, b: np.ndarray) -> dict:
    """Frechet distance of features a [N, D] to b [M, D], its mean and covariance terms, and the variety ratio
    Tr(C_a) / Tr(C_b) (below 1: a varies less than b; the usual sign of a generator dropping modes)."""
    mu_a, cov_a = mean_cov(a)
    mu_b, cov_b = mean_cov(b)
    mean_term, cov_term = frechet_terms(mu_a, cov_a, mu_b, cov_b)
    return {"fd": mean_term + cov_term, "mean_term": mean_term, "cov_term": cov_term,
            "variety_ratio": float(np.trace(cov_a) / np.trace(cov_b))}
