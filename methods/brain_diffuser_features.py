"""brain-diffuser's training features per NSD id (VDVAE latents, VD CLIP-vision and CLIP-text tokens) in the
shared feature store, and its three ridge regressions from fMRI to those features (test predictions).

Every feature row depends only on its NSD id and the extractor (weights, dtype, device type), never on the
subject or the batch it was computed in, so one store serves every subject and method.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from nsdbench import ridge, weights
from nsdbench.feature_store import Extractor
from nsdbench.feature_store import stored_features as training_features  # noqa: F401 (callers use this name)
from nsdbench.methods import seeds
from nsdbench.ridge import rescale_to_training_moments

FEATURE_SEED = "brain-diffuser-train-latents"  # seeds each id's VDVAE posterior sample (published: sampled)


def latent_generator(nsd_id: int):
    """The CPU generator of one training image's VDVAE posterior sample (depends on the NSD id only)."""
    seed = seeds.image_seed(0, FEATURE_SEED, 0, int(nsd_id), 0)
    return seeds.torch_generator(seed, "cpu")


def vdvae_extractor(model: Any, images: Callable[[Sequence[int]], np.ndarray]) -> Extractor:
    """VDVAE latents of the first `n_latent_groups` decoder groups of each image resized to 64 px (PIL
    bilinear), one posterior sample per image as published (seeded by its NSD id)."""
    from nsdbench.methods.components.vdvae import encode_latents, resize_like_brain_diffuser

    cfg = model.cfg

    def compute(ids: list[int]) -> np.ndarray:
        small = resize_like_brain_diffuser(images(ids), cfg.image_size)
        gens = [latent_generator(n) for n in ids]
        return encode_latents(model, small, gens).numpy()

    where = f"{next(model.parameters()).dtype}/{next(model.parameters()).device.type}"
    identity = f"vdvae/{cfg.name}/groups{cfg.n_latent_groups}/posterior-sample/{where}/{model.weights_sha256}"
    return Extractor("vdvae", identity, (cfg.latent_dim(),), "float32", compute)


def vision_extractor(components: Any, images: Callable[[Sequence[int]], np.ndarray], sha: str) -> Extractor:
    """VD's CLIP-vision tokens (257 x D, VD-normalized) of each image, from the pixels the published code
    fed CLIP (bilinear to VD's output size, through VD's [-1, 1] round trip)."""
    from nsdbench.methods.components.vd_clip_features import brain_diffuser_clip_pixels, clip_vision_tokens

    enc = components.image_encoder.config
    shape = ((enc.image_size // enc.patch_size) ** 2 + 1, int(enc.projection_dim))
    dtype = _store_dtype(components)

    def compute(ids: list[int]) -> np.ndarray:
        pixels = brain_diffuser_clip_pixels(images(ids), components.image_size)
        return clip_vision_tokens(components, pixels).numpy().astype(dtype)

    where = f"{components.dtype}/{components.device.type}/{sha}"
    identity = f"vd-clip-vision/bd-pixels-{components.image_size}/{shape[0]}x{shape[1]}/{where}"
    return Extractor("vision", identity, shape, dtype, compute)


def text_extractor(
    components: Any, captions: Callable[[Sequence[int]], list[list[str]]], sha: str
) -> Extractor:
    """VD's CLIP-text tokens (77 x D, VD-normalized), averaged over each image's captions (5 on NSD)."""
    from nsdbench.methods.components.vd_clip_features import clip_text_tokens

    shape = (
        int(components.text_encoder.config.max_position_embeddings),
        int(components.text_encoder.config.projection_dim),
    )
    dtype = _store_dtype(components)

    def compute(ids: list[int]) -> np.ndarray:
        per_image = captions(ids)
        flat = [c for caps in per_image for c in caps]
        tokens = clip_text_tokens(components, flat).numpy()
        out, start = np.empty((len(ids), *shape), dtype=np.float32), 0
        for i, caps in enumerate(per_image):
            out[i] = tokens[start : start + len(caps)].mean(axis=0)
            start += len(caps)
        return out.astype(dtype)

    identity = (
        f"vd-clip-text-mean-captions/{shape[0]}x{shape[1]}/{components.dtype}/{components.device.type}/{sha}"
    )
    return Extractor("text", identity, shape, dtype, compute)


def _store_dtype(components: Any) -> str:
    """Rows keep the precision they were computed in: float16 from fp16 encoders, else float32."""
    import torch

    return "float16" if components.dtype == torch.float16 else "float32"


def vd_weights_identity(components: Any) -> str:
    """The identity of VD's weights: the fetched snapshot's sha256, or the content hash of the random CLIP
    encoders (random and tiny modes)."""
    if components.mode == "pretrained":
        return weights.recorded_sha256("versatile-diffusion")
    h = [weights.module_sha256(components.image_encoder), weights.module_sha256(components.text_encoder)]
    return hashlib.sha256("|".join(h).encode()).hexdigest()


def ridge_predictions(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, alpha: float, backend: str = "auto"
) -> dict[str, np.ndarray]:
    """Test predictions of one fixed-alpha ridge with intercept (every target at once: brain-diffuser's
    per-token fits share one Gram matrix), plus the training targets' mean and std for post-processing."""
    settings = ridge.RidgeSettings(alpha=float(alpha), fit_intercept=True, dtype="float64", backend=backend)
    pred = ridge.fit_predict(x_train, y_train, x_test, settings, cache=False, progress=False)
    mean, std = ridge.target_moments(y_train)
    # float64: with the published alphas predictions vary little across test images, and the z-scoring
    # of the post-processing would amplify float32 rounding of that variation
    return {"pred": np.asarray(pred, dtype=np.float64), "mean": mean, "std": std}


def finish_predictions(arrays: dict[str, np.ndarray], postprocess: bool) -> np.ndarray:
    """Raw test predictions, or brain-diffuser's post-processing of them (z-score across the whole test
    set, then the training features' mean and std)."""
    pred = arrays["pred"]
    if not postprocess:
        return pred.astype(np.float32)
    return rescale_to_training_moments(pred, train_mean=arrays["mean"], train_std=arrays["std"]).astype(
        np.float32
    )
