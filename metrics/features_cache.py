"""On-disk cache of ground-truth features, keyed by what determines them.

Key = sha256 of (feature pass definition: network, weights version, layers, resize chain,
normalization, precision, forward batch, device type, torch version; weights sha256; image ids; sha256
of the image bytes). Files are plain .npy (read with allow_pickle=False), written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nsdbench import config
from nsdbench.files import follow_umask


def images_sha256(items: Iterable[tuple[int, np.ndarray]]) -> str:
    """Content hash of (nsd_id, image) pairs in the given order."""
    h = hashlib.sha256()
    for nsd_id, im in items:
        a = np.ascontiguousarray(im)
        h.update(f"{int(nsd_id)}:{a.dtype}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def cache_key(part: Mapping[str, Any], weights_sha256: str, ids: Iterable[int], content_sha256: str) -> str:
    blob = json.dumps(
        {"part": part, "weights": weights_sha256, "ids": [int(i) for i in ids], "images": content_sha256},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _dir(key: str) -> Path:
    return config.cache_dir("features") / key[:2] / key


def load(key: str, layers: Iterable[str]) -> dict[str, np.ndarray] | None:
    """The cached features for every layer, or None when any is missing or unreadable."""
    d = _dir(key)
    out: dict[str, np.ndarray] = {}
    for layer in layers:
        f = d / f"{layer}.npy"
        if not f.is_file():
            return None
        try:
            out[layer] = np.load(f, allow_pickle=False)
        except (OSError, ValueError):
            return None
    return out


def save(key: str, features: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Path:
    """Write all layers to a temporary folder, then rename it into place (atomic for readers)."""
    final = _dir(key)
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = follow_umask(tempfile.mkdtemp(prefix=f".{key[:8]}-", dir=final.parent))
    try:
        for layer, arr in features.items():
            np.save(tmp / f"{layer}.npy", np.ascontiguousarray(arr), allow_pickle=False)
        (tmp / "meta.json").write_text(json.dumps(dict(meta), indent=1, default=str))
        try:
            os.replace(tmp, final)
        except OSError:  # another process won the race; its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
