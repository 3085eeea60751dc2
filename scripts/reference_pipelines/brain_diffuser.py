"""brain-diffuser's evaluation structure (eval_extract_features.py + evaluate_reconstruction.py).

Feature pass: for each (network, layer) of its list a network is built anew, a torch Dataset opens
each image file in __getitem__, F.resize((224, 224)) on the PIL image, to_tensor, Normalize; DataLoader
batch 64 without workers; a forward hook collects the layer. Scores: np.corrcoef 2-way on the whole
feature matrices, a scipy correlation-distance loop for EffNet-B and SwAV, and per-image loops with
PIL + scikit-image for PixCorr and the column-wise SSIM (skimage<=0.19 multichannel=True on a 2-D gray
image == channel_axis=-1 today).

    python scripts/reference_pipelines/brain_diffuser.py --data NSD --submission SUB --out bd.json
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from _common import Stages, network, pairwise_corr_all, parse_args, read_ground_truth, submission_files, write
from PIL import Image
from scipy.spatial.distance import correlation as correlation_distance
from skimage.color import rgb2gray
from skimage.metrics import structural_similarity
from torch.utils.data import DataLoader, Dataset

from nsdbench.metrics.networks import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD

NET_LIST = (
    ("inceptionv3", "avgpool"),
    ("clip", "final"),
    ("alexnet", 2),
    ("alexnet", 5),
    ("efficientnet", "avgpool"),
    ("swav", "avgpool"),
)
MODULE = {
    "inceptionv3": ("inception_v3", "IMAGENET1K_V1"),
    "clip": ("clip_vit_l14", "openai"),
    "alexnet": ("alexnet", "IMAGENET1K_V1"),
    "efficientnet": ("efficientnet_b1", "IMAGENET1K_V1"),
    "swav": ("swav_resnet50", "800ep"),
}
METRIC = {"inceptionv3": "inception", "clip": "clip_2way", "efficientnet": "effnet_b", "swav": "swav"}


class ExternalImages(Dataset):
    """batch_generator_external_images: one image opened, resized and normalized per __getitem__."""

    def __init__(self, open_image, n: int, net_name: str, stages: Stages) -> None:
        self.open_image, self.n, self.stages = open_image, n, stages
        mean, std = (CLIP_MEAN, CLIP_STD) if net_name == "clip" else (IMAGENET_MEAN, IMAGENET_STD)
        self.normalize = T.Normalize(mean=list(mean), std=list(std))

    def __getitem__(self, idx: int) -> torch.Tensor:
        with self.stages("decode"):
            img = self.open_image(idx)
        with self.stages("resize"):
            img = TF.resize(img, (224, 224))
            return self.normalize(TF.to_tensor(img).float())

    def __len__(self) -> int:
        return self.n


def main() -> None:
    args = parse_args(__doc__)
    st = Stages()
    ids, paths = submission_files(args.submission, args.subject)
    with st("ground_truth"):
        gt = read_ground_truth(args.data, ids)  # BD saves these as PNGs first; kept in memory here

    def open_gt(i: int) -> Image.Image:
        return Image.fromarray(gt[i])

    def open_rec(i: int) -> Image.Image:
        with Image.open(paths[i]) as im:
            return im.convert("RGB")

    feats: dict[str, dict[str, np.ndarray]] = {}
    for net_name, layer in NET_LIST:
        name, version = MODULE[net_name]
        key = METRIC.get(net_name, f"alexnet{layer}")
        with st("build"):
            net = network(name, version, args.weights, device=args.device, fresh=True)
        if net_name == "alexnet":
            target = net.features[4] if layer == 2 else net.features[11]
        elif net_name == "clip":
            target = net
        else:
            target = net.avgpool
        feats[key] = {}
        for side, opener in (("gt", open_gt), ("rec", open_rec)):
            feat_list: list[np.ndarray] = []

            def fn(_module, _inputs, outputs, feat_list=feat_list):
                feat_list.append(outputs.cpu().numpy())

            handle = target.register_forward_hook(fn)
            loader = DataLoader(ExternalImages(opener, len(ids), net_name, st), 64, shuffle=False)
            with torch.no_grad():
                for x in loader:
                    with st(f"forward:{name}"):
                        net(x.to(args.device))
            handle.remove()
            f = np.concatenate(feat_list)
            feats[key][side] = f.reshape(len(f), -1)

    values: dict[str, np.ndarray] = {}
    with st("statistics"):
        for key, f in feats.items():
            if key in ("effnet_b", "swav"):
                g, r = f["gt"].astype(np.float64), f["rec"].astype(np.float64)  # the protocol's float64
                values[key] = np.array([correlation_distance(g[i], r[i]) for i in range(len(ids))])
            else:
                values[key] = pairwise_corr_all(f["gt"], f["rec"])

    pix, ssim = [], []
    for i in range(len(ids)):
        with st("decode"):
            rec_im = open_rec(i)
        with st("resize"):
            gen_image = np.array(rec_im.resize((425, 425))) / 255.0
            gt_image = np.array(open_gt(i).resize((425, 425))) / 255.0  # native 425 px in NSD: a copy
        with st("pixel"):
            pix.append(np.corrcoef(gt_image.reshape(1, -1), gen_image.reshape(1, -1))[0, 1])
            ssim.append(
                structural_similarity(
                    rgb2gray(gen_image),
                    rgb2gray(gt_image),
                    channel_axis=-1,
                    gaussian_weights=True,
                    sigma=1.5,
                    use_sample_covariance=False,
                    data_range=1.0,
                )
            )
    values["pixcorr"], values["ssim"] = np.array(pix), np.array(ssim)
    write(args.out, ids, values, st, pipeline="brain-diffuser", protocol="brain-diffuser-2023")


if __name__ == "__main__":
    main()
