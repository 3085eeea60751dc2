"""Write reconstructions in every submission format, and make demo submissions from the ground truth.

The demo transform is an integer box blur (exact integer arithmetic, identical on every machine and
library version), so the shipped drift golden set can be regenerated instead of stored.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nsdbench.errors import UsageError
from nsdbench.nsd.splits import get_split

Key = tuple[int, int, int]  # (subject, nsd_id, sample)
WRITE_FORMATS = ("folder", "manifest", "npy", "npz", "pt", "hdf5", "tar")
TRANSFORMS = ("blur", "identity", "shuffle")


def box_blur(img: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2r+1)² window with edge padding, rounded half up; exact integer arithmetic."""
    if radius <= 0:
        return img.copy()
    k = 2 * radius + 1
    a = np.pad(img.astype(np.int64), ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    c = np.zeros((a.shape[0] + 1, a.shape[1] + 1, a.shape[2]), dtype=np.int64)
    c[1:, 1:] = a.cumsum(0).cumsum(1)
    s = c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]
    area = k * k
    return ((s + area // 2) // area).astype(np.uint8)


def demo_images(
    nsd: Any,
    split_name: str,
    subjects: Sequence[int],
    transform: str = "blur",
    radius: int = 3,
    samples: int = 1,
    limit: int | None = None,
) -> dict[Key, np.ndarray]:
    """Reconstructions made from the ground truth: blurred (radius grows with the sample index),
    identical, or shuffled (each id gets the next id's image: a chance-level baseline)."""
    if transform not in TRANSFORMS:
        raise UsageError(f"unknown transform {transform!r}; expected one of {', '.join(TRANSFORMS)}")
    out: dict[Key, np.ndarray] = {}
    for s in subjects:
        ids = list(get_split(nsd, split_name, s).test_ids)[: limit or None]
        gt = nsd.images(ids)
        for i, nsd_id in enumerate(ids):
            for k in range(samples):
                if transform == "blur":
                    img = box_blur(gt[i], radius + k)
                elif transform == "identity":
                    img = gt[i].copy()
                else:
                    img = gt[(i + 1 + k) % len(ids)].copy()
                out[(int(s), int(nsd_id), k)] = img
    return out


def encode_image_bytes(img: np.ndarray, fmt: str = "PNG", quality: int = 95) -> bytes:
    """Encode an image as PNG (or JPEG/WebP/... by `fmt`) bytes, as a submitter's writer would."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _stack(
    images: Mapping[Key, np.ndarray], subject: int, channels_first: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """One subject's images as (N, H, W, 3) (or (N, S, ...) with several samples) and ascending ids."""
    keys = sorted(k for k in images if k[0] == subject)
    ids = sorted({k[1] for k in keys})
    samples = sorted({k[2] for k in keys})
    arr = np.stack([np.stack([images[(subject, i, s)] for s in samples]) for i in ids])  # (N, S, H, W, 3)
    if len(samples) == 1:
        arr = arr[:, 0]
    if channels_first:
        arr = np.moveaxis(arr, -1, -3)
    return np.ascontiguousarray(arr), np.asarray(ids, dtype=np.int64)


def write_submission(
    images: Mapping[Key, np.ndarray],
    out: str | Path,
    fmt: str = "folder",
    image_format: str = "png",
    channels_first: bool = False,
    as_float: bool = False,
    with_ids: bool = True,
) -> Path:
    """Write `images` in submission format `fmt`; returns the path to give to `nsdbench score`.

    Array formats hold ids as `nsd_ids` (per subject `subjXX_nsd_ids`) unless with_ids=False, in which
    case ids are ascending (score with --order nsd-ascending, like MindEye2's *_all_recons.pt).
    """
    out = Path(out)
    subjects = sorted({k[0] for k in images})
    ext = "jpg" if image_format.lower() in ("jpg", "jpeg") else "png"
    pil_fmt = "JPEG" if ext == "jpg" else "PNG"

    def conv(a: np.ndarray) -> np.ndarray:
        return (a.astype(np.float32) / 255.0) if as_float else a

    if fmt == "folder":
        for (s, i, k), img in sorted(images.items()):
            d = out / f"subj{s:02d}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{i}_{k}.{ext}").write_bytes(encode_image_bytes(img, pil_fmt))
        return out
    if fmt == "manifest":
        import pandas as pd

        rows = []
        for (s, i, k), img in sorted(images.items()):
            rel = f"images/s{s}_{i}_{k}.{ext}"
            (out / "images").mkdir(parents=True, exist_ok=True)
            (out / rel).write_bytes(encode_image_bytes(img, pil_fmt))
            rows.append({"subject": s, "nsd_id": i, "sample": k, "path": rel})
        pd.DataFrame(rows).to_csv(out / "manifest.csv", index=False)
        return out
    if fmt == "tar":
        out.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(out, "w") as tf:
            for n, ((s, i, k), img) in enumerate(sorted(images.items())):
                key = f"sample{n:06d}"
                for name, data in (
                    (f"{key}.{ext}", encode_image_bytes(img, pil_fmt)),
                    (f"{key}.json", json.dumps({"subject": s, "nsd_id": i, "sample": k}).encode()),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    stacks = {s: _stack(images, s, channels_first) for s in subjects}
    if fmt in ("npy", "pt") and (len(subjects) == 1 and (fmt == "npy" or not with_ids)):
        arr, ids = stacks[subjects[0]]
        if fmt == "npy":
            np.save(out, conv(arr))
            if with_ids:
                np.save(out.with_name(out.stem + "_ids.npy"), ids)
        else:
            import torch

            torch.save(torch.from_numpy(conv(arr)), out)
        return out
    if fmt == "npy":
        raise UsageError("format npy holds one subject; use npz, pt or hdf5 for several")
    if fmt == "npz":
        payload = {}
        for s, (arr, ids) in stacks.items():
            payload[f"subj{s:02d}"] = conv(arr)
            if with_ids:
                payload[f"subj{s:02d}_nsd_ids"] = ids
        np.savez(out, **payload)
        return out
    if fmt == "pt":
        import torch

        tensors = {}
        for s, (arr, ids) in stacks.items():
            tensors[f"subj{s:02d}"] = torch.from_numpy(conv(arr))
            if with_ids:
                tensors[f"subj{s:02d}_nsd_ids"] = torch.from_numpy(ids)
        torch.save(tensors, out)
        return out
    if fmt == "hdf5":
        import h5py

        with h5py.File(out, "w") as f:
            for s, (arr, ids) in stacks.items():
                g = f.create_group(f"subj{s:02d}")
                g.create_dataset("images", data=conv(arr))
                if with_ids:
                    g.create_dataset("nsd_ids", data=ids)
        return out
    raise UsageError(f"unknown submission format {fmt!r}; expected one of {', '.join(WRITE_FORMATS)}")
