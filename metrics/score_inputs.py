"""The engine's input checks: ids and images of ground truth and reconstructions, put in canonical order
(ascending NSD id, then sample) so that results never depend on how the caller ordered them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nsdbench.errors import InvalidSubmission, UsageError

NsdIds = Sequence[int] | np.ndarray | torch.Tensor  # a 1-D sequence of integers
ImageSet = (
    np.ndarray | torch.Tensor | Sequence[np.ndarray]
)  # uint8 (N, H, W, 3), or N HxWx3 images read on access


def uint8_image(im: Any, what: str, nsd_id: int) -> np.ndarray:
    """One image as a uint8 HxWx3 array, or InvalidSubmission naming `what` and the NSD id."""
    a = im.detach().cpu().numpy() if isinstance(im, torch.Tensor) else np.asarray(im)
    if a.dtype != np.uint8:
        nan = " containing NaN" if a.dtype.kind == "f" and np.isnan(a).any() else ""
        raise InvalidSubmission(
            f"{what} nsd_id {nsd_id}: expected uint8 HxWx3 image, got {a.dtype}{nan} of shape {a.shape}"
        )
    if a.ndim != 3 or a.shape[2] != 3 or min(a.shape[:2]) < 1:
        raise InvalidSubmission(f"{what} nsd_id {nsd_id}: expected uint8 HxWx3 image, got shape {a.shape}")
    return a


def take_images(images: Any, positions: Sequence[int], ids: Sequence[int], what: str) -> list[np.ndarray]:
    """images[p] for each position, checked (read lazily from sequences that read on access)."""
    return [uint8_image(images[int(p)], what, int(i)) for p, i in zip(positions, ids)]


def _check_array(images: Any, n: int, what: str) -> None:
    """Fast whole-array checks when images come as one array; sequences are checked per item."""
    if isinstance(images, np.ndarray | torch.Tensor):
        dtype = images.dtype
        if dtype not in (np.uint8, torch.uint8):
            arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else images
            nan = " containing NaN" if arr.dtype.kind == "f" and np.isnan(arr).any() else ""
            raise InvalidSubmission(f"{what}: expected uint8 (N, H, W, 3) images, got {dtype}{nan}")
        if images.ndim != 4 or images.shape[-1] != 3:
            raise InvalidSubmission(
                f"{what}: expected uint8 (N, H, W, 3) images, got shape {tuple(images.shape)}"
            )
    try:
        count = len(images)
    except TypeError as exc:
        raise UsageError(f"{what}: expected an array or a sequence of images") from exc
    if count != n:
        raise InvalidSubmission(f"{what}: {count} images for {n} ids")


def _int_array(x: Any, what: str) -> np.ndarray:
    a = np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x)
    if a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
        raise InvalidSubmission(f"{what}: expected a 1-D sequence of integers, got {a.dtype} shape {a.shape}")
    return a.astype(np.int64)


@dataclass(frozen=True)
class ScoreInputs:
    """Where each image of the canonical order sits in the caller's arrays."""

    gt_ids: np.ndarray  # ascending
    gt_pos: np.ndarray  # positions in the caller's gt arrays, aligned with gt_ids
    samples: tuple[int, ...]  # ascending sample indices
    rec_pos: Mapping[int, np.ndarray]  # sample -> positions in the caller's rec arrays, aligned with gt_ids


def validate_inputs(
    gt_ids: NsdIds, gt_images: ImageSet, rec_ids: NsdIds, rec_samples: NsdIds, rec_images: ImageSet
) -> ScoreInputs:
    """Every sample must reconstruct each ground-truth id exactly once; at least 2 ids (2-way needs them)."""
    g = _int_array(gt_ids, "ground-truth ids")
    _check_array(gt_images, len(g), "ground-truth images")
    uniq, counts = np.unique(g, return_counts=True)
    if (counts > 1).any():
        raise InvalidSubmission(f"ground truth: nsd_id {int(uniq[counts > 1][0])} given more than once")
    if len(g) < 2:
        raise InvalidSubmission(
            f"scoring needs at least 2 images (2-way identification is undefined for {len(g)}); "
            f"got nsd_ids {g.tolist()}"
        )
    r = _int_array(rec_ids, "reconstruction ids")
    s = _int_array(rec_samples, "reconstruction samples")
    if len(r) != len(s):
        raise InvalidSubmission(f"reconstructions: {len(r)} ids but {len(s)} sample indices")
    _check_array(rec_images, len(r), "reconstruction images")
    order = np.argsort(g, kind="stable")
    gt_sorted = g[order]
    gt_set = set(gt_sorted.tolist())
    rec_pos: dict[int, np.ndarray] = {}
    for sample in sorted(set(s.tolist())):
        pos = np.nonzero(s == sample)[0]
        ids = r[pos]
        u, c = np.unique(ids, return_counts=True)
        if (c > 1).any():
            raise InvalidSubmission(
                f"sample {sample}: nsd_id {int(u[c > 1][0])} reconstructed more than once"
            )
        extra = sorted(set(ids.tolist()) - gt_set)
        if extra:
            raise InvalidSubmission(f"sample {sample}: nsd_id {extra[0]} has no ground-truth image")
        missing = sorted(gt_set - set(ids.tolist()))
        if missing:
            raise InvalidSubmission(
                f"sample {sample}: no reconstruction for nsd_id {missing[0]} ({len(missing)} missing; "
                f"every sample must cover all {len(gt_sorted)} ground-truth ids)"
            )
        rec_pos[sample] = pos[np.argsort(ids, kind="stable")]
    if not rec_pos:
        raise InvalidSubmission("no reconstructions given")
    return ScoreInputs(gt_sorted, order, tuple(sorted(rec_pos)), rec_pos)


def scope_masks(
    gt_ids: np.ndarray, names: Sequence[str], protocol_ids: Mapping[str, Sequence[int]] | None
) -> dict[str, np.ndarray]:
    """Per protocol, which rows of the canonical order it scores (all, unless protocol_ids names a subset)."""
    out = {}
    known = set(gt_ids.tolist())
    for name in names:
        if protocol_ids is None or name not in protocol_ids:
            out[name] = np.ones(len(gt_ids), bool)
            continue
        wanted = {int(i) for i in protocol_ids[name]}
        outside = sorted(wanted - known)
        if outside:
            raise InvalidSubmission(f"protocol {name}: nsd_id {outside[0]} has no ground-truth image")
        if len(wanted) < 2:
            raise InvalidSubmission(f"protocol {name}: scoring needs at least 2 images; got {len(wanted)}")
        out[name] = np.isin(gt_ids, sorted(wanted))
    return out
