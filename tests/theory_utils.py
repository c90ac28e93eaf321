"""Known 1-D densities and grid integrals for tests/test_theory.py (numpy only, no torch).

A ``Mixture`` is a finite Gaussian mixture in 1-D; a single Gaussian is a one-component mixture.
Everything that the paper's claims are compared against (D*, JSD, KL, expectations under p_g) is
computed here by quadrature on a fine grid, independently of training.losses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LOG4 = math.log(4.0)


@dataclass(frozen=True)
class Mixture:
    weights: tuple[float, ...]
    means: tuple[float, ...]
    stds: tuple[float, ...]

    @staticmethod
    def normal(mean: float, std: float = 1.0) -> "Mixture":
        return Mixture((1.0,), (float(mean),), (float(std),))

    def log_pdf(self, x) -> np.ndarray:
        """log density at x (any shape), via log-sum-exp over components, float64."""
        x = np.asarray(x, dtype=np.float64)[..., None]
        w, m, s = (np.asarray(v, dtype=np.float64) for v in (self.weights, self.means, self.stds))
        comp = np.log(w) - np.log(s) - 0.5 * math.log(2 * math.pi) - 0.5 * ((x - m) / s) ** 2
        top = comp.max(axis=-1, keepdims=True)
        return (top + np.log(np.exp(comp - top).sum(axis=-1, keepdims=True)))[..., 0]

    def pdf(self, x) -> np.ndarray:
        return np.exp(self.log_pdf(x))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        k = rng.choice(len(self.weights), size=n, p=np.asarray(self.weights) / sum(self.weights))
        return np.asarray(self.means)[k] + np.asarray(self.stds)[k] * rng.standard_normal(n)


def grid(lo: float = -15.0, hi: float = 15.0, n: int = 300_001) -> np.ndarray:
    return np.linspace(lo, hi, n)


def integrate(values: np.ndarray, x: np.ndarray) -> float:
    """Trapezoid rule on a grid."""
    return float(np.trapezoid(values, x)) if hasattr(np, "trapezoid") else float(np.trapz(values, x))


def optimal_d(p_data: Mixture, p_g: Mixture, x) -> np.ndarray:
    """D*(x) = p_data / (p_data + p_g) (Goodfellow et al. 2014, Prop. 1), computed stably from log densities."""
    return 1.0 / (1.0 + np.exp(p_g.log_pdf(x) - p_data.log_pdf(x)))


def optimal_logit(p_data: Mixture, p_g: Mixture, x) -> np.ndarray:
    """sigmoid^-1(D*(x)) = log p_data(x) - log p_g(x)."""
    return p_data.log_pdf(x) - p_g.log_pdf(x)


def _xlogy_ratio(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """p * log(p / q) with 0 log 0 = 0."""
    out = np.zeros_like(p)
    mask = p > 0
    out[mask] = p[mask] * (np.log(p[mask]) - np.log(q[mask]))
    return out


def jsd(p_data: Mixture, p_g: Mixture, x: np.ndarray | None = None) -> float:
    """Jensen-Shannon divergence (natural log) by quadrature: KL(p||m)/2 + KL(q||m)/2, m = (p + q)/2."""
    x = grid() if x is None else x
    p, q = p_data.pdf(x), p_g.pdf(x)
    m = 0.5 * (p + q)
    return 0.5 * integrate(_xlogy_ratio(p, m), x) + 0.5 * integrate(_xlogy_ratio(q, m), x)


def kl(p: Mixture, q: Mixture, x: np.ndarray | None = None) -> float:
    """KL(p || q) by quadrature on a grid."""
    x = grid() if x is None else x
    lp, lq = p.log_pdf(x), q.log_pdf(x)
    return integrate(np.exp(lp) * (lp - lq), x)


def kl_normal(m1: float, s1: float, m2: float, s2: float) -> float:
    """Closed-form KL(N(m1, s1^2) || N(m2, s2^2))."""
    return math.log(s2 / s1) + (s1 ** 2 + (m1 - m2) ** 2) / (2 * s2 ** 2) - 0.5


def expect(p: Mixture, f, x: np.ndarray | None = None) -> float:
    """E_{x ~ p}[f(x)] by quadrature."""
    x = grid() if x is None else x
    return integrate(p.pdf(x) * f(x), x)
