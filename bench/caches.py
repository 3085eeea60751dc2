"""Content-addressed caches: one key function and one on-disk entry format for everything computed once.

A key is the sha256 of what determines a result (arrays by dtype, shape and bytes; everything else as
JSON). An entry is a folder `<root>/<key>/` of plain .npy files (read with allow_pickle=False) and a
`meta.json`, built in a temp folder and renamed into place, so readers never see half an entry. Fitted
decoders, ridge models, ground-truth features and encoding models all use it, each under its own root.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nsdbench.files import atomic_folder

KEY_FORMAT = 1
META_FILE = "meta.json"
_HASH_BLOCK_BYTES = 1 << 26


def array_digest(h: Any, x: np.ndarray) -> None:
    """Feed an array's dtype, shape and bytes into the hash `h`, a block of rows at a time (memmaps stay lazy)."""
    x = np.asarray(x)
    h.update(f"ndarray|{x.dtype.str}|{x.shape}|".encode())
    if x.ndim == 0 or x.size == 0:
        h.update(np.ascontiguousarray(x).tobytes())
        return
    rows = max(1, _HASH_BLOCK_BYTES // max(1, x[0].nbytes))
    for start in range(0, x.shape[0], rows):
        h.update(memoryview(np.ascontiguousarray(x[start : start + rows])).cast("B"))


def content_key(*parts: Any) -> str:
    """sha256 over numpy arrays (dtype, shape, bytes) and JSON-able parts, in order."""
    h = hashlib.sha256(f"nsdbench-cache/{KEY_FORMAT}".encode())
    for part in parts:
        if isinstance(part, np.ndarray):
            array_digest(h, part)
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    """A complete entry: its folder, its meta.json and its arrays (memory-mapped when read so)."""

    folder: Path
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]


class EntryWriter:
    """Fills an entry's temp folder: arrays saved whole or streamed into writable memmaps."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def open_array(self, name: str, shape: tuple[int, ...], dtype: str | np.dtype) -> np.ndarray:
        """A writable .npy memmap, so large matrices stream to disk chunk by chunk."""
        return np.lib.format.open_memmap(self.folder / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)

    def save_array(self, name: str, x: np.ndarray) -> None:
        np.save(self.folder / f"{name}.npy", np.ascontiguousarray(x), allow_pickle=False)


@dataclass(frozen=True)
class ArrayCache:
    """Entries of named arrays under `root`, one folder per content key."""

    root: Path

    key = staticmethod(content_key)

    def entry_dir(self, key: str) -> Path:
        return Path(self.root) / key

    def read(self, key: str, mmap: bool = False) -> CacheEntry | None:
        """The complete entry, or None when absent or damaged (a damaged entry is recomputed, never trusted)."""
        folder = self.entry_dir(key)
        meta_path = folder / META_FILE
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            arrays = {
                p.name[: -len(".npy")]: np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False)
                for p in sorted(folder.glob("*.npy"))
            }
        except (OSError, ValueError, EOFError):
            return None
        return CacheEntry(folder, meta, arrays)

    def load(self, key: str) -> dict[str, np.ndarray] | None:
        """The entry's arrays in memory, or None."""
        entry = self.read(key)
        return None if entry is None else entry.arrays

    @contextmanager
    def writing(self, key: str, meta: Mapping[str, Any] | None = None) -> Iterator[EntryWriter]:
        """Fill a new entry; it appears whole when the block ends, and not at all when it raises.
        An entry a concurrent writer finished first is kept; a damaged one is replaced."""
        final = self.entry_dir(key)
        replace = final.exists() and self.read(key) is None
        with atomic_folder(final, replace=replace) as tmp:
            yield EntryWriter(tmp)
            (tmp / META_FILE).write_text(json.dumps(dict(meta or {}), indent=1, sort_keys=True, default=str))

    def save(self, key: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None) -> Path:
        with self.writing(key, meta) as writer:
            for name, x in arrays.items():
                writer.save_array(name, np.asarray(x))
        return self.entry_dir(key)

    def get_or_compute(
        self, key: str, compute: Callable[[], Mapping[str, np.ndarray]]
    ) -> dict[str, np.ndarray]:
        cached = self.load(key)
        if cached is not None:
            return cached
        arrays = {k: np.asarray(v) for k, v in compute().items()}
        self.save(key, arrays)
        return arrays
