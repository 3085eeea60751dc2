"""VDVAE as brain-diffuser uses it: encode 64x64 images to the latents of the first decoder groups, decode
latents back to 64x64 images with the remaining groups drawn from the prior; three weight modes.

Randomness is per image: every draw for image i comes from its own CPU `torch.Generator`, in a fixed order
(one standard-normal tensor per sampled group, then the two uniform tensors of the output head), so an
image never depends on what else is in its batch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from nsdbench import weights
from nsdbench.errors import NSDBenchError, UsageError
from nsdbench.methods.components import load_once
from nsdbench.methods.components.vdvae_dmol import UNIFORM_HIGH, UNIFORM_LOW, sample_dmol, to_uint8
from nsdbench.methods.components.vdvae_hparams import CONFIGS, IMAGENET64, TINY, VDVAEConfig
from nsdbench.methods.components.vdvae_net import VDVAE, Noise, init_like_published
from nsdbench.methods.components.vdvae_pixel_path import wire_pixel_path

ARTIFACT = weights.register(
    weights.Artifact(
        name="vdvae-imagenet64",
        description="OpenAI VDVAE trained on ImageNet 64x64 (Child 2021), EMA weights at iteration 1.6M; "
        "brain-diffuser's stage 1",
        kind="url",
        source="https://openaipublic.blob.core.windows.net/very-deep-vaes-assets/vdvae-assets-2/"
        "imagenet64-iter-1600000-model-ema.th",
        filename="imagenet64-iter-1600000-model-ema.th",
        used_by=("brain-diffuser", "second-sight"),
        # size_bytes left None: no published size of this file was found (125,005,860 float32 parameters
        # by the manifest, so about 500 MB)
    )
)

MANIFEST_FILE = "data/vdvae_imagenet64_manifest.json"
SEEDS = {"random": 1600000, "tiny": 64}  # seeds of the random-weight modes


class PerImageNoise:
    """Draws for image i from `generators[i]` on the CPU, stacked and moved to the model's device; normals in
    the model's dtype, uniforms in float32 (in float16, 1 - 1e-5 would round to 1 and the logs to infinity)."""

    def __init__(self, generators: Sequence[torch.Generator], device: torch.device, dtype: torch.dtype):
        self.generators, self.device, self.dtype = list(generators), device, dtype

    def normal(self, shape: tuple[int, ...]) -> torch.Tensor:
        draws = [torch.randn(shape, generator=g) for g in self.generators]
        return torch.stack(draws).to(self.device, self.dtype)

    def uniform(self, shape: tuple[int, ...], low: float, high: float) -> torch.Tensor:
        draws = [torch.empty(shape).uniform_(low, high, generator=g) for g in self.generators]
        return torch.stack(draws).to(self.device)


class PosteriorMean:
    """Zero noise for the posterior: z = mean exactly (a deterministic encoding)."""

    def __init__(self, n: int, device: torch.device, dtype: torch.dtype):
        self.n, self.device, self.dtype = n, device, dtype

    def normal(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.zeros((self.n, *shape), device=self.device, dtype=self.dtype)

    def uniform(self, shape: tuple[int, ...], low: float, high: float) -> torch.Tensor:
        raise UsageError("decoding draws from the output distribution and needs one generator per image")


def _device_dtype(model: VDVAE) -> tuple[torch.device, torch.dtype]:
    p = model.decoder.gain
    return p.device, p.dtype


def preprocess(model: VDVAE, images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Pixels (N, S, S, 3) on the 0-255 scale (uint8 or float) -> encoder input `(x + shift) * scale` in
    float32, the published imagenet64 normalization (shift -115.92961967, scale 1/69.37404), NHWC.

    brain-diffuser first resizes each stimulus to 64x64 with PIL bilinear (torchvision `resize` on a PIL
    image); that resize is the caller's, see `resize_like_brain_diffuser`.
    """
    cfg = model.cfg
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    expected = (cfg.image_size, cfg.image_size, cfg.image_channels)
    if x.ndim != 4 or tuple(x.shape[1:]) != expected:
        raise UsageError(
            f"VDVAE ({cfg.name}) expects images (N, {', '.join(map(str, expected))}); got {tuple(x.shape)}"
        )
    x = x.to(torch.float32)
    shift = torch.tensor(cfg.shift, dtype=torch.float32)
    scale = torch.tensor(cfg.scale, dtype=torch.float32)
    return (x + shift) * scale


def resize_like_brain_diffuser(images: np.ndarray, size: int = 64) -> np.ndarray:
    """uint8 (N, H, W, 3) -> uint8 (N, size, size, 3) with PIL bilinear, as brain-diffuser's data loader."""
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in images])


def encode(model: VDVAE, x: torch.Tensor, noise: Noise, groups: int) -> list[torch.Tensor]:
    """Preprocessed images (N, S, S, 3) -> posterior latents of the first `groups` decoder groups."""
    device, dtype = _device_dtype(model)
    with torch.inference_mode():
        acts = model.encoder(x.to(device, dtype))
        return model.decoder.posterior_latents(acts, groups, noise)


def decode(
    model: VDVAE, latents: list[torch.Tensor], noise: Noise, temperature: float | None, n: int | None = None
) -> torch.Tensor:
    """Latents of the first groups -> image (N, S, S, 3) in [-1, 1]; the remaining groups are sampled from
    the prior (std times `temperature`), the pixels from the output mixture. `n` is needed without latents."""
    cfg = model.cfg
    n = latents[0].shape[0] if latents else n
    if n is None:
        raise UsageError("decode: give latents or the number of images n")
    with torch.inference_mode():
        logits = model.decoder.from_latents(n, latents, noise, temperature).float()
        size = tuple(logits.shape[1:3])
        u_mix = noise.uniform((*size, cfg.num_mixtures), UNIFORM_LOW, UNIFORM_HIGH)
        u_pixel = noise.uniform((*size, 3), UNIFORM_LOW, UNIFORM_HIGH)
        return sample_dmol(logits, cfg.num_mixtures, u_mix, u_pixel)


def flatten_latents(latents: list[torch.Tensor]) -> torch.Tensor:
    """Per-group latents -> (N, D): each group flattened channel-major, groups concatenated in order."""
    return torch.cat([z.reshape(z.shape[0], -1) for z in latents], dim=1)


def unflatten_latents(cfg: VDVAEConfig, flat: torch.Tensor) -> list[torch.Tensor]:
    """(N, D) -> per-group latents; D must be the size of the first k groups for some k."""
    out, start = [], 0
    for shape in cfg.latent_shapes():
        size = int(np.prod(shape))
        if start + size > flat.shape[1]:
            break
        out.append(flat[:, start : start + size].reshape(flat.shape[0], *shape))
        start += size
    if start != flat.shape[1]:
        sizes = ", ".join(str(cfg.latent_dim(k)) for k in (1, cfg.n_latent_groups, len(cfg.latent_shapes())))
        raise UsageError(
            f"VDVAE ({cfg.name}) latents of width {flat.shape[1]} do not end at a group boundary "
            f"(e.g. {sizes})"
        )
    return out


def encode_latents(
    model: VDVAE,
    images: torch.Tensor | np.ndarray,
    generators: Sequence[torch.Generator] | None = None,
    groups: int | None = None,
) -> torch.Tensor:
    """Images (N, S, S, 3), 0-255 -> float32 CPU latents (N, D) of the first `groups` decoder groups
    (default `n_latent_groups`: 31 groups = 91,168 values at imagenet64).

    As published, each latent is a posterior sample `mean + std * eps`; `eps` comes from image i's generator.
    Without generators the posterior mean is returned (deterministic, not the published sampling).
    """
    x = preprocess(model, images)
    device, dtype = _device_dtype(model)
    if generators is None:
        noise: Noise = PosteriorMean(len(x), device, dtype)
    elif len(generators) == len(x):
        noise = PerImageNoise(generators, device, dtype)
    else:
        raise UsageError(f"encode_latents: {len(x)} images but {len(generators)} generators")
    latents = encode(model, x, noise, model.cfg.n_latent_groups if groups is None else groups)
    return flatten_latents(latents).float().cpu()


def decode_latents(
    model: VDVAE,
    latents: torch.Tensor | np.ndarray,
    generators: Sequence[torch.Generator],
    temperature: float | None = 1.0,
) -> torch.Tensor:
    """Flat latents (N, D) of the first groups -> uint8 CPU images (N, S, S, 3).

    Groups not given are sampled from the prior at `temperature` (brain-diffuser: 1.0, i.e. t=None), then
    pixels from the output mixture; all draws for image i come from `generators[i]`.
    """
    flat = torch.as_tensor(np.asarray(latents) if not isinstance(latents, torch.Tensor) else latents)
    if flat.ndim != 2 or len(generators) != flat.shape[0]:
        raise UsageError(
            f"decode_latents: latents {tuple(flat.shape)} need (N, D) and N generators, got {len(generators)}"
        )
    device, dtype = _device_dtype(model)
    groups = [z.to(device, dtype) for z in unflatten_latents(model.cfg, flat.float())]
    image = decode(model, groups, PerImageNoise(generators, device, dtype), temperature)
    return to_uint8(image).cpu()


def build_vdvae(cfg: VDVAEConfig, seed: int | None = None, device: str | torch.device = "cpu") -> VDVAE:
    """The architecture; with a seed, the published initialization from that seed (CPU), otherwise
    uninitialized (meta device: instant, for layouts and for loading a checkpoint with assign=True)."""
    if seed is None:
        with torch.device(device):
            return VDVAE(cfg)
    with weights.seeded(seed):
        return init_like_published(VDVAE(cfg))


def state_dict_manifest(model: torch.nn.Module) -> dict[str, list[int]]:
    """{parameter name: shape} of a state dict, in order."""
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def published_manifest() -> dict[str, list[int]]:
    """Keys and shapes of `imagenet64-iter-1600000-model-ema.th`, taken from the published model code."""
    text = resources.files("nsdbench.methods").joinpath(MANIFEST_FILE).read_text()
    return json.loads(text)["state_dict"]


def config_for(mode: str) -> VDVAEConfig:
    """Hyperparameters of a weights mode: imagenet64 for pretrained and random, TINY for tiny."""
    return TINY if weights.check_mode(mode) == "tiny" else IMAGENET64


def load_checkpoint(path: Path, cfg: VDVAEConfig, expected: dict[str, list[int]]) -> VDVAE:
    """A VDVAE from a published-format checkpoint (optionally DDP `module.`-prefixed), read with
    weights_only=True; a layout other than `expected` is a one-line error naming the file and first mismatch."""
    try:
        sd = weights.load_state_dict(path)
    except Exception as exc:  # a corrupt or non-tensor file
        raise NSDBenchError(f"cannot read VDVAE weights from {path}: {exc}") from exc
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise NSDBenchError(f"VDVAE weights at {path} are not a state dict of tensors")
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    got = {k: list(v.shape) for k, v in sd.items()}
    if got != expected:
        missing = [k for k in expected if k not in got]
        extra = [k for k in got if k not in expected]
        wrong = [
            f"{k} {got[k]} (expected {expected[k]})" for k in expected if k in got and got[k] != expected[k]
        ]
        first = (
            f"missing {missing[0]}"
            if missing
            else f"unexpected {extra[0]}"
            if extra
            else f"shape of {wrong[0]}"
        )
        raise NSDBenchError(
            f"VDVAE weights at {path} do not have the {cfg.name} layout ({len(expected)} tensors): {first}"
        )
    model = build_vdvae(cfg, device="meta")
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True, assign=True)
    return model


def load_vdvae(mode: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> VDVAE:
    """The VDVAE in one weights mode, in eval mode without gradients, loaded once per process.

    pretrained: the published imagenet64 EMA checkpoint from NSDBENCH_HOME/weights; random: imagenet64
    architecture, seeded published initialization; tiny: the reduced `TINY` architecture, seeded, with a
    pixel path (`wire_pixel_path`) so that its latents carry the image at 32 px.
    The returned module carries `weights_sha256` (file hash, or content hash of random weights).
    """
    mode = weights.check_mode(mode)

    def build() -> VDVAE:
        if mode == "pretrained":
            model = load_checkpoint(weights.require(ARTIFACT.name), IMAGENET64, published_manifest())
            sha = weights.recorded_sha256(ARTIFACT.name)
        else:
            model = build_vdvae(config_for(mode), seed=SEEDS[mode])
            if mode == "tiny":
                model = wire_pixel_path(model)
            sha = weights.module_sha256(model)
        model = model.eval().requires_grad_(False).to(device=device, dtype=dtype)
        model.weights_sha256 = sha
        return model

    return load_once(("vdvae", mode, str(torch.device(device)), str(dtype)), build)


__all__ = [
    "ARTIFACT",
    "CONFIGS",
    "IMAGENET64",
    "TINY",
    "VDVAE",
    "PerImageNoise",
    "VDVAEConfig",
    "build_vdvae",
    "config_for",
    "decode",
    "decode_latents",
    "encode",
    "encode_latents",
    "flatten_latents",
    "load_checkpoint",
    "load_vdvae",
    "preprocess",
    "published_manifest",
    "resize_like_brain_diffuser",
    "state_dict_manifest",
    "unflatten_latents",
]
