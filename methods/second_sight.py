"""Brain-guided search with Stable Diffusion 2.1 unCLIP: Second Sight (Kneeland et al. 2023), its CCN 2023
form (`stochastic-search`) and the `clip-decoding-only` baseline.

Stage 1 (library assembler, in `fit`): every NSD image the subject never saw is scored by the Pearson
correlation of its guidance-encoder prediction with the measured test betas; c0 = mean OpenCLIP ViT-H/14
embedding of the top-k on nsdgeneral, z0 = VDVAE decoding of the mean latents of the top-k on early visual
cortex. Ridge decodes the CLIP embedding from nsdgeneral betas (the CCN search and its baseline start there).
Stage 2 (in `reconstruct`): iterations of unCLIP img2img batches scored by the same encoder, checkpointed
after every iteration so a preempted job resumes mid-image with the same result. This module holds the
settings and the adapters (no torch at import: `nsdbench methods list` stays light); the work is in
second_sight_search.py.

Published facts the defaults follow (reesekneeland/Second-Sight; files named relative to that repository):
- 6 iterations, 100 samples, 4 branches: src/second_sight.py argparse defaults (-i 6, -n 100, -b 4).
- λ_i = 0.92 − 0.3((i+1)/n)³, γ_i = 0.2((i+1)/n)², n_b = max(10, int((100/4)λ)); iteration 0 draws all 100
  samples from (c0, z0) in one distribution; later iterations branch from the top-4 images of the previous
  iteration (plus the best image, `best_image_branch`); each branch's conditioning is slerp(c_i, slerp(c_i, CLIP(seed), γ), γ); a branch with a
  higher mean score than any before becomes the best distribution (its best image is the output, its
  clip seed the `best_clip`), and c_i ← slerp(c_i, best_clip, γ) after every iteration (after iteration 0
  towards the CLIP of its best image): src/stochastic_search.py `search`.
- Sampler: reesekneeland/diffusers StableUnCLIPImg2ImgPipeline.reconstruct defaults, used unchanged: 50
  steps, guidance 10, noise_level 0, 768 px (UNet sample_size × VAE factor); negative prompt "text, caption"
  (src/stochastic_search.py `generateNSamples`): src/diffusers/pipelines/stable_diffusion/
  pipeline_stable_unclip_img2img.py in reesekneeland/diffusers.
- Hybrid encoder: GNet8 and a CLIP-embedding -> betas MLP; the search scores the Pearson r of their averaged
  prediction (src/stochastic_search.py `predict`, `score_samples`); the library assembler averages the two
  models' correlations (src/library_assembler.py `rankCoco`). c0: top-100 by the hybrid on all of
  nsdgeneral; z0: top-25 VDVAE latents by GNet8 alone on early visual cortex (src/second_sight.py,
  LibraryAssembler(configList=["gnet", "clip"]) and (["gnet"], mask=early_vis)).
- Hybrid CLIP model: the 3-layer MLP 1024 -> 15000 -> 15000 -> voxels trained on single trials, Adam lr 1e-5,
  batch 750, summed MSE, early stopping (patience 5) on the last 15% of the training images (src/model_zoo.py
  CLIPEncoderModel, src/clip_encoder.py); setting `clip_encoder` ('mlp'; 'ridge' is nsdbench's cheaper ridge).
- Scoring target: each test repetition's betas through the denoising autoencoder (voxels -> 5000 -> 1000 -> 500
  and back, trained from single-trial betas to the hybrid's prediction for the seen image: src/autoencoder.py,
  src/utils.py load_nsd ae=True), a candidate's score the mean r over the repetitions (src/stochastic_search.py
  prepare_betas, score_samples; src/second_sight.py runs with the autoencoder unless --noae). Settings
  `autoencoder` and `score_target`.
- Library assembler: the paper's (§2 step 1, App. B.6): the same denoised repetitions, a library image's score the
  mean over encoders and repetitions of its r (src/library_assembler.py rankCoco averages over models and
  repetitions; its autoencoder branch names an undefined `AEmodel`, line 61, so as released it runs only
  with --noae).
Deviations: one autoencoder (the hybrid's, as the paper trains it) also for the image-encoder-only z0 ranking,
where the released code would load one per encoder; tiny mode trains 128-wide MLPs with lr 1e-3 for at most
40 epochs; betas are session z-scored; branches start from the seeds' latents rather than re-encoding their
pixels.
Chosen image: published, the best image of the best distribution (`keep_best` False), whose own score can fall
when a later distribution has a higher mean but a lower maximum; `keep_best` outputs the best image so far.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from nsdbench.methods.adapter import Method, Output, RunContext, SubjectData, TestItem
from nsdbench.methods.registry import register_method

if TYPE_CHECKING:  # the search lives in second_sight_search (torch), imported when a method runs
    from nsdbench.methods import second_sight_search

PAPER = "Kneeland et al. 2023, Second Sight (arXiv:2306.00927); reesekneeland/Second-Sight (lines: commit 27401ad)"
CCN_PAPER = "Kneeland, St-Yves, Naselaris et al., CCN 2023: brain-optimized stochastic search"
RIDGE_ALPHAS = (1e2, 1e3, 1e4, 3e4, 6e4, 1e5, 3e5)


@dataclass(frozen=True)
class SecondSightSettings:
    """Published values (Appendix B.6-B.7); `clip_top_k`/`vdvae_top_k` 0 = published (100/25; 10/3 in tiny)."""

    encoder: str = ""  # guidance encoder: "" = gnet8 (pretrained) or nsdbench-encoder-v1 (random, tiny)
    hybrid: bool = True  # average `encoder` with a CLIP-embedding -> betas model (the published "hybrid")
    clip_encoder: str = "mlp"  # that model: "mlp" (published 3-layer MLP) or "ridge"
    clip_mlp_hidden: tuple[int, ...] = ()  # () = published (15000, 15000); (128, 128) in tiny mode
    clip_encoder_alphas: tuple[float, ...] = RIDGE_ALPHAS  # the ridge's candidate alphas (5-fold CV)
    autoencoder: bool = True  # denoise each test repetition's betas before scoring (published default)
    autoencoder_widths: tuple[int, ...] = ()  # () = published (5000, 1000, 500); (64, 32, 16) in tiny mode
    score_target: str = "trials"  # mean r over the single repetitions (published) or "average" betas
    iterations: int = 6
    search_samples: int = 100  # base images per iteration, split over the branches
    branches: int = 4
    strength_start: float = 0.92
    strength_drop: float = 0.3
    strength_power: float = 3.0
    momentum_scale: float = 0.2
    momentum_power: float = 2.0
    branch_floor: float = 0.4  # n_b >= ceil(0.4 * 25) = 10
    keep_seeds: bool = False  # True: the previous seeds compete with the new images (published: no)
    best_image_branch: bool = True  # a branch from the best image when it is among the seeds (published)
    keep_best: bool = False  # output the best-scoring image so far, not the best distribution's best image
    clip_top_k: int = 0
    vdvae_top_k: int = 0
    z0_from: str = (
        "library"  # or "decoded": ridge from nsdgeneral betas to the VDVAE latents (brain-diffuser)
    )
    vdvae_alpha: float = 5e4  # that ridge's alpha (brain-diffuser's)
    num_inference_steps: int = 50
    guidance_scale: float = 10.0
    noise_level: int = 0
    negative_prompt: str = "text, caption"
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


class _UnclipMethod(Method):
    """Shared setup/close of the unCLIP methods."""

    default_batch_size: ClassVar[int] = 4

    def required_artifacts(self) -> tuple[str, ...]:
        from nsdbench.methods import second_sight_search
        from nsdbench.methods.components.stable_diffusion import UNCLIP

        if self.weights_mode != "pretrained":
            return ()
        arts = [UNCLIP]
        name = second_sight_search.encoder_name(
            getattr(self.settings, "encoder", "nsdbench-encoder-v1"), self.weights_mode
        )
        if name == "gnet8":
            arts.append("gnet8-multisubject")
        else:
            from nsdbench.metrics.encoder import default_spec
            from nsdbench.metrics.networks import ARTIFACT_OF

            spec = default_spec("pretrained")
            arts.append(ARTIFACT_OF[(spec.network, spec.network_weights)])
        return tuple(arts)

    def setup(self, ctx: RunContext) -> None:
        from nsdbench.methods import second_sight_search

        self.gen = second_sight_search.UnclipSampler(ctx.weights_mode, ctx.device, self.settings)

    def close(self) -> None:
        self.gen = None


class SecondSight(_UnclipMethod):
    """Library assembler + stochastic search guided by an encoding model (Kneeland et al. 2023)."""

    name = "second-sight"
    description = (
        "Second Sight: c0/z0 from the top unseen NSD images by encoder-predicted brain correlation, then 6 "
        "iterations of SD 2.1 unCLIP img2img in 4 branches, scored by the hybrid guidance encoder; the best "
        "distribution's best image."
    )
    paper = PAPER
    version = "3"  # best-image branch, MLP hybrid, autoencoded repetitions (search and library)
    Settings = SecondSightSettings
    setting_help: ClassVar[dict[str, str]] = {
        "encoder": "image encoder of the hybrid ('' = gnet8 pretrained, nsdbench-encoder-v1 otherwise)",
        "hybrid": "average with a CLIP->betas model, as the published GNet8+CLIP hybrid "
        "(src/stochastic_search.py predict; src/library_assembler.py rankCoco)",
        "clip_encoder": "'mlp' published: src/model_zoo.py lines 9-21 (CLIPEncoderModel 1024->15000->15000->"
        "voxels, ReLU), trained by src/clip_encoder.py (lines 18-23: Adam lr 1e-5, batch 750, 200 epochs; lines "
        "146-154: early stopping, patience 5); 'ridge' is nsdbench's cheaper stand-in",
        "clip_mlp_hidden": "() = (15000, 15000) as src/model_zoo.py lines 12-13; (128, 128) in tiny mode",
        "autoencoder": "published True: src/second_sight.py lines 30-32 and 68-72 (on unless --noae); "
        "src/stochastic_search.py lines 165-173 (prepare_betas) denoise each repetition with "
        "src/model_zoo.py lines 24-46 (AutoEncoderModel), trained by src/autoencoder.py (lr 1e-5, batch 64)",
        "autoencoder_widths": "() = (5000, 1000, 500) as src/model_zoo.py lines 27-41; (64, 32, 16) tiny",
        "score_target": "'trials' published: src/stochastic_search.py lines 155-161 average the Pearson r over "
        "the repetitions; 'average': r with the repetition-averaged betas",
        "iterations": "src/second_sight.py --iterations default 6",
        "search_samples": "src/second_sight.py --num_samples default 100",
        "branches": "src/second_sight.py --branches default 4",
        "strength_start": "λ = 0.92 − 0.3((i+1)/n)^3: src/stochastic_search.py search",
        "momentum_scale": "γ = 0.2((i+1)/n)^2: src/stochastic_search.py search",
        "branch_floor": "n_b = max(10, int(25λ)): src/stochastic_search.py search",
        "keep_seeds": "published False: seeds are the previous iteration's top images (src/stochastic_search.py)",
        "best_image_branch": "published True: src/stochastic_search.py lines 237-239 add a branch from the "
        "best image (clip seed c_i); the released condition is a double negation that holds when the best image "
        "IS one of the seeds",
        "keep_best": "published False: the output is the best image of the best distribution (src/"
        "stochastic_search.py lines 205-208 and 278-287 replace it only when a distribution's MEAN score beats "
        "every earlier one; line 298 returns it; src/second_sight.py lines 152 and 170-187 save it as "
        "search_reconstruction.png), so its own score can fall; True outputs the best-scoring image so far",
        "clip_top_k": "0 = 100 (src/library_assembler.py benchmark, src/second_sight.py topn=100)",
        "vdvae_top_k": "0 = 25, GNet8 on early visual cortex (src/second_sight.py topn=25, early_vis mask)",
        "num_inference_steps": "50: reesekneeland/diffusers pipeline_stable_unclip_img2img.py reconstruct default",
        "guidance_scale": "10: same reconstruct default",
        "noise_level": "0: same reconstruct default",
        "negative_prompt": "'text, caption': src/stochastic_search.py generateNSamples",
    }
    variants: ClassVar[dict[str, dict[str, Any]]] = {
        "keep-seeds": {"keep_seeds": True},
        "keep-best": {"keep_best": True},
        "decoded-z0": {"z0_from": "decoded"},
    }

    def required_artifacts(self) -> tuple[str, ...]:
        if self.weights_mode != "pretrained":
            return ()
        from nsdbench.methods.components.vdvae import ARTIFACT

        return (*super().required_artifacts(), ARTIFACT.name)

    def fit(self, train: SubjectData, ctx: RunContext) -> dict[str, Any]:
        from nsdbench.methods import second_sight_search

        encoder = second_sight_search.guidance_encoder(self, train, ctx, self.gen)
        arrays = second_sight_search.fit_cached(
            self,
            train,
            ctx,
            encoder,
            lambda: second_sight_search.assemble(train, ctx, self.settings, self.gen, encoder),
        )
        return {
            "arrays": arrays,
            "row": {int(n): i for i, n in enumerate(arrays["test_ids"])},
            "encoder": encoder,
        }

    def search(
        self, item: TestItem, fitted: dict[str, Any], ctx: RunContext
    ) -> second_sight_search.SearchState:
        """Run (or resume) the search of one item, saving its state after every iteration."""
        from nsdbench.methods import second_sight_search

        s, a = self.settings, fitted["arrays"]
        row = fitted["row"][item.nsd_id]
        if "targets" in a:
            target = second_sight_search.device_tensor(a["targets"][row, : int(a["n_reps"][row])], ctx.device)
        else:
            target = second_sight_search.device_tensor(a["measured"][row], ctx.device)
        return second_sight_search.checkpointed_search(
            ctx,
            item,
            lambda: second_sight_search.initial_state(a["c0"][row], s.branches, self.gen.image_size),
            s.iterations,
            lambda state, i: second_sight_search.second_sight_iteration(
                state, i, a["z0_image"][row], target, item, s, self.gen, fitted["encoder"]
            ),
        )

    def reconstruct(self, items: Sequence[TestItem], fitted: Any, ctx: RunContext) -> Iterator[Output]:
        from nsdbench.methods import second_sight_search

        for it in items:
            state = self.search(it, fitted, ctx)
            chosen = state.top_image if self.settings.keep_best else state.best_image
            image = second_sight_search.output_image(chosen, ctx.data.image_size)
            extras = second_sight_search.trace_extras(state.trace_scores, state.trace_images)
            trace = extras["search.json"]
            trace["chosen_image_brain_correlation_per_iteration"] = [
                float(x) for x in state.trace_image_scores
            ]
            trace["chosen_image_rule"] = "best-so-far" if self.settings.keep_best else "best-distribution"
            trace["output_distribution_mean"] = float(state.best_mean)
            trace["best_distribution_image_brain_correlation"] = float(state.best_score)
            trace["best_image_so_far_brain_correlation"] = float(state.top_score)
            trace["output_brain_correlation"] = float(
                state.top_score if self.settings.keep_best else state.best_score
            )
            trace["guiding_encoders"] = [
                str(p.identity) for p in second_sight_search.encoder_parts(fitted["encoder"])
            ]
            yield Output(it.nsd_id, it.sample, image, extras)


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
        from nsdbench.methods import second_sight_search

        encoder = ctx.encoder(second_sight_search.encoder_name(self.settings.encoder, ctx.weights_mode))
        return second_sight_search.decoded_fit(self, train, ctx, encoder, self.gen)

    def search(
        self, item: TestItem, fitted: dict[str, Any], ctx: RunContext
    ) -> second_sight_search.SearchState:
        from nsdbench.methods import second_sight_search

        s, a = self.settings, fitted["arrays"]
        row = fitted["row"][item.nsd_id]
        target = second_sight_search.device_tensor(a["measured"][row], ctx.device)
        return second_sight_search.checkpointed_search(
            ctx,
            item,
            lambda: second_sight_search.initial_state(a["c"][row], 0, self.gen.image_size),
            s.iterations,
            lambda state, i: second_sight_search.stochastic_iteration(
                state, i, a["c"][row], target, item, s, self.gen, fitted["encoder"]
            ),
        )

    def reconstruct(self, items: Sequence[TestItem], fitted: Any, ctx: RunContext) -> Iterator[Output]:
        from nsdbench.methods import second_sight_search

        for it in items:
            state = self.search(it, fitted, ctx)
            yield Output(
                it.nsd_id,
                it.sample,
                second_sight_search.output_image(state.best_image, ctx.data.image_size),
                second_sight_search.trace_extras(state.trace_scores, state.trace_images),
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
        from nsdbench.methods import second_sight_search

        return second_sight_search.decoded_fit(self, train, ctx, None, self.gen)

    def reconstruct(self, items: Sequence[TestItem], fitted: Any, ctx: RunContext) -> Iterator[tuple]:
        from nsdbench.methods import second_sight_search

        a = fitted["arrays"]
        gen = self.gen
        c = second_sight_search.device_tensor(
            np.stack([a["c"][fitted["row"][it.nsd_id]] for it in items]),
            gen.components.device,
            gen.components.dtype,
        )
        _, images = gen.sample(c, [it.seed for it in items], 1.0, batch=len(items))
        for it, img in zip(items, second_sight_search.to_uint8_nhwc(images), strict=True):
            yield it.nsd_id, it.sample, second_sight_search.output_image(img, ctx.data.image_size)


for _cls in (SecondSight, StochasticSearch, ClipDecodingOnly):
    register_method(_cls)
