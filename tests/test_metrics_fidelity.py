"""Protocol fidelity: each shipped protocol vs the reference evaluation's steps followed literally.

The reference side re-does what the published code does (PIL / torchvision resizes, torchvision
Normalize, forward hooks, np.corrcoef, scipy, scikit-image) on a few images, with the same tiny or
random networks, and must give the engine's numbers. Tolerances: 1e-6 for float64 paths; 2-way values
must match exactly; MindEye's SSIM, which its code computes in float32, within 1e-5.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
import torchvision
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from scipy.spatial.distance import correlation as scipy_correlation
from skimage.color import rgb2gray
from skimage.metrics import structural_similarity as ssim

from nsdbench.metrics import engine
from nsdbench.metrics.networks import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, get_network
from nsdbench.metrics.protocols import PROTOCOLS, Protocol

TOL = 1e-6
N = 4
IMAGENET = T.Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))
CLIPNORM = T.Normalize(mean=list(CLIP_MEAN), std=list(CLIP_STD))
HOOK = {"alexnet2": "features.4", "alexnet5": "features.11", "alexnet7": "classifier.5"}


@pytest.fixture(scope="module")
def images():
    """Ground truth at NSD's native 425 px; reconstructions at another size (they get resized)."""
    rng = np.random.default_rng(11)
    gt = rng.integers(0, 256, (N, 425, 425, 3), dtype=np.uint8)
    # smooth-ish reconstructions correlated with the ground truth
    rec = np.stack([np.asarray(Image.fromarray(g).resize((96, 96), Image.Resampling.BOX)) for g in gt])
    noise = rng.integers(-40, 40, rec.shape)
    rec = np.clip(rec.astype(int) + noise, 0, 255).astype(np.uint8)
    return np.array([3, 17, 2950, 71000]), gt, rec


def _module(net: str, precision: str = "fp32", mode: str = "tiny") -> torch.nn.Module:
    return get_network(net, "-", mode, precision).module


def _hooked_forward(module, batches, layer: str | None, half: bool = False) -> np.ndarray:
    """brain-diffuser's extraction: a forward hook appending outputs, batch 64, no grad."""
    feats: list[np.ndarray] = []

    def fn(_m, _i, out):
        feats.append(out.float().cpu().numpy())

    target = module if layer is None else module.get_submodule(layer)
    h = target.register_forward_hook(fn)
    try:
        with torch.no_grad():
            for x in batches:
                module(x.half() if half else x)
    finally:
        h.remove()
    f = np.concatenate(feats)
    return f.reshape(len(f), -1)


def _pairwise_corr_all(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """The published 2-way code, returning the per-prediction success fraction."""
    r = np.corrcoef(gt, pred)[: len(gt), len(gt) :]
    return np.sum(r < np.diag(r), 0) / (len(gt) - 1)


def _pil_batches(imgs, size, norm, resample=None):
    xs = []
    for im in imgs:
        pil = Image.fromarray(im)
        pil = TF.resize(pil, [size, size]) if resample is None else pil.resize((size, size), resample)
        xs.append(norm(TF.to_tensor(pil)))
    return [torch.stack(xs[i : i + 64]) for i in range(0, len(xs), 64)]


def _engine(protocol, images, mode="tiny"):
    ids, gt, rec = images
    res = engine.score(ids, gt, ids, np.zeros(len(ids), int), rec, protocol, weights_mode=mode, cache=False)
    ps = res.per_sample
    return {m: ps[ps["metric"] == m].sort_values("nsd_id")["value"].to_numpy() for m in res.set_scores}


def _bd_like_features(gt, rec, norm_cnn, metrics, effnet="efficientnet_b1"):
    """brain-diffuser / Second Sight feature metrics: PIL bilinear 224, hooks, corrcoef, scipy."""
    out = {}
    for name in metrics:
        if name in HOOK:
            mod, layer, norm = _module("alexnet"), HOOK[name], norm_cnn
        elif name == "inception":
            mod, layer, norm = _module("inception_v3"), "avgpool", norm_cnn
        elif name == "clip_2way":
            mod, layer, norm = _module("clip_vit_l14"), None, CLIPNORM
        elif name == "effnet_b":
            mod, layer, norm = _module(effnet), "avgpool", norm_cnn
        else:
            mod, layer, norm = _module("swav_resnet50"), "avgpool", norm_cnn
        g = _hooked_forward(mod, _pil_batches(gt, 224, norm), layer)
        p = _hooked_forward(mod, _pil_batches(rec, 224, norm), layer)
        if name in ("effnet_b", "swav"):
            out[name] = np.array([scipy_correlation(g[i], p[i]) for i in range(len(g))])
        else:
            out[name] = _pairwise_corr_all(g, p)
    return out


def _check(
    ours: dict, ref: dict, exact=("alexnet2", "alexnet5", "alexnet7", "inception", "clip_2way"), tol=None
):
    tol = tol or {}
    assert set(ref) <= set(ours)
    for m, v in ref.items():
        if m in exact:
            np.testing.assert_array_equal(ours[m], v, err_msg=m)
        else:
            np.testing.assert_allclose(ours[m], v, rtol=0, atol=tol.get(m, TOL), err_msg=m)


def test_brain_diffuser_2023(images):
    _ids, gt, rec = images
    ref = {"pixcorr": [], "ssim": []}
    for g, r in zip(gt, rec):
        gen = np.array(Image.fromarray(r).resize((425, 425))) / 255.0  # PIL default filter: bicubic
        gti = np.array(Image.fromarray(g)) / 255.0
        ref["pixcorr"].append(np.corrcoef(gti.reshape(1, -1), gen.reshape(1, -1))[0, 1])
        # skimage <= 0.19 multichannel=True on a 2-D image == channel_axis=-1 today
        ref["ssim"].append(
            ssim(
                rgb2gray(gen),
                rgb2gray(gti),
                channel_axis=-1,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=1.0,
            )
        )
    ref = {k: np.array(v) for k, v in ref.items()}
    ref.update(
        _bd_like_features(
            gt, rec, IMAGENET, ("alexnet2", "alexnet5", "inception", "clip_2way", "effnet_b", "swav")
        )
    )
    ours = _engine("brain-diffuser-2023", images)
    assert set(ours) == set(ref)
    _check(ours, ref)


def test_nsdbench_v1(images):
    _ids, gt, rec = images
    ref = {"pixcorr": [], "ssim": []}
    for g, r in zip(gt, rec):
        gen = np.array(Image.fromarray(r).resize((425, 425), Image.Resampling.BICUBIC)) / 255.0
        gti = np.array(Image.fromarray(g).resize((425, 425), Image.Resampling.BICUBIC)) / 255.0
        ref["pixcorr"].append(np.corrcoef(gti.ravel(), gen.ravel())[0, 1])
        ref["ssim"].append(
            ssim(
                rgb2gray(gen),
                rgb2gray(gti),
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=1.0,
            )
        )
    ref = {k: np.array(v) for k, v in ref.items()}
    ref.update(
        _bd_like_features(
            gt,
            rec,
            IMAGENET,
            ("alexnet2", "alexnet5", "alexnet7", "inception", "clip_2way", "effnet_b", "swav"),
        )
    )
    clip = _module("clip_vit_l14")
    g = _hooked_forward(clip, _pil_batches(gt, 224, CLIPNORM), None)
    p = _hooked_forward(clip, _pil_batches(rec, 224, CLIPNORM), None)
    ref["clip_cos"] = torch.nn.functional.cosine_similarity(
        torch.from_numpy(g), torch.from_numpy(p), dim=1
    ).numpy()
    ours = _engine("nsdbench-v1", images)
    _check(ours, ref)


def test_mindeye(images):
    _ids, gt, rec = images

    def stored(x):  # evals/all_images.pt: float tensors at 256, torchvision < 0.17 (no antialias)
        t = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
        return T.Resize((256, 256), antialias=False)(t)

    all_images, all_recons = stored(gt), stored(rec)
    up = T.Resize(425, interpolation=T.InterpolationMode.BILINEAR, antialias=False)
    gi, ri = up(all_images).reshape(N, -1), up(all_recons).reshape(N, -1)
    ref = {"pixcorr": np.array([np.corrcoef(gi[i], ri[i])[0][1] for i in range(N)])}
    img_gray = rgb2gray(up(all_images).permute((0, 2, 3, 1)).numpy())
    recon_gray = rgb2gray(up(all_recons).permute((0, 2, 3, 1)).numpy())
    ref["ssim"] = np.array(
        [
            ssim(r, g, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
            for g, r in zip(img_gray, recon_gray)
        ]
    )

    def two_way_me(module, size, norm, layer, half=False):
        pre = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BILINEAR, antialias=False), norm])
        preds = _hooked_forward(module, [torch.stack([pre(x) for x in all_recons])], layer, half)
        reals = _hooked_forward(module, [torch.stack([pre(x) for x in all_images])], layer, half)
        return preds, reals

    for name, layer in (("alexnet2", "features.4"), ("alexnet5", "features.11")):
        p, g = two_way_me(_module("alexnet"), 256, IMAGENET, layer)
        ref[name] = _pairwise_corr_all(g, p)
    p, g = two_way_me(_module("inception_v3"), 342, IMAGENET, "avgpool")
    ref["inception"] = _pairwise_corr_all(g, p)
    p, g = two_way_me(_module("clip_vit_l14", "fp16"), 224, CLIPNORM, None, half=True)
    ref["clip_2way"] = _pairwise_corr_all(g, p)
    for name, net, size in (("effnet_b", "efficientnet_b1", 255), ("swav", "swav_resnet50", 224)):
        p, g = two_way_me(_module(net), size, IMAGENET, "avgpool")
        ref[name] = np.array([scipy_correlation(g[i], p[i]) for i in range(N)])
    ours = _engine("mindeye", images)
    assert set(ours) == set(ref)
    _check(ours, ref, tol={"ssim": 1e-5})  # the reference's SSIM runs in float32


def test_second_sight_2023(images):
    _ids, gt, rec = images
    ref = {"pixcorr": [], "ssim": []}
    for g, r in zip(gt, rec):
        a = np.array(Image.fromarray(g).resize((425, 425), resample=Image.Resampling.LANCZOS)).flatten()
        b = np.array(Image.fromarray(r).resize((425, 425), resample=Image.Resampling.LANCZOS)).flatten()
        ref["pixcorr"].append(np.corrcoef(a, b)[0][1])
        gg = rgb2gray(np.array(Image.fromarray(g).resize((425, 425))) / 255.0)
        rr = rgb2gray(np.array(Image.fromarray(r).resize((425, 425))) / 255.0)
        ref["ssim"].append(
            ssim(
                rr,
                gg,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=True,
                data_range=gg.max() - gg.min(),
            )
        )
    ref = {k: np.array(v) for k, v in ref.items()}
    # every network gets CLIP's mean/std (the reference dataset class defaults to CLIP)
    ref.update(
        _bd_like_features(
            gt,
            rec,
            CLIPNORM,
            ("alexnet2", "alexnet5", "alexnet7", "inception", "clip_2way", "effnet_b", "swav"),
        )
    )

    def processor(im):  # HF CLIPImageProcessor: shortest edge 224 bicubic, center crop, rescale, normalize
        pil = Image.fromarray(im).resize((224, 224), Image.Resampling.BICUBIC)
        x = (np.asarray(pil).astype(np.float64) * (1 / 255)).astype(np.float32)
        x = (x - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
        return torch.from_numpy(x.transpose(2, 0, 1).copy())

    clip = _module("clip_vit_l14")
    with torch.no_grad():
        fg = clip(torch.stack([processor(x) for x in gt]))
        fr = clip(torch.stack([processor(x) for x in rec]))
    ref["clip_cos"] = np.array(
        [torch.nn.functional.cosine_similarity(fg[i], fr[i], dim=0).item() for i in range(N)]
    )
    ours = _engine("second-sight-2023", images)
    assert set(ours) == set(ref)
    _check(ours, ref)


def test_random_weights_alexnet_matches_an_independent_torchvision_build(images):
    """`random` mode = torchvision's real AlexNet under a fixed seed; brain-diffuser's hooks on it agree."""
    _ids, gt, rec = images
    bd = PROTOCOLS["brain-diffuser-2023"]
    proto = Protocol(
        "bd-alexnet", "0", "", bd.split, bd.published_order, (bd.metric("alexnet2"), bd.metric("alexnet5"))
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(zlib.crc32(b"alexnet"))
        net = torchvision.models.alexnet(weights=None).eval()
    from nsdbench import weights

    assert weights.module_sha256(net) == get_network("alexnet", "-", "random").sha256
    ref = {}
    for name in ("alexnet2", "alexnet5"):
        feats = []
        h = net.features[4 if name == "alexnet2" else 11].register_forward_hook(
            lambda _m, _i, o, feats=feats: feats.append(o.cpu().numpy())
        )
        with torch.no_grad():
            net(_pil_batches(gt, 224, IMAGENET)[0])
            net(_pil_batches(rec, 224, IMAGENET)[0])
        h.remove()
        ref[name] = _pairwise_corr_all(feats[0].reshape(N, -1), feats[1].reshape(N, -1))
    _check(_engine(proto, images, mode="random"), ref)
