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


@dataclass(frozen=True)
class JpegStep:
    """Encode as JPEG with PIL at `quality` and decode again (uint8 in, uint8 out): a dataset stored as JPEG."""

    quality: int
    subsampling: Literal["4:4:4", "4:2:2", "4:2:0"] = "4:2:0"
    library: Library = "pil"

    def describe(self) -> str:
        return f"pil jpeg q{self.quality} {self.subsampling}"


Chain = tuple[ResizeStep | JpegStep, ...]


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
    # fp16 = the whole tower cast to half; fp16-openai = OpenAI clip's convert_weights: conv, linear and
    # attention weights (and the projection) in fp16, LayerNorm weights fp32 and LayerNorm computed in fp32
    precision: Literal["fp32", "fp16", "fp16-openai"] = "fp32"
    statistic: Literal["2way-pearson", "correlation-distance", "cosine"] = "2way-pearson"
    tf32: bool = False  # CUDA matmuls in TF32 (only where the reference code enabled it)
    note: str = ""
    tf32_conv: bool | None = None  # cuDNN convolutions in TF32 on CUDA (None: off, protocols before 1.1)


@dataclass(frozen=True)
class BrainMetric:
    """Pearson correlation across an ROI's voxels between encoder-predicted and measured betas.

    The encoder fields (None in protocols before 1.1: nsdbench's encoder, session-z-scored betas) name the
    encoding model, its weights artifact, the chain applied to the reconstruction before it (the engine
    runs it; torch chains are converted to uint8 like torchvision's ToPILImage) and the encoder's own
    input preparation, and how the measured betas were normalized.
    """

    name: str
    roi: str
    statistic: str = "pearson across ROI voxels per image, mean over images"
    encoder: Literal["nsdbench", "gnet8"] | None = None
    encoder_artifact: str | None = None
    encoder_input: Chain | None = None
    encoder_preprocessing: str | None = None
    beta_normalization: Literal["session-zscore", "all-sessions-zscore"] | None = None

    @property
    def encoder_name(self) -> str:
        return self.encoder or "nsdbench"

    @property
    def betas(self) -> str:
        return self.beta_normalization or "session-zscore"


Metric = PixelMetric | FeatureMetric | BrainMetric


@dataclass(frozen=True)
class Change:
    """One changelog entry: what changed in `version`, why, and how large the effect on scores is."""

    version: str
    what: str
    why: str
    size: str

    def line(self) -> str:
        parts = [f"{self.version}: {self.what}"]
        parts += [f"{k}: {v}." for k, v in (("Why", self.why), ("Size", self.size)) if v != "-"]
        return " ".join(parts)


def _drop_unset(obj: Any) -> Any:
    """Fields left at None are not part of a definition: fields added after 1.0 default to None, so
    earlier versions keep the hash recorded with their scores."""
    if isinstance(obj, dict):
        return {k: _drop_unset(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list | tuple):
        return [_drop_unset(v) for v in obj]
    return obj


@dataclass(frozen=True)
class Protocol:
    name: str
    version: str
    description: str
    split: str
    published_order: str  # how the reference code orders the test images (nsdbench keys by NSD id)
    metrics: tuple[Metric, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)
    encoder_choices: tuple[str, ...] | None = None  # brain encoders `score --encoder` may pick (None: fixed)
    changelog: tuple[Change, ...] = field(default=(), compare=False)  # documentation, not in the hash

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
        d.pop("changelog")
        d["metrics"] = [{"type": type(m).__name__, **dataclasses.asdict(m)} for m in self.metrics]
        return _drop_unset(d)

    @property
    def hash(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def identity(self) -> str:
        return f"{self.name}@{self.version}#{self.hash}"


# --------------------------------------------------------------------------- shipped protocols


def pil_step(f: Filter, size: int) -> ResizeStep:
    """PIL resize to size x size with filter `f`."""
    return ResizeStep(library="pil", filter=f, size=size)


def torch_step(f: Filter, size: int, antialias: bool = False) -> ResizeStep:
    """torch interpolate to size x size (no antialias unless asked: torchvision < 0.17's tensor default)."""
    return ResizeStep(library="torch", filter=f, size=size, antialias=antialias)


BRAIN_ALL = ("bc_v1", "bc_v2", "bc_v3", "bc_v4", "bc_early", "bc_higher_vis", "bc_nsdgeneral")
BRAIN_PUBLISHED = ("bc_v1", "bc_v2", "bc_v3", "bc_v4", "bc_higher_vis", "bc_nsdgeneral")


def brain_metrics(names: tuple[str, ...]) -> tuple[BrainMetric, ...]:
    """Brain-correlation metrics of the named ROIs (bc_v1, ...), on nsdbench's encoder unless revised."""
    from nsdbench.metrics.names import BRAIN_ROIS

    return tuple(BrainMetric(name=n, roi=BRAIN_ROIS[n]) for n in names)


def _bd_style_features(
    normalize_cnn: Literal["imagenet", "clip"], alexnet_layers: tuple[str, ...], effnet: str = "IMAGENET1K_V1"
) -> tuple[FeatureMetric, ...]:
    """Brain-diffuser's feature path: PIL bilinear 224 on the stored PNGs, fp32, forward hooks."""
    c = (pil_step("bilinear", 224),)
    layer_of = {"alexnet2": "features.4", "alexnet5": "features.11", "alexnet7": "classifier.5"}
    out: list[FeatureMetric] = [
        FeatureMetric(
            name=n,
            network="alexnet",
            weights="IMAGENET1K_V1",
            layer=layer_of[n],
            gt_chain=c,
            rec_chain=c,
            normalize=normalize_cnn,
        )
        for n in alexnet_layers
    ]
    out += [
        FeatureMetric(
            name="inception",
            network="inception_v3",
            weights="IMAGENET1K_V1",
            layer="avgpool",
            gt_chain=c,
            rec_chain=c,
            normalize=normalize_cnn,
        ),
        FeatureMetric(
            name="clip_2way",
            network="clip_vit_l14",
            weights="openai",
            layer="visual",
            gt_chain=c,
            rec_chain=c,
            normalize="clip",
        ),
        FeatureMetric(
            name="effnet_b",
            network="efficientnet_b1",
            weights=effnet,
            layer="avgpool",
            gt_chain=c,
            rec_chain=c,
            normalize=normalize_cnn,
            statistic="correlation-distance",
        ),
        FeatureMetric(
            name="swav",
            network="swav_resnet50",
            weights="800ep",
            layer="avgpool",
            gt_chain=c,
            rec_chain=c,
            normalize=normalize_cnn,
            statistic="correlation-distance",
        ),
    ]
    return tuple(out)


def _order(metrics: tuple[Metric, ...]) -> tuple[Metric, ...]:
    from nsdbench.metrics.names import order_key

    return tuple(sorted(metrics, key=lambda m: order_key(m.name)))


_P425 = (pil_step("bicubic", 425),)

BRAIN_DIFFUSER_2023 = Protocol(
    name="brain-diffuser-2023",
    version="1.0",
    description="Brain-diffuser's evaluation code path exactly (Ozcelik & VanRullen 2023), "
    "including its column-wise SSIM.",
    split="nsd982",
    published_order="first-presentation",
    metrics=_order(
        (
            PixelMetric(
                name="pixcorr",
                gt_chain=_P425,
                rec_chain=_P425,
                color="rgb",
                kind="pearson",
                note="PIL Image.resize default (bicubic)",
            ),
            PixelMetric(
                name="ssim",
                gt_chain=_P425,
                rec_chain=_P425,
                color="gray",
                kind="ssim-columnwise",
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

_ME256 = (torch_step("bilinear", 256),)


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
                    name="pixcorr",
                    gt_chain=_me(torch_step("bilinear", 425)),
                    rec_chain=_me(torch_step("bilinear", 425)),
                    color="rgb",
                    kind="pearson",
                ),
                PixelMetric(
                    name="ssim",
                    gt_chain=_me(torch_step("bilinear", 425)),
                    rec_chain=_me(torch_step("bilinear", 425)),
                    color="gray",
                    kind="ssim-2d",
                    note="skimage>=0.20 ignores multichannel=True: a true 2-D SSIM; the reference ran it in "
                    "float32, nsdbench in float64",
                ),
                FeatureMetric(
                    name="alexnet2",
                    network="alexnet",
                    weights="IMAGENET1K_V1",
                    layer="features.4",
                    gt_chain=_me(torch_step("bilinear", 256)),
                    rec_chain=_me(torch_step("bilinear", 256)),
                    normalize="imagenet",
                ),
                FeatureMetric(
                    name="alexnet5",
                    network="alexnet",
                    weights="IMAGENET1K_V1",
                    layer="features.11",
                    gt_chain=_me(torch_step("bilinear", 256)),
                    rec_chain=_me(torch_step("bilinear", 256)),
                    normalize="imagenet",
                ),
                FeatureMetric(
                    name="inception",
                    network="inception_v3",
                    weights="IMAGENET1K_V1",
                    layer="avgpool",
                    gt_chain=_me(torch_step("bilinear", 342)),
                    rec_chain=_me(torch_step("bilinear", 342)),
                    normalize="imagenet",
                ),
                FeatureMetric(
                    name="clip_2way",
                    network="clip_vit_l14",
                    weights="openai",
                    layer="visual",
                    gt_chain=_me(torch_step("bilinear", 224)),
                    rec_chain=_me(torch_step("bilinear", 224)),
                    normalize="clip",
                    precision="fp16",
                ),
                FeatureMetric(
                    name="effnet_b",
                    network="efficientnet_b1",
                    weights="IMAGENET1K_V2",
                    layer="avgpool",
                    gt_chain=_me(torch_step("bilinear", 255)),
                    rec_chain=_me(torch_step("bilinear", 255)),
                    normalize="imagenet",
                    statistic="correlation-distance",
                ),
                FeatureMetric(
                    name="swav",
                    network="swav_resnet50",
                    weights="800ep",
                    layer="avgpool",
                    gt_chain=_me(torch_step("bilinear", 224)),
                    rec_chain=_me(torch_step("bilinear", 224)),
                    normalize="imagenet",
                    statistic="correlation-distance",
                ),
            )
            + brain_metrics(BRAIN_PUBLISHED)
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
                name="pixcorr",
                gt_chain=(pil_step("lanczos", 425),),
                rec_chain=(pil_step("lanczos", 425),),
                color="rgb",
                kind="pearson",
                note="np.corrcoef on flattened uint8 (same value as /255)",
            ),
            PixelMetric(
                name="ssim",
                gt_chain=_P425,
                rec_chain=_P425,
                color="gray",
                kind="ssim-2d",
                sample_covariance=True,
                data_range="gt-range",
                note="data_range = gt.max() - gt.min() of the gray ground truth",
            ),
            FeatureMetric(
                name="clip_cos",
                network="clip_vit_l14",
                weights="openai",
                layer="visual",
                gt_chain=(pil_step("bicubic", 224),),
                rec_chain=(pil_step("bicubic", 224),),
                normalize="clip",
                statistic="cosine",
                note="HF CLIPProcessor: shortest side 224 bicubic + center crop 224 (= 224x224 on square "
                "images); rescale and normalize in float32",
            ),
        )
        + _SS_FEATS
        + brain_metrics(BRAIN_PUBLISHED)
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
            PixelMetric(name="pixcorr", gt_chain=_P425, rec_chain=_P425, color="rgb", kind="pearson"),
            PixelMetric(name="ssim", gt_chain=_P425, rec_chain=_P425, color="gray", kind="ssim-2d"),
            FeatureMetric(
                name="clip_cos",
                network="clip_vit_l14",
                weights="openai",
                layer="visual",
                gt_chain=(pil_step("bilinear", 224),),
                rec_chain=(pil_step("bilinear", 224),),
                normalize="clip",
                statistic="cosine",
                note="same CLIP embedding as clip_2way",
            ),
        )
        + _bd_style_features("imagenet", ("alexnet2", "alexnet5", "alexnet7"))
        + brain_metrics(BRAIN_ALL)
    ),
    notes=(
        (
            "Pixel metrics at 425 px (PIL bicubic), SSIM 2-D Gaussian (sigma 1.5, truncate 3.5, population "
            "covariance, data_range 1)."
        ),
        "Networks at 224 px (PIL bilinear), ImageNet normalization for CNNs, CLIP normalization for CLIP.",
    ),
)

# --------------------------------------------------------------------------- version 1.1 (issue 14)

_TF32_SIZE = (
    "CUDA only (CPU results unchanged): TF32 keeps 10 mantissa bits, so layer features move by about 1e-3 "
    "of their scale (TF32 rounding emulated on a full-size random AlexNet: 4.8e-4 to 6.5e-4) and 2-way "
    "values flip only at near-ties (emulated: 1 of 48 per-image values, set score 4.4e-4); expected set "
    "score changes below 1e-3, correlation distances and cosines about 1e-5; scripts/gpu_tf32_difference.py "
    "measures it on a GPU"
)
_TF32_WHY = (
    "PyTorch enables cuDNN TF32 for convolutions by default, so the reference code ran its CNNs' "
    "convolutions in TF32 on an Ampere or newer GPU"
)

NSDBENCH_BRAIN: dict[str, Any] = {
    "encoder": "nsdbench",
    "encoder_artifact": "fitted per subject and split (nsdbench-encoder-v1 ridge on alexnet-imagenet1k-v1 "
    "features)",
    "encoder_input": (),
    "encoder_preprocessing": "PIL bilinear 224, ImageNet normalization; AlexNet features.4 pooled 4x4, "
    "features.11 pooled 3x3, 16x16 low-level colour/contrast grid",
    "beta_normalization": "session-zscore",
}
GNET8_PREP = "PIL Lanczos 227 on uint8, /255, minus the checkpoint's input mean"


def _gnet8(encoder_input: Chain, betas: str) -> dict[str, Any]:
    return {
        "encoder": "gnet8",
        "encoder_artifact": "gnet8-multisubject",
        "encoder_input": encoder_input,
        "encoder_preprocessing": GNET8_PREP,
        "beta_normalization": betas,
    }


def _revise(
    p: Protocol,
    version: str,
    changes: tuple[Change, ...],
    feature: dict[str, Any] | None = None,
    brain: dict[str, Any] | None = None,
    **fields: Any,
) -> Protocol:
    """A new version of `p`: the same metrics with `feature` / `brain` fields replaced, plus `fields`."""
    metrics = tuple(
        dataclasses.replace(m, **feature)
        if isinstance(m, FeatureMetric) and feature
        else dataclasses.replace(m, **brain)
        if isinstance(m, BrainMetric) and brain
        else m
        for m in p.metrics
    )
    return dataclasses.replace(p, version=version, metrics=metrics, changelog=p.changelog + changes, **fields)


_INITIAL = "first published definition."


def _initial(p: Protocol) -> Protocol:
    return dataclasses.replace(p, changelog=(Change(p.version, _INITIAL, "-", "-"),))


NSDBENCH_V1_1_0, BRAIN_DIFFUSER_2023_1_0, MINDEYE_1_0, SECOND_SIGHT_2023_1_0 = (
    _initial(p) for p in (NSDBENCH_V1, BRAIN_DIFFUSER_2023, MINDEYE, SECOND_SIGHT_2023)
)

NSDBENCH_V1_1_1 = _revise(
    NSDBENCH_V1_1_0,
    "1.1",
    (
        Change(
            "1.1",
            "brain metrics name their encoder (nsdbench-encoder-v1), its input preparation and the beta "
            "normalization (session z-score); `score --encoder gnet8` may pick GNet8; TF32 recorded as off.",
            "the encoder and the betas define the brain numbers and were not in the hash",
            "none: same computation, new hash",
        ),
    ),
    feature={"tf32_conv": False},
    brain=NSDBENCH_BRAIN,
    encoder_choices=("nsdbench", "gnet8"),
)

BRAIN_DIFFUSER_2023_1_1 = _revise(
    BRAIN_DIFFUSER_2023_1_0,
    "1.1",
    (Change("1.1", "cuDNN convolutions in TF32 on CUDA (matmuls stay float32).", _TF32_WHY, _TF32_SIZE),),
    feature={"tf32_conv": True},
)

MINDEYE_1_1 = _revise(
    MINDEYE_1_0,
    "1.1",
    (
        Change(
            "1.1",
            "CLIP in fp16 as OpenAI's clip package runs it (conv/linear/attention weights fp16, LayerNorm "
            "in fp32, cast back) instead of the whole tower in fp16.",
            "MindEye loaded CLIP with OpenAI's clip package",
            "full-size random ViT-L/14 embeddings move by about 1.4e-3 relative (issue 14); clip_2way values "
            "flip only at near-ties",
        ),
        Change(
            "1.1",
            "brain correlation with GNet8 on the 256-px reconstruction converted to uint8 (ToPILImage), "
            "betas z-scored per session; was nsdbench's encoder.",
            "MindEye2 computed brain correlation with GNet8",
            "a different encoder: brain values are not comparable with 1.0",
        ),
        Change(
            "1.1", "cuDNN convolutions in TF32 on CUDA (matmul TF32 was on already).", _TF32_WHY, _TF32_SIZE
        ),
    ),
    feature={"tf32_conv": True},
    brain=_gnet8(_ME256, "session-zscore"),
)
MINDEYE_1_1 = dataclasses.replace(
    MINDEYE_1_1,
    metrics=tuple(
        dataclasses.replace(m, precision="fp16-openai")
        if isinstance(m, FeatureMetric) and m.precision == "fp16"
        else m
        for m in MINDEYE_1_1.metrics
    ),
)

_GT768 = pil_step("lanczos", 768)


def _gt768(m: Metric) -> Metric:
    if isinstance(m, PixelMetric | FeatureMetric):
        return dataclasses.replace(m, gt_chain=(_GT768,) + m.gt_chain)
    return m


SECOND_SIGHT_2023_1_1 = _revise(
    SECOND_SIGHT_2023_1_0,
    "1.1",
    (
        Change(
            "1.1",
            "every ground-truth chain starts with PIL Lanczos 425 -> 768 (the saved 'Ground Truth.png').",
            "Second Sight's statistics script reads the 768-px Lanczos upsample for every metric",
            "on blurry reconstructions SSIM about 0.02, PixCorr about 0.001, AlexNet(5) / CLIP cosine / "
            "EffNet-B / SwAV 1e-5 to 3e-4",
        ),
        Change(
            "1.1",
            "brain correlation with GNet8 on the reconstruction as saved, betas z-scored per voxel over all "
            "sessions; was nsdbench's encoder with per-session z-scores.",
            "Second Sight computed brain correlation with GNet8",
            "a different encoder: brain values are not comparable with 1.0",
        ),
        Change("1.1", "cuDNN convolutions in TF32 on CUDA (matmuls stay float32).", _TF32_WHY, _TF32_SIZE),
    ),
    feature={"tf32_conv": True},
    brain=_gnet8((), "all-sessions-zscore"),
)
SECOND_SIGHT_2023_1_1 = dataclasses.replace(
    SECOND_SIGHT_2023_1_1, metrics=tuple(_gt768(m) for m in SECOND_SIGHT_2023_1_1.metrics)
)

# MindEye1's webdataset stores each stimulus at 256 px as a ".jpg" entry, which webdataset encodes with
# PIL at quality 100 (PIL's default 4:2:0 chroma subsampling); its evaluation decodes those JPEGs.
_ME1_GT = (pil_step("bicubic", 256), JpegStep(100, "4:2:0"))


def _me1(m: Metric) -> Metric:
    if isinstance(m, PixelMetric | FeatureMetric):
        return dataclasses.replace(m, gt_chain=_ME1_GT + m.gt_chain)
    return m


MINDEYE1 = Protocol(
    name="mindeye1",
    version="1.0",
    description="MindEye1's evaluation (Scotti et al. 2023) on nsd982: the ground truth is the 256-px JPEG "
    "of its webdataset, then MindEye's torchvision resizes; fp16 CLIP as OpenAI runs it; no brain metrics.",
    split="nsd982",
    published_order="nsd-ascending",
    metrics=tuple(_me1(m) for m in MINDEYE_1_1.metrics if not isinstance(m, BrainMetric)),
    notes=(
        (
            "Ground truth: PIL bicubic 425 -> 256 (assumed: the webdataset's resize filter is not published), "
            "JPEG quality 100 (webdataset's encoder for .jpg entries), decoded to uint8; reconstructions as "
            "in mindeye."
        ),
        *MINDEYE_1_1.notes[:2],
        "Square images assumed: torchvision Resize(int) on a square image gives size x size.",
    ),
    changelog=(
        Change(
            "1.0",
            "split from mindeye: nsd982 and the JPEG ground truth of MindEye1's webdataset.",
            "MindEye1 reported on nsd982 against JPEG decodes, MindEye2 on nsd1000 against the PNG stimuli",
            "the JPEG q100 step alone moves pixels by 0.6 grey levels on average; on 16 synthetic blurred "
            "pairs PixCorr by 1.7e-3 and SSIM by 2.4e-4",
        ),
    ),
)

# every version ever shipped, by "name@version"; PROTOCOLS holds the current version of each name
PROTOCOL_VERSIONS: dict[str, Protocol] = {
    f"{p.name}@{p.version}": p
    for p in (
        NSDBENCH_V1_1_0,
        NSDBENCH_V1_1_1,
        BRAIN_DIFFUSER_2023_1_0,
        BRAIN_DIFFUSER_2023_1_1,
        MINDEYE_1_0,
        MINDEYE_1_1,
        SECOND_SIGHT_2023_1_0,
        SECOND_SIGHT_2023_1_1,
        MINDEYE1,
    )
}
PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (NSDBENCH_V1_1_1, BRAIN_DIFFUSER_2023_1_1, MINDEYE_1_1, SECOND_SIGHT_2023_1_1, MINDEYE1)
}


def get_protocol(name: str | Protocol) -> Protocol:
    """A shipped protocol: "name" (current version), "name@version" or "name@version#hash" (checked), so
    scores stored under an earlier version stay readable. A Protocol passes through."""
    if isinstance(name, Protocol):
        return name
    key, _, want_hash = str(name).partition("#")
    if "@" in key:
        if key not in PROTOCOL_VERSIONS:
            known = ", ".join(k for k in PROTOCOL_VERSIONS if k.startswith(key.split("@")[0] + "@"))
            raise UsageError(
                f"unknown protocol version {key!r}; known: {known or ', '.join(PROTOCOL_VERSIONS)}"
            )
        p = PROTOCOL_VERSIONS[key]
    elif key in PROTOCOLS:
        p = PROTOCOLS[key]
    else:
        raise UsageError(f"unknown protocol {name!r}; expected one of {', '.join(PROTOCOLS)}")
    if want_hash and want_hash != p.hash:
        raise UsageError(f"protocol {key}: hash {want_hash} does not match the shipped definition {p.hash}")
    return p


def with_encoder(protocol: Protocol, encoder: str | None) -> Protocol:
    """The protocol with its brain metrics on `encoder` (None: unchanged); only where the protocol allows
    a choice. The choice is part of the definition, so the hash changes with it."""
    if encoder is None:
        return protocol
    brain = [m for m in protocol.metrics if isinstance(m, BrainMetric)]
    if brain and all(m.encoder_name == encoder for m in brain):
        return protocol
    if not brain:
        raise UsageError(f"--encoder {encoder}: protocol {protocol.name} has no brain metrics")
    if not protocol.encoder_choices:
        raise UsageError(
            f"--encoder {encoder}: protocol {protocol.name} fixes its brain encoder to {brain[0].encoder_name} "
            "(as the paper ran it); use a protocol that allows a choice, e.g. nsdbench-v1"
        )
    if encoder not in protocol.encoder_choices:
        raise UsageError(
            f"--encoder {encoder}: protocol {protocol.name} allows {', '.join(protocol.encoder_choices)}"
        )
    fields = NSDBENCH_BRAIN if encoder == "nsdbench" else _gnet8((), "session-zscore")
    return dataclasses.replace(
        protocol,
        metrics=tuple(
            dataclasses.replace(m, **fields) if isinstance(m, BrainMetric) else m for m in protocol.metrics
        ),
    )


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
            "precision": metric.precision,
            "tf32 (cuda)": _tf32_text(metric),
            "statistic": metric.statistic,
        }
    out = {"roi": metric.roi, "statistic": metric.statistic}
    if metric.encoder is not None:
        out |= {
            "encoder": f"{metric.encoder} ({metric.encoder_artifact})",
            "encoder input": describe_chain(metric.encoder_input or ()) + f"; {metric.encoder_preprocessing}",
        }
    out["betas"] = metric.betas
    return out


def _tf32_text(m: FeatureMetric) -> str:
    parts = [p for p, on in (("matmul", m.tf32), ("conv", bool(m.tf32_conv))) if on]
    return " + ".join(parts) if parts else "off"


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
