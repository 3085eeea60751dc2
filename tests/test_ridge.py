"""nsdbench.ridge against scikit-learn Ridge, literal loops over the published procedures, and
brute-force K-fold CV. Tolerances: float64 predictions equal sklearn to 1e-6 relative to the largest
|prediction| (observed ~1e-14); float32 to 1e-3."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from nsdbench.errors import DataError, UsageError
from nsdbench.ridge import (
    TARGET_BLOCK,
    RidgeSettings,
    fit_predict,
    fit_ridge,
    kfold_indices,
    rescale_to_training_moments,
)

BACKENDS = ["numpy", "torch"]


def _data(n, p, t, n_test=9, seed=0, y_offset=3.0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p)) + 0.5
    W = rng.standard_normal((p, t)) / np.sqrt(p)
    Y = X @ W + rng.standard_normal((n, t)) + y_offset
    return X, Y, rng.standard_normal((n_test, p)) + 0.5


def _close(a, ref, rel=1e-6):
    np.testing.assert_allclose(a, ref, rtol=0, atol=rel * np.abs(ref).max())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(40, 90), (90, 25)], ids=["dual", "primal"])
@pytest.mark.parametrize("intercept", [True, False])
def test_fixed_alpha_matches_sklearn(backend, shape, intercept):
    X, Y, Xt = _data(*shape, t=6)
    ref = Ridge(alpha=7.5, fit_intercept=intercept).fit(X, Y).predict(Xt)
    s = RidgeSettings(alpha=7.5, fit_intercept=intercept, backend=backend, chunk_size=4)
    _close(fit_predict(X, Y, Xt, s), ref)
    model = fit_ridge(X, Y, s, cache=False)
    _close(model.predict(Xt), ref)
    sk = Ridge(alpha=7.5, fit_intercept=intercept).fit(X, Y)
    _close(model.coef, sk.coef_.T)
    _close(model.intercept, np.broadcast_to(sk.intercept_, (6,)) if intercept else np.zeros(6))


@pytest.mark.parametrize("solver", ["primal", "dual"])
def test_forced_solver_form_gives_same_predictions(solver):
    X, Y, Xt = _data(30, 50, t=3)
    ref = Ridge(alpha=2.0).fit(X, Y).predict(Xt)
    _close(fit_predict(X, Y, Xt, RidgeSettings(alpha=2.0, solver=solver)), ref)


def test_brain_diffuser_per_token_loop_and_postprocess():
    """brain-diffuser's clipvision_regression.py: one sklearn Ridge per token, then z-score the test
    predictions and rescale to the training features' mean/std. Here written out literally."""
    rng = np.random.default_rng(1)
    n, n_test, p, tokens, dims = 60, 12, 80, 5, 4
    train_fmri = rng.standard_normal((n, p))
    test_fmri = rng.standard_normal((n_test, p))
    train_clip = rng.standard_normal((n, tokens, dims)) * 2 + 1
    pred_clip = np.zeros((n_test, tokens, dims))
    for i in range(tokens):
        reg = Ridge(alpha=60000, max_iter=50000, fit_intercept=True)
        reg.fit(train_fmri, train_clip[:, i])
        pred = reg.predict(test_fmri)
        z = (pred - np.mean(pred, axis=0)) / np.std(pred, axis=0)
        pred_clip[:, i] = z * np.std(train_clip[:, i], axis=0) + np.mean(train_clip[:, i], axis=0)
    raw = fit_predict(train_fmri, train_clip, test_fmri, RidgeSettings(alpha=60000, chunk_size=7))
    assert raw.shape == (n_test, tokens, dims)
    _close(rescale_to_training_moments(raw, train_clip), pred_clip)


def test_float32_close_to_float64_reference():
    X, Y, Xt = _data(50, 120, t=5)
    ref = Ridge(alpha=10.0).fit(X, Y).predict(Xt)
    out = fit_predict(
        X.astype(np.float32), Y.astype(np.float32), Xt, RidgeSettings(alpha=10.0, dtype="float32")
    )
    assert out.dtype == np.float32
    _close(out, ref, rel=1e-3)


def _bruteforce_cv(X, Y, alphas, k, intercept):
    scores = np.zeros((len(alphas), Y.shape[1]))
    for tr, va in kfold_indices(len(X), k):
        for i, a in enumerate(alphas):
            pred = Ridge(alpha=a, fit_intercept=intercept).fit(X[tr], Y[tr]).predict(X[va])
            ss_res = ((Y[va] - pred) ** 2).sum(0)
            ss_tot = ((Y[va] - Y[va].mean(0)) ** 2).sum(0)
            scores[i] += (1 - ss_res / ss_tot) / k
    return scores


def test_kfold_matches_sklearn():
    from sklearn.model_selection import KFold

    for (tr, va), (tr2, va2) in zip(kfold_indices(23, 5), KFold(5).split(np.zeros(23)), strict=True):
        assert np.array_equal(tr, tr2) and np.array_equal(va, va2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(45, 70), (70, 20)], ids=["dual", "primal"])
@pytest.mark.parametrize("intercept", [True, False])
def test_cv_matches_bruteforce_sklearn(backend, shape, intercept):
    X, Y, Xt = _data(*shape, t=8, seed=3)
    Y[:, ::2] += np.random.default_rng(4).standard_normal((shape[0], 4)) * 3  # targets of varied noise
    alphas = (0.1, 3.0, 100.0, 3000.0)
    ref_scores = _bruteforce_cv(X, Y, alphas, 4, intercept)
    s = RidgeSettings(alphas=alphas, cv=4, fit_intercept=intercept, backend=backend, chunk_size=3)
    model = fit_ridge(X, Y, s, cache=False)
    np.testing.assert_allclose(model.cv_score, ref_scores, atol=1e-8)
    best = np.asarray(alphas)[ref_scores.argmax(0)]
    np.testing.assert_array_equal(model.alpha, best)
    ref = np.stack(
        [Ridge(alpha=a, fit_intercept=intercept).fit(X, Y[:, j]).predict(Xt) for j, a in enumerate(best)],
        axis=1,
    )
    _close(model.predict(Xt), ref)
    _close(fit_predict(X, Y, Xt, s), ref)
    shared = fit_ridge(
        X,
        Y,
        RidgeSettings(alphas=alphas, cv=4, per_target=False, fit_intercept=intercept, backend=backend),
        cache=False,
    )
    assert np.all(shared.alpha == alphas[int(ref_scores.mean(1).argmax())])


def test_cv_recovers_generating_alpha():
    """Bayesian ridge: w ~ N(0, tau²), noise ~ N(0, sigma²) → the optimal penalty is sigma²/tau² = 100."""
    rng = np.random.default_rng(5)
    n, p, t = 400, 60, 300
    tau2, sigma2 = 0.01, 1.0
    X = rng.standard_normal((n, p))
    Y = X @ (rng.standard_normal((p, t)) * np.sqrt(tau2)) + rng.standard_normal((n, t)) * np.sqrt(sigma2)
    alphas = tuple(10.0 ** np.arange(-1, 5))  # 0.1 … 10,000
    shared = fit_ridge(X, Y, RidgeSettings(alphas=alphas, cv=5, per_target=False), cache=False)
    assert shared.alpha[0] == 100.0
    per_target = fit_ridge(X, Y, RidgeSettings(alphas=alphas, cv=5), cache=False)
    assert np.median(per_target.alpha) == 100.0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("intercept", [True, False])
def test_feature_selection_matches_literal_loop(backend, intercept):
    """fastl2lir-style selection: per target, the k features with the largest |Pearson r| on the training
    data, then ridge on those only (intercept unpenalized, as sklearn)."""
    X, Y, Xt = _data(60, 40, t=7, seed=6)
    k, alpha = 9, 4.0
    ref = np.empty((len(Xt), Y.shape[1]))
    for j in range(Y.shape[1]):
        r = np.array([np.corrcoef(X[:, i], Y[:, j])[0, 1] for i in range(X.shape[1])])
        keep = np.argsort(-np.abs(r))[:k]
        ref[:, j] = Ridge(alpha=alpha, fit_intercept=intercept).fit(X[:, keep], Y[:, j]).predict(Xt[:, keep])
    s = RidgeSettings(alpha=alpha, selection=k, fit_intercept=intercept, backend=backend, chunk_size=3)
    _close(fit_predict(X, Y, Xt, s), ref)
    model = fit_ridge(X, Y, s, cache=False)
    assert model.index.shape == (k, 7)
    _close(model.predict(Xt), ref)


def test_selection_with_all_features_is_plain_ridge():
    X, Y, Xt = _data(30, 10, t=3)
    a = fit_predict(X, Y, Xt, RidgeSettings(alpha=1.0, selection=10))
    _close(a, Ridge(alpha=1.0).fit(X, Y).predict(Xt))


@pytest.mark.parametrize(
    "settings",
    [
        RidgeSettings(alpha=5.0),
        RidgeSettings(alphas=(0.5, 5.0, 50.0), cv=3),
        RidgeSettings(alpha=5.0, selection=6),
    ],
    ids=["fixed", "cv", "select"],
)
def test_chunking_does_not_change_predictions(settings):
    from dataclasses import replace

    X, Y, Xt = _data(36, 50, t=2 * TARGET_BLOCK + 37, seed=7)
    full = fit_predict(X, Y, Xt, replace(settings, chunk_size=10**6))
    model_full = fit_ridge(X, Y, replace(settings, chunk_size=10**6), cache=False).predict(Xt)
    for chunk in (1, TARGET_BLOCK + 5):
        s = replace(settings, chunk_size=chunk)
        np.testing.assert_array_equal(fit_predict(X, Y, Xt, s), full)
        np.testing.assert_array_equal(
            fit_ridge(X, Y, s, cache=False).predict(Xt, chunk_size=chunk + 2), model_full
        )


def test_cache_hit_returns_identical_model():
    from dataclasses import replace

    X, Y, Xt = _data(30, 40, t=5, seed=8)
    s = RidgeSettings(alphas=(1.0, 10.0), cv=3)
    first = fit_ridge(X, Y, s)
    assert first.path is not None and (first.path / "coef.npy").is_file()
    again = fit_ridge(X, Y, replace(s, chunk_size=2))  # chunking is not part of the key
    assert again.key == first.key
    for name in ("coef", "intercept", "alpha", "cv_score"):
        np.testing.assert_array_equal(getattr(again, name), getattr(first, name))
    np.testing.assert_array_equal(again.predict(Xt), fit_ridge(X, Y, s, cache=False).predict(Xt))
    Y2 = Y.copy()
    Y2[0, 0] += 1e-9
    assert fit_ridge(X, Y2, s).key != first.key
    assert fit_ridge(X, Y, replace(s, fit_intercept=False)).key != first.key


def test_fit_predict_cache_round_trip():
    X, Y, Xt = _data(20, 30, t=4, seed=9)
    s = RidgeSettings(alpha=2.0)
    a = fit_predict(X, Y, Xt, s, cache=True)
    b = fit_predict(X, Y, Xt, s, cache=True)
    np.testing.assert_array_equal(a, b)


def test_rescale_to_training_moments_gives_a_constant_prediction_the_training_mean():
    pred = np.ones((4, 2))
    pred[:, 1] = [1, 2, 3, 4]
    train = np.array([[0.0, 1.0], [2.0, 3.0]])
    out = rescale_to_training_moments(pred, train)
    assert np.all(out[:, 0] == 1.0)
    np.testing.assert_allclose(out[:, 1].mean(), 2.0)
    np.testing.assert_allclose(out[:, 1].std(), 1.0)


def _one_line(exc_info):
    msg = str(exc_info.value)
    assert msg and "\n" not in msg
    return msg


def test_bad_inputs_give_one_line_errors():
    X, Y, Xt = _data(10, 5, t=2)
    with pytest.raises(UsageError) as e:
        fit_ridge(X, Y[:-1], cache=False)
    assert "10 rows" in _one_line(e) and "9" in str(e.value)
    Xn = X.copy()
    Xn[3, 2] = np.nan
    with pytest.raises(DataError) as e:
        fit_predict(Xn, Y, Xt)
    assert "sample 3, feature 2" in _one_line(e)
    Yn = Y.copy()
    Yn[4, 1] = np.inf
    with pytest.raises(DataError) as e:
        fit_ridge(X, Yn, cache=False)
    assert "sample 4, target 1" in _one_line(e)
    with pytest.raises(DataError) as e:
        fit_ridge(X[:1], Y[:1], cache=False)
    assert "at least 2" in _one_line(e)
    with pytest.raises(DataError):
        fit_ridge(X[:5], Y[:5], RidgeSettings(alphas=(1.0,), cv=5), cache=False)
    with pytest.raises(UsageError) as e:
        fit_predict(X, Y, Xt[:, :3])
    _one_line(e)
    with pytest.raises(UsageError):
        fit_ridge(X, Y, cache=False).predict(Xt[:, :4])
    with pytest.raises(UsageError):
        fit_ridge(X[:, 0], Y, cache=False)
    for bad in (
        {"alpha": 0},
        {"alphas": (1.0, -1.0)},
        {"dtype": "float16"},
        {"backend": "jax"},
        {"alphas": (1.0,), "selection": 3},
        {"chunk_size": 0},
    ):
        with pytest.raises(UsageError):
            RidgeSettings(**bad)


def test_gpu_bench_script_runs_on_cpu_at_small_scale(capsys):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "gpu_bench_ridge.py"
    spec = importlib.util.spec_from_file_location("gpu_bench_ridge", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert (
        mod.main(
            [
                "--scale",
                "0.005",
                "--backend",
                "numpy",
                "--only",
                "clipvision",
                "--weights",
                "--check",
                "--json",
            ]
        )
        == 0
    )
    (row,) = json.loads(capsys.readouterr().out)
    assert row["targets"] == int(197376 * 0.005) and row["max_rel_err_vs_sklearn"] < 1e-4
