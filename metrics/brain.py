"""Brain correlation: per image, the Pearson correlation across an ROI's voxels between the betas an
encoding model predicts for a reconstruction and the measured (repetition-averaged) betas of the seen image.

ROIs (reference/METRICS.md): V1 = prf-visualrois 1|2, V2 = 3|4, V3 = 5|6, V4 = 7, early = their union,
higher visual = nsdgeneral minus early, nsdgeneral; masks over the nsdgeneral voxels come from
`NSD.roi_voxel_masks(subject)`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from nsdbench.errors import DataError, UsageError
from nsdbench.metrics.names import BRAIN_ROIS  # metric name -> ROI key of NSD.roi_voxel_masks

ENCODER_BATCH = 16  # images per encoder forward pass; batches are zero-padded to this size so that an
# image's predicted betas never depend on which other images share its batch

__all__ = ["BRAIN_ROIS", "BrainTarget", "brain_correlation", "load_brain_target", "pearson_rows"]


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

    def score(self, nsd_ids: Sequence[int], images: Any) -> dict[str, np.ndarray]:
        """Brain correlation of images shown as reconstructions of `nsd_ids` (aligned)."""
        return brain_correlation(self.predict(images), self.measured_matrix(nsd_ids), self.rois)


def load_brain_target(
    nsd, subject: int, split: str = "nsd982", weights_mode: str = "pretrained", **kwargs: Any
) -> BrainTarget:
    """The canonical BrainTarget of a subject (fits or loads the cached encoder); see metrics.encoder."""
    from nsdbench.metrics.encoder import load_brain_target as _load

    return _load(nsd, subject, split, weights_mode, **kwargs)
