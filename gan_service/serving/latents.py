"""Latents as a pure function of (seed, index): numpy only, counter-based, no global RNG state.

Image i of seed s uses the Philox-4x64 stream with key s, from counter block i * BLOCKS_PER_INDEX:
its first ``latent_dim`` 64-bit words become z by Box-Muller, the next word picks a random class
for conditional models. Because each index owns a fixed counter range, z(s, i) never depends on
which other indices are computed with it, so batching cannot change an image.
"""
from __future__ import annotations

import math
import threading
from statistics import NormalDist

import numpy as np

MAX_SEED = 2**63 - 1
MAX_INDEX = 2**63 - 1      # image indices i of (seed, i): the same range as seeds
WORDS_PER_BLOCK = 4          # Philox-4x64 yields four uint64 per counter increment
_MASK64 = 2**64 - 1
_local = threading.local()


def _words_per_index(latent_dim: int) -> int:
    """uint64 words reserved per index: latent_dim (rounded up to even, for Box-Muller pairs) + 1 label word."""
    need = latent_dim + (latent_dim % 2) + 1
    return math.ceil(need / WORDS_PER_BLOCK) * WORDS_PER_BLOCK


def _raw_words(seed: int, start: int, count: int, words: int, bitgen: np.random.Philox | None = None) -> np.ndarray:
    """uint64 [count, words]: the counter range of indices start .. start+count-1 under key ``seed``.

    The generator is put in the state ``Philox(key=seed).advance(start * words / 4)`` has (key, counter, empty
    buffer) instead of being built per span: a new Philox draws OS entropy for a seed it then ignores (~16 us,
    4x the words themselves). ``bitgen``: a generator to reuse, else this thread's own."""
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be in 0..{MAX_SEED}")
    if not (0 <= start and start + count - 1 <= MAX_INDEX):
        raise ValueError(f"indices must be in 0..{MAX_INDEX}")
    bitgen = _thread_bitgen() if bitgen is None else bitgen
    counter = start * (words // WORDS_PER_BLOCK)              # < 2**69: the low two of Philox's four counter words
    bitgen.state = {"bit_generator": "Philox",
                    "state": {"counter": np.array([counter & _MASK64, counter >> 64, 0, 0], np.uint64),
                              "key": np.array([seed, 0], np.uint64)},
                    "buffer": np.zeros(WORDS_PER_BLOCK, np.uint64), "buffer_pos": WORDS_PER_BLOCK,
                    "has_uint32": 0, "uinteger": 0}
    return bitgen.random_raw(count * words).reshape(count, words)


def _thread_bitgen() -> np.random.Philox:
    """This thread's Philox (a generator's state is not safe to share between threads); its state is set per use."""
    bitgen = getattr(_local, "bitgen", None)
    if bitgen is None:
        bitgen = _local.bitgen = np.random.Philox(key=0)
    return bitgen


def _span_words(spans, words: int) -> np.ndarray:
    """uint64 [sum of counts, words] of spans (seed, start, count, ...), in order."""
    bitgen = _thread_bitgen()
    return np.concatenate([_raw_words(seed, start, count, words, bitgen) for seed, start, count, *_ in spans])


def _uniform_open(words: np.ndarray) -> np.ndarray:
    """uint64 -> float64 uniform in the open interval (0, 1): 53 random bits, centred in their cell."""
    return ((words >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / 2**53)


def truncation_bound(psi: float) -> float:
    """|z_j| bound for truncation psi: the central psi of N(0, 1)'s mass (psi = 1: no bound)."""
    if not 0.0 < psi <= 1.0:
        raise ValueError("truncation must be in (0, 1]")
    if psi >= 1.0:
        return math.inf
    upper = 0.5 + psi / 2.0
    if upper < 1.0:                  # the formula of every bound served so far (kept bit for bit)
        return NormalDist().inv_cdf(upper)
    # psi within 2**-53 of 1: 0.5 + psi / 2 rounds to 1.0; the lower tail (1 - psi) / 2 is still exact
    return -NormalDist().inv_cdf((1.0 - psi) / 2.0)


def _box_muller(raw: np.ndarray, latent_dim: int) -> np.ndarray:
    """uint64 words [count, words] -> standard normal float64 [count, latent_dim] (row by row, elementwise)."""
    half = (latent_dim + 1) // 2
    u1, u2 = _uniform_open(raw[:, :half]), _uniform_open(raw[:, half:2 * half])
    radius = np.sqrt(-2.0 * np.log(u1))                                   # [count, half]
    return np.concatenate([radius * np.cos(2 * np.pi * u2), radius * np.sin(2 * np.pi * u2)], axis=1)[:, :latent_dim]


def latents(seed: int, start: int, count: int, latent_dim: int, truncation: float = 1.0) -> np.ndarray:
    """z float32 [count, latent_dim] for indices start .. start+count-1 of ``seed``.

    Truncation clips each component to +-truncation_bound(psi) (clipping, not resampling, so the
    latent stays a pure function of its counter range).
    """
    return latents_of_spans([(seed, start, count, truncation)], latent_dim)


def latents_of_spans(spans, latent_dim: int) -> np.ndarray:
    """z float32 [sum of counts, latent_dim] for spans (seed, start, count, truncation), in order: one Philox
    stream per span, then one vectorised Box-Muller and clip for all (what a merged batch of many seeds needs)."""
    return _latents(_span_words(spans, _words_per_index(latent_dim)), spans, latent_dim)


def latents_and_labels_of_spans(spans, latent_dim: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(z as latents_of_spans gives it, the class each image gets when its request names none, as random_labels
    gives it) from one pass over the counter ranges."""
    raw = _span_words(spans, _words_per_index(latent_dim))
    return _latents(raw, spans, latent_dim), _labels(raw, latent_dim, num_classes)


def _latents(raw: np.ndarray, spans, latent_dim: int) -> np.ndarray:
    z = _box_muller(raw, latent_dim)
    bounds = np.repeat([truncation_bound(psi) for *_, psi in spans], [count for _, _, count, _ in spans])
    if np.isfinite(bounds).any():
        z = np.clip(z, -bounds[:, None], bounds[:, None])
    return z.astype(np.float32)


def _labels(raw: np.ndarray, latent_dim: int, num_classes: int) -> np.ndarray:
    """int64 [count]: the word after z's, modulo the number of classes."""
    return (raw[:, latent_dim + (latent_dim % 2)] % np.uint64(num_classes)).astype(np.int64)


def random_labels(seed: int, start: int, count: int, latent_dim: int, num_classes: int) -> np.ndarray:
    """int64 [count]: the class each index gets when the request names none (the word after z's)."""
    return _labels(_raw_words(seed, start, count, _words_per_index(latent_dim)), latent_dim, num_classes)
