"""Encoding models on the device for guiding generation: torch images in, torch predicted betas out.

`GuidanceEncoder.predict(images)` takes a (B, 3, H, W) NCHW tensor, uint8 in 0..255 or float in [0, 1], of
any size, and returns (B, V) predicted nsdgeneral betas (session z-scored) on the encoder's device. Every
coefficient lives on the device; images go through in zero-padded batches of ENCODER_BATCH, so a result does
not depend on how many images are passed at once. Resizing uses torch's antialiased bilinear (canonical
encoder; uint8 inputs are rounded to uint8 levels after it, as PIL does) or bicubic (GNet8, PIL Lanczos in the
numpy path), so for images not already at the encoder's input size the numbers differ slightly from the numpy
encoder's (tests state the tolerances). No gradients: the feature networks run in inference mode.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from nsdbench import weights
from nsdbench.errors import UsageError
from nsdbench.metrics.brain import ENCODER_BATCH

GUIDANCE_ENCODERS = ("nsdbench-encoder-v1", "gnet8")
DTYPES = ("float32", "float64")


@runtime_checkable
class GuidanceEncoder(Protocol):
    """What `ctx.encoder(name)` hands a method."""

    identity: str  # recorded in the run: name, subject, split, weights mode and a content hash
    n_voxels: int

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8 or float in [0, 1] → (B, V) predicted betas on the device."""
        ...


def as_unit_nchw(images: torch.Tensor, who: str) -> tuple[torch.Tensor, bool]:
    """Check an NCHW image batch; → (float32 in [0, 1], whether the input was uint8)."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
        raise UsageError(f"{who}: images must be a (B, 3, H, W) NCHW tensor, got {shape}")
    if images.dtype == torch.uint8:
        return images.float() / 255, True
    if not images.is_floating_point():
        raise UsageError(f"{who}: images must be uint8 (0..255) or float (0..1), got {images.dtype}")
    return images.float(), False


def _resize(x: torch.Tensor, size: int, mode: str, was_uint8: bool) -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x
    y = F.interpolate(x, size=(size, size), mode=mode, antialias=True, align_corners=False)
    if was_uint8:
        y = (y * 255).round().clamp(0, 255) / 255
    return y.clamp(0, 1)


def _padded_batches(x: torch.Tensor):
    """(start, count, zero-padded (ENCODER_BATCH, ...) block) over the images."""
    for s in range(0, x.shape[0], ENCODER_BATCH):
        part = x[s : s + ENCODER_BATCH]
        block = torch.zeros((ENCODER_BATCH, *x.shape[1:]), dtype=x.dtype, device=x.device)
        block[: len(part)] = part
        yield s, len(part), block


class CanonicalGuidanceEncoder:
    """The nsdbench canonical encoder (AlexNet + low-level features → ridge) with its weights on the device."""

    def __init__(self, model, device: str, dtype: str = "float32") -> None:
        from nsdbench.metrics.encoder import FeatureExtractor

        if model.ridge.index is not None:
            raise UsageError("guidance encoder: a feature-selected ridge is not supported")
        tdtype = getattr(torch, dtype)
        self.device = torch.device(device)
        self.spec = model.spec
        self.identity = (
            f"{model.spec.name}/subj{model.subject:02d}/{model.split}/{model.weights_mode}/"
            f"{str(model.meta.get('key', 'uncached'))[:16]}"
        )
        self._extractor = FeatureExtractor(model.spec, model.weights_mode, str(device))
        self._mean = torch.as_tensor(np.asarray(model.scaler.mean), dtype=tdtype, device=self.device)
        self._scale = torch.as_tensor(np.asarray(model.scaler.scale), dtype=tdtype, device=self.device)
        self._coef = torch.as_tensor(np.asarray(model.ridge.coef), dtype=tdtype, device=self.device)
        self._intercept = torch.as_tensor(np.asarray(model.ridge.intercept), dtype=tdtype, device=self.device)
        self.n_voxels = int(self._coef.shape[1])

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        x, was_uint8 = as_unit_nchw(images, self.spec.name)
        x = _resize(x.to(self.device), self.spec.image_size, "bilinear", was_uint8)
        out = torch.empty((x.shape[0], self.n_voxels), dtype=self._coef.dtype, device=self.device)
        for s, n, block in _padded_batches(x):
            feats = torch.cat(self._extractor.tensor_groups(block), 1).to(self._coef.dtype)
            out[s : s + n] = (((feats - self._mean) * self._scale) @ self._coef + self._intercept)[:n]
        return out


class GNet8GuidanceEncoder:
    """GNet8 (St-Yves et al.; the MindEye2 release) on the device; `pretrained` needs gnet8-multisubject."""

    def __init__(self, encoder) -> None:
        self._enc = encoder
        self.device = torch.device(encoder.device)
        self.n_voxels = int(encoder.readout.b.shape[0])
        self.identity = f"gnet8/subj{encoder.subject:02d}/{encoder.mode}/{encoder.sha256[:16]}"

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        x, was_uint8 = as_unit_nchw(images, "gnet8")
        x = _resize(x.to(self.device), self._enc.image_size, "bicubic", was_uint8)
        outs = []
        with torch.inference_mode():
            for _s, n, block in _padded_batches(x):
                outs.append(self._enc.readout(self._enc.trunk(block))[:n].float())
        if not outs:
            raise UsageError("gnet8: no images given")
        return torch.cat(outs)


def load_guidance_encoder(
    name: str,
    nsd,
    subject: int,
    *,
    weights_mode: str,
    device: str,
    split: str = "nsd982",
    dtype: str = "float32",
) -> GuidanceEncoder:
    """A guidance encoder, built once per process for each (name, data, subject, split, mode, device, dtype)."""
    from nsdbench.methods.components import load_once

    mode = weights.check_mode(weights_mode)
    if name not in GUIDANCE_ENCODERS:
        raise UsageError(f"unknown guidance encoder {name!r} (known: {', '.join(GUIDANCE_ENCODERS)})")
    if dtype not in DTYPES:
        raise UsageError(f"guidance encoder dtype must be one of {', '.join(DTYPES)} (got {dtype!r})")
    key = ("guidance-encoder", name, str(nsd.root), int(subject), split, mode, str(device), dtype)

    def build() -> GuidanceEncoder:
        if name == "gnet8":
            from nsdbench.metrics.gnet8 import load_published_encoder

            n_vox = int(nsd.roi_mask(int(subject), "nsdgeneral").sum())
            return GNet8GuidanceEncoder(load_published_encoder("gnet8", int(subject), n_vox, mode, device))
        from nsdbench.metrics.encoder import fit_encoder

        model = fit_encoder(nsd, int(subject), split, mode, device=device, progress=False)
        return CanonicalGuidanceEncoder(model, device, dtype)

    return load_once(key, build)
