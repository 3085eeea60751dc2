"""2-way identification and feature distances against literal loops and scipy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import correlation as scipy_correlation

from nsdbench.errors import InvalidSubmission
from nsdbench.metrics import distances, identification

TOL = 1e-6


def _features(n=12, d=50, noise=1.5, seed=0):
    rng = np.random.default_rng(seed)
    gt = rng.normal(size=(n, d)).astype(np.float32)
    pred = (gt + noise * rng.normal(size=(n, d))).astype(np.float32)
    return gt, pred


def _literal_two_way(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Published formula, one comparison at a time: prediction j beats gt i when corr(gt_i, pred_j) < corr(gt_j, pred_j)."""
    n = len(gt)
    out = np.zeros(n)
    for j in range(n):
        own = np.corrcoef(gt[j].astype(np.float64), pred[j].astype(np.float64))[0, 1]
        wins = 0
        for i in range(n):
            if i != j and np.corrcoef(gt[i].astype(np.float64), pred[j].astype(np.float64))[0, 1] < own:
                wins += 1
        out[j] = wins / (n - 1)
    return out


def test_pearson_matrix_is_corrcoef_cross_block():
    gt, pred = _features()
    ours = identification.pearson_matrix(
        torch.from_numpy(gt), torch.from_numpy(pred), row_chunk=5, col_chunk=7
    )
    ref = np.corrcoef(gt, pred)[: len(gt), len(gt) :]
    assert np.abs(ours.numpy() - ref).max() < 1e-12


@pytest.mark.parametrize("noise", [0.5, 1.5, 4.0])
def test_two_way_matches_literal_double_loop(noise):
    gt, pred = _features(noise=noise, seed=int(noise * 10))
    ours = identification.two_way(torch.from_numpy(gt), torch.from_numpy(pred)).numpy()
    ref = _literal_two_way(gt, pred)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=TOL)
    # its mean is brain-diffuser's pairwise_corr_all statistic
    r = np.corrcoef(gt, pred)[: len(gt), len(gt) :]
    published = np.mean(np.sum(r < np.diag(r), 0)) / (len(gt) - 1)
    assert abs(ours.mean() - published) < TOL


def test_two_way_ties_fail_and_self_is_one():
    gt, _ = _features()
    t = torch.from_numpy(gt)
    assert torch.all(identification.two_way(t, t) == 1.0)
    same = torch.ones(3, 5).cumsum(1)  # identical rows: every comparison is a tie
    assert torch.all(identification.two_way(same, same) == 0.0)


def test_two_way_needs_two_images():
    with pytest.raises(InvalidSubmission, match="at least 2"):
        identification.two_way(torch.ones(1, 4), torch.ones(1, 4))


def test_correlation_distance_matches_scipy():
    gt, pred = _features(d=37)
    ours = distances.correlation_distance(torch.from_numpy(gt), torch.from_numpy(pred)).numpy()
    ref = [scipy_correlation(g.astype(np.float64), p.astype(np.float64)) for g, p in zip(gt, pred)]
    np.testing.assert_allclose(ours, ref, rtol=0, atol=TOL)
    assert (
        np.abs(distances.correlation_distance(torch.from_numpy(gt), torch.from_numpy(gt)).numpy()).max()
        < 1e-12
    )


def test_cosine_matches_numpy():
    gt, pred = _features(d=23)
    ours = distances.cosine(torch.from_numpy(gt), torch.from_numpy(pred)).numpy()
    g, p = gt.astype(np.float64), pred.astype(np.float64)
    ref = (g * p).sum(1) / (np.linalg.norm(g, axis=1) * np.linalg.norm(p, axis=1))
    np.testing.assert_allclose(ours, ref, rtol=0, atol=TOL)
