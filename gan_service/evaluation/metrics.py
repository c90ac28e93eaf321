"""Sample-quality metrics on feature vectors or pixels: numpy only.

Frechet distance is ``core.frechet.frechet_distance_features`` (shared with training); this module adds
  - KID: unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3 (Binkowski et al. 2018),
    mean and std over random subsets;
  - improved precision and recall (Kynkaanniemi et al. 2019): k-NN balls around each set's samples;
  - class coverage: a label histogram against uniform, and per-class accuracy of requested labels;
  - the seed paper's Gaussian Parzen-window log-likelihood (Goodfellow et al. 2014, after Breuleux et al.),
    with the bandwidth chosen on held-out data, and its standard error;
  - nearest neighbours (a memorisation check).
Every pairwise computation runs in row chunks, so memory stays at chunk x N whatever N is.
"""
from __future__ import annotations

import math

import numpy as np

from gan_service.core.frechet import frechet_breakdown, frechet_distance_features

__all__ = ["frechet_distance_features", "frechet_breakdown", "mmd2_unbiased", "kid", "pairwise_sq_dists", "knn_radii",
           "precision_recall", "class_coverage", "parzen_log_likelihoods",
           "parzen_select_sigma", "parzen", "nearest_neighbours", "PARZEN_SIGMAS"]

CHUNK = 1024
# Bandwidths tried on the held-out images: the seed paper's code used logspace(-1, 0, 10); this grid is
# wider at the low end (sharp samples of a good model can prefer sigma < 0.1) and finer.
PARZEN_SIGMAS = np.logspace(-1.5, 0.0, 16)


# ---------------------------------------------------------------- KID

def _poly_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    k = a @ b.T                                        # float32 in place: this is KID's inner loop
    k *= 1.0 / a.shape[1]
    k += 1.0
    return k * k * k


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 between samples x [m, d] and y [n, d] with the cubic polynomial kernel.

    Diagonal terms k(x_i, x_i) are left out of the within-set means, so the estimate is zero in
    expectation when x and y come from one distribution (and can be slightly negative).
    """
    x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)     # float32 products, float64 sums
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError(f"MMD needs at least 2 samples per set, got {m} and {n}")
    def total(k):
        return float(k.sum(dtype=np.float64))

    kxx, kyy = _poly_kernel(x, x), _poly_kernel(y, y)
    within = ((total(kxx) - float(np.trace(kxx, dtype=np.float64))) / (m * (m - 1))
              + (total(kyy) - float(np.trace(kyy, dtype=np.float64))) / (n * (n - 1)))
    return within - 2.0 * total(_poly_kernel(x, y)) / (m * n)


def kid(x: np.ndarray, y: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> dict:
    """Kernel Inception-style distance: unbiased MMD^2 over ``subsets`` random subsets of both sets.

    The subset size is min(subset_size, len(x), len(y)); subsets are drawn without replacement within a
    subset (with replacement across subsets), as in Binkowski et al.'s reference code.
    """
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(x)} and {len(y)}")
    rng = np.random.default_rng(seed)
    values = np.array([mmd2_unbiased(x[rng.choice(len(x), m, replace=False)], y[rng.choice(len(y), m, replace=False)])
                       for _ in range(subsets)])
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if subsets > 1 else 0.0,
            "subsets": subsets, "subset_size": m}


# ---------------------------------------------------------------- precision and recall

def pairwise_sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances [len(a), len(b)]: float32 products, float64 norms, clipped at 0."""
    a32, b32 = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return _sq_dists32(a32, b32, (b32.astype(np.float64) ** 2).sum(1))


def knn_radii(x: np.ndarray, k: int = 3) -> np.ndarray:
    """Distance from each row of x to its k-th nearest *other* row of x."""
    if len(x) <= k:
        raise ValueError(f"k-NN radii with k={k} need more than {k} samples, got {len(x)}")
    out = np.empty(len(x))
    for s in range(0, len(x), CHUNK):
        d = pairwise_sq_dists(x[s:s + CHUNK], x)
        d[np.arange(len(d)), np.arange(s, s + len(d))] = np.inf          # not its own neighbour
        out[s:s + CHUNK] = np.sqrt(np.partition(d, k - 1, axis=1)[:, k - 1])
    return out


def _inside_any_ball(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """For each point: does it lie within radii[j] of some centre j?"""
    r2 = radii ** 2
    out = np.empty(len(points), bool)
    for s in range(0, len(points), CHUNK):
        out[s:s + CHUNK] = (pairwise_sq_dists(points[s:s + CHUNK], centres) <= r2[None, :]).any(1)
    return out


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, real_radii: np.ndarray | None = None) -> dict:
    """Improved precision (fakes inside the real manifold) and recall (reals inside the fake manifold).

    Each manifold is the union of balls around its samples with radius = distance to the k-th nearest
    neighbour in the same set (Kynkaanniemi et al. 2019, k = 3). ``real_radii``: knn_radii(real, k), if known.
    """
    if real_radii is None:
        real_radii = knn_radii(real, k)
    precision = float(_inside_any_ball(fake, real, real_radii).mean())
    recall = float(_inside_any_ball(real, fake, knn_radii(fake, k)).mean())
    return {"precision": precision, "recall": recall, "k": k}


# ---------------------------------------------------------------- class coverage

def class_coverage(predicted: np.ndarray, num_classes: int, class_names: list[str] | None = None) -> dict:
    """The predicted-label histogram against uniform: KL(p || uniform) in nats (0 = perfectly balanced,
    log(num_classes) = one class only), the smallest class share, and the classes never predicted."""
    counts = np.bincount(np.asarray(predicted, np.int64), minlength=num_classes)[:num_classes]
    p = counts / max(1, counts.sum())
    nz = p > 0
    kl = float((p[nz] * np.log(p[nz] * num_classes)).sum())
    names = class_names or [str(c) for c in range(num_classes)]
    smallest = int(np.argmin(p))
    return {"histogram": [round(float(v), 5) for v in p], "counts": counts.tolist(), "kl_uniform": kl,
            "kl_uniform_max": math.log(num_classes), "min_share": float(p.min()), "min_share_class": names[smallest],
            "uniform_share": 1.0 / num_classes, "classes_present": int(nz.sum()),
            "missing_classes": [names[c] for c in range(num_classes) if not nz[c]]}


# ---------------------------------------------------------------- Parzen window (the seed paper's Table 1)

def _flat01(images: np.ndarray) -> np.ndarray:
    """uint8 images -> float32 [N, D] in [0, 1] (the seed paper's pixel scale)."""
    return np.asarray(images, np.float32).reshape(len(images), -1) / 255.0


def _parzen_from_sq(d2: np.ndarray, sigma: float, n_kernels: int, dim: int) -> np.ndarray:
    """log (1/n) sum_i N(x; g_i, sigma^2 I) for each row of squared distances d2 [B, n]."""
    e = -d2 / (2.0 * sigma ** 2)
    top = e.max(1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(e - top).sum(1))
    return lse - math.log(n_kernels) - 0.5 * dim * math.log(2.0 * math.pi * sigma ** 2)


def _sq_dists32(a: np.ndarray, b: np.ndarray, b_norm: np.ndarray) -> np.ndarray:
    """Squared distances in float32 matmul with float64 accumulation of the norms; for [0, 1] pixels."""
    d = (a.astype(np.float64) ** 2).sum(1)[:, None] + b_norm[None, :] - 2.0 * (a @ b.T).astype(np.float64)
    return np.maximum(d, 0.0)


def parzen_log_likelihoods(test: np.ndarray, samples: np.ndarray, sigmas) -> np.ndarray:
    """Per-test-image log-likelihood [len(sigmas), len(test)] under a Gaussian Parzen window on ``samples``."""
    t, s = _flat01(test), _flat01(samples)
    s_norm = (s.astype(np.float64) ** 2).sum(1)
    sigmas = np.atleast_1d(np.asarray(sigmas, np.float64))
    out = np.empty((len(sigmas), len(t)))
    for a in range(0, len(t), CHUNK // 2):
        d2 = _sq_dists32(t[a:a + CHUNK // 2], s, s_norm)
        for j, sigma in enumerate(sigmas):
            out[j, a:a + len(d2)] = _parzen_from_sq(d2, float(sigma), len(s), t.shape[1])
    return out


def parzen_select_sigma(valid: np.ndarray, samples: np.ndarray, sigmas=PARZEN_SIGMAS) -> tuple[float, list]:
    """The bandwidth with the highest mean log-likelihood of held-out images, and the whole curve."""
    ll = parzen_log_likelihoods(valid, samples, sigmas).mean(1)
    curve = [[round(float(s), 5), float(v)] for s, v in zip(sigmas, ll)]
    return float(np.asarray(sigmas)[int(np.argmax(ll))]), curve


def parzen(test: np.ndarray, samples: np.ndarray, valid: np.ndarray, sigmas=PARZEN_SIGMAS) -> dict:
    """The seed paper's estimate: sigma by cross-validation on ``valid``, then the mean log-likelihood of
    ``test`` in nats with its standard error (std of the per-image values / sqrt(len(test)))."""
    sigma, curve = parzen_select_sigma(valid, samples, sigmas)
    ll = parzen_log_likelihoods(test, samples, [sigma])[0]
    return {"log_likelihood": float(ll.mean()), "std_error": float(ll.std(ddof=1) / math.sqrt(len(ll))),
            "sigma": sigma, "sigma_curve": curve, "sigma_at_grid_edge": sigma in (float(sigmas[0]), float(sigmas[-1])),
            "n_kernels": len(samples), "n_test": len(test), "n_valid": len(valid), "space": "pixels / 255"}


# ---------------------------------------------------------------- nearest neighbours

def nearest_neighbours(queries: np.ndarray, pool: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Indices [Q, k] and Euclidean distances [Q, k] of each query's k nearest rows of ``pool`` (pixels / 255)."""
    q, p = _flat01(queries), _flat01(pool)
    p_norm = (p.astype(np.float64) ** 2).sum(1)
    idx, dist = np.empty((len(q), k), np.int64), np.empty((len(q), k))
    for a in range(0, len(q), CHUNK // 4):
        d2 = _sq_dists32(q[a:a + CHUNK // 4], p, p_norm)
        part = np.argpartition(d2, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(d2, part, 1).argsort(1)
        idx[a:a + len(d2)] = np.take_along_axis(part, order, 1)
        dist[a:a + len(d2)] = np.sqrt(np.take_along_axis(d2, idx[a:a + len(d2)], 1))
    return idx, dist
