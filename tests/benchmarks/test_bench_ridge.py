"""brain-diffuser's CLIP-vision regression, side by side: sklearn Ridge once per token (as the reference
clipvision_regression.py does) vs nsdbench.ridge.fit_predict (one Gram matrix, all tokens at once).

Default size is tiny so the normal suite (--benchmark-disable) runs it in a second. Full size
(2,000 samples × 4,000 voxels → 257 tokens × 64 dims, 220 test samples):

    NSDBENCH_BENCH_SCALE=1 pytest tests/benchmarks/test_bench_ridge.py --benchmark-enable \
        --benchmark-group-by=group --benchmark-columns=min,mean,rounds

Goal: nsdbench ≥ 20× faster than the loop on a 2-core CPU, predictions equal to 1e-6 (relative to the
largest |prediction|).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from nsdbench.ridge import RidgeSettings, fit_predict

SCALE = float(os.environ.get("NSDBENCH_BENCH_SCALE", "0") or 0)
FULL = {"n": 2000, "p": 4000, "tokens": 257, "dims": 64, "n_test": 220}
TINY = {"n": 120, "p": 200, "tokens": 9, "dims": 8, "n_test": 20}
ALPHA = 60000.0


def _sizes() -> dict[str, int]:
    if SCALE <= 0:
        return TINY
    return {k: max(TINY[k], round(v * SCALE)) for k, v in FULL.items()}


@pytest.fixture(scope="module")
def problem():
    s = _sizes()
    rng = np.random.default_rng(0)
    X = rng.standard_normal((s["n"], s["p"]))
    Xt = rng.standard_normal((s["n_test"], s["p"]))
    W = rng.standard_normal((s["p"], s["tokens"] * s["dims"])) / np.sqrt(s["p"])
    Y = (X @ W + rng.standard_normal((s["n"], s["tokens"] * s["dims"]))).reshape(
        s["n"], s["tokens"], s["dims"]
    )
    return X, Y, Xt


@pytest.fixture(scope="module")
def results() -> dict[str, np.ndarray]:
    return {}


def _sklearn_token_loop(X, Y, Xt):
    from sklearn.linear_model import Ridge

    pred = np.zeros((len(Xt), *Y.shape[1:]))
    for i in range(Y.shape[1]):
        reg = Ridge(alpha=ALPHA, max_iter=50000, fit_intercept=True)
        reg.fit(X, Y[:, i])
        pred[:, i] = reg.predict(Xt)
    return pred


@pytest.mark.benchmark(group="bd-clipvision-ridge")
def test_bench_sklearn_per_token_loop(benchmark, problem, results):
    X, Y, Xt = problem
    results["sklearn"] = benchmark.pedantic(_sklearn_token_loop, args=(X, Y, Xt), rounds=1, iterations=1)


@pytest.mark.benchmark(group="bd-clipvision-ridge")
def test_bench_nsdbench_fit_predict(benchmark, problem, results):
    X, Y, Xt = problem
    settings = RidgeSettings(alpha=ALPHA, fit_intercept=True, dtype="float64", backend="auto")
    pred = benchmark.pedantic(fit_predict, args=(X, Y, Xt, settings), rounds=3, iterations=1)
    ref = results.get("sklearn")
    if ref is None:
        ref = _sklearn_token_loop(X, Y, Xt)
    np.testing.assert_allclose(pred, ref, rtol=0, atol=1e-6 * np.abs(ref).max())
