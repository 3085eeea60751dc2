"""Brain-guided search with Stable Diffusion 2.1 unCLIP: Second Sight (Kneeland et al. 2023), its CCN 2023
form (`stochastic-search`) and the `clip-decoding-only` baseline.

Stage 1 (library assembler, in `fit`): every NSD image the subject never saw is scored by the Pearson
correlation of its guidance-encoder prediction with the measured test betas; c0 = mean OpenCLIP ViT-H/14
embedding of the top-k on nsdgeneral, z0 = VDVAE decoding of the mean latents of the top-k on early visual
cortex. Ridge decodes the CLIP embedding from nsdgeneral betas (the CCN search and its baseline start there).
Stage 2 (in `reconstruct`): iterations of unCLIP img2img batches scored by the same encoder, checkpointed
after every iteration so a preempted job resumes mid-image with the same result.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from nsdbench.errors import DataError, UsageError
from nsdbench.methods import search_math as sm
from nsdbench.methods.protocol import FitCache, Method, Output, RunContext, SubjectData, TestItem
from nsdbench.methods.registry import register_method

PAPER = "Kneeland et al. 2023, Second Sight (arXiv:2306.00927); reesekneeland/Second-Sight"
CCN_PAPER = "Kneeland, St-Yves, Naselaris et al., CCN 2023: brain-optimized stochastic search"
RIDGE_ALPHAS = (1e2, 1e3, 1e4, 3e4, 6e4, 1e5, 3e5)


@dataclass(frozen=True)
class SecondSightSettings:
    """Published values (Appendix B.6-B.7); `clip_top_k`/`vdvae_top_k` 0 = published (100/25; 10/3 in tiny)."""

    encoder: str = ""  # guidance encoder: "" = gnet8 (pretrained) or nsdbench-encoder-v1 (random, tiny)
    iterations: int = 6
    search_samples: int = 100  # base images per iteration, split over the branches
    branches: int = 4
    strength_start: float = 0.92
    strength_drop: float = 0.3
    strength_power: float = 3.0
    momentum_scale: float = 0.2
    momentum_power: float = 2.0
    branch_floor: float = 0.4  # n_b >= ceil(0.4 * 25) = 10
    keep_seeds: bool = True  # the previous seeds compete with the new images for the top places
    clip_top_k: int = 0
    vdvae_top_k: int = 0
    z0_from: str = (
        "library"  # or "decoded": ridge from nsdgeneral betas to the VDVAE latents (brain-diffuser)
    )
    vdvae_alpha: float = 5e4  # that ridge's alpha (brain-diffuser's)
    num_inference_steps: int = 20
    guidance_scale: float = 10.0
    noise_level: int = 0
    unet_batch: int = 64  # candidates per sampler call
    library_batch: int = 64  # library images per encoder / CLIP call


@dataclass(frozen=True)
class StochasticSearchSettings:
    """The CCN 2023 search: a library of `library_size` samples per iteration conditioned on the decoded CLIP
    embedding, strength `strength_start` -> `strength_end` on a cubic schedule, best image by encoder score."""

    encoder: str = ""
    iterations: int = 10
    search_samples: int = 250
    seeds: int = 4  # best images that seed the next library
    strength_start: float = 1.0
    strength_end: float = 0.6
    num_inference_steps: int = 20
    guidance_scale: float = 10.0
    noise_level: int = 0
    unet_batch: int = 64
    library_batch: int = 64
    ridge_alphas: tuple[float, ...] = RIDGE_ALPHAS


@dataclass(frozen=True)
class ClipDecodingSettings:
    """One unCLIP sample (strength 1) from the ridge-decoded CLIP embedding."""

    num_inference_steps: int = 20
    guidance_scale: float = 10.0
    noise_level: int = 0
    library_batch: int = 64
    ridge_alphas: tuple[float, ...] = RIDGE_ALPHAS


# ---------------------------------------------------------------------------------------------- shared parts


def unseen_ids(train: SubjectData) -> np.ndarray:
    """Every NSD id the subject never saw, ascending (63k on the real NSD)."""
    seen = {int(i) for i in train.seen_ids()} | set(train.train_ids) | set(train.test_ids)
    lib = np.array([i for i in range(train.n_images) if i not in seen], dtype=np.int64)
    if len(lib) == 0:
        raise DataError(f"subject {train.subject}: no NSD image left that the subject never saw")
    return lib


def encoder_name(setting: str, weights_mode: str) -> str:
    """The guidance encoder: the setting, else GNet8 with pretrained weights and the canonical encoder otherwise."""
    return setting or ("gnet8" if weights_mode == "pretrained" else "nsdbench-encoder-v1")


def nchw(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> uint8 (N, 3, H, W) tensor."""
    return torch.tensor(np.asarray(images, dtype=np.uint8)).permute(0, 3, 1, 2)


def device_tensor(array: np.ndarray, device: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A C-contiguous copy of `array` in torch's memory: kernels round differently on other memory layouts (a
    channels-last latent and its checkpointed copy), which would break bit-identical resumes."""
    return torch.tensor(np.ascontiguousarray(array), device=device, dtype=dtype)


def to_uint8_nhwc(images: torch.Tensor) -> np.ndarray:
    """Float images in [0, 1] (N, 3, H, W) -> uint8 (N, H, W, 3), rounded."""
    return (images.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def resize_square(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, h, w, 3) -> uint8 (N, size, size, 3), PIL bicubic (identity at that size)."""
    from nsdbench.methods.baselines import upsample

    return np.stack([upsample(np.asarray(im, dtype=np.uint8), size) for im in images])


def output_image(image: np.ndarray, size: int) -> np.ndarray:
    """A generated image at the NSD stimulus size."""
    from PIL import Image

    if image.shape[0] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)


class UnclipSampler:
    """The unCLIP components, an empty prompt and the sampler settings of one run."""

    def __init__(self, mode: str, device: str, settings: Any) -> None:
        from nsdbench.methods.components.stable_diffusion import encode_prompts, load_unclip
        from nsdbench.methods.diffusion.unclip import UnclipSettings

        self.components = load_unclip(mode, device)
        empty = encode_prompts(self.components, [""])
        self.empty = empty
        self.settings = settings
        self.sampler = UnclipSettings(
            num_inference_steps=settings.num_inference_steps,
            guidance_scale=settings.guidance_scale,
            noise_level=settings.noise_level,
        )
        unet = self.components.unet.config
        factor = 2 ** (len(self.components.vae.config.block_out_channels) - 1)
        self.image_size = int(unet.sample_size) * factor
        self.latent_shape = (int(unet.in_channels), int(unet.sample_size), int(unet.sample_size))

    def embed(self, images: np.ndarray) -> np.ndarray:
        """OpenCLIP image embeddings (float32, CPU) of uint8 images."""
        from nsdbench.methods.diffusion.unclip import image_embeddings

        return image_embeddings(self.components, images, self.settings.library_batch).float().cpu().numpy()

    @torch.no_grad()
    def sample(
        self,
        c: torch.Tensor,
        seeds: Sequence[int],
        strength: float,
        init_images: torch.Tensor | None = None,
        init_latents: torch.Tensor | None = None,
        batch: int = 64,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Candidates for conditioning rows c (N, dim): (final latents, images in [0, 1]), in chunks of `batch`
        rows; row j draws all its noise from the generator seeded with seeds[j]."""
        from dataclasses import replace

        from nsdbench.methods import seeds as seeding
        from nsdbench.methods.diffusion.img2img import decode_latents
        from nsdbench.methods.diffusion.unclip import unclip_img2img_latents

        settings = replace(self.sampler, strength=float(min(strength, 1.0)))
        latents, images = [], []
        for s in range(0, len(c), batch):
            sl = slice(s, s + batch)
            n = len(c[sl])
            gens = [seeding.torch_generator(int(x), "cpu") for x in seeds[sl]]
            lat = unclip_img2img_latents(
                self.components,
                c[sl],
                self.empty.expand(n, -1, -1),
                self.empty.expand(n, -1, -1),
                gens,
                settings,
                init_images=None if init_images is None else init_images[sl],
                init_latents=None if init_latents is None else init_latents[sl],
                latent_shape=self.latent_shape,
            )
            latents.append(lat)
            images.append(decode_latents(self.components.vae, lat, self.sampler.vae_batch_size))
        return torch.cat(latents), torch.cat(images)


def library_embeddings(gen: UnclipSampler, train: SubjectData, ids: Sequence[int], mode: str) -> np.ndarray:
    """OpenCLIP embeddings of NSD images from the shared per-id feature store (computed once per id)."""
    from nsdbench.feature_store import FeatureStore, default_root

    dim = int(gen.components.image_encoder.config.projection_dim)
    store = FeatureStore(
        default_root(), f"unclip-h-image-embeds/{mode}/{gen.components.dtype}", (dim,), "float32"
    )
    return store.get_or_compute(list(ids), lambda b: gen.embed(train.images(b)), gen.settings.library_batch)


def decode_clip(train: SubjectData, gen: UnclipSampler, mode: str, alphas: tuple[float, ...]) -> np.ndarray:
    """Ridge (alpha by 5-fold CV, one for all targets) from z-scored nsdgeneral betas to the CLIP image
    embedding, predicted for the test betas (rows aligned with test_ids), cached by content hash."""
    from nsdbench.methods import ridge

    y = library_embeddings(gen, train, train.train_ids, mode)
    settings = ridge.RidgeSettings(alphas=tuple(alphas), cv=5, per_target=False, dtype="float64")
    pred = ridge.fit_predict(
        train.betas("train"), y, train.betas("test"), settings, cache=True, progress=False
    )
    return np.asarray(pred, dtype=np.float32)


def measured_betas(train: SubjectData) -> np.ndarray:
    """Test betas in the encoders' space (nsdgeneral, session z-scored), rows aligned with test_ids."""
    return np.asarray(train.betas("test", "nsdgeneral", normalize="session-zscore"), dtype=np.float32)


def library_predictions(
    encoder: Any, train: SubjectData, lib: np.ndarray, batch: int, ctx: RunContext
) -> np.ndarray:
    """Guidance-encoder predictions (L, V) of the library, per id in the shared feature store."""
    from nsdbench.feature_store import FeatureStore, default_root

    store = FeatureStore(default_root(), f"guidance/{encoder.identity}", (int(encoder.n_voxels),), "float32")
    ctx.set_total(len(store.missing(lib)), unit="img")

    def compute(ids: list[int]) -> np.ndarray:
        return encoder.predict(nchw(train.images(ids))).float().cpu().numpy()

    return store.get_or_compute(list(lib), compute, batch, progress=ctx.advance)


def rank_library(
    pred: np.ndarray,
    measured: np.ndarray,
    k: int,
    device: str,
    mask: np.ndarray | None = None,
    block: int = 8192,
) -> np.ndarray:
    """Top-k library rows (T, k) per measured row by Pearson r over the voxels of `mask`, on the device."""
    m = torch.as_tensor(measured if mask is None else measured[:, mask], device=device)
    scores = []
    for s in range(0, len(pred), block):
        p = pred[s : s + block] if mask is None else pred[s : s + block][:, mask]
        scores.append(sm.correlation_matrix(torch.as_tensor(p, device=device), m))
    return sm.top_k_rows(torch.cat(scores), k).cpu().numpy()


# ---------------------------------------------------------------------------------------------- second-sight


def vdvae_latents(vdvae: Any, train: SubjectData, ids: Sequence[int], batch: int, mode: str) -> np.ndarray:
    """VDVAE posterior-mean latents (N, D) of NSD images at 64 px, per id in the shared feature store."""
    from nsdbench.feature_store import FeatureStore, default_root
    from nsdbench.methods.components.vdvae import encode_latents, resize_like_brain_diffuser

    cfg = vdvae.cfg
    dim = int(cfg.latent_dim(cfg.n_latent_groups))
    store = FeatureStore(default_root(), f"vdvae/{cfg.name}/{mode}/posterior-mean", (dim,), "float32")

    def compute(chunk: list[int]) -> np.ndarray:
        return encode_latents(vdvae, resize_like_brain_diffuser(train.images(chunk), cfg.image_size)).numpy()

    return store.get_or_compute(list(ids), compute, batch)


def assemble(
    train: SubjectData, ctx: RunContext, settings: SecondSightSettings, gen: UnclipSampler, encoder: Any
) -> dict[str, np.ndarray]:
    """Stage 1 for every test id: c0 (T, dim) and the z0 image (T, S, S, 3) at the VDVAE's size."""
    from nsdbench.methods import seeds as seeding
    from nsdbench.methods.components.vdvae import decode_latents, load_vdvae

    if settings.z0_from not in ("library", "decoded"):
        raise UsageError(f"second-sight: z0_from must be 'library' or 'decoded', got {settings.z0_from!r}")
    tiny = ctx.weights_mode == "tiny"
    k_clip = settings.clip_top_k or (10 if tiny else 100)
    k_vdvae = settings.vdvae_top_k or (3 if tiny else 25)
    lib = unseen_ids(train)
    measured = measured_betas(train)
    pred = library_predictions(encoder, train, lib, settings.library_batch, ctx)
    early = np.asarray(train.roi_voxel_masks()["early"], dtype=bool)
    top_c = lib[rank_library(pred, measured, k_clip, ctx.device)]
    top_z = lib[rank_library(pred, measured, k_vdvae, ctx.device, mask=early)]

    union_c = np.unique(top_c)
    emb = dict(zip(union_c.tolist(), library_embeddings(gen, train, union_c, ctx.weights_mode), strict=True))
    c0 = np.stack([np.mean([emb[int(i)] for i in row], axis=0) for row in top_c]).astype(np.float32)

    vdvae = load_vdvae(ctx.weights_mode, ctx.device)
    if settings.z0_from == "decoded":
        from nsdbench.methods import ridge

        y = vdvae_latents(vdvae, train, train.train_ids, settings.library_batch, ctx.weights_mode)
        ridge_settings = ridge.RidgeSettings(alpha=settings.vdvae_alpha, dtype="float64")
        z_pred = ridge.fit_predict(
            train.betas("train"), y, train.betas("test"), ridge_settings, cache=True, progress=False
        )
        z_mean = ridge.bd_postprocess(z_pred, y).astype(np.float32)
    else:
        union_z = np.unique(top_z)
        lat = dict(
            zip(
                union_z.tolist(),
                vdvae_latents(vdvae, train, union_z, settings.library_batch, ctx.weights_mode),
                strict=True,
            )
        )
        z_mean = np.stack([np.mean([lat[int(i)] for i in row], axis=0) for row in top_z]).astype(np.float32)
    gens = [seeding.torch_generator(ctx.seed(int(n), -1), "cpu") for n in train.test_ids]
    z_images = np.concatenate(
        [
            decode_latents(
                vdvae, z_mean[s : s + settings.library_batch], gens[s : s + settings.library_batch]
            ).numpy()
            for s in range(0, len(z_mean), settings.library_batch)
        ]
    )
    return {
        "test_ids": np.asarray(train.test_ids, np.int64),
        "c0": c0,
        "z0_image": z_images,
        "measured": measured,
    }


def fit_cached(
    method: Method, train: SubjectData, ctx: RunContext, encoder: Any, build
) -> dict[str, np.ndarray]:
    """Stage 1 through ctx.cache, keyed by method, settings, data and the encoder's content identity."""
    from nsdbench.methods.protocol import settings_dict

    key = FitCache.key(
        {
            "method": method.name,
            "version": method.version,
            "subject": train.subject,
            "split": ctx.split,
            "weights": ctx.weights_mode,
            "device": str(ctx.device),
            "seed": ctx.base_seed,
            "encoder": getattr(encoder, "identity", None),
            "settings": settings_dict(method.settings),
        },
        np.asarray(train.test_ids, np.int64),
        measured_betas(train),
    )
    return ctx.cache.get_or_compute(key, build) if ctx.cache is not None else dict(build())


@dataclass
class SearchState:
    """Where one item's search stands after `done` iterations (saved to its checkpoint as arrays)."""

    done: int
    seed_c: np.ndarray  # (B, dim) conditioning of the next iteration's branches
    seed_z: np.ndarray  # (B, C, h, w) init latents of the next branches ((0,) before the first iteration)
    seed_scores: np.ndarray  # (B,) brain correlation of the current seeds
    seed_images: np.ndarray  # (B, H, W, 3) the seed images
    prev_c: np.ndarray  # (dim,) the best image's conditioning so far
    trace_scores: np.ndarray  # (done,) best brain correlation after each iteration
    trace_images: np.ndarray  # (done, H, W, 3) the best image after each iteration
    best_mean: np.ndarray  # () highest mean brain correlation of a distribution so far
    best_image: np.ndarray  # (H, W, 3) best image of that distribution
    best_score: np.ndarray  # ()

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in self.__dict__.items()}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> SearchState:
        return cls(**{k: (int(a[k]) if k == "done" else a[k]) for k in cls.__dataclass_fields__})


def second_sight_iteration(
    state: SearchState,
    i: int,
    z0_image: np.ndarray | None,
    target: torch.Tensor,
    item: TestItem,
    settings: SecondSightSettings,
    gen: UnclipSampler,
    encoder: Any,
) -> SearchState:
    """One search iteration: n_b images per branch at strength λ_i, scored; the top seeds, the slerped CLIP
    vectors and the best distribution so far."""
    s = settings
    lam = sm.second_sight_strength(i, s.iterations, s.strength_start, s.strength_drop, s.strength_power)
    n_b = sm.branch_size(lam, max(1, s.search_samples // s.branches), s.branch_floor)
    branches = len(state.seed_c)
    device, dtype = gen.components.device, gen.components.dtype
    rows = np.repeat(np.arange(branches), n_b)
    c = device_tensor(state.seed_c[rows], device, dtype)
    seeds = [sm.candidate_seed(item.seed, "second-sight", i, j) for j in range(len(rows))]
    if i == 0:
        init = device_tensor(resize_square(z0_image[None], gen.image_size), device)
        init = init.permute(0, 3, 1, 2).to(dtype) / 255.0
        latents, images = gen.sample(
            c, seeds, lam, init_images=init.expand(len(rows), -1, -1, -1), batch=s.unet_batch
        )
    else:
        z = device_tensor(state.seed_z[rows], device, dtype)
        latents, images = gen.sample(c, seeds, lam, init_latents=z, batch=s.unet_batch)
    pixels = to_uint8_nhwc(images)
    scores = sm.pearson_rows(encoder.predict(nchw(pixels).to(target.device)), target).cpu().numpy()

    means = np.array([scores[rows == b].mean() for b in range(branches)])
    best_mean, best_image, best_score = state.best_mean, state.best_image, state.best_score
    top_branch = int(np.argmax(means))
    if state.best_mean.size == 0 or means[top_branch] > float(state.best_mean):
        in_branch = np.flatnonzero(rows == top_branch)
        j = int(in_branch[np.argmax(scores[in_branch])])
        best_mean, best_image, best_score = np.float64(means[top_branch]), pixels[j], np.float64(scores[j])

    pool_scores, pool_images = scores, pixels
    pool_c = state.seed_c[rows]
    pool_z = latents.float().cpu().contiguous().numpy()
    if s.keep_seeds and i > 0:
        pool_scores = np.concatenate([state.seed_scores, scores])
        pool_images = np.concatenate([state.seed_images, pixels])
        pool_c = np.concatenate([state.seed_c, pool_c])
        pool_z = np.concatenate([state.seed_z, pool_z])
    order = np.argsort(-pool_scores, kind="stable")[: s.branches]
    gamma = sm.second_sight_momentum(i, s.iterations, s.momentum_scale, s.momentum_power)
    prev = device_tensor(state.prev_c, "cpu", torch.float64)
    seed_embeds = torch.as_tensor(gen.embed(pool_images[order]), dtype=torch.float64)
    new_c = sm.slerp(prev.expand_as(seed_embeds), seed_embeds, gamma).float().numpy()
    return SearchState(
        done=i + 1,
        seed_c=new_c,
        seed_z=pool_z[order],
        seed_scores=pool_scores[order],
        seed_images=pool_images[order],
        prev_c=pool_c[order[0]].astype(np.float32),
        trace_scores=np.append(state.trace_scores, pool_scores[order[0]]),
        trace_images=np.concatenate([state.trace_images, pool_images[order[:1]]]),
        best_mean=np.asarray(best_mean),
        best_image=best_image,
        best_score=np.asarray(best_score),
    )


def initial_state(c0: np.ndarray, branches: int, size: int) -> SearchState:
    """Before the first iteration: every branch conditioned on c0 (and initialized from z0)."""
    return SearchState(
        done=0,
        seed_c=np.repeat(c0[None].astype(np.float32), branches, 0),
        seed_z=np.zeros((0,), np.float32),
        seed_scores=np.zeros((0,)),
        seed_images=np.zeros((0, size, size, 3), np.uint8),
        prev_c=c0.astype(np.float32),
        trace_scores=np.zeros((0,)),
        trace_images=np.zeros((0, size, size, 3), np.uint8),
        best_mean=np.zeros((0,)),
        best_image=np.zeros((size, size, 3), np.uint8),
        best_score=np.zeros((0,)),
    )


def trace_extras(scores: np.ndarray, images: np.ndarray) -> dict[str, Any]:
    """Extras of one item: the best image after each iteration and the scores (JSON)."""
    extras: dict[str, Any] = {f"iter{i}.png": img for i, img in enumerate(images)}
    extras["search.json"] = {"best_brain_correlation_per_iteration": [float(x) for x in scores]}
    return extras


class _UnclipMethod(Method):
    """Shared setup/close of the unCLIP methods."""

    default_batch_size: ClassVar[int] = 4

    def required_artifacts(self) -> tuple[str, ...]:
        from nsdbench.methods.components.stable_diffusion import UNCLIP

        if self.weights_mode != "pretrained":
            return ()
        arts = [UNCLIP]
        name = encoder_name(getattr(self.settings, "encoder", "nsdbench-encoder-v1"), self.weights_mode)
        if name == "gnet8":
            arts.append("gnet8-multisubject")
        else:
            from nsdbench.metrics.encoder import default_spec
            from nsdbench.metrics.networks import ARTIFACT_OF

            spec = default_spec("pretrained")
            arts.append(ARTIFACT_OF[(spec.network, spec.network_weights)])
        return tuple(arts)

    def setup(self, ctx: RunContext) -> None:
        self.gen = UnclipSampler(ctx.weights_mode, ctx.device, self.settings)

    def close(self) -> None:
        self.gen = None


class SecondSight(_UnclipMethod):
    """Library assembler + stochastic search guided by an encoding model (Kneeland et al. 2023)."""

    name = "second-sight"
    description = (
        "Second Sight: c0/z0 from the top unseen NSD images by encoder-predicted brain correlation, then 6 "
        "iterations of SD 2.1 unCLIP img2img in 4 branches, scored by the guidance encoder; the best "
        "distribution's best image."
    )
    paper = PAPER
    Settings = SecondSightSettings
    variants: ClassVar[dict[str, dict[str, Any]]] = {
        "no-keep-seeds": {"keep_seeds": False},
        "decoded-z0": {"z0_from": "decoded"},
    }

    def required_artifacts(self) -> tuple[str, ...]:
        if self.weights_mode != "pretrained":
            return ()
        from nsdbench.methods.components.vdvae import ARTIFACT

        return (*super().required_artifacts(), ARTIFACT.name)

    def fit(self, train: SubjectData, ctx: RunContext) -> dict[str, Any]:
        encoder = ctx.encoder(encoder_name(self.settings.encoder, ctx.weights_mode))
        arrays = fit_cached(
            self, train, ctx, encoder, lambda: assemble(train, ctx, self.settings, self.gen, encoder)
        )
        return {
            "arrays": arrays,
            "row": {int(n): i for i, n in enumerate(arrays["test_ids"])},
            "encoder": encoder,
        }

    def search(self, item: TestItem, fitted: dict[str, Any], ctx: RunContext) -> SearchState:
        """Run (or resume) the search of one item, saving its state after every iteration."""
        s, a = self.settings, fitted["arrays"]
        row = fitted["row"][item.nsd_id]
        target = device_tensor(a["measured"][row], ctx.device)
        ckpt = ctx.checkpoint(item) if ctx.checkpoint_dir is not None else None
        saved = ckpt.load() if ckpt is not None else None
        state = (
            SearchState.from_arrays(saved)
            if saved
            else initial_state(a["c0"][row], s.branches, self.gen.image_size)
        )
        for i in range(state.done, s.iterations):
            state = second_sight_iteration(
                state, i, a["z0_image"][row], target, item, s, self.gen, fitted["encoder"]
            )
            if ckpt is not None:
                ckpt.save(state.arrays())
        return state

    def reconstruct(self, items: Sequence[TestItem], fitted: Any, ctx: RunContext) -> Iterator[Output]:
        for it in items:
            state = self.search(it, fitted, ctx)
            image = output_image(state.best_image, ctx.data.image_size)
            extras = trace_extras(state.trace_scores, state.trace_images)
            extras["search.json"]["output_distribution_mean"] = float(state.best_mean)
            extras["search.json"]["output_brain_correlation"] = float(state.best_score)
            yield Output(it.nsd_id, it.sample, image, extras)


# ---------------------------------------------------------------------------------------------- CCN form


def decoded_fit(
    method: Method, train: SubjectData, ctx: RunContext, encoder: Any, gen: UnclipSampler
) -> dict[str, Any]:
    """The ridge-decoded CLIP embeddings and measured betas of the test ids, cached."""

    def build() -> dict[str, np.ndarray]:
        return {
            "test_ids": np.asarray(train.test_ids, np.int64),
            "c": decode_clip(train, gen, ctx.weights_mode, method.settings.ridge_alphas),
            "measured": measured_betas(train),
        }

    arrays = fit_cached(method, train, ctx, encoder, build)
    return {
        "arrays": arrays,
        "row": {int(n): i for i, n in enumerate(arrays["test_ids"])},
        "encoder": encoder,
    }


def stochastic_iteration(
    state: SearchState,
    i: int,
    c: np.ndarray,
    target: torch.Tensor,
    item: TestItem,
    settings: StochasticSearchSettings,
    gen: UnclipSampler,
    encoder: Any,
) -> SearchState:
    """One CCN iteration: a library of `search_samples` images conditioned on the decoded c, initialized
    (after the first) from the best seeds in turn, at the cubic strength; the seeds are the best so far."""
    s = settings
    lam = sm.cubic_decay(i, s.iterations, s.strength_start, s.strength_end)
    device, dtype = gen.components.device, gen.components.dtype
    cond = device_tensor(np.repeat(c[None], s.search_samples, 0), device, dtype)
    seeds = [sm.candidate_seed(item.seed, "stochastic-search", i, j) for j in range(s.search_samples)]
    if i == 0 or lam >= 1.0 or len(state.seed_z) == 0:
        latents, images = gen.sample(cond, seeds, 1.0, batch=s.unet_batch)
    else:
        rows = np.arange(s.search_samples) % len(state.seed_z)
        z = device_tensor(state.seed_z[rows], device, dtype)
        latents, images = gen.sample(cond, seeds, lam, init_latents=z, batch=s.unet_batch)
    pixels = to_uint8_nhwc(images)
    scores = sm.pearson_rows(encoder.predict(nchw(pixels).to(target.device)), target).cpu().numpy()
    pool_scores = np.concatenate([state.seed_scores, scores])
    pool_images = np.concatenate([state.seed_images, pixels])
    pool_z = (
        latents.float().cpu().contiguous().numpy()
        if len(state.seed_z) == 0
        else np.concatenate([state.seed_z, latents.float().cpu().contiguous().numpy()])
    )
    order = np.argsort(-pool_scores, kind="stable")[: s.seeds]
    return SearchState(
        done=i + 1,
        seed_c=state.seed_c,
        seed_z=pool_z[order],
        seed_scores=pool_scores[order],
        seed_images=pool_images[order],
        prev_c=state.prev_c,
        trace_scores=np.append(state.trace_scores, pool_scores[order[0]]),
        trace_images=np.concatenate([state.trace_images, pool_images[order[:1]]]),
        best_mean=np.asarray(scores.mean()),
        best_image=pool_images[order[0]],
        best_score=np.asarray(pool_scores[order[0]]),
    )


class StochasticSearch(_UnclipMethod):
    """The CCN 2023 form of Second Sight: search from the decoded CLIP embedding alone."""

    name = "stochastic-search"
    description = (
        "CCN 2023 stochastic search: libraries of 250 SD 2.1 unCLIP samples conditioned on the ridge-decoded "
        "CLIP embedding, 10 iterations seeded by the best images, strength 1.0 -> 0.6 (cubic), best image by "
        "encoder score."
    )
    paper = CCN_PAPER
    Settings = StochasticSearchSettings

    def fit(self, train: SubjectData, ctx: RunContext) -> dict[str, Any]:
        encoder = ctx.encoder(encoder_name(self.settings.encoder, ctx.weights_mode))
        return decoded_fit(self, train, ctx, encoder, self.gen)

    def search(self, item: TestItem, fitted: dict[str, Any], ctx: RunContext) -> SearchState:
        s, a = self.settings, fitted["arrays"]
        row = fitted["row"][item.nsd_id]
        target = device_tensor(a["measured"][row], ctx.device)
        ckpt = ctx.checkpoint(item) if ctx.checkpoint_dir is not None else None
        saved = ckpt.load() if ckpt is not None else None
        state = (
            SearchState.from_arrays(saved) if saved else initial_state(a["c"][row], 0, self.gen.image_size)
        )
        for i in range(state.done, s.iterations):
            state = stochastic_iteration(state, i, a["c"][row], target, item, s, self.gen, fitted["encoder"])
            if ckpt is not None:
                ckpt.save(state.arrays())
        return state

    def reconstruct(self, items: Sequence[TestItem], fitted: Any, ctx: RunContext) -> Iterator[Output]:
        for it in items:
            state = self.search(it, fitted, ctx)
            yield Output(
                it.nsd_id,
                it.sample,
                output_image(state.best_image, ctx.data.image_size),
                trace_extras(state.trace_scores, state.trace_images),
            )


class ClipDecodingOnly(_UnclipMethod):
    """Baseline of the CCN search: one unCLIP sample from the decoded CLIP embedding, no search."""

    name = "clip-decoding-only"
    description = (
        "One SD 2.1 unCLIP sample (strength 1) conditioned on the ridge-decoded CLIP image embedding."
    )
    paper = CCN_PAPER
    Settings = ClipDecodingSettings
    default_batch_size: ClassVar[int] = 16

    def required_artifacts(self) -> tuple[str, ...]:
        from nsdbench.methods.components.stable_diffusion import UNCLIP

        return (UNCLIP,) if self.weights_mode == "pretrained" else ()

    def fit(self, train: SubjectData, ctx: RunContext) -> dict[str, Any]:
        return decoded_fit(self, train, ctx, None, self.gen)

    def reconstruct(self, items: Sequence[TestItem], fitted: Any, ctx: RunContext) -> Iterator[tuple]:
        a = fitted["arrays"]
        gen = self.gen
        c = device_tensor(
            np.stack([a["c"][fitted["row"][it.nsd_id]] for it in items]),
            gen.components.device,
            gen.components.dtype,
        )
        _, images = gen.sample(c, [it.seed for it in items], 1.0, batch=len(items))
        for it, img in zip(items, to_uint8_nhwc(images), strict=True):
            yield it.nsd_id, it.sample, output_image(img, ctx.data.image_size)


for _cls in (SecondSight, StochasticSearch, ClipDecodingOnly):
    register_method(_cls)
