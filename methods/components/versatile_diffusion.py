"""Versatile Diffusion's components (image UNet with the dual-context transformer, VAE, CLIP ViT-L/14 text
and vision encoders, DDIM scheduler), loaded once per process in pretrained, random or tiny mode."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

import torch

from nsdbench import weights
from nsdbench.methods.components import load_once

ARTIFACT = weights.register(
    weights.Artifact(
        name="versatile-diffusion",
        kind="hf-snapshot",
        source="shi-labs/versatile-diffusion",
        filename="versatile-diffusion",
        allow_patterns=(
            "model_index.json",
            "tokenizer/*",
            "image_feature_extractor/*",
            "text_encoder/*",
            "image_encoder/*",
            "image_unet/*",
            "text_unet/*",
            "vae/*",
            "scheduler/*",
        ),
        used_by=("brain-diffuser",),
        # size_bytes left None: the Hub listings found give image_unet 3.44 GB, text_unet 6.84 GB, image_encoder
        # 1.22 GB and vae 335 MB (huggingface.co/shi-labs/versatile-diffusion/tree/main/...) but not text_encoder
        description="Versatile Diffusion v1.0 (diffusers layout): the folders the dual-guided pipeline loads; "
        "text_unet only lends its attention blocks to the image UNet's dual-context transformer",
    )
)

CONFIG_PACKAGE = "nsdbench.methods.components"
CONFIG_DIR = "configs/versatile-diffusion"
RANDOM_SEED = 0


@dataclass(frozen=True)
class VDComponents:
    """What the dual-guided img2img loop and the CLIP feature extractors need, on one device and dtype."""

    unet: Any  # UNet2DConditionModel whose attention blocks are DualTransformer2DModel
    vae: Any  # AutoencoderKL
    text_encoder: Any  # CLIPTextModelWithProjection
    tokenizer: Any  # CLIPTokenizer
    image_encoder: Any  # CLIPVisionModelWithProjection
    image_processor: Any  # CLIPImageProcessor
    scheduler: Any  # DDIMScheduler
    mode: str
    device: torch.device
    dtype: torch.dtype

    @property
    def image_size(self) -> int:
        """Output side in pixels: the UNet's latent size times the VAE's down-sampling factor (512 full size)."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def default_dtype(device: torch.device | str) -> torch.dtype:
    """fp16 on CUDA (as the published code runs VD), float32 elsewhere."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def load_config(name: str, mode: str = "random") -> dict[str, Any]:
    """One shipped configuration (random mode: the published one; tiny: the reduced one) as a dict."""
    sub = f"{CONFIG_DIR}/tiny" if mode == "tiny" else CONFIG_DIR
    text = resources.files(CONFIG_PACKAGE).joinpath(f"{sub}/{name}.json").read_text()
    return json.loads(text)


def load_components(
    mode: str, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> VDComponents:
    """The components in `mode` ("pretrained", "random", "tiny") on `device`, built once per process."""
    device = torch.device(device)
    dtype = dtype or default_dtype(device)
    if mode not in weights.MODES:
        raise ValueError(f"unknown weights mode {mode!r} (expected one of {', '.join(weights.MODES)})")
    key = ("versatile-diffusion", mode, str(device), str(dtype))
    return load_once(key, lambda: _build(mode, device, dtype))


def _build(mode: str, device: torch.device, dtype: torch.dtype) -> VDComponents:
    pipe = _pretrained_pipeline(dtype) if mode == "pretrained" else _random_pipeline(mode, device)
    pipe.remove_unused_weights()  # the text UNet's blocks now live inside the image UNet
    accept_attention_masks(pipe.image_unet)
    modules = {
        "unet": pipe.image_unet,
        "vae": pipe.vae,
        "text_encoder": pipe.text_encoder,
        "image_encoder": pipe.image_encoder,
    }
    for module in modules.values():
        module.to(device=device)
        if next(module.parameters()).dtype != dtype:
            module.to(dtype=dtype)
        module.eval().requires_grad_(False)
    return VDComponents(
        **modules,
        tokenizer=pipe.tokenizer,
        image_processor=pipe.image_feature_extractor,
        scheduler=pipe.scheduler,
        mode=mode,
        device=device,
        dtype=dtype,
    )


def accept_attention_masks(unet: torch.nn.Module) -> None:
    """Let the UNet's dual-context transformers take the `encoder_attention_mask` keyword that diffusers'
    cross-attention blocks now pass (always None here); without this the deprecated pipeline cannot run."""
    from diffusers.models import DualTransformer2DModel

    class MaskTolerantDualTransformer(DualTransformer2DModel):
        def forward(self, hidden_states, encoder_hidden_states, *args, encoder_attention_mask=None, **kwargs):
            if encoder_attention_mask is not None:
                raise ValueError("the dual-context transformer takes no encoder attention mask")
            return super().forward(hidden_states, encoder_hidden_states, *args, **kwargs)

    for module in unet.modules():
        if type(module) is DualTransformer2DModel:
            module.__class__ = MaskTolerantDualTransformer


def _pretrained_pipeline(dtype: torch.dtype):
    """The published weights from NSDBENCH_HOME/weights/versatile-diffusion, offline, one component per
    snapshot folder (model_index.json names the text UNet's class in a module recent diffusers no longer
    resolves); the pipeline's own constructor merges the text UNet's attention blocks into the image UNet."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import (
        CLIPImageProcessor,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        CLIPVisionModelWithProjection,
    )

    path = str(weights.require(ARTIFACT.name))
    offline = {"local_files_only": True}
    loaders = {
        "image_unet": UNet2DConditionModel,
        "text_unet": text_unet_class(),
        "vae": AutoencoderKL,
        "text_encoder": CLIPTextModelWithProjection,
        "image_encoder": CLIPVisionModelWithProjection,
    }
    models = {
        name: cls.from_pretrained(path, subfolder=name, torch_dtype=dtype, **offline)
        for name, cls in loaders.items()
    }
    tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", **offline)
    processor = CLIPImageProcessor.from_pretrained(path, subfolder="image_feature_extractor", **offline)
    return _dual_pipeline(models, tokenizer, processor, "pretrained")


def _dual_pipeline(models: dict[str, Any], tokenizer: Any, processor: Any, mode: str):
    """The dual-guided pipeline over built models, with the DDIM of the published VD sampler (shipped
    config; the snapshot's own scheduler folder is not read). The pipeline's constructor creates each
    dual-context transformer with two placeholder blocks and swaps in the image and text UNets' blocks at
    once, so the placeholders are built on the meta device (never initialized, never allocated)."""
    from diffusers import DDIMScheduler, VersatileDiffusionDualGuidedPipeline

    scheduler = DDIMScheduler.from_config(strip_class(load_config("scheduler", mode)))
    with torch.device("meta"):
        return VersatileDiffusionDualGuidedPipeline(
            tokenizer=tokenizer, image_feature_extractor=processor, scheduler=scheduler, **models
        )


def text_unet_class() -> type:
    """diffusers' UNetFlatConditionModel (moved under pipelines.deprecated in recent releases)."""
    try:
        from diffusers.pipelines.deprecated.versatile_diffusion.modeling_text_unet import (
            UNetFlatConditionModel,
        )
    except ImportError:
        from diffusers.pipelines.versatile_diffusion.modeling_text_unet import UNetFlatConditionModel
    return UNetFlatConditionModel


def strip_class(config: dict[str, Any]) -> dict[str, Any]:
    """A shipped config as constructor keyword arguments: bookkeeping keys (`_class_name`, `_diffusers_version`,
    `architectures`) removed."""
    return {k: v for k, v in config.items() if not k.startswith("_") and k != "architectures"}


def build_models(mode: str, seed: int = RANDOM_SEED) -> dict[str, Any]:
    """Every model of the snapshot at its shipped configuration with seeded random weights, on the current
    default device (a `torch.device` context selects it)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    torch.manual_seed(seed)
    return {
        "image_unet": UNet2DConditionModel(**strip_class(load_config("image_unet", mode))),
        "text_unet": text_unet_class()(**strip_class(load_config("text_unet", mode))),
        "vae": AutoencoderKL(**strip_class(load_config("vae", mode))),
        "text_encoder": CLIPTextModelWithProjection(
            CLIPTextConfig(**strip_class(load_config("text_encoder", mode)))
        ),
        "image_encoder": CLIPVisionModelWithProjection(
            CLIPVisionConfig(**strip_class(load_config("image_encoder", mode)))
        ),
    }


def _random_pipeline(mode: str, device: torch.device):
    """The dual-guided pipeline over seeded random models (random: published configuration; tiny: reduced).
    Random weights are drawn on `device` (fast on a GPU), so they are reproducible per device type."""
    from transformers import CLIPImageProcessor

    from nsdbench.methods.components.clip_tokenizer import tiny_clip_tokenizer

    with torch.device(device):
        models = build_models(mode)
    processor = CLIPImageProcessor(**strip_class(load_config("image_feature_extractor", mode)))
    # No tokenizer files exist offline; the byte-level tiny tokenizer yields ids valid for any CLIP vocab.
    tokenizer = tiny_clip_tokenizer(int(models["text_encoder"].config.max_position_embeddings))
    return _dual_pipeline(models, tokenizer, processor, mode)
