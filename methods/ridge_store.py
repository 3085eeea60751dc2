"""On-disk cache of fitted ridge models: content-hash keys and a pickle-free folder of .npy files."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from nsdbench import config
from nsdbench.errors import DataError

FORMAT_VERSION = 1
_HASH_BLOCK_BYTES = 1 << 26


def array_digest(h: hashlib._Hash, x: np.ndarray) -> None:
    """Feed an array's dtype, shape and bytes into `h`, a block of rows at a time (memmaps stay lazy)."""
    x = np.asarray(x)
    h.update(f"{x.dtype.str}|{x.shape}|".encode())
    if x.ndim == 0 or x.size == 0:
        h.update(np.ascontiguousarray(x).tobytes())
        return
    rows = max(1, _HASH_BLOCK_BYTES // max(1, x[0].nbytes))
    for start in range(0, x.shape[0], rows):
        h.update(memoryview(np.ascontiguousarray(x[start : start + rows])).cast("B"))


def content_key(arrays: list[np.ndarray], meta: dict[str, Any]) -> str:
    """sha256 over the arrays' contents and a JSON description of everything else that shapes the result."""
    h = hashlib.sha256()
    h.update(json.dumps({"format": FORMAT_VERSION, **meta}, sort_keys=True, default=str).encode())
    for x in arrays:
        array_digest(h, x)
    return h.hexdigest()


def cache_root() -> Path:
    return config.cache_dir("ridge")


def entry_dir(key: str) -> Path:
    return cache_root() / key


class EntryWriter:
    """Write a cache entry into a temporary folder next to its final place; `commit` renames it."""

    def __init__(self, key: str):
        self.key = key
        self.final = entry_dir(key)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{key[:16]}-", dir=cache_root()))

    def open_array(self, name: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        """A writable .npy memmap, so large weight matrices stream to disk chunk by chunk."""
        return np.lib.format.open_memmap(self.tmp / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)

    def save_array(self, name: str, x: np.ndarray) -> None:
        np.save(self.tmp / f"{name}.npy", np.asarray(x), allow_pickle=False)

    def commit(self, meta: dict[str, Any]) -> Path:
        (self.tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
        if self.final.exists():  # a concurrent writer finished first: keep theirs
            shutil.rmtree(self.tmp, ignore_errors=True)
            return self.final
        try:
            os.replace(self.tmp, self.final)
        except OSError:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return self.final

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def read_entry(key: str) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """(meta, arrays memory-mapped read-only) of a complete entry, or None when absent."""
    folder = entry_dir(key)
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        arrays = {p.stem: np.load(p, mmap_mode="r", allow_pickle=False) for p in sorted(folder.glob("*.npy"))}
    except (ValueError, OSError) as exc:
        raise DataError(f"ridge cache entry {folder} is unreadable ({exc}); delete it to refit") from None
    if meta.get("format") != FORMAT_VERSION:
        return None
    return meta, arrays
