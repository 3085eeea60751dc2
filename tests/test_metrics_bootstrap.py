"""Bootstrap CIs: seeded reproducibility, coverage on a known distribution, paired differences."""

from __future__ import annotations

import numpy as np
import pytest

from nsdbench.errors import UsageError
from nsdbench.metrics.bootstrap import bootstrap_ci, paired_bootstrap


def test_seeded_reproducible_and_seed_sensitive():
    v = np.random.default_rng(0).normal(size=100)
    assert bootstrap_ci(v, seed=3) == bootstrap_ci(v, seed=3)
    assert bootstrap_ci(v, seed=3) != bootstrap_ci(v, seed=4)
    mean, lo, hi = bootstrap_ci(v)
    assert lo < mean < hi and mean == pytest.approx(v.mean())


def test_coverage_on_known_distribution():
    """95% percentile CIs for the mean of N(0.3, 1) samples cover 0.3 in roughly 95% of repetitions."""
    rng = np.random.default_rng(1)
    hits = 0
    reps = 150
    for k in range(reps):
        _, lo, hi = bootstrap_ci(rng.normal(0.3, 1.0, size=60), n_resamples=2000, seed=k)
        hits += lo <= 0.3 <= hi
    # binomial sd at p=0.95, n=150 is 0.018; percentile intervals undercover slightly at n=60
    assert 0.87 <= hits / reps <= 0.99


def test_ci_width_matches_standard_error():
    v = np.random.default_rng(2).normal(size=400)
    _, lo, hi = bootstrap_ci(v, n_resamples=4000)
    se = v.std(ddof=1) / np.sqrt(len(v))
    assert (hi - lo) == pytest.approx(2 * 1.96 * se, rel=0.1)


def test_paired_bootstrap():
    rng = np.random.default_rng(3)
    a = rng.normal(size=200)
    diff, lo, hi, p = paired_bootstrap(a, a)
    assert diff == 0 and lo == 0 and hi == 0 and p == 1.0
    b = a - 0.5 + 0.1 * rng.normal(size=200)
    diff, lo, hi, p = paired_bootstrap(a, b)
    assert lo < diff < hi and lo > 0.4 and p < 0.01
    # p-value agrees with the normal-theory two-sided p for a mean difference near zero
    from scipy.stats import norm

    for seed in range(3):
        c = a + 0.01 * np.random.default_rng(10 + seed).normal(size=200)
        d = a - c
        p_normal = 2 * norm.sf(abs(d.mean()) / (d.std(ddof=1) / np.sqrt(len(d))))
        assert paired_bootstrap(a, c, n_resamples=4000)[3] == pytest.approx(p_normal, abs=0.04)
    assert paired_bootstrap(a, b, seed=5) == paired_bootstrap(a, b, seed=5)


def test_bad_input():
    with pytest.raises(UsageError, match="at least 2"):
        bootstrap_ci([1.0])
    with pytest.raises(UsageError, match="NaN"):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(UsageError, match="equal lengths"):
        paired_bootstrap([1.0, 2.0], [1.0, 2.0, 3.0])
