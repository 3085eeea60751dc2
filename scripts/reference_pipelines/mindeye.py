"""MindEye's evaluation structure (MindEye1 final_evaluations, MindEye2 final_evaluations).

The whole set is held as float tensors at 256 px (torchvision Resize without antialias); each metric
resizes it again with torchvision transforms and pushes the WHOLE set through its network in one
unbatched forward pass (per layer, per side); 2-way identification with np.corrcoef, a scipy
correlation-distance loop for EffNet-B (V2 weights) and SwAV, per-image numpy loops for PixCorr and
scikit-image SSIM (2-D: skimage >= 0.20 ignores multichannel=True). CLIP runs in fp16 as OpenAI clip's
convert_weights leaves it (LayerNorm in fp32).

    python scripts/reference_pipelines/mindeye.py --data NSD --submission SUB --out me.json
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from _common import (
    Stages,
    network,
    pairwise_corr_all,
    parse_args,
    read_ground_truth,
    read_png,
    submission_files,
    write,
)
from scipy.spatial.distance import correlation as correlation_distance
from skimage.color import rgb2gray
from skimage.metrics import structural_similarity

from nsdbench.metrics.networks import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """transforms.Resize(size, InterpolationMode.BILINEAR) on square float tensors, torchvision < 0.17
    default (no antialias); the input itself when the size already matches."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


def layer_output(model: torch.nn.Module, module: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """The output of `module` for the whole batch x in one forward pass, flattened, float32 numpy."""
    got = {}
    handle = module.register_forward_hook(lambda _m, _i, out: got.__setitem__("y", out))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    y = got["y"]
    return y.float().reshape(len(y), -1).cpu().numpy()


def main() -> None:
    args = parse_args(__doc__)
    st = Stages()
    ids, paths = submission_files(args.submission, args.subject)
    with st("ground_truth"):
        gt_u8 = read_ground_truth(args.data, ids)
    with st("decode"):
        rec_u8 = np.stack([np.asarray(read_png(p)) for p in paths])
    with st("resize"):  # all_images / all_recons: stored at 256 px
        all_images = resize(torch.from_numpy(gt_u8).permute(0, 3, 1, 2).float() / 255, 256)
        all_recons = resize(torch.from_numpy(rec_u8).permute(0, 3, 1, 2).float() / 255, 256)
    n = len(ids)
    values: dict[str, np.ndarray] = {}

    with st("resize"):
        gt425, rec425 = resize(all_images, 425), resize(all_recons, 425)
    with st("pixel"):
        gt_flat = gt425.reshape(n, -1).numpy()
        rec_flat = rec425.reshape(n, -1).numpy()
        values["pixcorr"] = np.array([np.corrcoef(gt_flat[i], rec_flat[i])[0][1] for i in range(n)])
        img_gray = rgb2gray(gt425.permute(0, 2, 3, 1).numpy())
        recon_gray = rgb2gray(rec425.permute(0, 2, 3, 1).numpy())
        values["ssim"] = np.array(
            [
                structural_similarity(
                    recon_gray[i],
                    img_gray[i],
                    gaussian_weights=True,
                    sigma=1.5,
                    use_sample_covariance=False,
                    data_range=1.0,
                )
                for i in range(n)
            ]
        )

    # (metric, network, weights, layer module path or "" for the model output, resize, normalization, dtype)
    nets = (
        ("alexnet2", "alexnet", "IMAGENET1K_V1", "features.4", 256, "imagenet", "fp32"),
        ("alexnet5", "alexnet", "IMAGENET1K_V1", "features.11", 256, "imagenet", "fp32"),
        ("inception", "inception_v3", "IMAGENET1K_V1", "avgpool", 342, "imagenet", "fp32"),
        ("clip_2way", "clip_vit_l14", "openai", "", 224, "clip", "fp16-openai"),
        ("effnet_b", "efficientnet_b1", "IMAGENET1K_V2", "avgpool", 255, "imagenet", "fp32"),
        ("swav", "swav_resnet50", "800ep", "avgpool", 224, "imagenet", "fp32"),
    )
    for metric, name, version, layer, size, norm, precision in nets:
        with st("build"):
            model = network(name, version, args.weights, precision, args.device)
        mean, std = (CLIP_MEAN, CLIP_STD) if norm == "clip" else (IMAGENET_MEAN, IMAGENET_STD)
        dtype = torch.float16 if precision.startswith("fp16") else torch.float32
        module = model.get_submodule(layer) if layer else model
        feats = []
        for images in (all_images, all_recons):
            with st("resize"):
                x = normalize(resize(images, size), mean, std).to(dtype)
            with st(f"forward:{name}"):
                feats.append(layer_output(model, module, x.to(args.device)))
        with st("statistics"):
            gt_f, rec_f = feats
            if metric in ("effnet_b", "swav"):
                gt_f, rec_f = gt_f.astype(np.float64), rec_f.astype(np.float64)  # the protocol's float64
                values[metric] = np.array([correlation_distance(gt_f[i], rec_f[i]) for i in range(n)])
            else:
                values[metric] = pairwise_corr_all(gt_f, rec_f)
    write(args.out, ids, values, st, pipeline="mindeye", protocol="mindeye")


if __name__ == "__main__":
    main()
