"""2-way identification (brain-diffuser / MindEye / Second Sight orientation) as one matrix computation."""

from __future__ import annotations

import torch

from nsdbench.errors import InvalidSubmission


def _row_stats(x: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row means and norms of the centered rows, in float64, a few rows at a time."""
    mu = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    norm = torch.empty_like(mu)
    for s in range(0, x.shape[0], chunk):
        r = x[s : s + chunk].to(torch.float64)
        m = r.mean(dim=1, keepdim=True)
        mu[s : s + chunk] = m[:, 0]
        norm[s : s + chunk] = torch.linalg.vector_norm(r - m, dim=1)
    return mu, norm


def pearson_matrix(
    gt: torch.Tensor, pred: torch.Tensor, row_chunk: int = 64, col_chunk: int = 8192
) -> torch.Tensor:
    """r[i, j] = Pearson(gt_i, pred_j) in float64: the cross block of np.corrcoef(gt, pred).

    Memory is bounded by the (N, M) result plus (N + M) x col_chunk float64 temporaries: features
    stay in their own dtype and are centered chunk by chunk over the feature dimension.
    """
    g = gt.reshape(gt.shape[0], -1)
    p = pred.reshape(pred.shape[0], -1)
    mu_g, n_g = _row_stats(g, row_chunk)
    mu_p, n_p = _row_stats(p, row_chunk)
    r = torch.zeros((g.shape[0], p.shape[0]), dtype=torch.float64, device=g.device)
    for s in range(0, g.shape[1], col_chunk):
        gc = g[:, s : s + col_chunk].to(torch.float64) - mu_g[:, None]
        pc = p[:, s : s + col_chunk].to(torch.float64) - mu_p[:, None]
        r += gc @ pc.T
    return r / (n_g[:, None] * n_p[None, :])


def two_way_from_r(r: torch.Tensor) -> torch.Tensor:
    """Per-prediction 2-way score from r[i, j] = corr(gt_i, pred_j).

    Prediction j wins against ground truth i != j when r[i, j] < r[j, j] (ties fail); its value is the
    fraction of the N - 1 comparisons won, so the mean over j is the published statistic.
    """
    n = r.shape[0]
    if n < 2:
        raise InvalidSubmission(f"2-way identification needs at least 2 images; got {n}")
    wins = (r < torch.diagonal(r)[None, :]).sum(dim=0)
    return wins.to(torch.float64) / (n - 1)


def two_way(gt: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """(N, D) ground-truth and prediction features, rows aligned by image -> (N,) per-prediction values."""
    if gt.shape != pred.shape:
        raise InvalidSubmission(f"2-way: feature shapes differ {tuple(gt.shape)} vs {tuple(pred.shape)}")
    if gt.shape[0] < 2:
        raise InvalidSubmission(f"2-way identification needs at least 2 images; got {gt.shape[0]}")
    return two_way_from_r(pearson_matrix(gt, pred))
