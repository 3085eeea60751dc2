"""Apply a protocol's resize chain exactly: PIL steps on uint8 images, torch steps on float32 tensors."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

from nsdbench.errors import UsageError
from nsdbench.metrics.protocols import Chain, JpegStep, ResizeStep

_PIL_FILTERS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def split_chain(chain: Chain) -> tuple[Chain, Chain]:
    """(PIL steps, torch steps); PIL steps must come first (they need uint8 images)."""
    n_pil = 0
    while n_pil < len(chain) and chain[n_pil].library == "pil":
        n_pil += 1
    if any(s.library == "pil" for s in chain[n_pil:]):
        raise UsageError(f"resize chain {chain}: PIL steps must precede torch steps")
    return chain[:n_pil], chain[n_pil:]


def jpeg_roundtrip(im: Image.Image, step: JpegStep) -> Image.Image:
    """Image.save(format="JPEG", quality=q, subsampling=s) and decode again, in memory."""
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=step.quality, subsampling=step.subsampling)
    buf.seek(0)
    with Image.open(buf) as decoded:
        return decoded.convert("RGB")


def pil_resize(image: np.ndarray, steps: Chain) -> np.ndarray:
    """One HxWx3 uint8 image through PIL steps, exactly as Image.resize((s, s), filter) (and JPEG steps)."""
    if not steps:
        return np.ascontiguousarray(image)
    im = Image.fromarray(np.ascontiguousarray(image), mode="RGB")
    for s in steps:
        if isinstance(s, JpegStep):
            im = jpeg_roundtrip(im, s)
        else:
            im = im.resize((s.size, s.size), _PIL_FILTERS[s.filter])
    return np.asarray(im)


@lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    # PIL releases the GIL while resampling, so threads give real parallelism.
    return ThreadPoolExecutor(
        max_workers=max(1, min(8, os.cpu_count() or 1)), thread_name_prefix="nsdbench-pil"
    )


def torch_resize(x: torch.Tensor, step: ResizeStep) -> torch.Tensor:
    """torchvision tensor Resize semantics on float (B, 3, H, W): interpolate, align_corners=False."""
    if tuple(x.shape[-2:]) == (step.size, step.size):
        return x  # torchvision returns the input unchanged when the size already matches
    return torch.nn.functional.interpolate(
        x, size=(step.size, step.size), mode=step.filter, align_corners=False, antialias=step.antialias
    )


def apply_chain(
    images: Sequence[np.ndarray] | np.ndarray, chain: Chain, device: str | torch.device
) -> torch.Tensor:
    """Images (uint8 HxWx3 each) through the chain on `device`.

    Returns (B, 3, h, w): uint8 when the chain has only PIL steps (so callers choose the float
    conversion the reference used), float32 in [0, 1] when it ends with torch steps.
    """
    pil_steps, torch_steps = split_chain(chain)
    items = list(images)
    if pil_steps:
        if len(items) > 2:
            items = list(_pool().map(lambda im: pil_resize(im, pil_steps), items))
        else:
            items = [pil_resize(im, pil_steps) for im in items]
    shapes = {im.shape for im in items}
    if not torch_steps:
        if len(shapes) != 1:
            raise UsageError(
                f"images of different sizes {sorted(shapes)} and no resize step to equalize them"
            )
        return torch.from_numpy(np.stack(items)).to(device).permute(0, 3, 1, 2).contiguous()
    if len(shapes) == 1:
        x = torch.from_numpy(np.stack(items)).to(device).permute(0, 3, 1, 2).contiguous().float().div(255)
        for s in torch_steps:
            x = torch_resize(x, s)
        return x
    # Different input sizes: the first torch step brings every image to the same size.
    first = [
        torch_resize(torch.from_numpy(im).to(device).permute(2, 0, 1)[None].float().div(255), torch_steps[0])
        for im in items
    ]
    x = torch.cat(first)
    for s in torch_steps[1:]:
        x = torch_resize(x, s)
    return x


def to_float(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint8 -> value/255 in `dtype` (PIL path); float -> cast (torch path)."""
    if x.dtype == torch.uint8:
        return x.to(dtype).div(255)
    return x.to(dtype)
