"""Brain correlation: per image, the Pearson correlation across an ROI's voxels between the betas an
encoding model predicts for a reconstruction and the measured (repetition-averaged) betas of the seen image.

ROIs (reference/METRICS.md): V1 = prf-visualrois 1|2, V2 = 3|4, V3 = 5|6, V4 = 7, early = their union,
higher visual = nsdgeneral minus early, nsdgeneral; masks over the nsdgeneral voxels come from
`NSD.roi_voxel_masks(subject)`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from nsdbench.errors import DataError, UsageError
from nsdbench.metrics.names import BRAIN_ROIS  # metric name -> ROI key of NSD.roi_voxel_masks

ENCODER_BATCH = 16  # images per encoder forward pass; batches are zero-padded to this size so that an
# image's predicted betas never depend on which other images share its batch

__all__ = [
    "BETA_NORMALIZATIONS",
    "BRAIN_ROIS",
    "BrainTarget",
    "brain_correlation",
    "measured_betas",
    "pearson_rows",
]

# session-zscore: each voxel z-scored within each session (MindEye2, nsdbench);
# all-sessions-zscore: each voxel z-scored over every trial of the split's sessions (Second Sight)
BETA_NORMALIZATIONS = ("session-zscore", "all-sessions-zscore")


def pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r between a[i] and b[i] for every row, in float64 (NaN where a row is constant)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    num = np.einsum("ij,ij->i", a, b)
    den = np.sqrt(np.einsum("ij,ij->i", a, a) * np.einsum("ij,ij->i", b, b))
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def brain_correlation(
    pred: np.ndarray, measured: np.ndarray, rois: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """{bc_v1 … bc_nsdgeneral: (N,) Pearson r per image} for the ROIs present in `rois`.

    pred, measured: (N, V) predicted and measured betas of the same N images (rows aligned);
    rois: {"V1", "V2", "V3", "V4", "early", "higher_vis", "nsdgeneral"} → bool mask over the V voxels.
    """
    pred = np.asarray(pred)
    measured = np.asarray(measured)
    if pred.ndim != 2 or pred.shape != measured.shape:
        raise UsageError(
            f"brain correlation: predicted betas {pred.shape} and measured betas {measured.shape} must both be "
            f"(images, voxels) of the same shape"
        )
    if not np.isfinite(measured).all():
        row = int(np.argwhere(~np.isfinite(measured))[0, 0])
        raise DataError(f"brain correlation: measured betas of image row {row} contain NaN/inf")
    if not np.isfinite(pred).all():
        row = int(np.argwhere(~np.isfinite(pred))[0, 0])
        raise DataError(f"brain correlation: predicted betas of image row {row} contain NaN/inf")
    out: dict[str, np.ndarray] = {}
    for metric, roi in BRAIN_ROIS.items():
        if roi not in rois:
            continue
        mask = np.asarray(rois[roi])
        if mask.dtype != bool or mask.shape != (pred.shape[1],):
            raise DataError(
                f"brain correlation: ROI {roi!r} mask has shape {mask.shape} dtype {mask.dtype}; expected a bool "
                f"mask over the {pred.shape[1]} voxels"
            )
        if mask.sum() < 2:
            raise DataError(f"brain correlation: ROI {roi!r} has {int(mask.sum())} voxels; need at least 2")
        out[metric] = pearson_rows(pred[:, mask], measured[:, mask])
    if not out:
        raise UsageError(
            f"brain correlation: no known ROI in {sorted(rois)}; expected {sorted(BRAIN_ROIS.values())}"
        )
    return out


class ImageEncoder(Protocol):
    """Anything that maps images (uint8 N×H×W×3, or a list of H×W×3 of any size) to predicted betas (N, V)."""

    def predict(self, images: Any) -> np.ndarray: ...


@dataclass
class BrainTarget:
    """What the metric engine needs for brain correlation on one subject's test split.

    encoder: predicts betas from images; measured: NSD id → repetition-averaged measured betas (V,);
    rois: ROI name → bool mask over the V voxels.
    """

    encoder: ImageEncoder
    measured: dict[int, np.ndarray]
    rois: dict[str, np.ndarray]
    info: dict[str, Any] = field(default_factory=dict)
    encoder_name: str = "nsdbench"
    beta_normalization: str = "session-zscore"
    # builds the target of the same subject and split for another (encoder, beta normalization)
    variant: Callable[[str, str], BrainTarget] | None = None
    _variants: dict[tuple[str, str], BrainTarget] = field(default_factory=dict, repr=False)

    def for_encoder(self, encoder: str, beta_normalization: str) -> BrainTarget:
        """This target, or the one a protocol's brain metric names (built once through `variant`)."""
        key = (encoder, beta_normalization)
        if key == (self.encoder_name, self.beta_normalization):
            return self
        if key not in self._variants:
            if self.variant is None:
                raise UsageError(
                    f"brain target uses encoder {self.encoder_name} with {self.beta_normalization} betas; the "
                    f"protocol needs {encoder} with {beta_normalization} betas"
                )
            self._variants[key] = self.variant(encoder, beta_normalization)
        return self._variants[key]

    def predict(self, images: Any) -> np.ndarray:
        out = np.asarray(self.encoder.predict(images))
        n_vox = next(iter(self.measured.values())).shape[0] if self.measured else out.shape[-1]
        if out.ndim != 2 or out.shape[1] != n_vox:
            raise DataError(
                f"brain target: encoder predicted shape {out.shape}; expected (N, {n_vox}) voxels"
            )
        return out

    def measured_matrix(self, nsd_ids: Sequence[int]) -> np.ndarray:
        missing = [int(i) for i in nsd_ids if int(i) not in self.measured]
        if missing:
            raise UsageError(
                f"brain target has no measured betas for nsd_id {missing[0]} (not in the test split)"
            )
        return np.stack([np.asarray(self.measured[int(i)]) for i in nsd_ids])

    def brain_correlations(self, nsd_ids: Sequence[int], images: Any) -> dict[str, np.ndarray]:
        """Brain correlation of images shown as reconstructions of `nsd_ids` (aligned)."""
        return brain_correlation(self.predict(images), self.measured_matrix(nsd_ids), self.rois)


def zscore_trials(betas: np.ndarray) -> np.ndarray:
    """Each voxel (column) z-scored over all trials (rows), float64 statistics, population std."""
    b = np.asarray(betas, dtype=np.float64)
    mu = b.mean(0)
    sd = b.std(0)
    return ((b - mu) / np.where(sd > 0, sd, 1.0)).astype(np.float32)


def measured_betas(nsd, split, normalization: str) -> np.ndarray:
    """The split's test betas (n_ids, n_vox), averaged over repetitions after `normalization`."""
    from nsdbench.nsd.splits import average_rows, split_betas

    if normalization == "session-zscore":
        return split_betas(nsd, split, "test", normalize="session-zscore")
    if normalization != "all-sessions-zscore":
        raise UsageError(
            f"beta normalization {normalization!r}; expected one of {', '.join(BETA_NORMALIZATIONS)}"
        )
    trials = zscore_trials(nsd.betas(split.subject, sessions=split.sessions, normalize="none"))
    rows = nsd.trial_rows(split.subject, split.sessions)
    return average_rows(trials, rows, split.test_trials)
