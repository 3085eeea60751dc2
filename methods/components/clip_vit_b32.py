"""OpenAI CLIP ViT-B/32's image tower (open_clip, QuickGELU) with MindDiffuser's guidance features: the
outputs of the MLP's second Linear in transformer blocks 1-6 ("Linear-2" ... "Linear-12" in the authors'
layer count) and the final 512-d embedding, differentiable with respect to the input image."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nsdbench import weights
from nsdbench.errors import NSDBenchError
from nsdbench.methods.components import load_once

CLIP_B32 = "clip-vit-b-32-openai"
IMAGE_SIZE = 224
N_GUIDANCE_BLOCKS = 6  # Linear-2, -4, ..., -12 of the authors' count: c_proj of blocks 1..6
# MindDiffuser's released code normalizes with ImageNet statistics when it extracts CLIP features (both the
# training targets and the generated images), not CLIP's own; kept so decoders match published features.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

weights.register(
    weights.Artifact(
        CLIP_B32,
        "OpenAI CLIP ViT-B/32 in open_clip format (QuickGELU): MindDiffuser's stage-2 guidance features",
        "hf",
        "timm/vit_base_patch32_clip_224.openai",
        "open_clip_pytorch_model.bin",
        used_by=("minddiffuser",),
        loader="open_clip",
        size_bytes=605_000_000,  # 605 MB: huggingface.co/timm/vit_base_patch32_clip_224.openai file listing
    )
)


@dataclass(frozen=True)
class TowerSpec:
    """The vision tower's shape: the published one, or a reduced one for mode `tiny`."""

    layers: int
    width: int
    head_width: int
    embed_dim: int


PUBLISHED = TowerSpec(layers=12, width=768, head_width=64, embed_dim=512)
TINY = TowerSpec(layers=N_GUIDANCE_BLOCKS, width=32, head_width=16, embed_dim=16)


def build_tower(spec: TowerSpec) -> torch.nn.Module:
    """open_clip's VisionTransformer for ViT-B/32 at 224 px (patch 32: 50 tokens) in the given shape."""
    from open_clip.model import CLIPVisionCfg, _build_vision_tower

    cfg = CLIPVisionCfg(
        layers=spec.layers, width=spec.width, head_width=spec.head_width, patch_size=32, image_size=IMAGE_SIZE
    )
    return _build_vision_tower(spec.embed_dim, cfg, quick_gelu=True)


def _load_pretrained(tower: torch.nn.Module) -> None:
    path = weights.require(CLIP_B32)
    try:
        sd = weights.load_state_dict(path)
    except Exception as exc:  # a corrupt or non-tensor file
        raise NSDBenchError(f"cannot read weights {CLIP_B32!r} from {path}: {exc}") from exc
    visual = {k[len("visual.") :]: v for k, v in sd.items() if k.startswith("visual.")}
    tower.load_state_dict(visual, strict=True)


class GuidanceCLIP:
    """CLIP ViT-B/32's image tower in eval mode, frozen; gradients flow to its input images."""

    def __init__(self, tower: torch.nn.Module, mode: str, device: torch.device) -> None:
        self.tower = tower
        self.mode = mode
        self.device = device
        self.identity = f"{CLIP_B32}:{mode}" + (
            "" if mode == "pretrained" else f":{weights.module_sha256(tower)}"
        )

    @property
    def feature_dims(self) -> tuple[int, ...]:
        """Flattened size of each guidance layer (50 tokens x width) and of the final embedding."""
        width = self.tower.transformer.width
        tokens = self.tower.positional_embedding.shape[0]
        return (tokens * width,) * N_GUIDANCE_BLOCKS + (int(self.tower.output_dim),)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (B, 3, H, W) -> bicubic 224 px, ImageNet-normalized (as the authors' code)."""
        x = images.to(device=self.device, dtype=torch.float32)
        if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
            x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bicubic", align_corners=False)
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Images in [0, 1] -> [6 x (B, 50*width) block outputs, (B, embed_dim) embedding], float32."""
        out: list[torch.Tensor] = []
        blocks = self.tower.transformer.resblocks
        handles = [
            blocks[i].mlp.c_proj.register_forward_hook(lambda _m, _i, o: out.append(o.flatten(1)))
            for i in range(N_GUIDANCE_BLOCKS)
        ]
        try:
            embedding = self.tower(self.preprocess(images))
        finally:
            for h in handles:
                h.remove()
        return [t.float() for t in out] + [embedding.float()]


def load_clip_b32(mode: str, device: str | torch.device = "cpu", seed: int = 0) -> GuidanceCLIP:
    """CLIP ViT-B/32's tower in `mode` (fp32: stage 2 differentiates through it), built once per process."""
    mode = weights.check_mode(mode)
    device = torch.device(device)

    def build() -> GuidanceCLIP:
        with weights.seeded(seed + 0xB32):
            tower = build_tower(TINY if mode == "tiny" else PUBLISHED)
        if mode == "pretrained":
            _load_pretrained(tower)
        tower = tower.to(device).eval().requires_grad_(False)
        return GuidanceCLIP(tower, mode, device)

    return load_once((CLIP_B32, mode, str(device), seed), build)
