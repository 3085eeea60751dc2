"""Pixel metrics against independent computations (scikit-image, numpy, a literal column loop)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter1d
from skimage.color import rgb2gray as sk_rgb2gray
from skimage.metrics import structural_similarity

from nsdbench.metrics import pixel

TOL = 1e-6  # float64 paths


@pytest.fixture(scope="module")
def pairs() -> tuple[np.ndarray, np.ndarray]:
    """Correlated random RGB pairs in [0, 1], not square, so axis mix-ups are caught."""
    rng = np.random.default_rng(0)
    gt = rng.random((4, 33, 41, 3))
    rec = np.clip(0.6 * gt + 0.4 * rng.random(gt.shape), 0, 1)
    return gt, rec


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(0, 3, 1, 2)


def test_rgb2gray_matches_skimage(pairs):
    gt, _ = pairs
    ours = pixel.rgb2gray(_t(gt)).numpy()
    ref = np.stack([sk_rgb2gray(im) for im in gt])
    assert np.abs(ours - ref).max() < 1e-12


def test_pixcorr_matches_numpy_corrcoef(pairs):
    gt, rec = pairs
    ours = pixel.pixcorr(_t(gt), _t(rec)).numpy()
    ref = [np.corrcoef(g.reshape(1, -1), r.reshape(1, -1))[0, 1] for g, r in zip(gt, rec)]
    np.testing.assert_allclose(ours, ref, rtol=0, atol=TOL)


def _gray(x):
    return np.stack([sk_rgb2gray(im) for im in x])


BACKENDS = pytest.mark.parametrize("backend", ["numpy", "torch"])  # CPU path and the device (GPU) path


@BACKENDS
def test_ssim_2d_matches_skimage(pairs, backend):
    gt, rec = _gray(pairs[0]), _gray(pairs[1])
    ours = pixel.ssim_2d(torch.from_numpy(rec), torch.from_numpy(gt), backend=backend).numpy()
    ref = [
        structural_similarity(
            r, g, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
        )
        for r, g in zip(rec, gt)
    ]
    np.testing.assert_allclose(ours, ref, rtol=0, atol=TOL)


@BACKENDS
def test_ssim_sample_covariance_gt_range_matches_skimage(pairs, backend):
    gt, rec = _gray(pairs[0]), _gray(pairs[1])
    tg = torch.from_numpy(gt)
    ours = pixel.ssim_2d(
        torch.from_numpy(rec), tg, pixel.gt_range(tg), sample_covariance=True, backend=backend
    )
    ours = ours.numpy()
    ref = [
        structural_similarity(
            r, g, gaussian_weights=True, sigma=1.5, use_sample_covariance=True, data_range=g.max() - g.min()
        )
        for r, g in zip(rec, gt)
    ]
    np.testing.assert_allclose(ours, ref, rtol=0, atol=TOL)


def _literal_columnwise_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Wang et al. SSIM on each column as a 1-D signal (11-tap Gaussian, sigma 1.5), border cropped."""
    c1, c2 = (0.01 * 1.0) ** 2, (0.03 * 1.0) ** 2
    per_col = []
    for j in range(x.shape[1]):
        a, b = x[:, j], y[:, j]

        def f(v):
            return gaussian_filter1d(v, 1.5, mode="reflect", truncate=3.5)

        ua, ub = f(a), f(b)
        va, vb, vab = f(a * a) - ua * ua, f(b * b) - ub * ub, f(a * b) - ua * ub
        s = ((2 * ua * ub + c1) * (2 * vab + c2)) / ((ua**2 + ub**2 + c1) * (va + vb + c2))
        per_col.append(s[5:-5].mean())
    return float(np.mean(per_col))


@BACKENDS
def test_columnwise_ssim_matches_literal_loop_and_channel_axis(pairs, backend):
    gt, rec = _gray(pairs[0]), _gray(pairs[1])
    ours = pixel.ssim_columnwise(torch.from_numpy(rec), torch.from_numpy(gt), backend=backend).numpy()
    literal = [_literal_columnwise_ssim(r, g) for r, g in zip(rec, gt)]
    skimage_legacy = [
        structural_similarity(
            r,
            g,
            channel_axis=-1,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
        )
        for r, g in zip(rec, gt)
    ]
    np.testing.assert_allclose(ours, literal, rtol=0, atol=TOL)
    np.testing.assert_allclose(ours, skimage_legacy, rtol=0, atol=TOL)
    # the two SSIMs really are different metrics
    assert np.abs(ours - pixel.ssim_2d(torch.from_numpy(rec), torch.from_numpy(gt)).numpy()).max() > 1e-3


def test_device_filter_path_matches_scipy():
    """The shifted-add filter used on GPUs equals scipy's correlate1d (mode='reflect') on CPU."""
    from scipy.ndimage import correlate1d

    x = torch.rand(2, 3, 23, 17, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    k = pixel.gaussian_kernel1d(1.5, 3.5, torch.float64, "cpu")
    for dim in (2, 3):
        ours = pixel.filter_axis_torch(x, k, dim).numpy()
        ref = correlate1d(x.numpy(), k.numpy(), axis=dim, mode="reflect")
        assert np.abs(ours - ref).max() < 1e-12


def test_identical_images_score_one(pairs):
    g = torch.from_numpy(_gray(pairs[0]))
    assert torch.allclose(pixel.ssim_2d(g, g), torch.ones(4, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(pixel.ssim_columnwise(g, g), torch.ones(4, dtype=torch.float64), atol=1e-12)
    rgb = _t(pairs[0])
    assert torch.allclose(pixel.pixcorr(rgb, rgb), torch.ones(4, dtype=torch.float64), atol=1e-12)


def test_ssim_rejects_images_smaller_than_window():
    x = torch.rand(1, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="window"):
        pixel.ssim_2d(x, x)
