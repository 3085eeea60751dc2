"""Pixel metrics (PixCorr, SSIM variants) as batched float64 torch functions with scikit-image semantics.

All functions take (B, ...) tensors and return (B,) per-image values, on whatever device the inputs
live. SSIM follows skimage.metrics.structural_similarity(gaussian_weights=True): a scipy.ndimage
Gaussian (mode 'reflect' = half-sample symmetric), the radius-wide border cropped, mean in float64.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from nsdbench.errors import UsageError
from nsdbench.metrics.resize import to_float

if TYPE_CHECKING:
    from nsdbench.metrics.protocols import PixelMetric

RGB2GRAY = (0.2125, 0.7154, 0.0721)  # skimage.color.rgb2gray


def rgb2gray(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, H, W) with scikit-image's luminance weights."""
    return x[:, 0] * RGB2GRAY[0] + x[:, 1] * RGB2GRAY[1] + x[:, 2] * RGB2GRAY[2]


def pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation between a[i] and b[i] (each flattened); (B, ...) x 2 -> (B,)."""
    a = a.reshape(a.shape[0], -1)
    b = b.reshape(b.shape[0], -1)
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    num = (a * b).sum(dim=1)
    den = torch.sqrt((a * a).sum(dim=1) * (b * b).sum(dim=1))
    return num / den


def pixcorr(gt: torch.Tensor, rec: torch.Tensor) -> torch.Tensor:
    """PixCorr: Pearson over all flattened RGB values of each image pair."""
    return pearson_rows(gt, rec)


def gaussian_kernel1d(sigma: float, truncate: float, dtype: torch.dtype, device) -> torch.Tensor:
    """scipy.ndimage's Gaussian taps: radius int(truncate * sigma + 0.5), normalized to sum 1."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    phi = torch.exp(-0.5 / (sigma * sigma) * x**2)
    return (phi / phi.sum()).to(dtype=dtype, device=device)


def _symmetric_index(n: int, radius: int, device) -> torch.Tensor:
    """Indices of scipy mode='reflect' padding (d c b a | a b c d | d c b a)."""
    idx = torch.arange(-radius, n + radius, device=device)
    for _ in range(4):  # fold repeatedly so images narrower than the radius are still handled
        idx = torch.where(idx < 0, -idx - 1, idx)
        idx = torch.where(idx >= n, 2 * n - idx - 1, idx)
    return idx


def filter_axis_torch(x: torch.Tensor, kernel: torch.Tensor, dim: int) -> torch.Tensor:
    """1-D correlation along `dim` with scipy mode='reflect' borders: index padding, shifted multiply-adds."""
    radius = (kernel.numel() - 1) // 2
    n = x.shape[dim]
    padded = x.index_select(dim, _symmetric_index(n, radius, x.device))
    taps = kernel.tolist()
    out = padded.narrow(dim, 0, n) * taps[0]
    for k in range(1, len(taps)):
        out.add_(padded.narrow(dim, k, n), alpha=taps[k])
    return out


def _ssim_torch(x, y, dims, r, sample_covariance, sigma, truncate, k1, k2) -> torch.Tensor:
    """Batched SSIM on any torch device; returns the per-image mean over the cropped map."""
    kernel = gaussian_kernel1d(sigma, truncate, x.dtype, x.device)
    stack = torch.stack([x, y, x * x, y * y, x * y])  # filter all five moments in one pass
    for d in dims:
        stack = filter_axis_torch(stack, kernel, d + 1)
    ux, uy, uxx, uyy, uxy = stack
    n_points = kernel.numel() ** len(dims)
    cov_norm = n_points / (n_points - 1) if sample_covariance else 1.0
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    r = r.reshape((-1,) + (1,) * (x.ndim - 1))
    c1 = (k1 * r) ** 2
    c2 = (k2 * r) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    pad = (kernel.numel() - 1) // 2
    for d in dims:
        s = s.narrow(d, pad, s.shape[d] - 2 * pad)
    return s.reshape(s.shape[0], -1).mean(dim=1)


def _ssim_numpy(x, y, dims, r, sample_covariance, sigma, truncate, k1, k2) -> torch.Tensor:
    """CPU path: one image at a time with scipy filters and numpy (cache-friendly, no thread pool)."""
    from scipy.ndimage import correlate1d

    kernel = gaussian_kernel1d(sigma, truncate, torch.float64, "cpu").numpy()
    pad = (kernel.size - 1) // 2
    n_points = kernel.size ** len(dims)
    cov_norm = n_points / (n_points - 1) if sample_covariance else 1.0
    xs, ys, rs = x.numpy(), y.numpy(), r.numpy()
    out = np.empty(xs.shape[0], dtype=np.float64)
    for i in range(xs.shape[0]):
        a, b = xs[i], ys[i]
        moments = []
        for m in (a, b, a * a, b * b, a * b):
            for d in dims:
                m = correlate1d(m, kernel, axis=d - 1, mode="reflect")
            moments.append(m)
        ux, uy, uxx, uyy, uxy = moments
        vx = cov_norm * (uxx - ux * ux)
        vy = cov_norm * (uyy - uy * uy)
        vxy = cov_norm * (uxy - ux * uy)
        c1, c2 = (k1 * rs[i]) ** 2, (k2 * rs[i]) ** 2
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
        crop = tuple(slice(pad, s.shape[ax] - pad) if ax + 1 in dims else slice(None) for ax in range(s.ndim))
        out[i] = s[crop].mean(dtype=np.float64)
    return torch.from_numpy(out)


def _ssim(x, y, dims, data_range, sample_covariance, sigma, truncate, k1, k2, backend) -> torch.Tensor:
    win = 2 * int(truncate * sigma + 0.5) + 1
    for d in dims:
        if x.shape[d] < win:
            raise ValueError(f"SSIM window {win} exceeds image extent {tuple(x.shape[1:])}")
    r = _as_range(data_range, x.shape[0], x)
    if backend == "auto":
        backend = "numpy" if x.device.type == "cpu" else "torch"
    fn = _ssim_numpy if backend == "numpy" else _ssim_torch
    return fn(x, y, dims, r, sample_covariance, sigma, truncate, k1, k2)


def _as_range(data_range: float | torch.Tensor, b: int, like: torch.Tensor) -> torch.Tensor:
    if isinstance(data_range, torch.Tensor):
        return data_range.to(device=like.device, dtype=like.dtype).reshape(b)
    return torch.full((b,), float(data_range), dtype=like.dtype, device=like.device)


def ssim_2d(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float | torch.Tensor = 1.0,
    sample_covariance: bool = False,
    sigma: float = 1.5,
    truncate: float = 3.5,
    k1: float = 0.01,
    k2: float = 0.03,
    backend: str = "auto",
) -> torch.Tensor:
    """Gaussian-weighted 2-D SSIM of gray images (B, H, W) -> (B,) (skimage >= 0.20 on 2-D input).

    backend: "auto" (numpy on CPU tensors, torch elsewhere), "numpy" or "torch"; both are exact.
    """
    return _ssim(x, y, (1, 2), data_range, sample_covariance, sigma, truncate, k1, k2, backend)


def ssim_columnwise(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float | torch.Tensor = 1.0,
    sample_covariance: bool = False,
    sigma: float = 1.5,
    truncate: float = 3.5,
    k1: float = 0.01,
    k2: float = 0.03,
    backend: str = "auto",
) -> torch.Tensor:
    """The legacy SSIM: skimage <= 0.19 `multichannel=True` on a 2-D gray image (B, H, W) -> (B,).

    Each of the W columns is a 1-D signal with a 1-D Gaussian window down the column; the value is
    the mean over columns (identical to channel_axis=-1 in current scikit-image).
    """
    return _ssim(x, y, (1,), data_range, sample_covariance, sigma, truncate, k1, k2, backend)


def gt_range(gray: torch.Tensor) -> torch.Tensor:
    """Second Sight's data_range: max - min of each gray ground truth."""
    flat = gray.reshape(gray.shape[0], -1)
    return flat.max(dim=1).values - flat.min(dim=1).values


def pixel_metric_values(metric: PixelMetric, gt: torch.Tensor, rec: torch.Tensor) -> torch.Tensor:
    """(B,) float64 values of one protocol pixel metric on resized (B, 3, H, W) ground truth and
    reconstructions (uint8 from PIL chains, float [0, 1] from torch chains)."""
    gf = to_float(gt, torch.float64)
    rf = to_float(rec, torch.float64)
    if gf.shape != rf.shape:
        raise UsageError(
            f"protocol metric {metric.name}: its resize chains give different sizes {tuple(gf.shape)} "
            f"vs {tuple(rf.shape)}"
        )
    if metric.color == "gray":
        gf, rf = rgb2gray(gf), rgb2gray(rf)
    if metric.kind == "pearson":
        return pixcorr(gf, rf)
    dr: float | torch.Tensor = gt_range(gf) if metric.data_range == "gt-range" else 1.0
    fn = ssim_2d if metric.kind == "ssim-2d" else ssim_columnwise
    return fn(rf, gf, dr, metric.sample_covariance, metric.sigma, metric.truncate, metric.k1, metric.k2)
