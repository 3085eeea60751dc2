"""Second Sight's evaluation structure (src/stochastic_search_statistics.py).

Every metric reads the ground truth as saved by the search, a PIL Lanczos 768-px upsample. Per image: PixCorr on PIL Lanczos 425 px uint8 images (np.corrcoef), SSIM on files re-opened and
PIL-resized to 425 (bicubic), rgb2gray, 2-D SSIM with sample covariance and data_range = gt range, and
CLIP cosine from one CLIP forward pass on [ground truth, reconstruction] (processor: bicubic 224,
normalize in float32; CLIP loaded once). Network metrics: `net_metrics(images)` once for the ground
truths and once for the reconstructions, each building every network of its list anew (AlexNet once per
layer), a DataLoader of batch 64 with CLIP's normalization for every network (its dataset's default),
forward hooks; 2-way with np.corrcoef, scipy correlation distance loops for EffNet-B and SwAV.

    python scripts/reference_pipelines/second_sight.py --data NSD --submission SUB --out ss.json
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
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
from PIL import Image
from scipy.spatial.distance import correlation as correlation_distance
from skimage.color import rgb2gray
from skimage.metrics import structural_similarity
from torch.utils.data import DataLoader, Dataset

from nsdbench.metrics.networks import CLIP_MEAN, CLIP_STD

NET_LIST = (  # (metric, network, weights, layer module path; "" = the model's output)
    ("inception", "inception_v3", "IMAGENET1K_V1", "avgpool"),
    ("clip_2way", "clip_vit_l14", "openai", ""),
    ("alexnet2", "alexnet", "IMAGENET1K_V1", "features.4"),
    ("alexnet5", "alexnet", "IMAGENET1K_V1", "features.11"),
    ("alexnet7", "alexnet", "IMAGENET1K_V1", "classifier.5"),
    ("effnet_b", "efficientnet_b1", "IMAGENET1K_V1", "avgpool"),
    ("swav", "swav_resnet50", "800ep", "avgpool"),
)


class ExternalImages(Dataset):
    """PIL images in memory -> F.resize((224, 224)), to_tensor, CLIP Normalize (the class default)."""

    def __init__(self, images: list[Image.Image], stages: Stages) -> None:
        self.images, self.stages = images, stages
        self.normalize = T.Normalize(mean=list(CLIP_MEAN), std=list(CLIP_STD))

    def __getitem__(self, idx: int) -> torch.Tensor:
        with self.stages("resize"):
            img = TF.resize(self.images[idx], (224, 224))
            return self.normalize(TF.to_tensor(img).float())

    def __len__(self) -> int:
        return len(self.images)


def net_metrics(images: list[Image.Image], args, st: Stages) -> dict[str, np.ndarray]:
    out = {}
    for metric, name, version, layer in NET_LIST:
        feat_list: list[np.ndarray] = []
        with st("build"):
            net = network(name, version, args.weights, device=args.device, fresh=True)
        target = net.get_submodule(layer) if layer else net
        handle = target.register_forward_hook(lambda _m, _i, o, acc=feat_list: acc.append(o.cpu().numpy()))
        with torch.no_grad():
            for x in DataLoader(ExternalImages(images, st), 64, shuffle=False):
                with st(f"forward:{name}"):
                    net(x.to(args.device))
        handle.remove()
        f = np.concatenate(feat_list)
        out[metric] = f.reshape(len(f), -1)
    return out


def main() -> None:
    args = parse_args(__doc__)
    st = Stages()
    ids, paths = submission_files(args.submission, args.subject)
    with st("ground_truth"):
        gt_u8 = read_ground_truth(args.data, ids)
    with st("build"):
        clip = network("clip_vit_l14", "openai", args.weights, device=args.device)
    clip_norm = T.Normalize(mean=list(CLIP_MEAN), std=list(CLIP_STD))
    pix, ssim, cos = [], [], []
    gt_images, rec_images = [], []
    for i in range(len(ids)):
        with st("decode"):
            reconstruction = read_png(paths[i])
            # the search saves the ground truth as a 768-px Lanczos upsample ('Ground Truth.png')
            ground_truth = Image.fromarray(gt_u8[i]).resize((768, 768), Image.Resampling.LANCZOS)
        gt_images.append(ground_truth)
        rec_images.append(reconstruction)
        with st("resize"):
            g_l = np.array(ground_truth.resize((425, 425), Image.Resampling.LANCZOS))
            r_l = np.array(reconstruction.resize((425, 425), Image.Resampling.LANCZOS))
            g_b = rgb2gray(np.array(ground_truth.resize((425, 425))) / 255.0)
            r_b = rgb2gray(np.array(reconstruction.resize((425, 425))) / 255.0)
        with st("pixel"):
            pix.append(np.corrcoef(g_l.reshape(-1), r_l.reshape(-1))[0, 1])
            ssim.append(
                structural_similarity(
                    r_b,
                    g_b,
                    gaussian_weights=True,
                    sigma=1.5,
                    use_sample_covariance=True,
                    data_range=g_b.max() - g_b.min(),
                )
            )
        with st("resize"):
            pair = torch.stack(
                [
                    clip_norm(TF.to_tensor(im.resize((224, 224), Image.Resampling.BICUBIC)))
                    for im in (ground_truth, reconstruction)
                ]
            )
        with st("forward:clip_vit_l14"), torch.no_grad():
            emb = clip(pair.to(args.device)).float().cpu()
        with st("statistics"):
            cos.append(float(torch.nn.functional.cosine_similarity(emb[0], emb[1], dim=0)))
    values = {"pixcorr": np.array(pix), "ssim": np.array(ssim), "clip_cos": np.array(cos)}

    gt_feats = net_metrics(gt_images, args, st)
    rec_feats = net_metrics(rec_images, args, st)
    with st("statistics"):
        for metric, *_ in NET_LIST:
            g, r = gt_feats[metric], rec_feats[metric]
            if metric in ("effnet_b", "swav"):
                # float64 as the protocol defines it (float32 scipy loses ~1e-4 on near-identical tiny features)
                g, r = g.astype(np.float64), r.astype(np.float64)
                values[metric] = np.array([correlation_distance(g[i], r[i]) for i in range(len(ids))])
            else:
                values[metric] = pairwise_corr_all(g, r)
    write(args.out, ids, values, st, pipeline="second-sight", protocol="second-sight-2023")


if __name__ == "__main__":
    main()
