"""Feature extractors for the metric networks, in three weight modes, hooked at the published layers.

pretrained  torchvision AlexNet / InceptionV3 / EfficientNet-B1 state dicts, open_clip ViT-L-14 'openai'
            (QuickGELU) and SwAV ResNet-50, read offline from nsdbench.weights (weights_only=True);
random      the same architectures with seeded random weights (full-size timing and plumbing);
tiny        reduced seeded architectures with the same hook names and semantics (fast on a CPU).
"""

from __future__ import annotations

import math
import threading
import zlib
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from nsdbench import weights
from nsdbench.errors import NSDBenchError, UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
NORMALIZATION = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "clip": (CLIP_MEAN, CLIP_STD)}

NETWORK_LAYERS: dict[str, tuple[str, ...]] = {
    "alexnet": ("features.4", "features.11", "classifier.5"),
    "inception_v3": ("avgpool",),
    "efficientnet_b1": ("avgpool",),
    "swav_resnet50": ("avgpool",),
    "clip_vit_l14": ("visual",),  # the module's own output: CLIP's projected image embedding
}

# (network, weights version) -> artifact name in nsdbench.weights
ARTIFACT_OF: dict[tuple[str, str], str] = {
    ("alexnet", "IMAGENET1K_V1"): "alexnet-imagenet1k-v1",
    ("inception_v3", "IMAGENET1K_V1"): "inception-v3-imagenet1k-v1",
    ("efficientnet_b1", "IMAGENET1K_V1"): "efficientnet-b1-imagenet1k-v1",
    ("efficientnet_b1", "IMAGENET1K_V2"): "efficientnet-b1-imagenet1k-v2",
    ("clip_vit_l14", "openai"): "clip-vit-l-14-openai",
    ("swav_resnet50", "800ep"): "swav-resnet50-800ep",
}

_USED_BY = ("metrics",)
for _art in (
    weights.Artifact(
        "alexnet-imagenet1k-v1",
        "torchvision AlexNet IMAGENET1K_V1 (AlexNet(2/5/7) metrics)",
        "url",
        "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        "alexnet-owt-7be5be79.pth",
        used_by=_USED_BY,
    ),
    weights.Artifact(
        "inception-v3-imagenet1k-v1",
        "torchvision InceptionV3 IMAGENET1K_V1 (Inception metric)",
        "url",
        "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth",
        "inception_v3_google-0cc3c7bd.pth",
        used_by=_USED_BY,
    ),
    weights.Artifact(
        "efficientnet-b1-imagenet1k-v1",
        "torchvision EfficientNet-B1 IMAGENET1K_V1 (EffNet-B, BD/SS)",
        "url",
        "https://download.pytorch.org/models/efficientnet_b1_rwightman-bac287d4.pth",
        "efficientnet_b1_rwightman-bac287d4.pth",
        used_by=_USED_BY,
    ),
    weights.Artifact(
        "efficientnet-b1-imagenet1k-v2",
        "torchvision EfficientNet-B1 IMAGENET1K_V2 (EffNet-B, MindEye)",
        "url",
        "https://download.pytorch.org/models/efficientnet_b1-c27df63c.pth",
        "efficientnet_b1-c27df63c.pth",
        used_by=_USED_BY,
    ),
    weights.Artifact(
        "clip-vit-l-14-openai",
        "OpenAI CLIP ViT-L/14 in open_clip format (QuickGELU) for CLIP metrics",
        "hf",
        "timm/vit_large_patch14_clip_224.openai",
        "open_clip_pytorch_model.bin",
        used_by=_USED_BY,
    ),
    weights.Artifact(
        "swav-resnet50-800ep",
        "SwAV ResNet-50, 800 epochs (facebookresearch/swav), for the SwAV metric",
        "url",
        "https://dl.fbaipublicfiles.com/deepcluster/swav_800ep_pretrain.pth.tar",
        "swav_800ep_pretrain.pth.tar",
        used_by=_USED_BY,
    ),
):
    weights.register(_art)


# --------------------------------------------------------------------------- tiny architectures


class TinyAlexNet(nn.Module):
    """AlexNet's module layout (features.0-12, avgpool, classifier.0-6) with few channels."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(8, 12, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(12, 16, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        )  # fmt: skip
        self.avgpool = nn.AdaptiveAvgPool2d((3, 3))
        self.classifier = nn.Sequential(
            nn.Dropout(), nn.Linear(16 * 9, 64), nn.ReLU(inplace=True),
            nn.Dropout(), nn.Linear(64, 64), nn.ReLU(inplace=True), nn.Linear(64, 10),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class TinyPooledCNN(nn.Module):
    """A small conv net ending in `avgpool` (stands in for Inception, EfficientNet and ResNet-50)."""

    def __init__(self, width: int = 16, transform_input: bool = False) -> None:
        super().__init__()
        self.transform_input = transform_input
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 7, 4, 3), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, 2, 1), nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(2 * width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.transform_input:  # torchvision Inception3._transform_input: ImageNet -> [-1, 1] scaling
            x = torch.cat(
                [
                    x[:, 0:1] * (0.229 / 0.5) + (0.485 - 0.5) / 0.5,
                    x[:, 1:2] * (0.224 / 0.5) + (0.456 - 0.5) / 0.5,
                    x[:, 2:3] * (0.225 / 0.5) + (0.406 - 0.5) / 0.5,
                ],
                1,
            )
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


def _clip_visual(tiny: bool, fp32_layernorm: bool = False) -> nn.Module:
    """open_clip's ViT tower; fp32_layernorm builds it with LayerNormFp32 (input cast to fp32 and back,
    weights kept fp32), which is OpenAI clip's LayerNorm."""
    from open_clip.model import CLIPVisionCfg, _build_vision_tower

    cast = torch.float16 if fp32_layernorm else None
    if tiny:
        cfg = CLIPVisionCfg(layers=2, width=32, head_width=16, patch_size=32, image_size=224)
        return _build_vision_tower(16, cfg, quick_gelu=True, cast_dtype=cast)
    cfg = CLIPVisionCfg(layers=24, width=1024, patch_size=14, image_size=224)  # open_clip ViT-L-14-quickgelu
    return _build_vision_tower(768, cfg, quick_gelu=True, cast_dtype=cast)


def to_openai_fp16(module: nn.Module) -> nn.Module:
    """OpenAI clip's convert_weights: conv, linear and attention weights and the projection to fp16;
    LayerNorm weights and the class / positional embeddings stay fp32 (the tower casts them to the
    activations' dtype, LayerNormFp32 computes in fp32 and casts back)."""
    from open_clip.model import convert_weights_to_lp

    convert_weights_to_lp(module, torch.float16)
    return module


def _architecture(network: str, mode: str, precision: str = "fp32") -> nn.Module:
    import torchvision.models as tvm

    tiny = mode == "tiny"
    if precision == "fp16-openai" and network != "clip_vit_l14":
        raise UsageError(f"precision fp16-openai is OpenAI CLIP's rule; network {network!r} has no such mode")
    if network == "alexnet":
        return TinyAlexNet() if tiny else tvm.alexnet(weights=None)
    if network == "inception_v3":
        if tiny:
            return TinyPooledCNN(16, transform_input=True)
        # what torchvision builds for IMAGENET1K_V1 (transform_input=True, aux head kept)
        return tvm.inception_v3(
            weights=None, aux_logits=True, transform_input=True, init_weights=mode == "random"
        )
    if network == "efficientnet_b1":
        return TinyPooledCNN(12) if tiny else tvm.efficientnet_b1(weights=None)
    if network == "swav_resnet50":
        return TinyPooledCNN(20) if tiny else tvm.resnet50(weights=None)
    if network == "clip_vit_l14":
        return _clip_visual(tiny, fp32_layernorm=precision == "fp16-openai")
    raise UsageError(f"unknown metric network {network!r}; expected one of {', '.join(NETWORK_LAYERS)}")


def _load_pretrained(network: str, version: str, module: nn.Module, seed: int) -> str:
    """Load the published state dict into `module` (allocated, not initialized); returns the artifact name.
    Parameters the file lacks by design (SwAV's unused classifier) get a seeded initialization."""
    key = (network, version)
    if key not in ARTIFACT_OF:
        raise UsageError(f"no pretrained weights {version!r} for metric network {network!r}")
    name = ARTIFACT_OF[key]
    path = weights.require(name)
    try:
        sd = weights.load_state_dict(path, mmap=True)  # copied into the module below
    except Exception as exc:  # a corrupt or non-tensor file
        raise NSDBenchError(f"cannot read weights {name!r} from {path}: {exc}") from exc
    if network == "clip_vit_l14":
        sd = {k[len("visual.") :]: v for k, v in sd.items() if k.startswith("visual.")}
        module.load_state_dict(sd, strict=True)
    elif network == "swav_resnet50":
        sd = {k.replace("module.", ""): v for k, v in sd.items()}
        missing, _unexpected = module.load_state_dict(sd, strict=False)  # projection head / prototypes unused
        if set(missing) - {"fc.weight", "fc.bias"}:
            raise NSDBenchError(f"weights {name!r} at {path} lack backbone keys: {sorted(missing)[:5]}")
        if missing:  # nn.Linear's own initialization, from a generator of its own: networks are
            # built on a background thread, which must not touch the process's random state
            g = torch.Generator().manual_seed(seed)
            nn.init.kaiming_uniform_(module.fc.weight, a=math.sqrt(5), generator=g)
            bound = 1 / math.sqrt(module.fc.in_features)
            nn.init.uniform_(module.fc.bias, -bound, bound, generator=g)
    else:
        module.load_state_dict(sd, strict=True)
    return name


@dataclass(frozen=True)
class NetworkKey:
    network: str
    weights: str  # the weights version asked for; "-" in random/tiny mode (same random module)
    mode: str
    precision: str
    device: str


class FeatureNetwork:
    """One loaded network in eval mode with forward hooks on the requested layers."""

    def __init__(self, key: NetworkKey) -> None:
        self.key = key
        mode = weights.check_mode(key.mode)
        seed = zlib.crc32(key.network.encode())
        self.artifact: str | None = None
        if mode == "pretrained":
            # built on the meta device: no random initialization of weights that the file replaces
            with torch.device("meta"):
                module = _architecture(key.network, mode, key.precision)
            module = module.to_empty(device="cpu")
            self.artifact = _load_pretrained(key.network, key.weights, module, seed)
            self.sha256 = weights.recorded_sha256(self.artifact)
        else:
            with weights.seeded(seed):
                module = _architecture(key.network, mode, key.precision)
            self.sha256 = weights.module_sha256(module)
        module.eval().requires_grad_(False)
        if key.precision == "fp16-openai":
            self.dtype = (
                torch.float16
            )  # the input is cast like OpenAI's encode_image: image.type(conv1 dtype)
            self.module = to_openai_fp16(module.to(key.device))
        else:
            self.dtype = torch.float16 if key.precision == "fp16" else torch.float32
            self.module = module.to(device=key.device, dtype=self.dtype)

    def features(self, x: torch.Tensor, layers: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Normalized float32 input (B, 3, H, W) -> {layer: (B, D) float32 features}."""
        out: dict[str, torch.Tensor] = {}
        handles = []
        caller = threading.get_ident()  # chunks may run side by side: each call keeps its own outputs
        for layer in layers:
            if layer not in NETWORK_LAYERS[self.key.network]:
                raise UsageError(f"network {self.key.network} has no metric layer {layer!r}")
            if layer == "visual":
                continue
            sub = self.module.get_submodule(layer)

            def hook(_m, _i, output, layer=layer):
                if threading.get_ident() == caller:
                    out[layer] = output.flatten(1).to(torch.float32, copy=True)

            handles.append(sub.register_forward_hook(hook))
        try:
            with torch.inference_mode():
                y = self.module(x.to(self.dtype))
        finally:
            for h in handles:
                h.remove()
        if "visual" in layers:
            out["visual"] = y.flatten(1).to(torch.float32, copy=True)
        return out


def pretrained_sha256(network: str, version: str) -> str:
    """The identity of a pretrained network without building it: the sha256 of its weights file (what
    FeatureNetwork.sha256 holds once built); a missing file is the usual one-line error."""
    key = (network, version)
    if key not in ARTIFACT_OF:
        raise UsageError(f"no pretrained weights {version!r} for metric network {network!r}")
    weights.require(ARTIFACT_OF[key])  # the file itself, not only its recorded hash
    return weights.recorded_sha256(ARTIFACT_OF[key])


@lru_cache(maxsize=16)
def _cached(key: NetworkKey) -> FeatureNetwork:
    return FeatureNetwork(key)


def get_network(
    network: str, weights_version: str, mode: str, precision: str = "fp32", device: str = "cpu"
) -> FeatureNetwork:
    """A loaded network (kept in memory for reuse within the process)."""
    version = weights_version if mode == "pretrained" else "-"
    return _cached(NetworkKey(network, version, mode, precision, str(device)))


def clear_cache() -> None:
    _cached.cache_clear()


def normalize(x: torch.Tensor, kind: str) -> torch.Tensor:
    """torchvision Normalize on float32 (B, 3, H, W): (x - mean) / std per channel."""
    mean, std = NORMALIZATION[kind]
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s
