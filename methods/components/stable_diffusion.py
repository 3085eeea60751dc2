"""Stable Diffusion 1.4 and 2.1 unCLIP components (diffusers/transformers classes), loaded once per process in
one of three weight modes: pretrained (local Hub snapshot, safetensors only), random (published configs,
seeded) or tiny (reduced configs, CPU-fast)."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import torch

from nsdbench import weights
from nsdbench.errors import UsageError
from nsdbench.methods.components import load_once

SD14 = "stable-diffusion-v1-4"
UNCLIP = "stable-diffusion-2-1-unclip"

weights.register(
    weights.Artifact(
        SD14,
        "Stable Diffusion v1.4 (UNet, VAE, CLIP ViT-L/14 text encoder, tokenizer, scheduler)",
        "hf-snapshot",
        "CompVis/stable-diffusion-v1-4",
        allow_patterns=(
            "model_index.json",
            "unet/config.json",
            "unet/diffusion_pytorch_model.safetensors",
            "vae/config.json",
            "vae/diffusion_pytorch_model.safetensors",
            "text_encoder/config.json",
            "text_encoder/model.safetensors",
            "tokenizer/*",
            "scheduler/scheduler_config.json",
        ),
        used_by=("takagi2023", "minddiffuser"),
        # Hub file listings (rounded as shown there): unet 3.44 GB, text_encoder/model.safetensors 492 MB
        # (huggingface.co/CompVis/stable-diffusion-v1-4/tree/main/{unet,text_encoder}); vae 335 MB, the fp32
        # AutoencoderKL file as listed for the same VAE in stable-diffusion-2-1-unclip/vae; tokenizer 1.59 MB
        size_bytes=3_440_000_000 + 492_000_000 + 335_000_000 + 1_590_000,
    )
)
weights.register(
    weights.Artifact(
        UNCLIP,
        "Stable Diffusion 2.1 unCLIP-H (UNet, VAE, OpenCLIP ViT-H/14 text and image encoders, normalizer)",
        "hf-snapshot",
        "stabilityai/stable-diffusion-2-1-unclip",
        allow_patterns=(
            "model_index.json",
            "unet/config.json",
            "unet/diffusion_pytorch_model.safetensors",
            "vae/config.json",
            "vae/diffusion_pytorch_model.safetensors",
            "text_encoder/config.json",
            "text_encoder/model.safetensors",
            "image_encoder/config.json",
            "image_encoder/model.safetensors",
            "image_normalizer/config.json",
            "image_normalizer/diffusion_pytorch_model.safetensors",
            "image_noising_scheduler/*",
            "feature_extractor/*",
            "tokenizer/*",
            "scheduler/*",
        ),
        used_by=("second-sight", "stochastic-search"),
        # Hub file listings (rounded as shown there), huggingface.co/stabilityai/stable-diffusion-2-1-unclip/
        # tree/main/...: unet 3.48 GB, image_encoder 2.53 GB, text_encoder 1.36 GB, vae 335 MB, tokenizer
        # 1.59 MB; configs and the image normalizer are a few kB
        size_bytes=3_480_000_000 + 2_530_000_000 + 1_360_000_000 + 335_000_000 + 1_590_000,
    )
)

# Reduced configurations for mode `tiny`: same classes and code paths, a few thousand parameters each.
_TINY_UNET = {
    "block_out_channels": [16, 32],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "sample_size": 16,
}
_TINY_VAE = {
    "block_out_channels": [16, 32],
    "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 32,
}
_TINY_TEXT = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "projection_dim": 32,
    "vocab_size": 514,
}
_TINY_VISION = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "image_size": 32,
    "patch_size": 4,
    "projection_dim": 32,
}
_TINY = {
    SD14: {"unet": _TINY_UNET, "vae": _TINY_VAE, "text_encoder": _TINY_TEXT},
    UNCLIP: {
        "unet": {**_TINY_UNET, "attention_head_dim": [2, 4], "projection_class_embeddings_input_dim": 64},
        "vae": _TINY_VAE,
        "text_encoder": _TINY_TEXT,
        "image_encoder": _TINY_VISION,
        "image_normalizer": {"embedding_dim": 32},
        "feature_extractor": {"crop_size": {"height": 32, "width": 32}, "size": {"shortest_edge": 32}},
    },
}
_SEED_OFFSET = {"unet": 0, "vae": 1, "text_encoder": 2, "image_encoder": 3}


@dataclass(frozen=True)
class SD14Components:
    """Stable Diffusion 1.4 as Takagi & Nishimoto and MindDiffuser use it (DDIM sampling)."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    mode: str
    device: torch.device
    dtype: torch.dtype


@dataclass(frozen=True)
class UnclipComponents:
    """Stable Diffusion 2.1 unCLIP-H: the parts of diffusers' StableUnCLIPImg2ImgPipeline."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    image_encoder: Any
    feature_extractor: Any
    image_normalizer: Any
    image_noising_scheduler: Any
    mode: str
    device: torch.device
    dtype: torch.dtype


def published_config(model: str, part: str) -> dict:
    """The shipped published configuration of one component (package data, sources in its README)."""
    path = resources.files("nsdbench.methods.components") / "configs" / model / f"{part}.json"
    return json.loads(path.read_text())


def component_config(model: str, part: str, mode: str) -> dict:
    """The configuration a component is built from in mode `random` (published) or `tiny` (reduced)."""
    cfg = published_config(model, part)
    if mode == "tiny":
        cfg.update(_TINY[model].get(part, {}))
    return cfg


def default_dtype(device: str | torch.device) -> torch.dtype:
    """fp16 on CUDA, fp32 elsewhere."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def _check_mode(mode: str) -> None:
    if mode not in weights.MODES:
        raise UsageError(f"unknown weights mode {mode!r} (expected one of {', '.join(weights.MODES)})")


def build_random(part: str, cls: type, cfg: dict, seed: int, device: torch.device) -> Any:
    """Instantiate `cls` from `cfg` with weights drawn from a seeded generator on `device`."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.device(device):
        torch.manual_seed(seed + _SEED_OFFSET.get(part, 0))
        if _is_diffusers(cls):
            return cls.from_config(cfg)
        return cls(cls.config_class(**cfg))


def _is_diffusers(cls: type) -> bool:
    return cls.__module__.startswith("diffusers")


def _quiet_cast(module: Any, dtype: torch.dtype) -> Any:
    """Cast without diffusers' warning about modules kept in fp32 (SD's UNet and VAE have none)."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        return module.to(dtype=dtype)
    finally:
        diffusers_logging.set_verbosity(level)


def _finish(module: Any, device: torch.device, dtype: torch.dtype) -> Any:
    if "torch_device" in inspect.signature(module.to).parameters:  # StableUnCLIPImageNormalizer's own .to
        module = module.to(torch_device=device, torch_dtype=dtype)
    else:
        module = module.to(device=device)
        if module.dtype != dtype:
            module = _quiet_cast(module, dtype)
    module.eval()
    module.requires_grad_(False)
    return module


def _model(model: str, part: str, cls: type, mode: str, seed: int, device: torch.device, dtype) -> Any:
    if mode == "pretrained":
        root = weights.require(model)
        dtype_kw = {"torch_dtype" if _is_diffusers(cls) else "dtype": dtype}
        loaded = cls.from_pretrained(
            root, subfolder=part, local_files_only=True, use_safetensors=True, **dtype_kw
        )
        return _finish(loaded, device, dtype)
    return _finish(build_random(part, cls, component_config(model, part, mode), seed, device), device, dtype)


def _tokenizer(model: str, mode: str) -> Any:
    from transformers import CLIPTokenizer

    from nsdbench.methods.components.clip_tokenizer import tiny_clip_tokenizer

    if mode == "pretrained":
        return CLIPTokenizer.from_pretrained(
            weights.require(model), subfolder="tokenizer", local_files_only=True
        )
    return tiny_clip_tokenizer(77)


def _scheduler(model: str, part: str, cls: type, mode: str) -> Any:
    if mode == "pretrained":
        return cls.from_pretrained(weights.require(model), subfolder=part, local_files_only=True)
    return cls.from_config(published_config(model, part))


def _resolve(device: str | torch.device, dtype: torch.dtype | None) -> tuple[torch.device, torch.dtype]:
    device = torch.device(device)
    return device, dtype or default_dtype(device)


def load_sd14(
    mode: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None, seed: int = 0
) -> SD14Components:
    """Stable Diffusion 1.4 in `mode`, built once per (mode, device, dtype, seed) in this process."""
    _check_mode(mode)
    device, dtype = _resolve(device, dtype)

    def build() -> SD14Components:
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel

        return SD14Components(
            unet=_model(SD14, "unet", UNet2DConditionModel, mode, seed, device, dtype),
            vae=_model(SD14, "vae", AutoencoderKL, mode, seed, device, dtype),
            text_encoder=_model(SD14, "text_encoder", CLIPTextModel, mode, seed, device, dtype),
            tokenizer=_tokenizer(SD14, mode),
            scheduler=_scheduler(SD14, "scheduler", DDIMScheduler, mode),
            mode=mode,
            device=device,
            dtype=dtype,
        )

    return load_once((SD14, mode, str(device), str(dtype), seed), build)


def load_unclip(
    mode: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None, seed: int = 0
) -> UnclipComponents:
    """Stable Diffusion 2.1 unCLIP-H in `mode`, built once per (mode, device, dtype, seed) in this process."""
    _check_mode(mode)
    device, dtype = _resolve(device, dtype)

    def build() -> UnclipComponents:
        from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
        from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
            StableUnCLIPImageNormalizer,
        )
        from transformers import CLIPImageProcessor, CLIPTextModel, CLIPVisionModelWithProjection

        if mode == "pretrained":
            processor = CLIPImageProcessor.from_pretrained(
                weights.require(UNCLIP), subfolder="feature_extractor", local_files_only=True
            )
        else:
            processor = CLIPImageProcessor(**component_config(UNCLIP, "feature_extractor", mode))
        part: Callable[[str, type], Any] = lambda name, cls: _model(
            UNCLIP, name, cls, mode, seed, device, dtype
        )
        return UnclipComponents(
            unet=part("unet", UNet2DConditionModel),
            vae=part("vae", AutoencoderKL),
            text_encoder=part("text_encoder", CLIPTextModel),
            tokenizer=_tokenizer(UNCLIP, mode),
            scheduler=_scheduler(UNCLIP, "scheduler", DDIMScheduler, mode),
            image_encoder=part("image_encoder", CLIPVisionModelWithProjection),
            feature_extractor=processor,
            image_normalizer=part("image_normalizer", StableUnCLIPImageNormalizer),
            image_noising_scheduler=_scheduler(UNCLIP, "image_noising_scheduler", DDPMScheduler, mode),
            mode=mode,
            device=device,
            dtype=dtype,
        )

    return load_once((UNCLIP, mode, str(device), str(dtype), seed), build)


@torch.no_grad()
def encode_prompts(components: SD14Components | UnclipComponents, texts: list[str]) -> torch.Tensor:
    """Text conditioning (N, 77, width) as the diffusers pipelines compute it: padded to 77, no attention
    mask, the encoder's last hidden state (for SD 2.1 that is OpenCLIP's penultimate layer)."""
    tokens = components.tokenizer(
        texts,
        padding="max_length",
        max_length=components.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    ids = tokens.input_ids.to(components.device)
    return components.text_encoder(ids)[0].to(components.dtype)
