"""takagi2023's training features per NSD id (SD 1.4 VAE latents z, caption-averaged text conditioning c) in
the shared feature store, and its ridge decoders: standardized single-trial betas -> features, alpha per
target by cross-validation, predictions for the standardized repetition-averaged test betas.

Every feature row depends only on its NSD id and the extractor (weights, size, dtype, device type), never on
the subject or the batch it was computed in, so one store serves every subject.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from nsdbench.feature_store import Extractor
from nsdbench.feature_store import stored_features as training_features  # noqa: F401 (callers use this name)
from nsdbench.methods import seeds

FEATURE_SEED = "takagi2023-train-latents"  # seeds each id's VAE posterior sample (published: sampled)
PUBLISHED_ALPHAS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # the published RidgeCV grid for z and c


def resize(images: np.ndarray, size: int, resample: Image.Resampling) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, 3, size, size) in [0, 1], resized with PIL."""
    out = np.empty((len(images), 3, size, size), dtype=np.float32)
    for i, img in enumerate(images):
        small = Image.fromarray(np.asarray(img, dtype=np.uint8)).resize((size, size), resample)
        out[i] = np.asarray(small, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return out


def latent_generator(nsd_id: int):
    """The CPU generator of one training image's VAE posterior sample (depends on the NSD id only)."""
    return seeds.torch_generator(seeds.image_seed(0, FEATURE_SEED, 0, int(nsd_id), 0), "cpu")


def weights_identity(components: Any) -> str:
    """The fetched snapshot's sha256, or the content hash of the random VAE and text encoder."""
    import hashlib

    from nsdbench import weights
    from nsdbench.methods.components.stable_diffusion import SD14

    if components.mode == "pretrained":
        return weights.recorded_sha256(SD14)
    parts = [weights.module_sha256(components.vae), weights.module_sha256(components.text_encoder)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _store_dtype(components: Any) -> str:
    import torch

    return "float16" if components.dtype == torch.float16 else "float32"


def z_extractor(
    components: Any, images: Callable[[Sequence[int]], np.ndarray], size: int, sha: str
) -> Extractor:
    """Scaled VAE latents of each image resized to `size` px (PIL Lanczos), one posterior sample per image
    seeded by its NSD id, as the published features (4 x 40 x 40 at 320 px)."""
    import torch

    from nsdbench.methods.diffusion.img2img import encode_images

    vae = components.vae
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    shape = (int(vae.config.latent_channels), size // factor, size // factor)
    dtype = _store_dtype(components)

    def compute(ids: list[int]) -> np.ndarray:
        pixels = torch.from_numpy(resize(images(ids), size, Image.Resampling.LANCZOS))
        with torch.inference_mode():
            z = encode_images(vae, pixels, [latent_generator(n) for n in ids])
        return z.float().cpu().numpy().astype(dtype)

    where = f"{components.dtype}/{components.device.type}/{sha}"
    return Extractor("z", f"sd14-vae-latent/{size}px/posterior-sample/{where}", shape, dtype, compute)


def c_extractor(components: Any, captions: Callable[[Sequence[int]], list[list[str]]], sha: str) -> Extractor:
    """Text conditioning (77 x width) averaged over each image's captions (5 on NSD), as published."""
    import torch

    from nsdbench.methods.components.stable_diffusion import encode_prompts

    shape = (int(components.tokenizer.model_max_length), int(components.text_encoder.config.hidden_size))
    dtype = _store_dtype(components)

    def compute(ids: list[int]) -> np.ndarray:
        per_image = captions(ids)
        flat = [c for caps in per_image for c in caps]
        with torch.inference_mode():
            tokens = encode_prompts(components, flat).float().cpu().numpy()
        out, start = np.empty((len(ids), *shape), dtype=np.float32), 0
        for i, caps in enumerate(per_image):
            out[i] = tokens[start : start + len(caps)].mean(axis=0)
            start += len(caps)
        return out.astype(dtype)

    where = f"{components.dtype}/{components.device.type}/{sha}"
    return Extractor("c", f"sd14-text-mean-captions/{shape[0]}x{shape[1]}/{where}", shape, dtype, compute)


def standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sets scaled by the training trials' per-voxel mean and std (StandardScaler, as published)."""
    from nsdbench.nsd.subject import zscore_with_train

    x_train, x_test = zscore_with_train(train, test)
    return x_train, x_test


def ridge_predictions(
    x_trials: np.ndarray,
    y_trials: np.ndarray,
    x_test: np.ndarray,
    alphas: Sequence[float],
    cv: int,
    backend: str = "auto",
) -> np.ndarray:
    """Test predictions (n_test, *target shape) of ridge with an alpha per target chosen by `cv`-fold CV."""
    from nsdbench import ridge

    settings = ridge.RidgeSettings(
        alphas=tuple(float(a) for a in alphas), cv=int(cv), per_target=True, dtype="float64", backend=backend
    )
    pred = ridge.fit_predict(x_trials, y_trials, x_test, settings, cache=False, progress=False)
    return np.asarray(pred, dtype=np.float32)
