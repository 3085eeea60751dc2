"""The pure math of brain-guided search (Second Sight, the CCN stochastic search): schedules, slerp, per-row
Pearson scoring on the device, top-k library selection and the per-candidate seeds."""

from __future__ import annotations

import hashlib
import math

import torch


def second_sight_strength(
    i: int, iterations: int, start: float = 0.92, drop: float = 0.3, power: float = 3.0
) -> float:
    """Img2img strength of iteration i (0-based): λ = start − drop·((i+1)/iterations)^power (published: 6)."""
    return start - drop * ((i + 1) / iterations) ** power


def second_sight_momentum(i: int, iterations: int, scale: float = 0.2, power: float = 2.0) -> float:
    """Slerp weight γ of the new seeds' CLIP vectors at iteration i: γ = scale·((i+1)/iterations)^power."""
    return scale * ((i + 1) / iterations) ** power


def branch_size(strength: float, per_branch: int, floor_fraction: float = 0.4) -> int:
    """Images per branch n_b = max(ceil(floor_fraction·per_branch), int(per_branch·λ)); published
    per_branch = 100 samples / 4 branches = 25, so n_b = max(10, int(25λ))."""
    return max(math.ceil(floor_fraction * per_branch - 1e-9), int(per_branch * strength))


def cubic_decay(i: int, iterations: int, start: float = 1.0, end: float = 0.6) -> float:
    """CCN search strength: start at i = 0, end at the last iteration, falling as a cubic in i/(iterations−1)."""
    if iterations <= 1:
        return start
    return start - (start - end) * (i / (iterations - 1)) ** 3


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation from a (t=0) to b (t=1) along the last axis; norms interpolate linearly.
    Falls back to linear interpolation for (nearly) parallel vectors."""
    a64, b64 = a.double(), b.double()
    na, nb = a64.norm(dim=-1, keepdim=True), b64.norm(dim=-1, keepdim=True)
    ua, ub = a64 / na.clamp_min(1e-30), b64 / nb.clamp_min(1e-30)
    cos = (ua * ub).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    sin = torch.sin(theta)
    safe = sin.abs() > 1e-6
    wa = torch.where(
        safe, torch.sin((1 - t) * theta) / torch.where(safe, sin, 1.0), torch.full_like(sin, 1 - t)
    )
    wb = torch.where(safe, torch.sin(t * theta) / torch.where(safe, sin, 1.0), torch.full_like(sin, t))
    direction = wa * ua + wb * ub
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    return (direction * ((1 - t) * na + t * nb)).to(a.dtype)


def pearson_rows(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pearson r of each row of pred (N, V) with target (V,) or row-wise with target (N, V); float64."""
    p = pred.double() - pred.double().mean(-1, keepdim=True)
    t = target.double() - target.double().mean(-1, keepdim=True)
    num = (p * t).sum(-1)
    den = p.norm(dim=-1) * t.norm(dim=-1)
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num))


def mean_pearson(pred: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per row of pred (N, V): the mean over the rows of targets (R, V) of its Pearson r with each, float64 (the
    published search scores a candidate by its mean r with the single repetitions)."""
    return correlation_matrix(pred, targets).mean(1)


def correlation_matrix(pred: torch.Tensor, measured: torch.Tensor) -> torch.Tensor:
    """Pearson r of every library row pred (L, V) with every measured row (T, V) → (L, T), one matmul."""
    p = pred.double() - pred.double().mean(1, keepdim=True)
    m = measured.double() - measured.double().mean(1, keepdim=True)
    p = p / p.norm(dim=1, keepdim=True).clamp_min(1e-300)
    m = m / m.norm(dim=1, keepdim=True).clamp_min(1e-300)
    return p @ m.T


def top_k_rows(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Per column of scores (L, T), the row indices of the k best, best first (ties: lower index) → (T, k)."""
    k = min(int(k), scores.shape[0])
    order = torch.sort(-scores.T, dim=1, stable=True).indices
    return order[:, :k]


def candidate_seed(item_seed: int, stage: str, iteration: int, index: int) -> int:
    """The seed of one candidate image: sha256 of (item seed, stage, iteration, index), first 63 bits, so a
    resumed search draws exactly what an uninterrupted one would."""
    key = f"nsdbench-search-v1|{int(item_seed)}|{stage}|{int(iteration)}|{int(index)}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") >> 1
