"""metrics.brain.brain_correlation against scipy.stats.pearsonr in a literal loop (tolerance 1e-12)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr

from nsdbench.errors import DataError, UsageError
from nsdbench.metrics.brain import BRAIN_ROIS, BrainTarget, brain_correlation


def _rois(n_vox: int, rng) -> dict[str, np.ndarray]:
    label = rng.permutation(np.arange(n_vox) % 5)  # 0 = higher visual, 1..4 = V1..V4
    rois = {f"V{k}": label == k for k in range(1, 5)}
    rois["early"] = label > 0
    rois["higher_vis"] = label == 0
    rois["nsdgeneral"] = np.ones(n_vox, bool)
    return rois


def test_brain_correlation_matches_scipy_loop():
    rng = np.random.default_rng(0)
    n, v = 7, 60
    measured = rng.standard_normal((n, v))
    pred = measured * 0.5 + rng.standard_normal((n, v))
    rois = _rois(v, rng)
    out = brain_correlation(pred.astype(np.float32), measured, rois)
    assert set(out) == set(BRAIN_ROIS)
    for metric, roi in BRAIN_ROIS.items():
        m = rois[roi]
        ref = [pearsonr(pred.astype(np.float32)[i, m], measured[i, m])[0] for i in range(n)]
        np.testing.assert_allclose(out[metric], ref, rtol=0, atol=1e-12)


def test_brain_correlation_only_known_rois_present():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 10))
    out = brain_correlation(x, x, {"V1": np.arange(10) < 5, "other": np.ones(10, bool)})
    assert list(out) == ["bc_v1"]
    np.testing.assert_allclose(out["bc_v1"], 1.0)


def test_brain_correlation_bad_input():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 10))
    rois = {"nsdgeneral": np.ones(10, bool)}
    with pytest.raises(UsageError):
        brain_correlation(x, x[:, :9], rois)
    bad = x.copy()
    bad[1, 4] = np.nan
    with pytest.raises(DataError, match="row 1"):
        brain_correlation(x, bad, rois)
    with pytest.raises(DataError, match="mask"):
        brain_correlation(x, x, {"V1": np.ones(9, bool)})
    with pytest.raises(DataError, match="at least 2"):
        brain_correlation(x, x, {"V1": np.arange(10) == 0})
    with pytest.raises(UsageError):
        brain_correlation(x, x, {"elsewhere": np.ones(10, bool)})


class _LinearEncoder:
    def __init__(self, w):
        self.w = w

    def predict(self, images):
        return np.stack([np.asarray(im, np.float64).reshape(-1) for im in images]) @ self.w


def test_brain_target_scores_by_nsd_id():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (4, 2, 2, 3), dtype=np.uint8)
    enc = _LinearEncoder(rng.standard_normal((12, 20)))
    truth = enc.predict(images)
    target = BrainTarget(enc, {100 + i: truth[i] for i in range(4)}, _rois(20, rng))
    scores = target.brain_correlations([103, 101], images[[3, 1]])
    np.testing.assert_allclose(scores["bc_nsdgeneral"], 1.0)
    shuffled = target.brain_correlations([103, 101], images[[1, 3]])
    assert np.all(shuffled["bc_nsdgeneral"] < 1.0)
    with pytest.raises(UsageError, match="nsd_id 7"):
        target.brain_correlations([7], images[:1])
