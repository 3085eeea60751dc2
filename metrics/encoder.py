"""nsdbench's canonical encoding model (images → nsdgeneral betas) for the brain-correlation metric.

Per subject, a voxel-wise ridge regression from fixed image features to session-z-scored,
repetition-averaged nsdgeneral betas, alphas chosen per voxel by 5-fold CV, fit on the split's training
images only. Features (EncoderSpec, version "nsdbench-encoder-v1"):
  - AlexNet (torchvision IMAGENET1K_V1, the metric network) on the image resized to 224 px (PIL bilinear)
    with ImageNet normalization: features.4 (ReLU after conv2) average-pooled to 4×4 and features.11
    (ReLU after conv5) pooled to 3×3;
  - low-level features on a 16×16 grid of the same 224-px image: block mean luminance (0.2125 R + 0.7154 G
    + 0.0721 B), red−green, blue−yellow and RMS luminance contrast.
Each feature is z-scored on the training images and each of the three groups scaled to equal total
variance. The held-out accuracy (per-voxel Pearson r on the test split, and the fraction of the NSD-style
noise ceiling estimated from the test repetitions) is stored with the model.

Published encoders plug in through the weights registry (`load_published_encoder`, metrics/gnet8.py): GNet8 (St-Yves et al.;
the MindEye2 release used by Second Sight / MindEye2 brain correlation), artifact `gnet8-multisubject`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nsdbench import config, weights
from nsdbench.caches import ArrayCache, content_key
from nsdbench.errors import DataError, UsageError
from nsdbench.metrics.brain import BRAIN_ROIS, BrainTarget
from nsdbench.metrics.brain import ENCODER_BATCH as FEATURE_BATCH
from nsdbench.metrics.gnet8 import load_published_encoder
from nsdbench.nsd.splits import get_split, split_betas
from nsdbench.progress import progress_bar
from nsdbench.ridge import RidgeModel, RidgeSettings, fit_ridge, single_threaded_if

ENCODER_FORMAT = 1
ROI_ORDER = tuple(BRAIN_ROIS.values())  # V1 … nsdgeneral, in the leaderboard's order


@dataclass(frozen=True)
class EncoderSpec:
    """The feature set and fitting settings of the canonical encoder (part of its cache key)."""

    name: str = "nsdbench-encoder-v1"
    image_size: int = 224
    network: str = "alexnet"
    network_weights: str = "IMAGENET1K_V1"
    layers: tuple[tuple[str, int], ...] = (("features.4", 4), ("features.11", 3))  # (layer, pooled grid)
    lowres_grid: int = 16
    alphas: tuple[float, ...] = tuple(float(a) for a in 10.0 ** np.arange(-2, 6))
    cv: int = 5
    normalize: str = "session-zscore"


def default_spec(weights_mode: str) -> EncoderSpec:
    """The canonical spec; in `tiny` mode (fast CPU tests, smoke runs) images are fed at 64 px."""
    return EncoderSpec(image_size=64) if weights_mode == "tiny" else EncoderSpec()


# ------------------------------------------------------------------------------------------ features


def _resize_batch(images: Sequence[np.ndarray] | np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    out = np.empty((len(images), size, size, 3), np.uint8)
    for i, im in enumerate(images):
        im = np.asarray(im)
        if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
            raise UsageError(
                f"encoder: image {i} has shape {im.shape} dtype {im.dtype}; expected uint8 H×W×3"
            )
        if im.shape[:2] == (size, size):
            out[i] = im
        else:
            out[i] = np.asarray(
                Image.fromarray(np.ascontiguousarray(im)).resize((size, size), Image.Resampling.BILINEAR)
            )
    return out


def _lowres_features(x, grid: int):
    """x: float (B, 3, S, S) in [0, 1] → (B, 4·grid²): luminance, red−green, blue−yellow, RMS contrast."""
    import torch.nn.functional as F

    lum = 0.2125 * x[:, 0] + 0.7154 * x[:, 1] + 0.0721 * x[:, 2]
    rgb = F.adaptive_avg_pool2d(x, grid)
    mlum = F.adaptive_avg_pool2d(lum[:, None], grid)[:, 0]
    lum2 = F.adaptive_avg_pool2d((lum * lum)[:, None], grid)[:, 0]
    rg = rgb[:, 0] - rgb[:, 1]
    by = rgb[:, 2] - 0.5 * (rgb[:, 0] + rgb[:, 1])
    con = (lum2 - mlum * mlum).clamp(min=0).sqrt()
    return [t.flatten(1) for t in (mlum, rg, by, con)]


class FeatureExtractor:
    """Image → encoder features with a fixed network; groups = one block per AlexNet layer + low-level."""

    def __init__(self, spec: EncoderSpec, weights_mode: str, device: str = "cpu"):
        from nsdbench.metrics.networks import get_network

        self.spec = spec
        self.mode = weights.check_mode(weights_mode)
        self.device = device
        self.net = get_network(spec.network, spec.network_weights, self.mode, device=device)

    @property
    def network_sha256(self) -> str:
        return self.net.sha256

    def _batch(self, images: np.ndarray) -> list[np.ndarray]:
        import torch

        n = len(images)
        x = torch.zeros((FEATURE_BATCH, 3, self.spec.image_size, self.spec.image_size))
        x[:n] = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        return [g[:n].double().cpu().numpy() for g in self.tensor_groups(x.to(self.device))]

    def tensor_groups(self, x) -> list:
        """Float32 (FEATURE_BATCH, 3, S, S) in [0, 1] on the device → feature groups [(FEATURE_BATCH, D_g)]
        float32 on the device (AlexNet layers, pooled; then the low-level group)."""
        import torch
        import torch.nn.functional as F

        from nsdbench.metrics.networks import normalize

        layers = tuple(name for name, _ in self.spec.layers)
        feats = self.net.features(normalize(x, "imagenet"), layers)
        groups = []
        for name, grid in self.spec.layers:
            f = feats[name]
            channels = self._channels(name)
            side = round((f.shape[1] / channels) ** 0.5)
            f = F.adaptive_avg_pool2d(f.reshape(FEATURE_BATCH, channels, side, side), grid).flatten(1)
            groups.append(f)
        low = _lowres_features(x, self.spec.lowres_grid)
        groups.append(torch.cat(low, 1))
        return groups

    def _channels(self, layer: str) -> int:
        """Channels of a hooked conv-block output: those of the last conv at or before `layer`."""
        from torch import nn

        idx = int(layer.split(".")[1])
        for m in list(self.net.module.features)[: idx + 1][::-1]:
            if isinstance(m, nn.Conv2d):
                return int(m.out_channels)
        raise UsageError(f"encoder layer {layer} has no convolution before it")

    def __call__(self, images: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
        """Feature groups [(N, D_g) float64, ...] for uint8 images of any size."""
        parts: list[list[np.ndarray]] = []
        with single_threaded_if(self.mode == "tiny" and self.device == "cpu"):  # tiny nets: threads only cost
            for s in range(0, len(images), FEATURE_BATCH):
                parts.append(self._batch(_resize_batch(images[s : s + FEATURE_BATCH], self.spec.image_size)))
        if not parts:
            raise UsageError("encoder: no images given")
        return [np.concatenate(g) for g in zip(*parts)]


def _features_for_ids(
    extractor: FeatureExtractor, nsd, ids: Sequence[int], progress: bool | None, label: str
) -> list[np.ndarray]:
    """Features of NSD images read lazily in batches (the full NSD's images never sit in memory)."""
    step = FEATURE_BATCH * 8
    parts: list[list[np.ndarray]] = []
    with progress_bar(progress, len(ids), label) as advance:
        for s in range(0, len(ids), step):
            batch = list(ids[s : s + step])
            parts.append(extractor(nsd.images(batch)))
            advance(len(batch))
    return [np.concatenate(g) for g in zip(*parts)]


@dataclass(frozen=True)
class FeatureScaler:
    """z-score per feature with training statistics, then scale each group to equal total variance."""

    mean: np.ndarray
    scale: np.ndarray  # multiply after centering

    @classmethod
    def fit(cls, groups: list[np.ndarray]) -> FeatureScaler:
        means, scales = [], []
        for g in groups:
            sd = g.std(0)
            sd[sd == 0] = 1.0
            means.append(g.mean(0))
            scales.append(1.0 / (sd * np.sqrt(g.shape[1])))
        return cls(np.concatenate(means), np.concatenate(scales))

    def __call__(self, groups: list[np.ndarray]) -> np.ndarray:
        return (np.concatenate(groups, 1) - self.mean) * self.scale


# ------------------------------------------------------------------------------------ noise ceiling


def noise_ceiling(trial_betas: np.ndarray, groups: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """NSD-style (ncsnr, noise ceiling) per voxel from repeated presentations.

    trial_betas (n_trials, V); groups: rows of each image's repetitions. Noise variance = pooled
    within-image variance (ddof 1, images with ≥ 2 repetitions); signal variance = total single-trial
    variance − noise variance (clipped at 0); ncsnr = sqrt(signal / noise). The ceiling, as a fraction of
    variance, for betas averaged over each image's n_i repetitions: ncsnr² / (ncsnr² + mean_i 1/n_i)
    (Allen et al. 2022). NaN when no image has two repetitions.
    """
    V = trial_betas.shape[1]
    ss = np.zeros(V)
    dof = 0
    rows_all = []
    for g in groups:
        g = np.asarray(g)
        rows_all.append(g)
        if len(g) < 2:
            continue
        b = np.asarray(trial_betas[np.sort(g)], dtype=np.float64)
        ss += ((b - b.mean(0)) ** 2).sum(0)
        dof += len(g) - 1
    if dof == 0:
        nan = np.full(V, np.nan)
        return nan, nan
    noise_var = ss / dof
    every = np.asarray(trial_betas[np.sort(np.concatenate(rows_all))], dtype=np.float64)
    total_var = every.var(0, ddof=1)
    signal_var = np.clip(total_var - noise_var, 0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        ncsnr = np.where(noise_var > 0, np.sqrt(signal_var / noise_var), np.nan)
    inv_n = float(np.mean([1.0 / len(g) for g in groups]))
    nc = ncsnr**2 / (ncsnr**2 + inv_n)
    return ncsnr, nc


def voxel_correlation(pred: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Pearson r across images for every voxel (columns); NaN for a constant column."""
    from nsdbench.metrics.brain import pearson_rows

    return pearson_rows(np.asarray(pred).T, np.asarray(measured).T)


def accuracy_summary(
    r: np.ndarray, nc: np.ndarray, rois: dict[str, np.ndarray]
) -> dict[str, dict[str, float]]:
    """Per ROI: voxels, mean / median r, mean noise ceiling, and fraction of the ceiling explained
    (Σ max(r, 0)² / Σ NC over voxels with a defined ceiling)."""
    out = {}
    for roi in ROI_ORDER:
        if roi not in rois:
            continue
        m = np.asarray(rois[roi], bool)
        rr = r[m]
        ok = m & np.isfinite(nc) & np.isfinite(r)
        denom = float(nc[ok].sum())
        out[roi] = {
            "voxels": int(m.sum()),
            "mean_r": float(np.nanmean(rr)) if rr.size else float("nan"),
            "median_r": float(np.nanmedian(rr)) if rr.size else float("nan"),
            "mean_nc": float(np.nanmean(nc[m])) if np.isfinite(nc[m]).any() else float("nan"),
            "frac_nc": float((np.clip(r[ok], 0, None) ** 2).sum() / denom) if denom > 0 else float("nan"),
        }
    return out


# ----------------------------------------------------------------------------------------- the model


@dataclass(frozen=True, eq=False)
class EncodingModel:
    """A fitted encoder: `.predict(images)` → (N, V) predicted session-z-scored nsdgeneral betas."""

    spec: EncoderSpec
    subject: int
    split: str
    weights_mode: str
    scaler: FeatureScaler
    ridge: RidgeModel
    r: np.ndarray  # (V,) held-out Pearson r per voxel
    nc: np.ndarray  # (V,) noise ceiling (fraction of variance) per voxel
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    device: str = "cpu"

    @property
    def accuracy(self) -> dict[str, dict[str, float]]:
        return self.meta.get("accuracy", {})

    def _extractor(self) -> FeatureExtractor:
        ex = getattr(self, "_ex", None)
        if ex is None:
            ex = FeatureExtractor(self.spec, self.weights_mode, self.device)
            object.__setattr__(self, "_ex", ex)
        return ex

    def predict(self, images: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """uint8 images (N×H×W×3 array or a list of H×W×3 of any size) → (N, V) float32."""
        X = self.scaler(self._extractor()(images))
        return predict_rows(self.ridge, X).astype(np.float32)


def predict_rows(ridge: RidgeModel, X: np.ndarray) -> np.ndarray:
    """ridge.predict on fixed, zero-padded blocks of FEATURE_BATCH rows (results independent of N)."""
    out = []
    for s in range(0, len(X), FEATURE_BATCH):
        block = np.zeros((FEATURE_BATCH, X.shape[1]), X.dtype)
        part = X[s : s + FEATURE_BATCH]
        block[: len(part)] = part
        out.append(ridge.predict(block, progress=False)[: len(part)])
    return np.concatenate(out) if out else np.zeros((0, ridge.n_targets))


def _ridge_settings(spec: EncoderSpec) -> RidgeSettings:
    return RidgeSettings(
        alphas=spec.alphas, cv=spec.cv, per_target=True, fit_intercept=True, dtype="float64", backend="auto"
    )


def _test_trial_betas(nsd, sp, normalize: str) -> tuple[np.ndarray, list[np.ndarray]]:
    trial_norm = "session-zscore" if normalize == "session-zscore" else "none"
    betas = nsd.betas(sp.subject, sessions=sp.sessions, normalize=trial_norm)
    rows = nsd.trial_rows(sp.subject, sp.sessions)
    return betas, [rows.loc[list(g)].to_numpy() for g in sp.test_trials]


def _identity_key(
    nsd, sp, spec: EncoderSpec, mode: str, net_sha: str, y_train: np.ndarray, y_test: np.ndarray
) -> str:
    probe_ids = sorted({*sp.train_ids[:2], *sp.train_ids[-2:], *sp.test_ids[:2], *sp.test_ids[-2:]})
    arrays = [y_train, y_test, np.asarray(sp.train_ids), np.asarray(sp.test_ids), nsd.images(probe_ids)]
    meta = {
        "kind": "encoder",
        "encoder_format": ENCODER_FORMAT,
        "spec": asdict(spec),
        "subject": sp.subject,
        "split": sp.name,
        "weights_mode": mode,
        "network_sha256": net_sha,
        "n_images": int(nsd.n_images),
    }
    return content_key(*arrays, meta)


def encoder_dir() -> Path:
    return config.cache_dir("encoder")


def encoder_cache() -> ArrayCache:
    """Fitted encoding models: NSDBENCH_HOME/cache/encoder/<key>/."""
    return ArrayCache(encoder_dir())


def fit_encoder(
    nsd,
    subject: int,
    split: str = "nsd982",
    weights_mode: str = "pretrained",
    *,
    spec: EncoderSpec | None = None,
    device: str = "cpu",
    cache: bool = True,
    progress: bool | None = None,
) -> EncodingModel:
    """Fit (or load from the cache) the canonical encoder of one subject on the split's training images."""
    mode = weights.check_mode(weights_mode)
    spec = spec or default_spec(mode)
    sp = get_split(nsd, split, int(subject))
    y_train = split_betas(nsd, sp, "train", normalize=spec.normalize)
    y_test = split_betas(nsd, sp, "test", normalize=spec.normalize)
    if len(sp.train_ids) < 2 * spec.cv:
        raise DataError(
            f"encoder: subject {subject} has {len(sp.train_ids)} training images in {split}; "
            f"need at least {2 * spec.cv}"
        )
    extractor = FeatureExtractor(spec, mode, device)
    key = _identity_key(nsd, sp, spec, mode, extractor.network_sha256, y_train, y_test)
    if cache:
        hit = _load_entry(key, device)
        if hit is not None:
            return hit
    rois = nsd.roi_voxel_masks(sp.subject)
    if len(rois["nsdgeneral"]) != y_train.shape[1]:
        raise DataError(
            f"encoder: ROI masks cover {len(rois['nsdgeneral'])} voxels but the betas have "
            f"{y_train.shape[1]} (subject {subject})"
        )
    t0 = time.perf_counter()
    train_groups = _features_for_ids(
        extractor, nsd, sp.train_ids, progress, f"encoder features subj{subject:02d} train"
    )
    test_groups = _features_for_ids(
        extractor, nsd, sp.test_ids, progress, f"encoder features subj{subject:02d} test"
    )
    scaler = FeatureScaler.fit(train_groups)
    X_train, X_test = scaler(train_groups), scaler(test_groups)
    t_feat = time.perf_counter() - t0
    ridge = fit_ridge(X_train, y_train, _ridge_settings(spec), cache=False, progress=progress)
    pred = predict_rows(ridge, X_test)
    r = voxel_correlation(pred, y_test)
    trial_betas, groups = _test_trial_betas(nsd, sp, spec.normalize)
    _, nc = noise_ceiling(trial_betas, groups)
    meta = {
        "format": ENCODER_FORMAT,
        "key": key,
        "spec": asdict(spec),
        "subject": sp.subject,
        "split": sp.name,
        "weights_mode": mode,
        "smoke": weights.is_smoke(mode),
        "network": f"{spec.network} {spec.network_weights if mode == 'pretrained' else mode}",
        "network_sha256": extractor.network_sha256,
        "data_root": str(nsd.root),
        "n_train": len(sp.train_ids),
        "n_test": len(sp.test_ids),
        "n_test_trials": sp.n_test_trials,
        "n_voxels": int(y_train.shape[1]),
        "n_features": int(X_train.shape[1]),
        "alpha_median": float(np.median(ridge.alpha)),
        "accuracy": accuracy_summary(r, nc, rois),
        "seconds": {"features": round(t_feat, 2), "total": round(time.perf_counter() - t0, 2)},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    model = EncodingModel(
        spec=spec,
        subject=sp.subject,
        split=sp.name,
        weights_mode=mode,
        scaler=scaler,
        ridge=ridge,
        r=r,
        nc=nc,
        meta=meta,
        device=device,
    )
    if cache:
        _save_entry(model, key)
        model = _load_entry(key, device) or model
    object.__setattr__(model, "_ex", extractor)
    return model


def _save_entry(model: EncodingModel, key: str) -> Path:
    """Write the model's arrays (.npy, no pickle) and meta.json as one cache entry."""
    arrays = {
        "coef": model.ridge.coef,
        "intercept": model.ridge.intercept,
        "alpha": model.ridge.alpha,
        "feat_mean": model.scaler.mean,
        "feat_scale": model.scaler.scale,
        "r": model.r,
        "nc": model.nc,
    }
    return encoder_cache().save(key, arrays, model.meta)


def _load_entry(key: str, device: str) -> EncodingModel | None:
    entry = encoder_cache().read(key)
    if entry is None:
        return None
    meta, arr, path = entry.meta, entry.arrays, entry.folder
    if meta.get("format") != ENCODER_FORMAT:
        return None
    sd = dict(meta["spec"])
    sd["layers"] = tuple(tuple(x) for x in sd["layers"])
    sd["alphas"] = tuple(sd["alphas"])
    spec = EncoderSpec(**sd)
    ridge = RidgeModel(
        coef=arr["coef"],
        intercept=arr["intercept"],
        alpha=arr["alpha"],
        settings=_ridge_settings(spec),
        n_features=int(arr["coef"].shape[0]),
        target_shape=(int(arr["coef"].shape[1]),),
    )
    return EncodingModel(
        spec=spec,
        subject=int(meta["subject"]),
        split=meta["split"],
        weights_mode=meta["weights_mode"],
        scaler=FeatureScaler(arr["feat_mean"], arr["feat_scale"]),
        ridge=ridge,
        r=arr["r"],
        nc=arr["nc"],
        meta=meta,
        path=path,
        device=device,
    )


def find_fitted(
    subject: int,
    split: str | None = None,
    weights_mode: str | None = None,
    data_root: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Metadata of cached encoders matching the filters, newest first (no fitting, no data access)."""
    found = []
    for meta_path in encoder_dir().glob("*/meta.json"):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        if int(meta.get("subject", -1)) != int(subject):
            continue
        if split is not None and meta.get("split") != split:
            continue
        if weights_mode is not None and meta.get("weights_mode") != weights_mode:
            continue
        if data_root is not None and Path(meta.get("data_root", "")).resolve() != Path(data_root).resolve():
            continue
        meta["path"] = str(meta_path.parent)
        found.append(meta)
    return sorted(found, key=lambda m: m.get("created", ""), reverse=True)


# ---------------------------------------------------------------------------------- brain targets


def load_brain_target(
    nsd,
    subject: int,
    split: str = "nsd982",
    weights_mode: str = "pretrained",
    *,
    encoder: str = "nsdbench",
    spec: EncoderSpec | None = None,
    device: str = "cpu",
    progress: bool | None = None,
    beta_normalization: str | None = None,
) -> BrainTarget:
    """BrainTarget of one subject: the encoder (canonical, fitted or cached; or a published one), the
    test split's measured betas (session-z-scored unless `beta_normalization` says otherwise, averaged
    over repetitions) keyed by NSD id, and the ROI masks over the nsdgeneral voxels."""
    from nsdbench.metrics.brain import measured_betas

    sp = get_split(nsd, split, int(subject))
    if encoder == "nsdbench":
        model = fit_encoder(nsd, subject, split, weights_mode, spec=spec, device=device, progress=progress)
        normalize = model.spec.normalize
        info = {
            "encoder": model.spec.name,
            "encoder_key": model.meta.get("key"),
            "weights_mode": model.weights_mode,
            "accuracy": model.accuracy,
        }
    else:
        n_vox = int(nsd.roi_voxel_masks(sp.subject)["nsdgeneral"].size)
        model = load_published_encoder(encoder, subject, n_vox, weights_mode, device)
        normalize = "session-zscore"
        info = {"encoder": encoder, "weights_mode": weights_mode, "encoder_sha256": model.sha256}
    normalize = beta_normalization or normalize
    measured = measured_betas(nsd, sp, normalize)
    rois = nsd.roi_voxel_masks(sp.subject)
    missing = [r for r in BRAIN_ROIS.values() if r not in rois]
    if missing:
        raise DataError(f"subject {subject}: no ROI mask for {missing}")
    return BrainTarget(
        encoder=model,
        measured={int(i): measured[k] for k, i in enumerate(sp.test_ids)},
        rois=rois,
        info={"subject": sp.subject, "split": sp.name, "beta_normalization": normalize, **info},
        encoder_name=encoder,
        beta_normalization=normalize,
        variant=lambda enc, norm: load_brain_target(
            nsd, subject, split, weights_mode, encoder=enc, device=device, beta_normalization=norm
        ),
    )
