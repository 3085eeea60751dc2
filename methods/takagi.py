"""takagi2023: Takagi & Nishimoto (CVPR 2023), Stable Diffusion 1.4 from early and ventral visual cortex.

z (the VAE latent of each training image at 320 px, 4x40x40) is decoded from `streams:early` voxels and c
(the text conditioning, 77x768, averaged over the image's captions) from `streams:ventral` voxels, each by
ridge with an alpha per target chosen by 5-fold CV over the published grid, on standardized single-trial
betas; test betas are repetition-averaged and standardized with the training trials' statistics.
Generation: decoded z -> image -> 512 px (PIL bicubic) -> re-encoded init latent (posterior sample); DDIM
img2img, 50 steps, strength 0.8, guidance 5.0, c as conditioning, noised as CompVis' sampler does
(`ldm_noise_offset`); 5 samples per image. Variants: `z-only` outputs the decoded-z image, `c-only` samples
from pure noise with c (strength 1).

Tiny mode: the tiny random VAE carries no image signal, so tiny runs use a copy of it with a pixel path wired
through its random weights (nsdbench.methods.components.sd_vae_pixel_path); sizes are the tiny models' own
(z at the tiny VAE's sample size, generation at the tiny UNet's sample size times the VAE factor).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from PIL import Image

from nsdbench.caches import ArrayCache
from nsdbench.errors import UsageError
from nsdbench.methods import takagi_features as tf
from nsdbench.methods.adapter import Method, Output, RunContext, SubjectData, TestItem
from nsdbench.methods.registry import register_method

if TYPE_CHECKING:
    from nsdbench.methods.components.stable_diffusion import SD14Components


@dataclass(frozen=True)
class TakagiSettings:
    """Published settings; `z_size`/`image_size` 0 means the model's own (320/512 for SD 1.4)."""

    use_z: bool = True  # False: c-only (generation from noise, strength 1)
    use_c: bool = True  # False: z-only (the decoded-z image is the output)
    z_roi: str = "streams:early"
    c_roi: str = "streams:ventral"
    z_size: int = 0
    image_size: int = 0
    alphas: tuple[float, ...] = tf.PUBLISHED_ALPHAS
    cv: int = 5
    steps: int = 50
    strength: float = 0.8
    guidance: float = 5.0
    ldm_noise_offset: bool = True  # noise the init latent as CompVis' DDIMSampler does (published)
    feature_batch: int = 16
    diffusion_batch: int = 10

    def __post_init__(self) -> None:
        if not (self.use_z or self.use_c):
            raise UsageError("takagi2023: use_z and use_c cannot both be false")
        if not 0.0 < self.strength <= 1.0:
            raise UsageError(f"takagi2023: strength must be in (0, 1], got {self.strength}")


@dataclass(frozen=True)
class TakagiFit:
    """Decoded z and c for the subject's test images (rows aligned with test_ids; None when unused)."""

    test_ids: tuple[int, ...]
    z: np.ndarray | None
    c: np.ndarray | None

    def rows(self, name: str, nsd_ids: Sequence[int]) -> np.ndarray:
        index = {n: i for i, n in enumerate(self.test_ids)}
        return getattr(self, name)[[index[int(n)] for n in nsd_ids]]


class Takagi2023(Method):
    """Takagi & Nishimoto 2023: linear decoding of SD 1.4's z and c, then img2img."""

    name = "takagi2023"
    description = (
        "Ridge (CV alpha per target) from early-visual betas to SD 1.4's VAE latent z and from ventral betas "
        "to the caption-averaged text conditioning c; decoded z -> 512 px init image, DDIM img2img "
        "(50 steps, strength 0.8, guidance 5) conditioned on c."
    )
    paper = "Takagi & Nishimoto, CVPR 2023 (yu-takagi/StableDiffusionReconstruction)"
    Settings = TakagiSettings
    variants: ClassVar[dict[str, dict[str, Any]]] = {
        "z-only": {"use_c": False},
        "c-only": {"use_z": False},
    }
    default_samples = 5
    default_batch_size = 10

    def __init__(self, settings: Any = None, **kw: Any) -> None:
        super().__init__(settings, **kw)
        self._sd: SD14Components | None = None
        self._sha: str | None = None

    @property
    def stable_diffusion(self) -> SD14Components | None:
        """The Stable Diffusion 1.4 components once setup has loaded them (None before and after close)."""
        return self._sd

    def required_artifacts(self) -> tuple[str, ...]:
        from nsdbench.methods.components.stable_diffusion import SD14

        return (SD14,) if self.weights_mode == "pretrained" else ()

    # ------------------------------------------------------------------ lifecycle

    def setup(self, ctx: RunContext) -> None:
        if self._sd is not None:
            return
        import torch

        from nsdbench.methods.components import load_once
        from nsdbench.methods.components.stable_diffusion import default_dtype, load_sd14

        device = torch.device(self.device)
        sd = load_sd14(self.weights_mode, device, default_dtype(device))
        if self.weights_mode == "tiny":
            from nsdbench.methods.components.sd_vae_pixel_path import wire_pixel_path

            vae = load_once(
                ("sd14-tiny-vae-pixel-path", str(device), str(sd.dtype)), lambda: wire_pixel_path(sd.vae)
            )
            sd = replace(sd, vae=vae)
        self._sd = sd
        self._sha = tf.weights_identity(sd)

    def close(self) -> None:
        from nsdbench.methods.components import release_all

        self._sd = self._sha = None
        release_all()

    def vae_factor(self) -> int:
        return 2 ** (len(self._sd.vae.config.block_out_channels) - 1)

    def z_size(self) -> int:
        """Side of the images z is computed from (published 320; tiny: the tiny VAE's sample size)."""
        if self.settings.z_size:
            return int(self.settings.z_size)
        return int(self._sd.vae.config.sample_size) if self.weights_mode == "tiny" else 320

    def image_size(self) -> int:
        """Side of the generated images (published 512; tiny: the tiny UNet's sample size x VAE factor)."""
        if self.settings.image_size:
            return int(self.settings.image_size)
        if self.weights_mode == "tiny":
            return int(self._sd.unet.config.sample_size) * self.vae_factor()
        return 512

    # ------------------------------------------------------------------ fit

    def extractors(self, train: SubjectData) -> list[tuple[tf.Extractor, str]]:
        """The features this configuration decodes, each with its ROI."""
        s = self.settings
        out: list[tuple[tf.Extractor, str]] = []
        if s.use_z:
            out.append((tf.z_extractor(self._sd, train.images, self.z_size(), self._sha), s.z_roi))
        if s.use_c:
            out.append((tf.c_extractor(self._sd, train.captions, self._sha), s.c_roi))
        return out

    def fit(self, train: SubjectData, ctx: RunContext) -> TakagiFit:
        """Features of the training images through the shared store, one ridge per feature trained on single
        trials and applied to averaged test betas; predictions cached by a content hash of the inputs."""
        self.setup(ctx)
        s = self.settings
        extractors = self.extractors(train)
        backend = "torch_cuda" if self.device.startswith("cuda") else "numpy"
        train_ids = np.asarray(train.train_ids, dtype=np.int64)
        ctx.set_total(len(train_ids) * len(extractors), unit="img")
        preds: dict[str, np.ndarray] = {}
        for ext, roi in extractors:
            trials = train.single_trials("train", roi=roi)
            x_test_raw = train.betas("test", roi=roi, normalize="none")
            key = ArrayCache.key(
                {
                    "method": self.name,
                    "version": self.version,
                    "feature": ext.identity,
                    "alphas": list(s.alphas),
                    "cv": s.cv,
                    "ridge_backend": backend,
                },
                trials.betas,
                trials.nsd_ids,
                x_test_raw,
            )

            def compute(ext: tf.Extractor = ext, trials: Any = trials, x_te: np.ndarray = x_test_raw):
                y = tf.training_features(
                    ext, train_ids, s.feature_batch, progress=ctx.advance, dataset=train.data_identity
                )
                row = {int(n): i for i, n in enumerate(train_ids)}
                y_trials = y.reshape(len(y), -1)[[row[int(n)] for n in trials.nsd_ids]]
                x_tr, x_te = tf.standardize(trials.betas, x_te)
                return {"pred": tf.ridge_predictions(x_tr, y_trials, x_te, s.alphas, s.cv, backend)}

            cached = ctx.cache.load(key) if ctx.cache is not None else None
            if cached is None:
                cached = compute()
                if ctx.cache is not None:
                    ctx.cache.save(key, cached)
            else:
                ctx.advance(len(train_ids))
            preds[ext.name] = cached["pred"].reshape(len(x_test_raw), *ext.shape).astype(np.float32)
        return TakagiFit(tuple(int(n) for n in train.test_ids), preds.get("z"), preds.get("c"))

    # ------------------------------------------------------------------ reconstruct

    def reconstruct(self, items: Sequence[TestItem], fitted: TakagiFit, ctx: RunContext) -> Iterator[Output]:
        import torch

        self.setup(ctx)
        s = self.settings
        ids = [it.nsd_id for it in items]
        generators = [ctx.generator(it.nsd_id, it.sample) for it in items]
        with torch.inference_mode():
            decoded = self.decode_z(fitted.rows("z", ids)) if s.use_z else None
            if not s.use_c:
                for i, it in enumerate(items):
                    yield Output(it.nsd_id, it.sample, decoded[i], {"decoded_z.png": decoded[i]})
                return
            images = self.generate(decoded, fitted.rows("c", ids), generators)
        for i, it in enumerate(items):
            extras = {"decoded_z.png": decoded[i]} if decoded is not None else {}
            yield Output(it.nsd_id, it.sample, images[i], extras)

    def decode_z(self, z: np.ndarray) -> np.ndarray:
        """uint8 (n, H, W, 3) images of decoded latents (deterministic: the VAE decoder only)."""
        import torch

        from nsdbench.methods.diffusion.img2img import decode_latents

        sd = self._sd
        out = []
        for a in range(0, len(z), self.settings.diffusion_batch):
            lat = torch.from_numpy(z[a : a + self.settings.diffusion_batch]).to(sd.device, sd.dtype)
            out.append(decode_latents(sd.vae, lat).float().cpu())
        return _to_uint8(torch.cat(out).permute(0, 2, 3, 1).numpy())

    def generate(self, decoded: np.ndarray | None, c: np.ndarray, generators: list) -> np.ndarray:
        """img2img from the decoded-z images resized to the generation size (None: from noise), with c."""
        import torch

        from nsdbench.methods.components.stable_diffusion import encode_prompts
        from nsdbench.methods.diffusion.ddim import ddim_schedule, randn_per_image
        from nsdbench.methods.diffusion.img2img import (
            Img2ImgSettings,
            decode_latents,
            img2img,
            sample_from,
        )

        s, sd = self.settings, self._sd
        size = self.image_size()
        uncond = encode_prompts(sd, [""])
        settings = Img2ImgSettings(
            num_inference_steps=s.steps,
            strength=s.strength if decoded is not None else 1.0,
            guidance_scale=s.guidance,
            ldm_noise_offset=s.ldm_noise_offset and decoded is not None,
        )
        out = []
        for a in range(0, len(generators), s.diffusion_batch):
            b = min(a + s.diffusion_batch, len(generators))
            cond = torch.from_numpy(c[a:b]).to(sd.device, sd.dtype)
            neg = uncond.expand(b - a, -1, -1)
            if decoded is not None:
                init = torch.from_numpy(tf.resize(decoded[a:b], size, Image.Resampling.BICUBIC))
                images = img2img(sd, cond, neg, generators[a:b], settings, init_images=init)
            else:  # text-to-image: DDIM from pure noise (strength 1)
                schedule = ddim_schedule(sd.scheduler, s.steps)
                shape = (
                    int(sd.unet.config.in_channels),
                    size // self.vae_factor(),
                    size // self.vae_factor(),
                )
                noise = randn_per_image(shape, generators[a:b], sd.device, sd.dtype)
                guided = s.guidance > 1.0
                ctx_embeds = torch.cat([neg, cond]) if guided else cond
                lat = sample_from(sd.unet, schedule, schedule.timesteps, noise, ctx_embeds, s.guidance)
                images = decode_latents(sd.vae, lat)
            out.append(images.float().cpu())
        return _to_uint8(torch.cat(out).permute(0, 2, 3, 1).numpy())


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


register_method(Takagi2023)
