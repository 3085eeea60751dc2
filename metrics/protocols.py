"""Named, versioned metric protocols: every choice that changes a published number, spelled out.

A protocol fixes the test split and, for each metric, the resize chain (library, filter, size) applied
to the ground truth and to the reconstruction, colour handling, network + weights version + layer,
input normalization, numeric precision and the statistic. Its identity is (name, version, hash of
the definition); the hash is stored with every score.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from nsdbench.errors import UsageError

Library = Literal["pil", "torch"]
Filter = Literal["bilinear", "bicubic", "lanczos"]


@dataclass(frozen=True)
class ResizeStep:
    """Resize to size x size. PIL steps run on uint8 (PIL antialiases); torch steps on float32 [0, 1]."""

    library: Library
    filter: Filter
    size: int
    antialias: bool = True  # torch only; PIL always filters with a support scaled to the reduction

    def describe(self) -> str:
        aa = "" if self.library == "pil" else (" antialias" if self.antialias else " no-antialias")
        return f"{self.library} {self.filter} {self.size}{aa}"


Chain = tuple[ResizeStep, ...]


def describe_chain(chain: Chain) -> str:
    return " -> ".join(s.describe() for s in chain) or "native size"


@dataclass(frozen=True)
class PixelMetric:
    """PixCorr or SSIM on resized images, computed in float64."""

    name: str  # "pixcorr" | "ssim"
    gt_chain: Chain
    rec_chain: Chain
    color: Literal["rgb", "gray"]  # gray = skimage rgb2gray weights 0.2125 R + 0.7154 G + 0.0721 B
    kind: Literal["pearson", "ssim-2d", "ssim-columnwise"]
    sample_covariance: bool = False
    data_range: Literal["1.0", "gt-range"] = "1.0"  # gt-range = gt.max() - gt.min() per image
    sigma: float = 1.5
    truncate: float = 3.5
    k1: float = 0.01
    k2: float = 0.03
    precision: str = "float64"
    statistic: str = "mean over images"
    note: str = ""


@dataclass(frozen=True)
class FeatureMetric:
    """A metric on network features of ground truth and reconstruction."""

    name: str
    network: Literal["alexnet", "inception_v3", "clip_vit_l14", "efficientnet_b1", "swav_resnet50"]
    weights: str  # torchvision weights enum member, "openai" for CLIP, "800ep" for SwAV
    layer: str  # module path whose output is the feature; "visual" = CLIP's projected image embedding
    gt_chain: Chain
    rec_chain: Chain
    normalize: Literal["imagenet", "clip"]
    precision: Literal["fp32", "fp16"] = "fp32"
    statistic: Literal["2way-pearson", "correlation-distance", "cosine"] = "2way-pearson"
    tf32: bool = False  # CUDA matmuls in TF32 (only where the reference code enabled it)
    note: str = ""


@dataclass(frozen=True)
class BrainMetric:
    """Pearson correlation across an ROI's voxels between encoder-predicted and measured betas."""

    name: str
    roi: str
    statistic: str = "pearson across ROI voxels per image, mean over images"


Metric = PixelMetric | FeatureMetric | BrainMetric


@dataclass(frozen=True)
class Protocol:
    name: str
    version: str
    description: str
    split: str
    published_order: str  # how the reference code orders the test images (nsdbench keys by NSD id)
    metrics: tuple[Metric, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def metric_names(self) -> list[str]:
        return [m.name for m in self.metrics]

    def metric(self, name: str) -> Metric:
        for m in self.metrics:
            if m.name == name:
                return m
        raise UsageError(
            f"protocol {self.name!r} has no metric {name!r} (has {', '.join(self.metric_names)})"
        )

    def to_dict(self) -> dict[str, Any]:
        """The full definition as plain JSON-able data (what the hash covers)."""
        d = dataclasses.asdict(self)
        d["metrics"] = [{"type": type(m).__name__, **dataclasses.asdict(m)} for m in self.metrics]
        return d

    @property
    def hash(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def identity(self) -> str:
        return f"{self.name}@{self.version}#{self.hash}"


# --------------------------------------------------------------------------- shipped protocols


def _pil(f: Filter, size: int) -> ResizeStep:
    return ResizeStep("pil", f, size)


def _torch(f: Filter, size: int, antialias: bool = False) -> ResizeStep:
    return ResizeStep("torch", f, size, antialias)


_BRAIN_ALL = ("bc_v1", "bc_v2", "bc_v3", "bc_v4", "bc_early", "bc_higher_vis", "bc_nsdgeneral")
_BRAIN_PUBLISHED = ("bc_v1", "bc_v2", "bc_v3", "bc_v4", "bc_higher_vis", "bc_nsdgeneral")


def _brain(names: tuple[str, ...]) -> tuple[BrainMetric, ...]:
    from nsdbench.metrics.names import BRAIN_ROIS

    return tuple(BrainMetric(n, BRAIN_ROIS[n]) for n in names)


def _bd_style_features(
    normalize_cnn: Literal["imagenet", "clip"], alexnet_layers: tuple[str, ...], effnet: str = "IMAGENET1K_V1"
) -> tuple[FeatureMetric, ...]:
    """Brain-diffuser's feature path: PIL bilinear 224 on the stored PNGs, fp32, forward hooks."""
    c = (_pil("bilinear", 224),)
    layer_of = {"alexnet2": "features.4", "alexnet5": "features.11", "alexnet7": "classifier.5"}
    out: list[FeatureMetric] = [
        FeatureMetric(n, "alexnet", "IMAGENET1K_V1", layer_of[n], c, c, normalize_cnn) for n in alexnet_layers
    ]
    out += [
        FeatureMetric("inception", "inception_v3", "IMAGENET1K_V1", "avgpool", c, c, normalize_cnn),
        FeatureMetric("clip_2way", "clip_vit_l14", "openai", "visual", c, c, "clip"),
        FeatureMetric(
            "effnet_b",
            "efficientnet_b1",
            effnet,
            "avgpool",
            c,
            c,
            normalize_cnn,
            statistic="correlation-distance",
        ),
        FeatureMetric(
            "swav", "swav_resnet50", "800ep", "avgpool", c, c, normalize_cnn, statistic="correlation-distance"
        ),
    ]
    return tuple(out)


def _order(metrics: tuple[Metric, ...]) -> tuple[Metric, ...]:
    from nsdbench.metrics.names import order_key

    return tuple(sorted(metrics, key=lambda m: order_key(m.name)))


_P425 = (_pil("bicubic", 425),)

BRAIN_DIFFUSER_2023 = Protocol(
    name="brain-diffuser-2023",
    version="1.0",
    description="Brain-diffuser's evaluation code path exactly (Ozcelik & VanRullen 2023), "
    "including its column-wise SSIM.",
    split="nsd982",
    published_order="first-presentation",
    metrics=_order(
        (
            PixelMetric("pixcorr", _P425, _P425, "rgb", "pearson", note="PIL Image.resize default (bicubic)"),
            PixelMetric(
                "ssim",
                _P425,
                _P425,
                "gray",
                "ssim-columnwise",
                note="skimage<=0.19 multichannel=True on a 2-D gray image: mean of 1-D vertical SSIMs "
                "(= channel_axis=-1 today)",
            ),
        )
        + _bd_style_features("imagenet", ("alexnet2", "alexnet5"))
    ),
    notes=(
        "Ground truth at native 425 px; reconstructions PIL-resized to 425 (bicubic) for pixel metrics.",
        "Network inputs: torchvision F.resize((224, 224)) on PIL images = PIL bilinear.",
        (
            "Correlation distances in the reference are computed on float32 features with scipy; nsdbench "
            "uses float64 (differences below 1e-6)."
        ),
    ),
)

_ME256 = (_torch("bilinear", 256),)


def _me(*extra: ResizeStep) -> Chain:
    return _ME256 + tuple(extra)


def _with_tf32(metrics: tuple[Metric, ...]) -> tuple[Metric, ...]:
    return tuple(dataclasses.replace(m, tf32=True) if isinstance(m, FeatureMetric) else m for m in metrics)


MINDEYE = Protocol(
    name="mindeye",
    version="1.0",
    description="MindEye1/2 evaluation semantics (Scotti et al. 2023, 2024): images stored at 256 px, "
    "torchvision tensor resizes without antialias, fp16 CLIP, EfficientNet-B1 V2 weights.",
    split="nsd1000",
    published_order="nsd-ascending",
    metrics=_with_tf32(
        _order(
            (
                PixelMetric(
                    "pixcorr", _me(_torch("bilinear", 425)), _me(_torch("bilinear", 425)), "rgb", "pearson"
                ),
                PixelMetric(
                    "ssim",
                    _me(_torch("bilinear", 425)),
                    _me(_torch("bilinear", 425)),
                    "gray",
                    "ssim-2d",
                    note="skimage>=0.20 ignores multichannel=True: a true 2-D SSIM; the reference ran it in "
                    "float32, nsdbench in float64",
                ),
                FeatureMetric(
                    "alexnet2",
                    "alexnet",
                    "IMAGENET1K_V1",
                    "features.4",
                    _me(_torch("bilinear", 256)),
                    _me(_torch("bilinear", 256)),
                    "imagenet",
                ),
                FeatureMetric(
                    "alexnet5",
                    "alexnet",
                    "IMAGENET1K_V1",
                    "features.11",
                    _me(_torch("bilinear", 256)),
                    _me(_torch("bilinear", 256)),
                    "imagenet",
                ),
                FeatureMetric(
                    "inception",
                    "inception_v3",
                    "IMAGENET1K_V1",
                    "avgpool",
                    _me(_torch("bilinear", 342)),
                    _me(_torch("bilinear", 342)),
                    "imagenet",
                ),
                FeatureMetric(
                    "clip_2way",
                    "clip_vit_l14",
                    "openai",
                    "visual",
                    _me(_torch("bilinear", 224)),
                    _me(_torch("bilinear", 224)),
                    "clip",
                    precision="fp16",
                ),
                FeatureMetric(
                    "effnet_b",
                    "efficientnet_b1",
                    "IMAGENET1K_V2",
                    "avgpool",
                    _me(_torch("bilinear", 255)),
                    _me(_torch("bilinear", 255)),
                    "imagenet",
                    statistic="correlation-distance",
                ),
                FeatureMetric(
                    "swav",
                    "swav_resnet50",
                    "800ep",
                    "avgpool",
                    _me(_torch("bilinear", 224)),
                    _me(_torch("bilinear", 224)),
                    "imagenet",
                    statistic="correlation-distance",
                ),
            )
            + _brain(_BRAIN_PUBLISHED)
        )
    ),
    notes=(
        "The reference sets torch.backends.cuda.matmul.allow_tf32 = True; so does this protocol (CUDA only).",
        (
            "Ground truth and reconstructions are first stored at 256x256 (torch bilinear, no antialias: "
            "torchvision < 0.17 tensor default), then each metric resizes again."
        ),
        "MindEye1 reported on nsd982; MindEye2 on nsd1000 (the protocol's split).",
        "Square images assumed: torchvision Resize(int) on a square image gives size x size.",
    ),
)

_SS_FEATS = _bd_style_features("clip", ("alexnet2", "alexnet5", "alexnet7"))

SECOND_SIGHT_2023 = Protocol(
    name="second-sight-2023",
    version="1.0",
    description="Second Sight's evaluation semantics (Kneeland et al. 2023): 897-image split, Lanczos "
    "PixCorr, sample-covariance SSIM, CLIP cosine, AlexNet(7), CLIP normalization for every network.",
    split="nsd897",
    published_order="nsd-ascending",
    metrics=_order(
        (
            PixelMetric(
                "pixcorr",
                (_pil("lanczos", 425),),
                (_pil("lanczos", 425),),
                "rgb",
                "pearson",
                note="np.corrcoef on flattened uint8 (same value as /255)",
            ),
            PixelMetric(
                "ssim",
                _P425,
                _P425,
                "gray",
                "ssim-2d",
                sample_covariance=True,
                data_range="gt-range",
                note="data_range = gt.max() - gt.min() of the gray ground truth",
            ),
            FeatureMetric(
                "clip_cos",
                "clip_vit_l14",
                "openai",
                "visual",
                (_pil("bicubic", 224),),
                (_pil("bicubic", 224),),
                "clip",
                statistic="cosine",
                note="HF CLIPProcessor: shortest side 224 bicubic + center crop 224 (= 224x224 on square "
                "images); rescale and normalize in float32",
            ),
        )
        + _SS_FEATS
        + _brain(_BRAIN_PUBLISHED)
    ),
    notes=(
        "The reference feeds every CNN CLIP's mean/std (its dataset class defaults to CLIP); kept here.",
        "Per-image values are averaged over the samples of each image; each sample set is scored as a set.",
    ),
)

NSDBENCH_V1 = Protocol(
    name="nsdbench-v1",
    version="1.0",
    description="nsdbench's canonical protocol: brain-diffuser's documented pipeline with a true 2-D SSIM, "
    "plus AlexNet(7), CLIP cosine and brain correlation for every ROI.",
    split="nsd982",
    published_order="nsd-ascending",
    metrics=_order(
        (
            PixelMetric("pixcorr", _P425, _P425, "rgb", "pearson"),
            PixelMetric("ssim", _P425, _P425, "gray", "ssim-2d"),
            FeatureMetric(
                "clip_cos",
                "clip_vit_l14",
                "openai",
                "visual",
                (_pil("bilinear", 224),),
                (_pil("bilinear", 224),),
                "clip",
                statistic="cosine",
                note="same CLIP embedding as clip_2way",
            ),
        )
        + _bd_style_features("imagenet", ("alexnet2", "alexnet5", "alexnet7"))
        + _brain(_BRAIN_ALL)
    ),
    notes=(
        (
            "Pixel metrics at 425 px (PIL bicubic), SSIM 2-D Gaussian (sigma 1.5, truncate 3.5, population "
            "covariance, data_range 1)."
        ),
        "Networks at 224 px (PIL bilinear), ImageNet normalization for CNNs, CLIP normalization for CLIP.",
    ),
)

PROTOCOLS: dict[str, Protocol] = {
    p.name: p for p in (NSDBENCH_V1, BRAIN_DIFFUSER_2023, MINDEYE, SECOND_SIGHT_2023)
}


def get_protocol(name: str | Protocol) -> Protocol:
    """A shipped protocol by name (a Protocol passes through)."""
    if isinstance(name, Protocol):
        return name
    if name not in PROTOCOLS:
        raise UsageError(f"unknown protocol {name!r}; expected one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def metric_fields(metric: Metric) -> dict[str, str]:
    """A metric's definition as short human-readable fields (for tables and diffs)."""
    if isinstance(metric, PixelMetric):
        ssim = ""
        if metric.kind != "pearson":
            ssim = (
                f"gaussian sigma={metric.sigma} truncate={metric.truncate} K1={metric.k1} K2={metric.k2} "
                f"{'sample' if metric.sample_covariance else 'population'} covariance, "
                f"data_range={metric.data_range}"
            )
        return {
            "gt resize": describe_chain(metric.gt_chain),
            "rec resize": describe_chain(metric.rec_chain),
            "color": metric.color,
            "computation": metric.kind + (f" ({ssim})" if ssim else ""),
            "precision": metric.precision,
            "statistic": metric.statistic,
        }
    if isinstance(metric, FeatureMetric):
        return {
            "network": f"{metric.network} {metric.weights}",
            "layer": metric.layer,
            "gt resize": describe_chain(metric.gt_chain),
            "rec resize": describe_chain(metric.rec_chain),
            "normalization": metric.normalize,
            "precision": metric.precision + (" (TF32 matmul on CUDA)" if metric.tf32 else ""),
            "statistic": metric.statistic,
        }
    return {"roi": metric.roi, "statistic": metric.statistic}


def differences(protocols: list[Protocol]) -> list[dict[str, Any]]:
    """Rows (metric, field, value per protocol) wherever the protocols disagree."""
    rows: list[dict[str, Any]] = []
    rows.append({"metric": "-", "field": "split", **{p.name: p.split for p in protocols}})
    from nsdbench.metrics.names import METRIC_ORDER

    for name in METRIC_ORDER:
        per = {p.name: (metric_fields(p.metric(name)) if name in p.metric_names else None) for p in protocols}
        keys: list[str] = []
        for f in per.values():
            for k in f or {}:
                if k not in keys:
                    keys.append(k)
        if any(v is None for v in per.values()) and any(v is not None for v in per.values()):
            rows.append(
                {"metric": name, "field": "included", **{p: ("yes" if v else "no") for p, v in per.items()}}
            )
        for k in keys:
            vals = {p: (v.get(k, "") if v else "-") for p, v in per.items()}
            present = {v for v in vals.values() if v != "-"}
            if len(present) > 1:
                rows.append({"metric": name, "field": k, **vals})
    return [r for r in rows if len({v for key, v in r.items() if key not in ("metric", "field")}) > 1]
