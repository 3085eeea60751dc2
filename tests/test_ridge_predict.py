"""RidgeModel.predict: the same numbers as the block-wise matrix product, without copying the weights per call."""

from __future__ import annotations

import tracemalloc

import numpy as np

from nsdbench.ridge import TARGET_BLOCK, RidgeModel, RidgeSettings, single_threaded_if


def _model(p: int = 300, t: int = 1300, dtype: str = "float64") -> RidgeModel:
    rng = np.random.default_rng(0)
    return RidgeModel(
        coef=rng.standard_normal((p, t)),
        intercept=rng.standard_normal(t),
        alpha=np.ones(t),
        settings=RidgeSettings(alphas=(1.0,), dtype=dtype, backend="numpy", chunk_size=512),
        n_features=p,
        target_shape=(t,),
    )


def _reference(model: RidgeModel, X: np.ndarray) -> np.ndarray:
    """Independent: X @ W + b per aligned block of TARGET_BLOCK targets (the BLAS shapes predict uses)."""
    dt = model.settings.dtype
    out = np.empty((len(X), model.n_targets), dt)
    Xc = np.ascontiguousarray(X, dt)
    with single_threaded_if(True):  # as predict runs a problem this small
        for s in range(0, model.n_targets, TARGET_BLOCK):
            e = min(s + TARGET_BLOCK, model.n_targets)
            W = np.ascontiguousarray(model.coef[:, s:e], dt)
            out[:, s:e] = Xc @ W + model.intercept[s:e].astype(dt)
    return out


def test_predict_is_unchanged_and_bit_identical_across_calls_and_chunk_sizes() -> None:
    model = _model()
    X = np.random.default_rng(1).standard_normal((37, 300))
    first = model.predict(X, progress=False)
    np.testing.assert_array_equal(first, _reference(model, X))
    np.testing.assert_allclose(first, X @ model.coef + model.intercept, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(model.predict(X, chunk_size=1, progress=False), first)
    np.testing.assert_array_equal(model.predict(X, chunk_size=10_000, progress=False), first)
    f32 = _model(dtype="float32")
    np.testing.assert_array_equal(f32.predict(X, progress=False), _reference(f32, X))


def test_repeated_predict_does_not_copy_the_coefficients() -> None:
    model = _model(p=400, t=2048)
    X = np.random.default_rng(2).standard_normal((4, 400))
    model.predict(X, progress=False)  # the first call lays the weights out once
    tracemalloc.start()
    try:
        model.predict(X, progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < model.coef.nbytes / 8, (
        f"predict allocated {peak} bytes; the weights are {model.coef.nbytes}"
    )
