"""CLIP token embeddings as Versatile Diffusion consumes them (and brain-diffuser regresses onto): every
projected token divided by the norm of the projected pooled embedding (VD's own normalization)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from nsdbench.methods.components.versatile_diffusion import VDComponents


@torch.no_grad()
def clip_vision_tokens(components: VDComponents, images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(B, 257, 768) tokens of uint8 RGB images (B, H, W, 3): CLIP pre-processing, last hidden state,
    post-layernorm and visual projection of every token, divided by the norm of the class token."""
    images = _as_uint8_batch(images)
    pixels = components.image_processor(images=list(images), return_tensors="pt").pixel_values
    encoder = components.image_encoder
    hidden = encoder(pixels.to(components.device, components.dtype)).last_hidden_state
    tokens = encoder.visual_projection(encoder.vision_model.post_layernorm(hidden))
    return (tokens / torch.norm(tokens[:, 0:1], dim=-1, keepdim=True)).float()


@torch.no_grad()
def clip_text_tokens(components: VDComponents, captions: Sequence[str]) -> torch.Tensor:
    """(B, 77, 768) tokens of captions: padded to 77, text projection of every token, divided by the norm
    of the projected pooled (end-of-text) embedding."""
    tokenizer = components.tokenizer
    ids = tokenizer(
        list(captions),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    out = components.text_encoder(ids.to(components.device))
    tokens = components.text_encoder.text_projection(out.last_hidden_state)
    return (tokens / torch.norm(out.text_embeds.unsqueeze(1), dim=-1, keepdim=True)).float()


def brain_diffuser_clip_pixels(images: np.ndarray, size: int = 512) -> np.ndarray:
    """uint8 (B, H, W, 3) -> the uint8 pixels brain-diffuser's CLIP-vision features actually saw: PIL
    bilinear resize to `size`, [-1, 1] floats, VD's (x + 1) / 2, then the feature extractor's truncating
    float32 * 255 -> uint8 (63 of the 256 levels lose one). Feed the result to `clip_vision_tokens`."""
    images = _as_uint8_batch(images)
    out = []
    for image in images:
        if image.shape[:2] != (size, size):
            image = np.asarray(
                Image.fromarray(image).resize((size, size), resample=Image.Resampling.BILINEAR)
            )
        signed = torch.from_numpy(np.array(image, copy=True)).float().div(255) * 2 - 1
        out.append((((signed + 1) / 2).numpy() * 255).astype(np.uint8))
    return np.stack(out)


# The published sampler's "zero image" is torch.zeros in VD's [-1, 1] pixel space; VD maps it to (x + 1) / 2
# = 0.5 and the CLIP feature extractor then truncates 0.5 * 255 to uint8: a uniform mid-gray image.
ZERO_IMAGE_GRAY = 127


@torch.no_grad()
def unconditional_tokens(components: VDComponents) -> tuple[torch.Tensor, torch.Tensor]:
    """The unconditional contexts of the published sampler: tokens of the empty caption (1, 77, D) and of
    its zero image, which reaches CLIP as uniform gray 127 (1, 257, D)."""
    crop = components.image_processor.crop_size
    gray = np.full((1, crop["height"], crop["width"], 3), ZERO_IMAGE_GRAY, dtype=np.uint8)
    return clip_text_tokens(components, [""]), clip_vision_tokens(components, gray)


def _as_uint8_batch(images: np.ndarray | torch.Tensor) -> np.ndarray:
    array = images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"expected uint8 RGB images shaped (B, H, W, 3), got {array.dtype} {array.shape}")
    return array
