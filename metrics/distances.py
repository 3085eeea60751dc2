"""Per-pair feature distances: correlation distance (EffNet-B, SwAV) and cosine similarity (CLIP)."""

from __future__ import annotations

import torch


def correlation_distance(gt: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """1 - Pearson(gt_i, pred_i) per row in float64 (scipy.spatial.distance.correlation), clipped to [0, 2]."""
    a = gt.reshape(gt.shape[0], -1).to(torch.float64)
    b = pred.reshape(pred.shape[0], -1).to(torch.float64)
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    r = (a * b).sum(dim=1) / torch.sqrt((a * a).sum(dim=1) * (b * b).sum(dim=1))
    return torch.clamp(1.0 - r, 0.0, 2.0)


def cosine(gt: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Cosine similarity per row in float64 (torch.nn.functional.cosine_similarity semantics)."""
    a = gt.reshape(gt.shape[0], -1).to(torch.float64)
    b = pred.reshape(pred.shape[0], -1).to(torch.float64)
    return (a * b).sum(dim=1) / (torch.linalg.vector_norm(a, dim=1) * torch.linalg.vector_norm(b, dim=1))
