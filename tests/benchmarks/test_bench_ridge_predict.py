"""RidgeModel.predict against the bare matrix product at the canonical encoder's size.

Default size is tiny so the normal suite (--benchmark-disable) runs it in a second. Full size (16 images,
11,000 features → 15,000 voxels, float64, the numbers issue 13 quotes: 11.5 s per call before the fix
against 0.8 s for the product):

    NSDBENCH_BENCH_SCALE=1 pytest tests/benchmarks/test_bench_ridge_predict.py --benchmark-enable \
        --benchmark-group-by=group --benchmark-columns=min,mean,rounds

Goal: predict within 1.5× of `X @ W + b` (it no longer copies W per call); predictions equal to 1e-9.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from nsdbench.ridge import RidgeModel, RidgeSettings

SCALE = float(os.environ.get("NSDBENCH_BENCH_SCALE", "0") or 0)
FULL = {"n": 16, "p": 11000, "t": 15000}
TINY = {"n": 16, "p": 200, "t": 1500}


@pytest.fixture(scope="module")
def problem():
    s = TINY if SCALE <= 0 else {k: max(TINY[k], round(v * SCALE)) for k, v in FULL.items()}
    rng = np.random.default_rng(0)
    model = RidgeModel(
        coef=rng.standard_normal((s["p"], s["t"])),
        intercept=rng.standard_normal(s["t"]),
        alpha=np.ones(s["t"]),
        settings=RidgeSettings(alphas=(1.0,), dtype="float64", backend="numpy"),
        n_features=s["p"],
        target_shape=(s["t"],),
    )
    X = rng.standard_normal((s["n"], s["p"]))
    model.predict(X, progress=False)  # first call lays the weights out once
    return model, X


@pytest.mark.benchmark(group="ridge-predict")
def test_bench_matrix_product(benchmark, problem):
    model, X = problem
    benchmark.pedantic(lambda: X @ model.coef + model.intercept, rounds=3, iterations=1)


@pytest.mark.benchmark(group="ridge-predict")
def test_bench_ridge_predict(benchmark, problem):
    model, X = problem
    pred = benchmark.pedantic(model.predict, args=(X,), kwargs={"progress": False}, rounds=3, iterations=1)
    ref = X @ model.coef + model.intercept
    np.testing.assert_allclose(pred, ref, rtol=0, atol=1e-9 * np.abs(ref).max())
