"""Seeded percentile bootstrap over images: a CI for a mean, and a paired difference test."""

from __future__ import annotations

import numpy as np

from nsdbench.errors import UsageError


def _clean(values, name: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size < 2:
        raise UsageError(f"bootstrap of {name} needs at least 2 values; got {v.size}")
    if not np.all(np.isfinite(v)):
        raise UsageError(f"bootstrap of {name}: values contain NaN or inf")
    return v


def _resample_means(
    v: np.ndarray, n_resamples: int, rng: np.random.Generator, block: int = 256
) -> np.ndarray:
    means = np.empty(n_resamples, dtype=np.float64)
    for s in range(0, n_resamples, block):  # bounded memory: block x N indices at a time
        k = min(block, n_resamples - s)
        idx = rng.integers(0, v.size, size=(k, v.size))
        means[s : s + k] = v[idx].mean(axis=1)
    return means


def bootstrap_ci(
    values, n_resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """(mean, lo, hi): the sample mean and its percentile bootstrap CI over images."""
    if n_resamples < 1 or not 0 < level < 1:
        raise UsageError(f"bootstrap: need n_resamples >= 1 and 0 < level < 1; got {n_resamples}, {level}")
    v = _clean(values, "values")
    means = _resample_means(v, n_resamples, np.random.default_rng(seed))
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(v.mean()), float(lo), float(hi)


def paired_bootstrap(
    a, b, n_resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float, float]:
    """(mean_diff, lo, hi, p_value) for mean(a - b) over paired images.

    Images are resampled jointly; the two-sided p-value is the bootstrap estimate of how often the
    centred resampled difference is at least as extreme as the observed one.
    """
    a = _clean(a, "a")
    b = _clean(b, "b")
    if a.shape != b.shape:
        raise UsageError(f"paired bootstrap needs equal lengths; got {a.size} and {b.size}")
    d = a - b
    means = _resample_means(d, n_resamples, np.random.default_rng(seed))
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    obs = d.mean()
    extreme = np.abs(means - obs) >= abs(obs)
    p = (extreme.sum() + 1) / (n_resamples + 1)
    return float(obs), float(lo), float(hi), float(min(1.0, p))
