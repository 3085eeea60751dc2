"""The work behind second-sight, stochastic-search and clip-decoding-only (settings and adapters in
second_sight.py): the unCLIP sampler, the library assembler, the hybrid guidance encoder's fits, the search
targets and one search iteration of each form, with the state a checkpoint holds."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nsdbench.caches import ArrayCache
from nsdbench.errors import DataError, UsageError
from nsdbench.methods import search_math
from nsdbench.methods.adapter import Method, RunContext, SubjectData, TestItem
from nsdbench.methods.second_sight import SecondSightSettings, StochasticSearchSettings

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
        self.empty = encode_prompts(self.components, [""])
        self.negative = encode_prompts(self.components, [getattr(settings, "negative_prompt", "")])
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
                self.negative.expand(n, -1, -1),
                gens,
                settings,
                init_images=None if init_images is None else init_images[sl],
                init_latents=None if init_latents is None else init_latents[sl],
                latent_shape=self.latent_shape,
            )
            latents.append(lat)
            images.append(decode_latents(self.components.vae, lat, self.sampler.vae_batch_size))
        return torch.cat(latents), torch.cat(images)


def weights_tag(mode: str, artifact: str) -> str:
    """What a cached row depends on among the weights: the fetched artifact's sha256, or the seeded mode."""
    from nsdbench import weights

    return weights.recorded_sha256(artifact) if mode == "pretrained" else mode


def library_embeddings(gen: UnclipSampler, train: SubjectData, ids: Sequence[int], mode: str) -> np.ndarray:
    """OpenCLIP embeddings of NSD images from the shared per-id feature store (computed once per id)."""
    from nsdbench.feature_store import FeatureStore, default_root

    dim = int(gen.components.image_encoder.config.projection_dim)
    comp = gen.components
    where = f"{comp.dtype}/{comp.device.type}/{weights_tag(mode, 'stable-diffusion-2-1-unclip')}"
    store = FeatureStore(
        default_root(), f"{train.data_identity}/unclip-h-image-embeds/{where}", (dim,), "float32"
    )
    return store.get_or_compute(list(ids), lambda b: gen.embed(train.images(b)), gen.settings.library_batch)


def decode_clip(train: SubjectData, gen: UnclipSampler, mode: str, alphas: tuple[float, ...]) -> np.ndarray:
    """Ridge (alpha by 5-fold CV, one for all targets) from z-scored nsdgeneral betas to the CLIP image
    embedding, predicted for the test betas (rows aligned with test_ids), cached by content hash."""
    from nsdbench import ridge

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

    identity = f"{train.data_identity}/guidance/{encoder.identity}"
    store = FeatureStore(default_root(), identity, (int(encoder.n_voxels),), "float32")
    ctx.set_total(len(store.missing(lib)), unit="img")

    def compute(ids: list[int]) -> np.ndarray:
        return encoder.predict(nchw(train.images(ids))).float().cpu().numpy()

    return store.get_or_compute(list(lib), compute, batch, progress=ctx.advance)


def rank_library(
    pred: np.ndarray | Sequence[np.ndarray],
    measured: np.ndarray,
    k: int,
    device: str,
    mask: np.ndarray | None = None,
    block: int = 8192,
    n_reps: np.ndarray | None = None,
) -> np.ndarray:
    """Top-k library rows (T, k) per test image by Pearson r over the voxels of `mask`, on the device; with
    several encoders' predictions (each (L, V)) the score is the mean of their correlations. `measured` is
    (T, V), or (T, R, V) zero-padded repetitions with `n_reps` (T,): then the mean r over each image's."""
    from nsdbench.methods.hybrid_encoder import hybrid_correlation_matrix

    preds = [pred] if isinstance(pred, np.ndarray) else list(pred)
    if measured.ndim == 2:
        rows, average = measured, None
    else:
        counts = np.asarray(n_reps, np.int64)
        rows = np.concatenate([measured[t, : counts[t]] for t in range(len(counts))])
        owner = np.repeat(np.arange(len(counts)), counts)
        average = np.zeros((len(rows), len(counts)))
        average[np.arange(len(rows)), owner] = 1.0 / counts[owner]
        average = torch.as_tensor(average, device=device)
    m = torch.as_tensor(rows if mask is None else rows[:, mask], device=device)
    scores = []
    for s in range(0, len(preds[0]), block):
        parts = [p[s : s + block] if mask is None else p[s : s + block][:, mask] for p in preds]
        r = hybrid_correlation_matrix([torch.as_tensor(p, device=device) for p in parts], m)
        scores.append(r if average is None else r @ average)
    return search_math.top_k_rows(torch.cat(scores), k).cpu().numpy()


def clip_betas_ridge(train: SubjectData, gen: UnclipSampler, mode: str, alphas: tuple[float, ...]) -> Any:
    """The hybrid's second model, ridge variant: ridge (alpha by 5-fold CV) from the OpenCLIP embeddings of the
    training images to their repetition-averaged nsdgeneral betas in the encoders' space (cached)."""
    import hashlib

    from nsdbench import ridge
    from nsdbench.methods.hybrid_encoder import ClipBetasEncoder, ridge_predictor

    x = library_embeddings(gen, train, train.train_ids, mode)
    y = np.asarray(train.betas("train", "nsdgeneral", normalize="session-zscore"), dtype=np.float32)
    settings = ridge.RidgeSettings(alphas=tuple(alphas), cv=5, per_target=False, dtype="float64")
    model = ridge.fit_ridge(x, y, settings, cache=True, progress=False)
    digest = hashlib.sha256()
    for a in (x, y, np.asarray(alphas, np.float64)):
        digest.update(np.ascontiguousarray(a).tobytes())
    identity = (
        f"clip-betas-ridge/unclip-h-image-embeds/{mode}/{gen.components.dtype}/subj{train.subject:02d}"
        f"/{digest.hexdigest()[:16]}"
    )
    encoder = ClipBetasEncoder(ridge_predictor(model), int(model.n_targets), gen.embed, identity)
    encoder.model = model
    return encoder


def mlp_training(mode: str, published: Any, seed: int) -> Any:
    """The published optimizer settings, or the tiny ones in tiny mode; seeded by the run's base seed."""
    from dataclasses import replace

    from nsdbench.methods.components import brain_mlps

    return replace(brain_mlps.TINY_TRAINING if mode == "tiny" else published, seed=int(seed))


def clip_betas_mlp(
    train: SubjectData,
    gen: UnclipSampler,
    mode: str,
    hidden: Sequence[int],
    cache: Any,
    device: str,
    seed: int,
) -> Any:
    """The hybrid's second model as published: a 3-layer MLP (1024 -> 15000 -> 15000 -> voxels; `hidden` () =
    that, or 128 wide in tiny mode) from each training trial's image embedding to its single-trial betas
    (session z-scored nsdgeneral), Adam with early stopping (src/clip_encoder.py); cached by content hash."""
    from nsdbench.methods.components import brain_mlps
    from nsdbench.methods.hybrid_encoder import ClipBetasEncoder, torch_predictor

    trials = train.single_trials("train", "nsdgeneral", normalize="session-zscore")
    ids = np.unique(trials.nsd_ids)
    emb = library_embeddings(gen, train, ids, mode)
    x = emb[np.searchsorted(ids, trials.nsd_ids)]
    hidden = tuple(hidden) or (
        brain_mlps.TINY_CLIP_HIDDEN if mode == "tiny" else brain_mlps.PUBLISHED_CLIP_HIDDEN
    )
    widths = brain_mlps.clip_betas_widths(x.shape[1], trials.betas.shape[1], hidden)
    training = mlp_training(mode, brain_mlps.PUBLISHED_CLIP_TRAINING, seed)
    model, key = brain_mlps.fit_cached(
        "clip-betas-mlp", widths, training, x, trials.betas, trials.nsd_ids, cache, device
    )
    identity = f"clip-betas-mlp/unclip-h-image-embeds/{mode}/subj{train.subject:02d}/{key[:16]}"
    return ClipBetasEncoder(torch_predictor(model), widths[-1], gen.embed, identity)


def clip_betas_encoder(
    train: SubjectData,
    gen: UnclipSampler,
    mode: str,
    settings: Any,
    cache: Any = None,
    device: str = "cpu",
    seed: int = 0,
) -> Any:
    """The CLIP -> betas model the settings name: `clip_encoder` 'mlp' (published) or 'ridge'."""
    if settings.clip_encoder == "ridge":
        return clip_betas_ridge(train, gen, mode, settings.clip_encoder_alphas)
    if settings.clip_encoder != "mlp":
        raise UsageError(
            f"second-sight: clip_encoder must be 'mlp' or 'ridge', got {settings.clip_encoder!r}"
        )
    return clip_betas_mlp(train, gen, mode, settings.clip_mlp_hidden, cache, device, seed)


def guidance_encoder(method: Method, train: SubjectData, ctx: RunContext, gen: UnclipSampler) -> Any:
    """`ctx.encoder` alone, or (setting `hybrid`) its average with the CLIP -> betas ridge."""
    from nsdbench.methods.hybrid_encoder import HybridEncoder

    s = method.settings
    base = ctx.encoder(encoder_name(s.encoder, ctx.weights_mode))
    if not getattr(s, "hybrid", False):
        return base
    clip = clip_betas_encoder(train, gen, ctx.weights_mode, s, ctx.cache, ctx.device, ctx.base_seed)
    if ctx.encoder_recorder is not None:
        ctx.encoder_recorder(clip.identity)
    return HybridEncoder([base, clip])


def encoder_parts(encoder: Any) -> tuple[Any, ...]:
    """The models a (possibly hybrid) guidance encoder averages."""
    return tuple(getattr(encoder, "parts", (encoder,)))


# ---------------------------------------------------------------------------------------------- second-sight


def vdvae_latents(vdvae: Any, train: SubjectData, ids: Sequence[int], batch: int, mode: str) -> np.ndarray:
    """VDVAE posterior-mean latents (N, D) of NSD images at 64 px, per id in the shared feature store."""
    from nsdbench.feature_store import FeatureStore, default_root
    from nsdbench.methods.components.vdvae import encode_latents, resize_like_brain_diffuser

    cfg = vdvae.cfg
    dim = int(cfg.latent_dim(cfg.n_latent_groups))
    device = next(vdvae.parameters()).device.type
    identity = f"{train.data_identity}/vdvae/{cfg.name}/{mode}/posterior-mean/{device}/{vdvae.weights_sha256}"
    store = FeatureStore(default_root(), identity, (dim,), "float32")

    def compute(chunk: list[int]) -> np.ndarray:
        return encode_latents(vdvae, resize_like_brain_diffuser(train.images(chunk), cfg.image_size)).numpy()

    return store.get_or_compute(list(ids), compute, batch)


def part_predictions(
    encoder: Any, train: SubjectData, ids: np.ndarray, ctx: RunContext, gen: UnclipSampler, batch: int
) -> list[np.ndarray]:
    """Each part's predicted betas (L, V) float32 for NSD images `ids`: the image encoders from the per-id
    feature store, the CLIP -> betas model from the stored CLIP embeddings."""
    preds = []
    for part in encoder_parts(encoder):
        if hasattr(part, "predict_embeddings"):
            emb = library_embeddings(gen, train, ids, ctx.weights_mode)
            preds.append(part.predict_embeddings(emb).numpy().astype(np.float32))
        else:
            preds.append(library_predictions(part, train, ids, batch, ctx))
    return preds


def betas_autoencoder(
    train: SubjectData, ctx: RunContext, settings: SecondSightSettings, encoder: Any, gen: UnclipSampler
) -> Any:
    """The published denoising autoencoder (src/autoencoder.py, src/model_zoo.py AutoEncoderModel): from a
    training trial's betas to the guidance encoder's prediction for its image, Adam with early stopping;
    returns a function of betas (R, V) -> denoised betas (R, V)."""
    from nsdbench.methods.components import brain_mlps

    trials = train.single_trials("train", "nsdgeneral", normalize="session-zscore")
    ids = np.unique(trials.nsd_ids)
    preds = part_predictions(encoder, train, ids, ctx, gen, settings.library_batch)
    y = np.mean(np.stack(preds), axis=0)[np.searchsorted(ids, trials.nsd_ids)]
    tiny = ctx.weights_mode == "tiny"
    widths = brain_mlps.autoencoder_widths(
        trials.betas.shape[1],
        settings.autoencoder_widths
        or (brain_mlps.TINY_AE_WIDTHS if tiny else brain_mlps.PUBLISHED_AE_WIDTHS),
    )
    training = mlp_training(ctx.weights_mode, brain_mlps.PUBLISHED_AE_TRAINING, ctx.base_seed)
    model, _ = brain_mlps.fit_cached(
        "betas-autoencoder", widths, training, trials.betas, y, trials.nsd_ids, ctx.cache, ctx.device
    )
    device = next(model.parameters()).device

    def denoise(betas: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.as_tensor(np.asarray(betas, np.float32), device=device)).cpu().numpy()

    return denoise


def search_targets(
    train: SubjectData, ctx: RunContext, settings: SecondSightSettings, encoder: Any, gen: UnclipSampler
) -> dict[str, np.ndarray]:
    """What the candidates of each test image are scored against: `targets` (T, R, V), zero-padded, and
    `n_reps` (T,): its single repetitions (published) or their average, denoised when `autoencoder`."""
    if settings.score_target == "average":
        rows = [row[None] for row in measured_betas(train)]
    elif settings.score_target == "trials":
        trials = train.single_trials("test", "nsdgeneral", normalize="session-zscore")
        rows = [trials.betas[trials.nsd_ids == n] for n in train.test_ids]
        empty = [int(n) for n, r in zip(train.test_ids, rows, strict=True) if len(r) == 0]
        if empty:
            raise DataError(
                f"subject {train.subject}: no trial of test NSD id {empty[0]} in the split's sessions"
            )
    else:
        raise UsageError(
            f"second-sight: score_target must be 'trials' or 'average', got {settings.score_target!r}"
        )
    if settings.autoencoder:
        denoise = betas_autoencoder(train, ctx, settings, encoder, gen)
        rows = [denoise(r) for r in rows]
    n_reps = np.array([len(r) for r in rows], np.int64)
    targets = np.zeros((len(rows), int(n_reps.max()), rows[0].shape[1]), np.float32)
    for t, r in enumerate(rows):
        targets[t, : len(r)] = r
    return {"targets": targets, "n_reps": n_reps}


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
    preds = part_predictions(encoder, train, lib, ctx, gen, settings.library_batch)
    early = np.asarray(train.roi_voxel_masks()["early"], dtype=bool)
    # ranked against the same (denoised) repetitions the search scores with, as the paper's assembler
    targets = search_targets(train, ctx, settings, encoder, gen)
    reps, n_reps = targets["targets"], targets["n_reps"]
    top_c = lib[rank_library(preds, reps, k_clip, ctx.device, n_reps=n_reps)]  # hybrid, all of nsdgeneral
    top_z = lib[rank_library(preds[0], reps, k_vdvae, ctx.device, mask=early, n_reps=n_reps)]  # image encoder

    union_c = np.unique(top_c)
    emb = dict(zip(union_c.tolist(), library_embeddings(gen, train, union_c, ctx.weights_mode), strict=True))
    c0 = np.stack([np.mean([emb[int(i)] for i in row], axis=0) for row in top_c]).astype(np.float32)

    vdvae = load_vdvae(ctx.weights_mode, ctx.device)
    if settings.z0_from == "decoded":
        from nsdbench import ridge

        y = vdvae_latents(vdvae, train, train.train_ids, settings.library_batch, ctx.weights_mode)
        ridge_settings = ridge.RidgeSettings(alpha=settings.vdvae_alpha, dtype="float64")
        z_pred = ridge.fit_predict(
            train.betas("train"), y, train.betas("test"), ridge_settings, cache=True, progress=False
        )
        z_mean = ridge.rescale_to_training_moments(z_pred, y).astype(np.float32)
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
        **targets,
    }


def fit_cached(
    method: Method, train: SubjectData, ctx: RunContext, encoder: Any, build
) -> dict[str, np.ndarray]:
    """Stage 1 through ctx.cache, keyed by method, settings, data and the encoder's content identity."""
    from nsdbench.methods.adapter import settings_dict

    key = ArrayCache.key(
        {
            "method": method.name,
            "version": method.version,
            "subject": train.subject,
            "split": ctx.split,
            "weights": ctx.weights_mode,
            "device": torch.device(ctx.device).type,  # cuda:0 and cuda:1 share one fit
            "data": train.data_identity,
            "artifacts": {a: weights_tag(ctx.weights_mode, a) for a in method.required_artifacts()},
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
    seed_c: np.ndarray  # (B, dim) CLIP embeddings of the seeds ((0, dim) before the first iteration)
    seed_z: np.ndarray  # (B, C, h, w) init latents of the next branches ((0,) before the first iteration)
    seed_scores: np.ndarray  # (B,) brain correlation of the current seeds
    seed_images: np.ndarray  # (B, H, W, 3) the seed images
    prev_c: np.ndarray  # (dim,) the running conditioning c_i
    best_c: np.ndarray  # (dim,) the clip seed of the best distribution so far (c_i moves towards it)
    trace_scores: np.ndarray  # (done,) mean brain correlation of the best distribution after each iteration
    trace_images: np.ndarray  # (done, H, W, 3) the chosen image after each iteration
    trace_image_scores: np.ndarray  # (done,) its brain correlation
    best_mean: np.ndarray  # () highest mean brain correlation of a distribution so far
    best_image: np.ndarray  # (H, W, 3) best image of that distribution
    best_score: np.ndarray  # () its brain correlation
    top_image: np.ndarray  # (H, W, 3) the best-scoring image of any iteration so far (output with keep_best)
    top_score: np.ndarray  # () its brain correlation

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in self.__dict__.items()}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> SearchState:
        return cls(**{k: (int(a[k]) if k == "done" else a[k]) for k in cls.__dataclass_fields__})

    @classmethod
    def resumed(cls, saved: dict[str, np.ndarray] | None) -> SearchState | None:
        """The state of a checkpoint, or None where it lacks a field (an older layout counts as damaged: the
        image starts over, as Checkpoint.load does for an unreadable file)."""
        if not saved or any(k not in saved for k in cls.__dataclass_fields__):
            return None
        return cls.from_arrays(saved)


def brain_correlations(encoder: Any, pixels: np.ndarray, target: torch.Tensor) -> np.ndarray:
    """Brain correlation (N,) of each uint8 image: Pearson r of the guidance encoder's prediction with the
    target betas (V,), or its mean r over the rows of targets (R, V), one per repetition."""
    pred = encoder.predict(nchw(pixels).to(target.device))
    scores = (
        search_math.pearson_rows(pred, target) if target.ndim == 1 else search_math.mean_pearson(pred, target)
    )
    return scores.cpu().numpy()


def search_branches(
    state: SearchState, c_i: torch.Tensor, gamma: float, best_image_branch: bool
) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """Branches of an iteration after the first: (seed row per branch, clip seed per branch, branch conditioning).
    One branch per previous top image, clip seed slerp(c_i, CLIP(seed), γ), conditioning slerp(c_i, clip seed,
    γ); with `best_image_branch`, one more from the best image (clip seed c_i) when it is among the seeds, the
    condition the released code tests (src/stochastic_search.py `search`, `if not best_image not in z_seeds`)."""
    n = len(state.seed_c)
    towards = c_i.expand(n, -1)
    clip_seeds = search_math.slerp(towards, torch.as_tensor(state.seed_c, dtype=torch.float64), gamma)
    seed_rows = np.arange(n)
    if best_image_branch and state.best_mean.size:
        same = [k for k in range(n) if np.array_equal(state.seed_images[k], state.best_image)]
        if same:
            seed_rows = np.append(seed_rows, same[0])
            clip_seeds = torch.cat([clip_seeds, c_i[None]])
    branch_c = search_math.slerp(c_i.expand(len(seed_rows), -1), clip_seeds, gamma)
    return seed_rows, clip_seeds, branch_c


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
    """One search iteration as published: iteration 0 samples one distribution of `search_samples` images from
    (c0, z0); later ones n_b images per branch seeded by the previous iteration's top images, conditioned on
    slerps of c_i towards the seeds' CLIP embeddings; then the best distribution and the new c_i. The chosen
    image is the best distribution's best image (published) or, with `keep_best`, the best image so far."""
    s = settings
    lam = search_math.second_sight_strength(
        i, s.iterations, s.strength_start, s.strength_drop, s.strength_power
    )
    gamma = search_math.second_sight_momentum(i, s.iterations, s.momentum_scale, s.momentum_power)
    device, dtype = gen.components.device, gen.components.dtype
    c_i = torch.as_tensor(state.prev_c, dtype=torch.float64)
    if i == 0 or len(state.seed_c) == 0:
        rows = np.zeros(s.search_samples, dtype=np.int64)
        seed_rows = np.zeros(1, dtype=np.int64)
        clip_seeds = branch_c = c_i[None]
    else:
        n_b = search_math.branch_size(lam, max(1, s.search_samples // s.branches), s.branch_floor)
        seed_rows, clip_seeds, branch_c = search_branches(state, c_i, gamma, s.best_image_branch)
        rows = np.repeat(np.arange(len(seed_rows)), n_b)
    c = device_tensor(branch_c.float().numpy()[rows], device, dtype)
    seeds = [search_math.candidate_seed(item.seed, "second-sight", i, j) for j in range(len(rows))]
    if len(state.seed_z) == 0:
        init = device_tensor(resize_square(z0_image[None], gen.image_size), device)
        init = init.permute(0, 3, 1, 2).to(dtype) / 255.0
        latents, images = gen.sample(
            c, seeds, lam, init_images=init.expand(len(rows), -1, -1, -1), batch=s.unet_batch
        )
    else:
        z = device_tensor(state.seed_z[seed_rows[rows]], device, dtype)
        latents, images = gen.sample(c, seeds, lam, init_latents=z, batch=s.unet_batch)
    pixels = to_uint8_nhwc(images)
    scores = brain_correlations(encoder, pixels, target)

    best_mean, best_image, best_score = state.best_mean, state.best_image, state.best_score
    best_c = torch.as_tensor(state.best_c, dtype=torch.float64)
    improved = False
    for b in range(int(rows.max()) + 1):
        in_branch = np.flatnonzero(rows == b)
        mean = float(scores[in_branch].mean())
        if best_mean.size == 0 or mean > float(best_mean):
            j = int(in_branch[np.argmax(scores[in_branch])])
            best_mean, best_image, best_score = np.float64(mean), pixels[j], np.float64(scores[j])
            best_c, improved = clip_seeds[b], True
    if len(state.seed_z) == 0 and improved:  # iteration 0: towards the CLIP embedding of its best image
        best_c = torch.as_tensor(gen.embed(best_image[None])[0], dtype=torch.float64)
    if improved or len(state.seed_z) > 0:
        c_i = search_math.slerp(c_i[None], best_c[None], gamma)[0]

    top = int(np.argmax(scores))
    top_image, top_score = state.top_image, state.top_score
    if top_score.size == 0 or float(scores[top]) > float(top_score):
        top_image, top_score = pixels[top], np.float64(scores[top])
    chosen_image, chosen_score = (top_image, top_score) if s.keep_best else (best_image, best_score)

    pool_scores, pool_images = scores, pixels
    pool_z = latents.float().cpu().contiguous().numpy()
    if s.keep_seeds and len(state.seed_z) > 0:
        pool_scores = np.concatenate([state.seed_scores, scores])
        pool_images = np.concatenate([state.seed_images, pixels])
        pool_z = np.concatenate([state.seed_z, pool_z])
    order = np.argsort(-pool_scores, kind="stable")[: s.branches]
    return SearchState(
        done=i + 1,
        seed_c=gen.embed(pool_images[order]).astype(np.float32),
        seed_z=pool_z[order],
        seed_scores=pool_scores[order],
        seed_images=pool_images[order],
        prev_c=c_i.float().numpy(),
        best_c=best_c.float().numpy(),
        trace_scores=np.append(state.trace_scores, best_mean),
        trace_images=np.concatenate([state.trace_images, chosen_image[None]]),
        trace_image_scores=np.append(state.trace_image_scores, chosen_score),
        best_mean=np.asarray(best_mean),
        best_image=best_image,
        best_score=np.asarray(best_score),
        top_image=top_image,
        top_score=np.asarray(top_score),
    )


def checkpointed_search(
    ctx: RunContext,
    item: TestItem,
    initial: Callable[[], SearchState],
    iterations: int,
    step: Callable[[SearchState, int], SearchState],
) -> SearchState:
    """Run iterations [done, iterations) of one item's search from its checkpoint (else `initial()`), saving
    the state after each, so a preempted job resumes mid-image."""
    ckpt = ctx.checkpoint(item) if ctx.checkpoint_dir is not None else None
    saved = ckpt.load() if ckpt is not None else None
    state = SearchState.resumed(saved) or initial()
    for i in range(state.done, iterations):
        state = step(state, i)
        if ckpt is not None:
            ckpt.save(state.arrays())
    return state


def initial_state(c0: np.ndarray, branches: int, size: int) -> SearchState:
    """Before the first iteration: c_i = c0, no seeds yet (the first iteration starts from z0)."""
    c0 = np.asarray(c0, np.float32)
    return SearchState(
        done=0,
        seed_c=np.zeros((0, c0.shape[-1]), np.float32),
        seed_z=np.zeros((0,), np.float32),
        seed_scores=np.zeros((0,)),
        seed_images=np.zeros((0, size, size, 3), np.uint8),
        prev_c=c0,
        best_c=c0,
        trace_scores=np.zeros((0,)),
        trace_images=np.zeros((0, size, size, 3), np.uint8),
        trace_image_scores=np.zeros((0,)),
        best_mean=np.zeros((0,)),
        best_image=np.zeros((size, size, 3), np.uint8),
        best_score=np.zeros((0,)),
        top_image=np.zeros((size, size, 3), np.uint8),
        top_score=np.zeros((0,)),
    )


def trace_extras(scores: np.ndarray, images: np.ndarray) -> dict[str, Any]:
    """Extras of one item: the chosen image after each iteration and the scores (JSON; for second-sight the
    best distribution's mean, which never decreases)."""
    extras: dict[str, Any] = {f"iter{i}.png": img for i, img in enumerate(images)}
    extras["search.json"] = {"best_brain_correlation_per_iteration": [float(x) for x in scores]}
    return extras


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
    lam = search_math.cubic_decay(i, s.iterations, s.strength_start, s.strength_end)
    device, dtype = gen.components.device, gen.components.dtype
    cond = device_tensor(np.repeat(c[None], s.search_samples, 0), device, dtype)
    seeds = [
        search_math.candidate_seed(item.seed, "stochastic-search", i, j) for j in range(s.search_samples)
    ]
    if i == 0 or lam >= 1.0 or len(state.seed_z) == 0:
        latents, images = gen.sample(cond, seeds, 1.0, batch=s.unet_batch)
    else:
        rows = np.arange(s.search_samples) % len(state.seed_z)
        z = device_tensor(state.seed_z[rows], device, dtype)
        latents, images = gen.sample(cond, seeds, lam, init_latents=z, batch=s.unet_batch)
    pixels = to_uint8_nhwc(images)
    scores = search_math.pearson_rows(encoder.predict(nchw(pixels).to(target.device)), target).cpu().numpy()
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
        best_c=state.best_c,
        trace_scores=np.append(state.trace_scores, pool_scores[order[0]]),
        trace_images=np.concatenate([state.trace_images, pool_images[order[:1]]]),
        trace_image_scores=np.append(state.trace_image_scores, pool_scores[order[0]]),
        best_mean=np.asarray(scores.mean()),
        best_image=pool_images[order[0]],
        best_score=np.asarray(pool_scores[order[0]]),
        top_image=pool_images[order[0]],
        top_score=np.asarray(pool_scores[order[0]]),
    )
