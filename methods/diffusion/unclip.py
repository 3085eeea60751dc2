"""Stable Diffusion 2.1 unCLIP driven img2img with a strength parameter (diffusers' StableUnCLIPImg2ImgPipeline
has none), batched over images with one CPU generator per image; and the OpenCLIP ViT-H/14 image embedding
exactly as that pipeline computes it. Used by second-sight and stochastic-search.

strength < 1 starts from the init latent noised to the first of the last int(steps * strength) timesteps
(diffusers' img2img convention); strength 1 starts from pure noise and ignores the init, as the stock
pipeline does. Per generator the draws are: image-embedding noise, VAE posterior sample (strength < 1 with
init images), latent noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.models.embeddings import get_timestep_embedding

from nsdbench.methods.diffusion.ddim import add_noise, ddim_schedule, randn_per_image, strength_timesteps
from nsdbench.methods.diffusion.img2img import decode_latents, encode_images, sample_from


@dataclass(frozen=True)
class UnclipSettings:
    """Sampler settings; the defaults are the stock pipeline's (20 DDIM steps, guidance 10, noise level 0)."""

    num_inference_steps: int = 20
    strength: float = 1.0
    guidance_scale: float = 10.0
    noise_level: int = 0
    gradient_checkpointing: bool = False
    vae_batch_size: int | None = 16  # images per VAE encode/decode call (None: the whole batch)


def noise_image_embeddings(
    components, image_embeds: torch.Tensor, noise_level: int, generators: Sequence[torch.Generator]
) -> torch.Tensor:
    """The UNet's class labels (B, 2 x dim): the embedding normalized, noised to `noise_level` by the
    image-noising scheduler, unnormalized, then joined with the sinusoidal embedding of the noise level."""
    dim = image_embeds.shape[1]
    noise = randn_per_image((dim,), generators, image_embeds.device, image_embeds.dtype)
    levels = torch.full((len(image_embeds),), noise_level, device=image_embeds.device, dtype=torch.long)
    norm = components.image_normalizer
    mean = norm.mean.to(image_embeds.device, image_embeds.dtype)
    std = norm.std.to(image_embeds.device, image_embeds.dtype)
    scaled = (image_embeds - mean) * 1.0 / std
    alphas = components.image_noising_scheduler.alphas_cumprod[noise_level]
    noised = add_noise(scaled, noise, alphas) * std + mean
    level_embedding = get_timestep_embedding(levels, dim, flip_sin_to_cos=True, downscale_freq_shift=0)
    return torch.cat([noised, level_embedding.to(noised.dtype)], dim=1)


def unclip_img2img_latents(
    components,
    image_embeds: torch.Tensor,
    prompt_embeds: torch.Tensor,
    negative_prompt_embeds: torch.Tensor,
    generators: Sequence[torch.Generator],
    settings: UnclipSettings = UnclipSettings(),
    init_images: torch.Tensor | None = None,
    init_latents: torch.Tensor | None = None,
    latent_shape: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """Final scaled latents, one per row of image_embeds (B, dim) and prompt embeddings (B, 77, width).

    Strength < 1 needs init images in [0, 1] or scaled init latents; at strength 1 the latent shape is that
    of the init (when given), else `latent_shape`, else the UNet's native sample size."""
    unet, dtype, device = components.unet, components.unet.dtype, components.unet.device
    n = len(image_embeds)
    if len(generators) != n or len(prompt_embeds) != n or len(negative_prompt_embeds) != n:
        raise ValueError(f"{n} image embeddings need {n} generators, prompt and negative prompt embeddings")
    if init_images is not None and init_latents is not None:
        raise ValueError("give at most one of init_images and init_latents")
    from_init = settings.strength < 1.0
    if from_init and init_images is None and init_latents is None:
        raise ValueError(f"strength {settings.strength} < 1 needs init images or init latents")

    labels = noise_image_embeddings(
        components, image_embeds.to(device=device, dtype=dtype), settings.noise_level, generators
    )
    schedule = ddim_schedule(components.scheduler, settings.num_inference_steps)
    timesteps = strength_timesteps(schedule, settings.strength)
    if from_init:
        if init_latents is None:
            init_latents = encode_images(components.vae, init_images, generators, settings.vae_batch_size)
        init_latents = init_latents.to(device=device, dtype=dtype)
        noise = randn_per_image(init_latents.shape[1:], generators, device, dtype)
        latents = add_noise(init_latents, noise, schedule.alpha(timesteps[0]))
    else:
        shape = latent_shape or _native_latent_shape(components, init_images, init_latents)
        latents = randn_per_image(shape, generators, device, dtype) * components.scheduler.init_noise_sigma

    guided = settings.guidance_scale > 1.0
    cond = torch.cat([negative_prompt_embeds, prompt_embeds]) if guided else prompt_embeds
    class_labels = torch.cat([torch.zeros_like(labels), labels]) if guided else labels
    return sample_from(
        unet,
        schedule,
        timesteps,
        latents,
        cond.to(device=device, dtype=dtype),
        settings.guidance_scale,
        class_labels=class_labels,
        use_checkpoint=settings.gradient_checkpointing,
    )


def _native_latent_shape(components, init_images, init_latents) -> tuple[int, int, int]:
    channels = components.unet.config.in_channels
    if init_latents is not None:
        return tuple(init_latents.shape[1:])
    if init_images is not None:
        factor = 2 ** (len(components.vae.config.block_out_channels) - 1)
        return channels, init_images.shape[2] // factor, init_images.shape[3] // factor
    size = components.unet.config.sample_size
    return channels, size, size


def unclip_img2img(
    components,
    image_embeds: torch.Tensor,
    prompt_embeds: torch.Tensor,
    negative_prompt_embeds: torch.Tensor,
    generators: Sequence[torch.Generator],
    settings: UnclipSettings = UnclipSettings(),
    init_images: torch.Tensor | None = None,
    init_latents: torch.Tensor | None = None,
    latent_shape: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """Images in [0, 1] (B, 3, H, W): unclip_img2img_latents decoded by the VAE."""
    latents = unclip_img2img_latents(
        components,
        image_embeds,
        prompt_embeds,
        negative_prompt_embeds,
        generators,
        settings,
        init_images,
        init_latents,
        latent_shape,
    )
    return decode_latents(components.vae, latents, settings.vae_batch_size)


@torch.no_grad()
def image_embeddings(components, images: np.ndarray | Sequence, batch_size: int = 64) -> torch.Tensor:
    """OpenCLIP ViT-H/14 image embeddings (N, 1024 at full size) of uint8 RGB images (N, H, W, 3) or PIL
    images: the pipeline's CLIPImageProcessor (bicubic resize, center crop 224, CLIP normalization) and the
    projected image embedding of its CLIPVisionModelWithProjection, unnormalized."""
    encoder = components.image_encoder
    out = []
    for start in range(0, len(images), batch_size):
        chunk = list(images[start : start + batch_size])
        pixels = components.feature_extractor(images=chunk, return_tensors="pt").pixel_values
        out.append(encoder(pixels.to(device=encoder.device, dtype=encoder.dtype)).image_embeds)
    return torch.cat(out)
