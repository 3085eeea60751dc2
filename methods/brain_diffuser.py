"""brain-diffuser (Ozcelik & VanRullen 2023): ridge from nsdgeneral betas to VDVAE latents (stage 1) and
to Versatile Diffusion's CLIP-vision and CLIP-text tokens (stage 2); the decoded VDVAE image, upsampled,
starts VD's dual-guided img2img. Variants are the paper's ablations.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from nsdbench.caches import content_key
from nsdbench.errors import UsageError
from nsdbench.methods import brain_diffuser_features
from nsdbench.methods.adapter import Method, Output, RunContext, SubjectData, TestItem
from nsdbench.methods.registry import register_method

if TYPE_CHECKING:
    from nsdbench.methods.components.vdvae import VDVAE
    from nsdbench.methods.components.versatile_diffusion import VDComponents

VDVAE_ARTIFACT = "vdvae-imagenet64"
VD_ARTIFACT = "versatile-diffusion"


@dataclass(frozen=True)
class BrainDiffuserSettings:
    """The published configuration; `use_*` switch the stages and guidance contexts off (ablations)."""

    roi: str = "nsdgeneral"
    vdvae_alpha: float = 50_000.0
    vision_alpha: float = 60_000.0  # one fit per token, as published (all tokens share one Gram matrix)
    text_alpha: float = 100_000.0
    postprocess: bool = True  # z-score predictions across the test set, rescale to the training features'
    use_vdvae: bool = True  # stage 1; without it stage 2 starts from noise (needs strength 1.0)
    use_diffusion: bool = True  # stage 2; without it the VDVAE image is the reconstruction
    use_vision: bool = True
    use_text: bool = True
    vdvae_temperature: float = 1.0  # prior temperature of the VDVAE groups not predicted
    steps: int = 50
    strength: float = 0.75  # 37 of 50 DDIM steps
    guidance: float = 7.5
    mix: float = 0.6  # vision weight of the dual context; text gets 1 - mix
    eta: float = 0.0
    diffusion_batch: int = 8  # images per UNet call (nsdbench's batched loop; the published code runs 1)
    feature_batch: int = 32  # training images per feature-extraction call
    vd_dtype: str = "auto"  # auto: float16 on CUDA (as published), else the run's dtype

    def __post_init__(self) -> None:
        for name in ("vdvae_alpha", "vision_alpha", "text_alpha"):
            if not getattr(self, name) > 0:
                raise UsageError(f"brain-diffuser: {name} must be > 0, got {getattr(self, name)}")
        if not (self.use_vdvae or self.use_diffusion):
            raise UsageError("brain-diffuser: use_vdvae=false and use_diffusion=false leave nothing to run")
        if self.use_diffusion and not (self.use_vision or self.use_text):
            raise UsageError("brain-diffuser: stage 2 needs use_vision or use_text")
        if self.use_diffusion and not self.use_vdvae and self.strength != 1.0:
            raise UsageError(
                "brain-diffuser: without VDVAE there is no init image; "
                f"strength must be 1.0, got {self.strength}"
            )
        if self.diffusion_batch < 1 or self.feature_batch < 1:
            raise UsageError("brain-diffuser: diffusion_batch and feature_batch must be >= 1")
        if self.vd_dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise UsageError(
                f"brain-diffuser: vd_dtype must be auto, float32, float16 or bfloat16, got {self.vd_dtype!r}"
            )

    @property
    def vision_weight(self) -> float:
        """The vision share of the dual context actually used (1 without text, 0 without vision)."""
        if not self.use_text:
            return 1.0
        if not self.use_vision:
            return 0.0
        return self.mix


@dataclass(frozen=True, eq=False)
class BrainDiffuserFit:
    """Predicted features of every test image of one subject, rows in test-id order."""

    test_ids: tuple[int, ...]
    predictions: Mapping[str, np.ndarray]  # "vdvae" (n, D), "vision" (n, 257, D), "text" (n, 77, D)

    def rows(self, name: str, nsd_ids: Sequence[int]) -> np.ndarray:
        index = {n: i for i, n in enumerate(self.test_ids)}
        return self.predictions[name][[index[int(n)] for n in nsd_ids]]


class BrainDiffuser(Method):
    """VDVAE latents and VD CLIP tokens decoded from fMRI by ridge, then VD dual-guided img2img."""

    name = "brain-diffuser"
    description = (
        "Ridge from z-scored nsdgeneral betas to VDVAE latents (stage 1) and Versatile Diffusion's "
        "CLIP-vision and CLIP-text tokens; the VDVAE image, upsampled to 512, starts VD's dual-guided img2img "
        "(DDIM 50 steps, strength 0.75, guidance 7.5, vision 0.6 / text 0.4)."
    )
    paper = "Ozcelik & VanRullen 2023, Scientific Reports 13:15666 (ozcelikfu/brain-diffuser)"
    version = "1"
    Settings = BrainDiffuserSettings
    variants: ClassVar[dict[str, dict[str, Any]]] = {
        "vdvae-only": {"use_diffusion": False},
        "no-vdvae": {"use_vdvae": False, "strength": 1.0},
        "no-text": {"use_text": False},
        "no-vision": {"use_vision": False},
    }
    default_batch_size = 8

    def __init__(self, settings: Any = None, **kw: Any) -> None:
        super().__init__(settings, **kw)
        self._vdvae: VDVAE | None = None
        self._vd: VDComponents | None = None
        self._vd_sha: str | None = None

    @property
    def vdvae(self) -> VDVAE | None:
        """The stage-1 VDVAE once setup has loaded it (None before, after close, or when not used)."""
        return self._vdvae

    @property
    def versatile_diffusion(self) -> VDComponents | None:
        """The stage-2 Versatile Diffusion components once setup has loaded them (None before, after close,
        or when not used)."""
        return self._vd

    def required_artifacts(self) -> tuple[str, ...]:
        if self.weights_mode != "pretrained":
            return ()
        s = self.settings
        return tuple(n for n, used in ((VDVAE_ARTIFACT, s.use_vdvae), (VD_ARTIFACT, s.use_diffusion)) if used)

    # ------------------------------------------------------------------ lifecycle

    def setup(self, ctx: RunContext) -> None:
        import torch

        from nsdbench.methods.components.vdvae import load_vdvae
        from nsdbench.methods.components.versatile_diffusion import load_components

        s = self.settings
        device = torch.device(self.device)
        if s.use_vdvae and self._vdvae is None:
            self._vdvae = load_vdvae(self.weights_mode, device, torch.float32)  # published: VDVAE in fp32
        if s.use_diffusion and self._vd is None:
            self._vd = load_components(self.weights_mode, device, self.vd_torch_dtype())
            self._vd_sha = brain_diffuser_features.vd_weights_identity(self._vd)

    def vd_torch_dtype(self):
        import torch

        name = self.settings.vd_dtype
        if name == "auto":
            name = "float16" if self.device.startswith("cuda") else self.dtype
        return getattr(torch, name)

    def close(self) -> None:
        from nsdbench.methods.components import release_all

        self._vdvae = self._vd = self._vd_sha = None
        release_all()

    # ------------------------------------------------------------------ fit

    def extractors(self, train: SubjectData) -> list[tuple[brain_diffuser_features.Extractor, float]]:
        """The features this configuration regresses onto, each with its ridge alpha."""
        s = self.settings
        out: list[tuple[brain_diffuser_features.Extractor, float]] = []
        if s.use_vdvae:
            out.append((brain_diffuser_features.vdvae_extractor(self._vdvae, train.images), s.vdvae_alpha))
        if s.use_diffusion and s.use_vision:
            out.append(
                (
                    brain_diffuser_features.vision_extractor(self._vd, train.images, self._vd_sha),
                    s.vision_alpha,
                )
            )
        if s.use_diffusion and s.use_text:
            out.append(
                (brain_diffuser_features.text_extractor(self._vd, train.captions, self._vd_sha), s.text_alpha)
            )
        return out

    def fit(self, train: SubjectData, ctx: RunContext) -> BrainDiffuserFit:
        """Training features through the shared store, one ridge per feature (test predictions only),
        each cached by a content hash of its inputs: a second run on the same subject fits nothing."""
        s = self.settings
        x_train = train.betas("train", roi=s.roi)
        x_test = train.betas("test", roi=s.roi)
        train_ids = np.asarray(train.train_ids, dtype=np.int64)
        extractors = self.extractors(train)
        backend = _ridge_backend(self.device)
        ctx.set_total(len(train_ids) * len(extractors), unit="img")
        predictions: dict[str, np.ndarray] = {}
        for ext, alpha in extractors:
            key = content_key(
                {
                    "method": self.name,
                    "version": self.version,
                    "feature": ext.identity,
                    "alpha": alpha,
                    "ridge_backend": backend,
                },
                train_ids,
                x_train,
                x_test,
            )

            def compute(
                ext: brain_diffuser_features.Extractor = ext, alpha: float = alpha
            ) -> dict[str, np.ndarray]:
                y = brain_diffuser_features.training_features(
                    ext, train_ids, s.feature_batch, progress=ctx.advance, dataset=train.data_identity
                )
                return brain_diffuser_features.ridge_predictions(x_train, y, x_test, alpha, backend=backend)

            cached = ctx.cache.load(key) if ctx.cache is not None else None
            if cached is None:
                cached = compute()
                if ctx.cache is not None:
                    ctx.cache.save(key, cached)
            else:
                ctx.advance(len(train_ids))
            predictions[ext.name] = brain_diffuser_features.finish_predictions(cached, s.postprocess)
        return BrainDiffuserFit(tuple(int(n) for n in train.test_ids), predictions)

    # ------------------------------------------------------------------ reconstruct

    def reconstruct(
        self, items: Sequence[TestItem], fitted: BrainDiffuserFit, ctx: RunContext
    ) -> Iterator[Output]:
        s = self.settings
        ids = [it.nsd_id for it in items]
        generators = [ctx.generator(it.nsd_id, it.sample) for it in items]  # VDVAE draws first, then VD
        stage1 = self.stage1(fitted.rows("vdvae", ids), generators) if s.use_vdvae else None
        if not s.use_diffusion:
            for i, it in enumerate(items):
                yield Output(it.nsd_id, it.sample, stage1[i])
            return
        vision, text = self.contexts(fitted, ids)
        images = self.stage2(stage1, vision, text, generators)
        npy_dtype = np.float16 if str(self._vd.dtype) == "torch.float16" else np.float32
        for i, it in enumerate(items):
            extras: dict[str, Any] = {}
            if stage1 is not None:
                extras["stage1.png"] = stage1[i]
            if s.use_vision:
                extras["clip_vision.npy"] = vision[i].numpy().astype(npy_dtype)
            if s.use_text:
                extras["clip_text.npy"] = text[i].numpy().astype(npy_dtype)
            yield Output(it.nsd_id, it.sample, images[i], extras)

    def stage1(self, latents: np.ndarray, generators: list) -> np.ndarray:
        """Predicted latents -> uint8 VDVAE images (n, 64, 64, 3), remaining groups from the prior."""
        from nsdbench.methods.components.vdvae import decode_latents

        return decode_latents(self._vdvae, latents, generators, self.settings.vdvae_temperature).numpy()

    def contexts(self, fitted: BrainDiffuserFit, ids: Sequence[int]):
        """Vision and text tokens (float32 CPU tensors) for the UNet; an ablated context gets the
        unconditional tokens, which its zero weight in the dual context removes anyway."""
        import torch

        from nsdbench.methods.components.vd_clip_features import unconditional_tokens

        s = self.settings
        uncond_text, uncond_vision = unconditional_tokens(self._vd)
        n = len(ids)
        vision = (
            torch.from_numpy(fitted.rows("vision", ids)).float()
            if s.use_vision
            else uncond_vision.cpu().float().expand(n, -1, -1).clone()
        )
        text = (
            torch.from_numpy(fitted.rows("text", ids)).float()
            if s.use_text
            else uncond_text.cpu().float().expand(n, -1, -1).clone()
        )
        return vision, text

    def stage2(self, stage1: np.ndarray | None, vision, text, generators: list) -> np.ndarray:
        """VD dual-guided img2img from the stage-1 images (None: from noise), `diffusion_batch` per call."""
        from nsdbench.methods.diffusion.versatile import DualGuidedSettings, dual_guided_img2img

        s = self.settings
        dg = DualGuidedSettings(
            steps=s.steps, strength=s.strength, guidance=s.guidance, mix=s.vision_weight, eta=s.eta
        )
        out = []
        for a in range(0, len(generators), s.diffusion_batch):
            b = a + s.diffusion_batch
            init = None if stage1 is None else stage1[a:b]
            out.append(dual_guided_img2img(self._vd, init, vision[a:b], text[a:b], generators[a:b], dg))
        return np.concatenate(out)


def _ridge_backend(device: str) -> str:
    """The ridge backend on the run's device (torch_cuda on a GPU; himalaya's numpy otherwise)."""
    return "torch_cuda" if device.startswith("cuda") else "numpy"


register_method(BrainDiffuser)
