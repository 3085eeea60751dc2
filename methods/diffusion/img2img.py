"""The shared Stable Diffusion img2img sampler (DDIM eta 0, classifier-free guidance), batched over images
with one CPU generator per image, so an image never depends on its batch. Used by takagi2023 and minddiffuser.

The loop holds no torch.no_grad: callers that only sample wrap it in torch.inference_mode(); MindDiffuser's
stage 2 differentiates the output image with respect to the init latent (optionally with the UNet calls
checkpointed to fit at 50 steps).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from nsdbench.methods.diffusion.ddim import (
    add_noise,
    ddim_schedule,
    ddim_step,
    guide,
    randn_per_image,
    strength_timesteps,
)


@dataclass(frozen=True)
class Img2ImgSettings:
    """Sampler settings; the defaults are Takagi & Nishimoto's (50 DDIM steps, strength 0.8, scale 5)."""

    num_inference_steps: int = 50
    strength: float = 0.8
    guidance_scale: float = 5.0
    gradient_checkpointing: bool = False
    # CompVis' DDIMSampler img2img (as Takagi's published script runs it) noises the init latent to the DDIM
    # timestep one step above the first one it denoises (801 vs 781 at 50 steps, strength 0.8); diffusers
    # noises to the first denoised one.
    ldm_noise_offset: bool = False
    vae_batch_size: int | None = 16  # images per VAE encode/decode call (None: the whole batch)


def noise_timestep(schedule, timesteps: Sequence[int], ldm_noise_offset: bool) -> int:
    """The timestep the init latent is noised to before denoising `timesteps`."""
    t = timesteps[0] + (schedule.step_size if ldm_noise_offset else 0)
    if t >= len(schedule.alphas_cumprod):
        raise ValueError(
            "ldm_noise_offset needs strength < 1 (CompVis' img2img has no timestep above the last)"
        )
    return t


def encode_images(
    vae, images: torch.Tensor, generators: Sequence[torch.Generator], batch_size: int | None = None
) -> torch.Tensor:
    """Scaled VAE latents of images in [0, 1] (B, 3, H, W): one posterior sample per image from its own
    generator, as diffusers' img2img pipeline draws it; the VAE runs on `batch_size` images at a time."""
    step = batch_size or len(images)
    moments = [
        vae.encode(images[i : i + step].to(device=vae.device, dtype=vae.dtype) * 2 - 1).latent_dist
        for i in range(0, len(images), step)
    ]
    mean = torch.cat([m.mean for m in moments])
    std = torch.cat([m.std for m in moments])
    eps = randn_per_image(mean.shape[1:], generators, mean.device, mean.dtype)
    return (mean + std * eps) * vae.config.scaling_factor


def decode_latents(vae, latents: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Images in [0, 1] (B, 3, H, W) from scaled latents, decoding `batch_size` latents at a time (the VAE
    decoder, not the UNet, bounds memory for large batches at 768 px)."""
    step = batch_size or len(latents)
    images = torch.cat(
        [
            vae.decode(latents[i : i + step] / vae.config.scaling_factor).sample
            for i in range(0, len(latents), step)
        ]
    )
    return (images / 2 + 0.5).clamp(0, 1)


def unet_eps(
    unet, latents, t, cond, class_labels, guidance_scale: float, use_checkpoint: bool
) -> torch.Tensor:
    """The UNet's (guided) prediction for a batch at timestep t; `cond` is [uncond; cond] when guiding."""
    guided = guidance_scale > 1.0
    x = torch.cat([latents, latents]) if guided else latents

    def call(x, cond, class_labels):
        return unet(x, t, encoder_hidden_states=cond, class_labels=class_labels).sample

    out = (
        checkpoint(call, x, cond, class_labels, use_reentrant=False)
        if use_checkpoint
        else call(x, cond, class_labels)
    )
    return guide(out, guidance_scale) if guided else out


def sample_from(
    unet,
    schedule,
    timesteps: Sequence[int],
    latents: torch.Tensor,
    cond: torch.Tensor,
    guidance_scale: float,
    class_labels: torch.Tensor | None = None,
    use_checkpoint: bool = False,
) -> torch.Tensor:
    """Run DDIM from x_{timesteps[0]} down to x_0 (latents in, latents out)."""
    for t in timesteps:
        eps = unet_eps(unet, latents, t, cond, class_labels, guidance_scale, use_checkpoint)
        latents = ddim_step(latents, eps.to(latents.dtype), t, schedule)
    return latents


def img2img_latents(
    components,
    prompt_embeds: torch.Tensor,
    negative_prompt_embeds: torch.Tensor,
    generators: Sequence[torch.Generator],
    settings: Img2ImgSettings = Img2ImgSettings(),
    init_images: torch.Tensor | None = None,
    init_latents: torch.Tensor | None = None,
) -> torch.Tensor:
    """Final scaled latents of img2img from init images in [0, 1] or init latents (already scaled).

    prompt_embeds and negative_prompt_embeds: (B, 77, width), one row per image (the unconditional rows
    are usually one empty-prompt embedding repeated). Per generator: the VAE posterior sample (when init
    images are given), then the noise added at the strength's first timestep.
    """
    if (init_images is None) == (init_latents is None):
        raise ValueError("give exactly one of init_images and init_latents")
    n = len(init_images if init_images is not None else init_latents)
    if len(generators) != n or len(prompt_embeds) != n or len(negative_prompt_embeds) != n:
        raise ValueError(f"{n} init images need {n} generators, prompt and negative prompt embeddings")
    unet, dtype, device = components.unet, components.unet.dtype, components.unet.device
    if init_latents is None:
        init_latents = encode_images(components.vae, init_images, generators, settings.vae_batch_size)
    init_latents = init_latents.to(device=device, dtype=dtype)

    schedule = ddim_schedule(components.scheduler, settings.num_inference_steps)
    timesteps = strength_timesteps(schedule, settings.strength)
    noise = randn_per_image(init_latents.shape[1:], generators, device, dtype)
    t_noise = noise_timestep(schedule, timesteps, settings.ldm_noise_offset)
    latents = add_noise(init_latents, noise, schedule.alpha(t_noise))
    guided = settings.guidance_scale > 1.0
    cond = torch.cat([negative_prompt_embeds, prompt_embeds]) if guided else prompt_embeds
    return sample_from(
        unet,
        schedule,
        timesteps,
        latents,
        cond.to(device=device, dtype=dtype),
        settings.guidance_scale,
        use_checkpoint=settings.gradient_checkpointing,
    )


def img2img(
    components,
    prompt_embeds: torch.Tensor,
    negative_prompt_embeds: torch.Tensor,
    generators: Sequence[torch.Generator],
    settings: Img2ImgSettings = Img2ImgSettings(),
    init_images: torch.Tensor | None = None,
    init_latents: torch.Tensor | None = None,
) -> torch.Tensor:
    """Images in [0, 1] (B, 3, H, W): img2img_latents decoded by the VAE."""
    latents = img2img_latents(
        components, prompt_embeds, negative_prompt_embeds, generators, settings, init_images, init_latents
    )
    return decode_latents(components.vae, latents, settings.vae_batch_size)
