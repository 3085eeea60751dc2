"""nsdbench's dual-guided img2img loop over Versatile Diffusion's components, as brain-diffuser's stage 2
runs it: init image -> VAE latent -> noised to the strength's level -> DDIM with classifier-free guidance
on mixed CLIP-vision / CLIP-text contexts -> VAE decode. Batched, with per-image CPU generators."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image

from nsdbench.methods.components.vd_clip_features import unconditional_tokens
from nsdbench.methods.components.versatile_diffusion import VDComponents


@dataclass(frozen=True)
class DualGuidedSettings:
    """brain-diffuser's published stage-2 settings.

    `mix` weighs the vision context (the text context gets 1 - mix). `noise_timestep` says where the init
    latent is noised to: "published" is the VD/LDM sampler (one DDIM step above the first denoising step,
    e.g. t=741 then denoise from 721 at strength 0.75); "img2img" is diffusers' img2img (noise to 721)."""

    steps: int = 50
    strength: float = 0.75
    guidance: float = 7.5
    mix: float = 0.6
    eta: float = 0.0
    noise_timestep: Literal["published", "img2img"] = "published"

    def __post_init__(self) -> None:
        if not 0.0 < self.strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {self.strength}")
        if not 0.0 <= self.mix <= 1.0:
            raise ValueError(f"mix must be in [0, 1], got {self.mix}")
        if self.steps < 1 or self.denoising_steps < 1:
            raise ValueError(f"steps={self.steps} at strength {self.strength} leaves no denoising step")
        if self.noise_timestep not in ("published", "img2img"):
            raise ValueError(f"noise_timestep must be 'published' or 'img2img', got {self.noise_timestep!r}")

    @property
    def denoising_steps(self) -> int:
        """DDIM steps actually run: int(strength * steps), 37 for the published 0.75 × 50."""
        return int(self.strength * self.steps)


def configure_dual_context(unet: torch.nn.Module, text_len: int, vision_len: int, text_weight: float) -> None:
    """Point every dual-context transformer at [text tokens | vision tokens] (text through the text UNet's
    blocks, vision through the image UNet's) and mix their residuals text_weight : 1 - text_weight."""
    from diffusers.models import DualTransformer2DModel

    for module in unet.modules():
        if isinstance(module, DualTransformer2DModel):
            module.mix_ratio = text_weight
            module.condition_lengths = [text_len, vision_len]
            module.transformer_index_for_condition = [1, 0]


def schedule(
    components: VDComponents, settings: DualGuidedSettings
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The denoising timesteps (descending) and the timestep the init latent is noised to (None at
    strength 1: start from pure noise)."""
    scheduler = components.scheduler
    scheduler.set_timesteps(settings.steps, device=components.device)
    all_steps = scheduler.timesteps
    start = settings.steps - settings.denoising_steps
    timesteps = all_steps[start:]
    if settings.strength >= 1.0:
        return timesteps, None
    noise_index = start - 1 if settings.noise_timestep == "published" else start
    return timesteps, all_steps[noise_index]


def encode_init_images(components: VDComponents, images: np.ndarray) -> torch.Tensor:
    """uint8 (B, h, w, 3) -> (B, 3, S, S) in [-1, 1] on the device: bicubic PIL resize to the output
    size S when h, w differ (the published code upsamples the 64-px VDVAE image to 512 this way)."""
    size = components.image_size
    batch = []
    for image in images:
        if image.shape[:2] != (size, size):
            image = np.asarray(Image.fromarray(image).resize((size, size), resample=Image.Resampling.BICUBIC))
        batch.append(torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1))
    pixels = torch.stack(batch).float() / 255.0 * 2.0 - 1.0
    return pixels.to(components.device, components.dtype)


def _draw(generators: Sequence[torch.Generator], shape: tuple[int, ...]) -> torch.Tensor:
    """One standard-normal draw of `shape` per image from its own CPU generator, stacked."""
    return torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in generators])


@torch.no_grad()
def initial_latents(
    components: VDComponents,
    init_images: np.ndarray | None,
    generators: Sequence[torch.Generator],
    settings: DualGuidedSettings,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Starting latents and the timesteps to denoise over. Each image's generator draws the VAE posterior
    sample first (img2img only), then the start noise, so batch composition never changes the draws."""
    timesteps, noise_t = schedule(components, settings)
    side = components.image_size // components.vae_scale_factor
    shape = (int(components.unet.config.in_channels), side, side)
    dev, dtype = components.device, components.dtype
    if noise_t is None:
        noise = _draw(generators, shape).to(dev, dtype)
        return noise * components.scheduler.init_noise_sigma, timesteps
    if init_images is None or len(init_images) != len(generators):
        raise ValueError("img2img needs one init image per generator")
    dist = components.vae.encode(encode_init_images(components, init_images)).latent_dist
    eps = _draw(generators, tuple(dist.mean.shape[1:])).to(dev, dtype)
    x0 = (dist.mean + dist.std * eps) * components.vae.config.scaling_factor
    noise = _draw(generators, shape).to(dev, dtype)
    return components.scheduler.add_noise(x0, noise, noise_t.reshape(1)), timesteps


@torch.no_grad()
def denoise(
    components: VDComponents,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    vision: torch.Tensor,
    text: torch.Tensor,
    generators: Sequence[torch.Generator],
    settings: DualGuidedSettings,
) -> torch.Tensor:
    """DDIM from `latents` over `timesteps` with classifier-free guidance; unconditional = empty-text and
    zero-image tokens (zero in VD's [-1, 1] pixel space, i.e. mid-gray). One UNet call per step for the
    whole batch, conditional and unconditional together."""
    dev, dtype = components.device, components.dtype
    n = len(latents)
    uncond_text, uncond_vision = unconditional_tokens(components)
    cond = torch.cat([text, vision], dim=1).to(dev, dtype)
    uncond = torch.cat([uncond_text, uncond_vision], dim=1).to(dev, dtype).expand(n, -1, -1)
    context = torch.cat([uncond, cond])
    configure_dual_context(components.unet, text.shape[1], vision.shape[1], 1.0 - settings.mix)
    scheduler = components.scheduler
    for t in timesteps:
        model_in = scheduler.scale_model_input(torch.cat([latents, latents]), t)
        eps = components.unet(model_in, t, encoder_hidden_states=context).sample
        eps_uncond, eps_cond = eps.chunk(2)
        eps = eps_uncond + settings.guidance * (eps_cond - eps_uncond)
        latents = scheduler.step(eps, t, latents, eta=settings.eta, generator=list(generators)).prev_sample
    return latents


@torch.no_grad()
def decode(components: VDComponents, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> float32 images (B, S, S, 3) in [0, 1] on the CPU."""
    image = components.vae.decode(latents / components.vae.config.scaling_factor).sample
    return (image.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[0, 1] floats -> uint8 by truncation, as torchvision's ToPILImage (the published code's) does."""
    return (images * 255).to(torch.uint8).numpy()


def dual_guided_img2img(
    components: VDComponents,
    init_images: np.ndarray | None,
    vision: torch.Tensor,
    text: torch.Tensor,
    generators: Sequence[torch.Generator],
    settings: DualGuidedSettings = DualGuidedSettings(),
) -> np.ndarray:
    """uint8 (B, S, S, 3) images from uint8 init images (any size; None at strength 1), CLIP-vision tokens
    (B, 257, D), CLIP-text tokens (B, 77, D) and one CPU generator per image."""
    _check_batch(components, init_images, vision, text, generators)
    latents, timesteps = initial_latents(components, init_images, generators, settings)
    latents = denoise(components, latents, timesteps, vision, text, generators, settings)
    return to_uint8(decode(components, latents))


def _check_batch(components, init_images, vision, text, generators) -> None:
    n = len(generators)
    vision_len = components.image_encoder.config.image_size // components.image_encoder.config.patch_size
    expected = {
        "vision tokens": (vision.shape, (n, vision_len**2 + 1, components.unet.config.cross_attention_dim)),
        "text tokens": (
            text.shape,
            (
                n,
                components.text_encoder.config.max_position_embeddings,
                components.unet.config.cross_attention_dim,
            ),
        ),
    }
    for what, (got, want) in expected.items():
        if tuple(got) != want:
            raise ValueError(f"{what}: expected shape {want}, got {tuple(got)}")
    if init_images is not None and len(init_images) != n:
        raise ValueError(f"{len(init_images)} init images for {n} generators")
