"""On-disk cache of ground-truth features, keyed by what determines them.

Key = sha256 of (feature pass definition: network, weights version, layers, resize chain,
normalization, precision, forward batch, device type, torch version; weights sha256; image ids; sha256
of the image bytes). Files are plain .npy (read with allow_pickle=False), written atomically.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nsdbench import config
from nsdbench.caches import META_FILE, ArrayCache


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


def features_cache() -> ArrayCache:
    """Ground-truth features: NSDBENCH_HOME/cache/features/<key>/<layer>.npy."""
    return ArrayCache(config.cache_dir("features"))


def load(key: str, layers: Iterable[str]) -> dict[str, np.ndarray] | None:
    """The cached features for every layer, or None when any is missing or unreadable."""
    entry = features_cache().read(key)
    if entry is None or any(layer not in entry.arrays for layer in layers):
        return None
    return {layer: entry.arrays[layer] for layer in layers}


def save(key: str, features: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Path:
    """Write all layers as one cache entry (atomic for readers; an entry already there is kept)."""
    cache = features_cache()
    if (cache.entry_dir(key) / META_FILE).is_file():
        return cache.entry_dir(key)
    return cache.save(key, features, meta)
