"""The baselines every leaderboard needs, each a real adapter.

ground-truth        the stimulus itself (upper bound);
shuffled            another test image, a fixed derangement of the test set (chance level);
ridge-pixels        ridge regression from nsdgeneral betas to a downsampled RGB image, upsampled back
                    (the classic linear reconstruction);
best-library-image  the image the subject never saw whose encoding-model prediction correlates best with
                    the measured betas (Second Sight's "Best Library Image", the CCN abstract's
                    "Best COCO Image").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from nsdbench import ridge
from nsdbench.errors import DataError, UsageError
from nsdbench.methods.adapter import Method, Reconstruction, RunContext, SubjectData, TestItem
from nsdbench.methods.registry import register_method

# ---------------------------------------------------------------------------------------------- pure


def random_derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random cyclic permutation of range(n) (Sattolo's algorithm): perm[i] != i for all i."""
    if n < 2:
        raise ValueError("a derangement needs at least 2 elements")
    perm = np.arange(n)
    for i in range(n - 1, 0, -1):
        j = int(rng.integers(0, i))  # j < i: never swap an element with itself
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def downsample(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N,H,W,3) → float32 (N,size,size,3) in [0,1], area-averaged (PIL BOX filter)."""
    out = np.empty((len(images), size, size, 3), dtype=np.float32)
    for i, img in enumerate(images):
        small = Image.fromarray(np.asarray(img, dtype=np.uint8)).resize((size, size), Image.Resampling.BOX)
        out[i] = np.asarray(small, dtype=np.float32) / 255.0
    return out


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Float image(s) in [0,1] → uint8, clipped and rounded half to even (numpy's rint)."""
    return np.rint(np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def upsample(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (h,w,3) → uint8 (size,size,3), bicubic (PIL)."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)


def rowwise_correlation_argmax(pred: np.ndarray, measured: np.ndarray, block: int = 4096) -> np.ndarray:
    """For each measured row m_j, the index i maximizing Pearson r(pred_i, m_j) over the voxel axis.

    pred (L, V), measured (T, V) → (T,) int64; ties resolve to the lowest index. float64 throughout so
    the choice does not depend on BLAS threading; rows with zero variance never win.
    """
    m = np.asarray(measured, dtype=np.float64)
    m = m - m.mean(axis=1, keepdims=True)
    m /= np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-300)
    best = np.full(len(m), -np.inf)
    best_idx = np.zeros(len(m), dtype=np.int64)
    for start in range(0, len(pred), block):
        p = np.asarray(pred[start : start + block], dtype=np.float64)
        p = p - p.mean(axis=1, keepdims=True)
        norm = np.linalg.norm(p, axis=1, keepdims=True)
        p = np.where(norm > 0, p / np.where(norm > 0, norm, 1.0), 0.0)
        r = p @ m.T  # (block, T)
        r[(norm[:, 0] == 0)] = -np.inf
        idx = np.argmax(r, axis=0)
        val = r[idx, np.arange(len(m))]
        better = val > best
        best[better] = val[better]
        best_idx[better] = idx[better] + start
    return best_idx


# ---------------------------------------------------------------------------------------------- adapters


class GroundTruth(Method):
    """The stimulus itself: the upper bound of every metric."""

    name = "ground-truth"
    description = "The test stimulus itself (upper bound of every metric)."
    reads_ground_truth: ClassVar[bool] = True

    def reconstruct(
        self, test_items: Sequence[TestItem], fitted: Any, ctx: RunContext
    ) -> Iterator[Reconstruction]:
        ids = sorted({it.nsd_id for it in test_items})
        images = dict(zip(ids, ctx.ground_truth.images(ids), strict=True))
        for it in test_items:
            yield it.nsd_id, it.sample, images[it.nsd_id]


class Shuffled(Method):
    """Another test image: a fixed derangement of the subject's test set, one per sample (chance level)."""

    name = "shuffled"
    description = "Another test image, by a fixed seeded derangement of the test set (chance level)."
    reads_ground_truth: ClassVar[bool] = True

    def fit(self, train: SubjectData, ctx: RunContext) -> dict[int, dict[int, int]]:
        test_ids = np.asarray(train.test_ids)
        if len(test_ids) < 2:
            raise UsageError(f"shuffled needs at least 2 test images for subject {ctx.subject}")
        mapping: dict[int, dict[int, int]] = {}
        for sample in range(ctx.samples):
            # seeded by (base seed, method, subject, sample) only: independent of shards and order
            perm = random_derangement(len(test_ids), ctx.rng(-1, sample))
            mapping[sample] = {int(a): int(b) for a, b in zip(test_ids, test_ids[perm], strict=True)}
        return mapping

    def reconstruct(
        self, test_items: Sequence[TestItem], fitted: Any, ctx: RunContext
    ) -> Iterator[Reconstruction]:
        sources = sorted({fitted[it.sample][it.nsd_id] for it in test_items})
        images = dict(zip(sources, ctx.ground_truth.images(sources), strict=True))
        for it in test_items:
            yield it.nsd_id, it.sample, images[fitted[it.sample][it.nsd_id]]


@dataclass(frozen=True)
class RidgePixelsSettings:
    size: int = 32  # side of the decoded image before bicubic upsampling
    roi: str = "nsdgeneral"
    alphas: tuple[float, ...] = (1e1, 1e2, 1e3, 1e4, 1e5, 1e6)
    cv: int = 5
    per_target: bool = False  # one alpha for all pixels, chosen by cross-validation


class RidgePixels(Method):
    """Linear decoding of a downsampled image from nsdgeneral betas (ridge, alpha by cross-validation)."""

    name = "ridge-pixels"
    description = (
        "Ridge regression from z-scored nsdgeneral betas to a 32x32 RGB image (alpha chosen by 5-fold "
        "cross-validation on the training split), upsampled bicubically to the NSD image size."
    )
    Settings = RidgePixelsSettings
    variants: ClassVar[dict[str, dict[str, Any]]] = {"16px": {"size": 16}, "64px": {"size": 64}}

    def fit(self, train: SubjectData, ctx: RunContext) -> dict[int, np.ndarray]:
        s = self.settings
        ctx.set_total(1, unit="fit")
        x_train = train.betas("train", roi=s.roi)
        x_test = train.betas("test", roi=s.roi)
        ids = train.train_ids  # in chunks: the real training set at 425 px would need ~5 GB at once
        y_train = np.concatenate(
            [downsample(train.images(ids[i : i + 256]), s.size) for i in range(0, len(ids), 256)]
        ).reshape(len(x_train), -1)
        # the whole test set is predicted at once and cached by content hash (nsdbench.ridge):
        # every shard reads the same predictions, whatever the sharding
        pred = _ridge_fit_predict(x_train, y_train, x_test, s.alphas, s.cv, s.per_target)
        ctx.advance(1)
        pred = pred.reshape(len(x_test), s.size, s.size, 3)
        return {int(nid): pred[i] for i, nid in enumerate(train.test_ids)}

    def reconstruct(
        self, test_items: Sequence[TestItem], fitted: Any, ctx: RunContext
    ) -> Iterator[Reconstruction]:
        out_size = ctx.data.image_size
        for it in test_items:
            yield it.nsd_id, it.sample, upsample(to_uint8(fitted[it.nsd_id]), out_size)


def _ridge_fit_predict(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    alphas: tuple[float, ...],
    cv: int,
    per_target: bool,
) -> np.ndarray:
    """Ridge fit on the training split (alpha by CV), predictions for the test betas (float64)."""
    settings = ridge.RidgeSettings(
        alphas=tuple(float(a) for a in alphas), cv=cv, per_target=per_target, dtype="float64"
    )
    return np.asarray(ridge.fit_predict(x_train, y_train, x_test, settings, cache=True, progress=False))


@dataclass(frozen=True)
class BestLibraryImageSettings:
    encoder: str = "nsdbench-encoder-v1"  # the guidance encoder (ctx.encoder): or "gnet8"
    library_batch: int = 64  # library images per encoding-model call


class BestLibraryImage(Method):
    """The unseen NSD image whose predicted betas (encoding model) correlate best with the measured ones."""

    name = "best-library-image"
    description = (
        "Scores every NSD image the subject never saw with the encoding model and returns the one whose "
        "predicted nsdgeneral betas correlate best (Pearson) with the measured test betas."
    )
    paper = (
        "Kneeland et al. 2023, Second Sight ('Best Library Image'); "
        "Kneeland et al. CCN 2023 ('Best COCO Image')"
    )
    version = "2"  # the encoder through ctx.encoder (device-resident; torch resizing)
    Settings = BestLibraryImageSettings

    def required_artifacts(self) -> tuple[str, ...]:
        """The guidance encoder's artifact in pretrained mode (the canonical encoder is fitted here)."""
        if self.weights_mode != "pretrained":
            return ()
        if self.settings.encoder == "gnet8":
            return ("gnet8-multisubject",)
        from nsdbench.metrics.encoder import default_spec
        from nsdbench.metrics.networks import ARTIFACT_OF

        spec = default_spec("pretrained")
        return (ARTIFACT_OF[(spec.network, spec.network_weights)],)

    def library_ids(self, train: SubjectData) -> np.ndarray:
        """Every NSD id the subject never saw (ascending)."""
        seen = {int(i) for i in train.seen_ids()} | set(train.train_ids) | set(train.test_ids)
        lib = np.array([i for i in range(train.n_images) if i not in seen], dtype=np.int64)
        if len(lib) == 0:
            raise DataError(f"subject {train.subject}: no NSD image left that the subject never saw")
        return lib

    def fit_key(
        self, subject: int, ctx: RunContext, encoder: str, lib: np.ndarray, measured: np.ndarray
    ) -> str:
        """The fit cache key: the encoder's predictions depend on the device type and dtype (cuda:0 and
        cuda:1 share one fit; cpu, cuda and mps do not)."""
        import torch

        from nsdbench.caches import ArrayCache

        return ArrayCache.key(
            {
                "method": self.name,
                "version": self.version,
                "subject": subject,
                "split": ctx.split,
                "weights": ctx.weights_mode,
                "device": torch.device(ctx.device).type,
                "dtype": str(ctx.dtype),
                "encoder": encoder,
            },
            lib,
            measured,
        )

    def fit(self, train: SubjectData, ctx: RunContext) -> dict[int, int]:
        import torch

        encoder = ctx.encoder(self.settings.encoder)
        lib = self.library_ids(train)
        test_ids = list(train.test_ids)
        # the guidance encoders predict session z-scored nsdgeneral betas; rows aligned with test_ids
        measured = np.asarray(train.betas("test", "nsdgeneral", normalize="session-zscore"), dtype=np.float64)
        batch = int(self.settings.library_batch)

        def compute() -> dict[str, np.ndarray]:
            ctx.set_total(len(lib), unit="img")
            preds = []
            for start in range(0, len(lib), batch):
                ids = lib[start : start + batch]
                images = torch.as_tensor(train.images(ids)).permute(0, 3, 1, 2).contiguous()
                preds.append(encoder.predict(images).float().cpu().numpy())
                ctx.advance(len(ids))
            return {"choice": lib[rowwise_correlation_argmax(np.concatenate(preds), measured)]}

        key = self.fit_key(train.subject, ctx, str(encoder.identity), lib, measured)
        cache = ctx.cache
        arrays = cache.get_or_compute(key, compute) if cache is not None else compute()
        return {int(n): int(c) for n, c in zip(test_ids, arrays["choice"], strict=True)}

    def reconstruct(
        self, test_items: Sequence[TestItem], fitted: Any, ctx: RunContext
    ) -> Iterator[Reconstruction]:
        sources = sorted({fitted[it.nsd_id] for it in test_items})
        images = dict(zip(sources, ctx.data.images(sources), strict=True))
        out_size = ctx.data.image_size
        for it in test_items:
            yield it.nsd_id, it.sample, upsample(images[fitted[it.nsd_id]], out_size)


for _cls in (GroundTruth, Shuffled, RidgePixels, BestLibraryImage):
    register_method(_cls)
