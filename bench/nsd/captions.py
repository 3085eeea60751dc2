"""COCO captions for NSD images: COCO 2017 caption json (by cocoId and cocoSplit) or the curated (73000, 5) array."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nsdbench.errors import DataError


def read_coco_json(paths: list[Path]) -> dict[int, list[str]]:
    """cocoId -> captions, in annotation order, from COCO-format caption files."""
    out: dict[int, list[str]] = {}
    for path in paths:
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
            for ann in doc["annotations"]:
                out.setdefault(int(ann["image_id"]), []).append(str(ann["caption"]).strip())
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(
                f"{path}: not a readable COCO caption file ({type(exc).__name__}: {exc})"
            ) from None
    return out


def read_curated(path: Path, n_images: int) -> np.ndarray:
    """The brain-diffuser/MindEye `COCO_73k_annots_curated.npy`: (n_images, 5) unicode, '' = padding."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read caption array ({exc})") from None
    if arr.ndim != 2 or arr.shape[0] != n_images or arr.dtype.kind != "U":
        raise DataError(f"{path}: expected a ({n_images}, K) unicode array, got {arr.shape} {arr.dtype}")
    return arr


def curated_row(row: np.ndarray) -> list[str]:
    return [str(c).strip() for c in row if str(c).strip()]
