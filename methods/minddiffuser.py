"""MindDiffuser (Lu et al. 2023): Stable Diffusion 1.4 img2img from fMRI-decoded c and z (stage 1), then z
optimized so that the generated image's CLIP ViT-B/32 features match fMRI-decoded ones (stage 2).

Choices where the paper is silent and the released script (ReedOnePeck/MindDiffuser) does not run:
- decoders: L2 regression with per-target voxel selection (fastl2lir: alpha 0.15; 125 voxels for c, 3000 for
  z, 850 for CLIP features, as the released scripts), on repetition-averaged, train-z-scored betas of `roi`
  (the authors' V1-IPS atlas ROIs; default nsdgeneral, which the synthetic NSD also has); targets z-scored
  with training moments and mapped back;
- c: the SD text encoder's output averaged over an image's captions, first 15 tokens; token 0 (BOS) is the
  same for every caption and is set to its training mean; the unconditional embedding is the empty prompt's
  first 15 tokens (the script pairs 15 with 77 tokens, which cannot be batched);
- z: the VAE posterior mean (x 0.18215) of the training image at 512 px (tiny: 32 px);
- CLIP features: blocks 1-6's MLP outputs ("Linear-2".."Linear-12", 50x768 each) and the final embedding,
  ImageNet-normalized 224 px inputs (as the released extraction); per layer the top 25% of features by
  5-fold CV |Pearson r| of the same regression (the script's selection model is not runnable) are decoded;
- sampler: DDIM 50 steps, strength 0.7 (the script noises to step 37 but denoises 35: the 35 it runs),
  guidance 5; the noise is drawn once per image and kept (the script redraws it every iteration:
  `redraw_noise=true`), so the loss curve tracks one objective and the output is its last image;
- loss: sum_i w_i mean((m_i * Phi_i(x) - Z_i)^2) + 0.1 (1 - cos(Phi_final(x), Z_final)), w_i = a_i (1/|Z_i|) /
  sum_j (1/|Z_j|), a = (1.5, 1.2, 1, 1, 1, 1) (the script's norm weighting; its undefined extra weight dropped);
- Adam lr 0.01 with the script's exponential decay 0.999 per iteration.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np

from nsdbench.methods.adapter import Checkpoint, Method, Output, RunContext, SubjectData, TestItem
from nsdbench.methods.registry import register_method

TINY_RESOLUTION = 32  # tiny SD's VAE halves the side: 16x16 latents, the tiny UNet's sample size


@dataclass(frozen=True)
class MindDiffuserSettings:
    """Decoding, sampler and stage-2 optimization settings (defaults: the paper and released scripts)."""

    iterations: int = 300
    lr: float = 0.01
    lr_decay: float = 0.999
    layer_weights: tuple[float, ...] = (1.5, 1.2, 1.0, 1.0, 1.0, 1.0)
    cosine_weight: float = 0.1
    num_inference_steps: int = 50
    strength: float = 0.7
    guidance_scale: float = 5.0
    redraw_noise: bool = False
    text_tokens: int = 15
    resolution: int = 512
    roi: str = "nsdgeneral"
    alpha: float = 0.15
    voxels_c: int = 125
    voxels_z: int = 3000
    voxels_clip: int = 850
    feature_keep: float = 0.25
    cv_folds: int = 5
    gradient_checkpointing: bool = True
    checkpoint_every: int = 10

    def __post_init__(self) -> None:
        from nsdbench.errors import UsageError

        if self.iterations < 0 or self.checkpoint_every < 1:
            raise UsageError("minddiffuser: iterations must be >= 0 and checkpoint_every >= 1")
        if len(self.layer_weights) != 6:
            raise UsageError(f"minddiffuser: layer_weights needs 6 values, got {len(self.layer_weights)}")
        if not 0 < self.feature_keep <= 1 or not 0 < self.strength <= 1:
            raise UsageError("minddiffuser: feature_keep and strength must lie in (0, 1]")

    def decoding(self) -> dict[str, Any]:
        """The fields that change the decoded features (the fit cache key)."""
        keys = ("text_tokens", "resolution", "roi", "alpha", "voxels_c", "voxels_z", "voxels_clip",
                "feature_keep", "cv_folds")  # fmt: skip
        return {k: v for k, v in asdict(self).items() if k in keys}


# ---------------------------------------------------------------------------------------------- pure math


def layer_weights(targets: Sequence[Any], published: Sequence[float]) -> np.ndarray:
    """Per-layer L2 weights: a_i (1/|Z_i|) / sum_j (1/|Z_j|) (the released script's norm balancing)."""
    inv = np.array(
        [1.0 / max(float(np.linalg.norm(np.asarray(t, dtype=np.float64))), 1e-12) for t in targets]
    )
    return np.asarray(published, dtype=np.float64) * inv / inv.sum()


def structure_loss(generated, targets, masks, weights: np.ndarray, cosine_weight: float):
    """MindDiffuser's stage-2 loss for one image: weighted masked MSE per layer + cosine on the embedding.

    generated/targets: 6 layer tensors (1, D_i) then the embedding (1, E); masks: 6 (D_i,) 0/1 tensors;
    targets are zero outside their masks.
    """
    import torch

    loss = torch.zeros((), device=generated[0].device)
    for g, z, m, w in zip(generated[:-1], targets[:-1], masks, weights, strict=True):
        loss = loss + float(w) * torch.mean((g * m - z) ** 2)
    cos = torch.nn.functional.cosine_similarity(generated[-1], targets[-1], dim=1).mean()
    return loss + cosine_weight * (1.0 - cos)


def top_fraction(scores: np.ndarray, keep: float) -> np.ndarray:
    """Boolean mask of the features whose score is at or above the (1 - keep) percentile (NaN: dropped)."""
    s = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    bar = np.percentile(s[np.isfinite(s)], 100.0 * (1.0 - keep)) if np.isfinite(s).any() else np.inf
    return s >= bar


def column_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r of each column of a with the same column of b (constant columns: NaN)."""
    a = np.asarray(a, dtype=np.float64) - np.mean(a, axis=0)
    b = np.asarray(b, dtype=np.float64) - np.mean(b, axis=0)
    den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(0) / np.where(den > 0, den, 1.0), np.nan)


def decode(X: np.ndarray, Y: np.ndarray, X_test: np.ndarray, alpha: float, voxels: int) -> np.ndarray:
    """fastl2lir-style decoding: z-score targets by training moments, ridge on the `voxels` best-correlated
    voxels per target, predictions mapped back to the targets' scale."""
    from nsdbench.ridge import RidgeSettings, fit_predict

    Y2 = np.asarray(Y, dtype=np.float64).reshape(len(Y), -1)
    mean, std = Y2.mean(0), Y2.std(0)
    std[std == 0] = 1.0
    settings = RidgeSettings(alpha=alpha, selection=voxels if voxels < X.shape[1] else 0)
    pred = fit_predict(X, ((Y2 - mean) / std).astype(np.float32), X_test, settings)
    return (np.asarray(pred, dtype=np.float64).reshape(len(X_test), -1) * std + mean).astype(np.float32)


def cv_feature_scores(X: np.ndarray, Y: np.ndarray, alpha: float, voxels: int, folds: int) -> np.ndarray:
    """Mean over unshuffled K folds of |Pearson r| between held-out targets and their decoded values."""
    from nsdbench.ridge import kfold_indices

    scores = [
        np.abs(column_correlation(decode(X[tr], Y[tr], X[te], alpha, voxels), Y[te]))
        for tr, te in kfold_indices(len(X), folds)
    ]
    return np.mean(scores, axis=0)


def to_uint8_image(image) -> np.ndarray:
    """One (1, 3, H, W) tensor in [0, 1] -> uint8 (H, W, 3), rounded half to even."""
    arr = image.detach().float().cpu().numpy()[0].transpose(1, 2, 0)
    return np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- adapter


@register_method
class MindDiffuser(Method):
    """Stage 1: img2img from decoded (c, z); stage 2: Adam on z through the sampler to match decoded CLIP
    ViT-B/32 features. Choices the paper leaves open: see this module's docstring."""

    name = "minddiffuser"
    description = (
        "SD 1.4 img2img from fMRI-decoded CLIP text tokens (15) and VAE latent, then the latent optimized "
        "(Adam, `iterations`) through the sampler to match fMRI-decoded CLIP ViT-B/32 features. Choices: "
        "fastl2lir-style decoders (alpha 0.15; 125/3000/850 voxels) on `roi`; top 25% CLIP features by 5-fold "
        "CV; DDIM 50, strength 0.7, guidance 5; noise fixed per image (redraw_noise: as the script); token 0 "
        "= training mean, empty prompt cut to 15 tokens; ImageNet-normalized CLIP input; loss weights "
        "a_i/|Z_i| normalized, +0.1 cosine; lr decay 0.999."
    )
    paper = "Lu et al. 2023, MindDiffuser (ACM MM); github.com/ReedOnePeck/MindDiffuser"
    version = "1"
    Settings: ClassVar[type] = MindDiffuserSettings
    variants: ClassVar[dict[str, dict[str, Any]]] = {
        "stage1": {"iterations": 0},
        "published-noise": {"redraw_noise": True},
    }
    default_batch_size = 4

    def required_artifacts(self) -> tuple[str, ...]:
        from nsdbench.methods.components.clip_vit_b32 import CLIP_B32
        from nsdbench.methods.components.stable_diffusion import SD14

        return (SD14, CLIP_B32) if self.weights_mode == "pretrained" else ()

    @property
    def resolution(self) -> int:
        return TINY_RESOLUTION if self.weights_mode == "tiny" else self.settings.resolution

    def setup(self, ctx: RunContext) -> None:
        from nsdbench.methods.components.clip_vit_b32 import load_clip_b32
        from nsdbench.methods.components.stable_diffusion import load_sd14

        self.sd = load_sd14(self.weights_mode, self.device)
        self.clip = load_clip_b32(self.weights_mode, self.device)

    def close(self) -> None:
        from nsdbench.methods.components import release_all

        self.sd = self.clip = None
        release_all()

    # ------------------------------------------------------------------ stage 0: decoders

    def fit(self, train: SubjectData, ctx: RunContext) -> dict[str, np.ndarray]:
        s = self.settings
        X = train.betas("train", s.roi)
        X_test = train.betas("test", s.roi)
        test_ids = np.asarray(train.test_ids, dtype=np.int64)

        def compute() -> dict[str, np.ndarray]:
            text, latents, clip = self.training_features(train)
            ctx.set_total(len(clip) + 2, "decoder")  # c, z, 6 CLIP layers, the CLIP embedding
            out: dict[str, np.ndarray] = {"test_ids": test_ids}
            tokens = decode(X, text[:, 1:], X_test, s.alpha, s.voxels_c)
            bos = np.broadcast_to(text[:, :1].mean(0), (len(X_test), 1, text.shape[2]))
            ctx.advance(1)
            out["c"] = np.concatenate([bos, tokens.reshape(len(X_test), -1, text.shape[2])], axis=1)
            out["z"] = decode(X, latents, X_test, s.alpha, s.voxels_z).reshape(
                len(X_test), *latents.shape[1:]
            )
            ctx.advance(1)
            for i, Y in enumerate(clip[:-1]):
                keep = top_fraction(
                    cv_feature_scores(X, Y, s.alpha, s.voxels_clip, s.cv_folds), s.feature_keep
                )
                pred = np.zeros((len(X_test), Y.shape[1]), np.float32)
                pred[:, keep] = decode(X, Y[:, keep], X_test, s.alpha, s.voxels_clip)
                out[f"clip{i}"], out[f"mask{i}"] = pred, keep
                ctx.advance(1)
            out["clip_final"] = decode(X, clip[-1], X_test, s.alpha, s.voxels_clip)
            ctx.advance(1)
            return out

        if ctx.cache is None:
            return compute()
        from nsdbench.methods.takagi_features import weights_identity

        sd = f"{weights_identity(self.sd)}/{self.sd.device.type}/{self.sd.dtype}"
        key = ctx.cache.key(
            self.name, self.version, self.weights_mode, s.decoding(), self.clip.identity, sd,
            train.data_identity, np.asarray(train.train_ids), X, X_test,
        )  # fmt: skip
        return ctx.cache.get_or_compute(key, compute)

    def training_features(self, train: SubjectData, batch: int = 16):
        """Targets of the training images: caption-averaged text tokens (n, T, width), scaled VAE posterior
        means (n, 4, h, w) and CLIP guidance features (6 x (n, D), (n, E))."""
        import torch

        from nsdbench.methods.components.stable_diffusion import encode_prompts

        ids = list(train.train_ids)
        text, latents, clip = [], [], []
        vae = self.sd.vae
        with torch.inference_mode():
            for start in range(0, len(ids), batch):
                chunk = ids[start : start + batch]
                for caps in train.captions(chunk):
                    emb = encode_prompts(self.sd, list(caps)).float().mean(0)
                    text.append(emb[: self.settings.text_tokens].cpu().numpy())
                images = torch.from_numpy(np.asarray(train.images(chunk))).permute(0, 3, 1, 2).float() / 255
                small = torch.nn.functional.interpolate(
                    images, size=(self.resolution,) * 2, mode="bicubic", align_corners=False
                ).clamp(0, 1)
                moments = vae.encode((small * 2 - 1).to(vae.device, vae.dtype)).latent_dist
                latents.append((moments.mean * vae.config.scaling_factor).float().cpu().numpy())
                clip.append([f.cpu().numpy() for f in self.clip.features(images)])
        layers = [np.concatenate([c[i] for c in clip]) for i in range(len(clip[0]))]
        return np.stack(text).astype(np.float32), np.concatenate(latents), layers

    # ------------------------------------------------------------------ stages 1 and 2

    def reconstruct(
        self, items: Sequence[TestItem], fitted: dict[str, np.ndarray], ctx: RunContext
    ) -> Iterator[Output]:
        row = {int(n): i for i, n in enumerate(fitted["test_ids"])}
        for item in items:
            checkpoint = ctx.checkpoint(item) if ctx.checkpoint_dir is not None else None
            image, stage1, losses = self.optimize(fitted, row[item.nsd_id], item, checkpoint)
            yield Output(
                item.nsd_id,
                item.sample,
                image,
                extras={"stage1.png": stage1, "loss.json": {"loss": losses, "iterations": len(losses) - 1}},
            )

    def generate_image(self, z, cond, uncond, item: TestItem, iteration: int):
        """The img2img image (1, 3, H, W) in [0, 1] from latent z, differentiable with respect to z."""
        from nsdbench.methods import seeds
        from nsdbench.methods.diffusion.img2img import Img2ImgSettings, img2img

        s = self.settings
        seed = item.seed if not s.redraw_noise else seeds.image_seed(item.seed, self.name, 0, iteration, 0)
        sampler = Img2ImgSettings(
            num_inference_steps=s.num_inference_steps,
            strength=s.strength,
            guidance_scale=s.guidance_scale,
            gradient_checkpointing=s.gradient_checkpointing,
        )
        generator = seeds.torch_generator(seed, "cpu")
        return img2img(self.sd, cond, uncond, [generator], sampler, init_latents=z)

    def optimize(
        self, fitted: dict[str, np.ndarray], i: int, item: TestItem, checkpoint: Checkpoint | None
    ) -> tuple[np.ndarray, np.ndarray, list[float]]:
        """Stage 1 then `iterations` Adam steps on z; resumes from `checkpoint` when it holds a state.
        Returns (final image, stage-1 image, loss curve with the final image's loss last)."""
        import torch

        from nsdbench.methods.components.stable_diffusion import encode_prompts

        s, dev = self.settings, self.clip.device
        cond = torch.from_numpy(np.ascontiguousarray(fitted["c"][i : i + 1])).to(dev)
        uncond = encode_prompts(self.sd, [""])[:, : cond.shape[1]]
        targets = [torch.from_numpy(fitted[f"clip{k}"][i : i + 1]).to(dev) for k in range(6)]
        targets.append(torch.from_numpy(fitted["clip_final"][i : i + 1]).to(dev))
        masks = [torch.from_numpy(fitted[f"mask{k}"].astype(np.float32)).to(dev) for k in range(6)]
        weights = layer_weights([t.cpu().numpy() for t in targets[:-1]], s.layer_weights)

        def loss_of(image):
            return structure_loss(self.clip.features(image), targets, masks, weights, s.cosine_weight)

        z = torch.nn.Parameter(
            torch.tensor(fitted["z"][i : i + 1], dtype=torch.float32, device=dev)
        )  # a copy
        optimizer = torch.optim.Adam([z], lr=s.lr)
        start, losses, stage1 = 0, [], None
        state = checkpoint.load() if checkpoint is not None else None
        if state is not None:
            start, losses, stage1 = (
                int(state["iteration"]),
                [float(v) for v in state["losses"]],
                state["stage1"],
            )
            with torch.no_grad():
                z.copy_(torch.from_numpy(state["z"]))
            optimizer.load_state_dict(_adam_state(optimizer, state))
        for t in range(start, s.iterations):
            for group in optimizer.param_groups:
                group["lr"] = s.lr * s.lr_decay**t
            image = self.generate_image(z, cond, uncond, item, t)
            loss = loss_of(image)
            if t == 0:
                stage1 = to_uint8_image(image)
            losses.append(float(loss.detach()))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if checkpoint is not None and ((t + 1) % s.checkpoint_every == 0 or t + 1 == s.iterations):
                checkpoint.save(_state(z, optimizer, t + 1, losses, stage1))
        with torch.no_grad():
            image = self.generate_image(z, cond, uncond, item, s.iterations)
            losses.append(float(loss_of(image)))
        final = to_uint8_image(image)
        return final, (final if stage1 is None else stage1), losses


def _state(z, optimizer, iteration: int, losses: list[float], stage1: np.ndarray) -> dict[str, np.ndarray]:
    """One item's mid-optimization state as arrays (z, Adam moments and step, losses, stage-1 image)."""
    adam = optimizer.state_dict()["state"][0]
    return {
        "z": z.detach().cpu().numpy(),
        "iteration": np.int64(iteration),
        "losses": np.asarray(losses, dtype=np.float64),
        "stage1": stage1,
        "adam_step": np.asarray(float(adam["step"])),
        "adam_exp_avg": adam["exp_avg"].cpu().numpy(),
        "adam_exp_avg_sq": adam["exp_avg_sq"].cpu().numpy(),
    }


def _adam_state(optimizer, state: dict[str, np.ndarray]) -> dict[str, Any]:
    import torch

    saved = optimizer.state_dict()
    saved["state"] = {
        0: {
            "step": torch.tensor(float(state["adam_step"])),
            "exp_avg": torch.from_numpy(state["adam_exp_avg"]),
            "exp_avg_sq": torch.from_numpy(state["adam_exp_avg_sq"]),
        }
    }
    return saved
