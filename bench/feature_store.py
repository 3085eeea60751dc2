"""Per-NSD-id feature stores: features of NSD images computed once, memory-mapped, shared by every user.

A store is keyed by its extractor's identity (e.g. "clip-vit-l14/vision-257x768/fp16/<weights sha>") and
holds one row per NSD id: `rows.bin` (raw rows, appended) plus `ids.npy` (the NSD id of each committed row,
the presence index). A batch is appended to rows.bin first, then ids.npy is replaced atomically: a process
killed mid-write leaves rows past the index, which the next writer cuts off. Writers hold a file lock, so
subjects, methods and workers can fill one store concurrently.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nsdbench import config
from nsdbench.errors import DataError, UsageError
from nsdbench.files import atomic_write_bytes, atomic_write_text

STORE_FORMAT = 1


def default_root() -> Path:
    """NSDBENCH_HOME/cache/features-per-id."""
    return config.cache_dir("features-per-id")


def store_dirname(extractor_id: str, shape: tuple[int, ...], dtype: np.dtype) -> str:
    """Pure: a readable, collision-free folder name for (extractor identity, row shape, dtype)."""
    ident = json.dumps([extractor_id, list(shape), np.dtype(dtype).str])
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", extractor_id).strip("-")[:60] or "features"
    return f"{slug}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"


class FeatureStore:
    """Rows of shape `shape` and dtype `dtype` per NSD id, on disk under root/<extractor>-<hash>/."""

    def __init__(self, root: Path, extractor_id: str, shape: tuple[int, ...], dtype) -> None:
        self.extractor_id = str(extractor_id)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        if not self.extractor_id or any(s <= 0 for s in self.shape):
            raise UsageError(f"feature store: need an extractor id and a positive shape (got {shape})")
        self.path = Path(root) / store_dirname(self.extractor_id, self.shape, self.dtype)
        self.path.mkdir(parents=True, exist_ok=True)
        self._rows_path = self.path / "rows.bin"
        self._ids_path = self.path / "ids.npy"
        self._row_bytes = int(np.prod(self.shape)) * self.dtype.itemsize
        self._check_meta()

    def __repr__(self) -> str:
        return f"FeatureStore({self.extractor_id!r}, {self.shape}, {self.dtype}, {len(self)} ids)"

    def _check_meta(self) -> None:
        meta = {
            "format": STORE_FORMAT,
            "extractor_id": self.extractor_id,
            "shape": list(self.shape),
            "dtype": self.dtype.str,
        }
        path = self.path / "meta.json"
        if not path.is_file():
            atomic_write_text(path, json.dumps(meta, indent=2) + "\n")
            return
        try:
            found = json.loads(path.read_text())
        except ValueError as exc:
            raise DataError(f"{path}: not valid JSON ({exc}); delete {self.path} to rebuild") from None
        if found != meta:
            raise DataError(f"{path}: store holds {found}, expected {meta}; delete {self.path} to rebuild")

    # ------------------------------------------------------------------ index

    def _read_ids(self) -> np.ndarray:
        if not self._ids_path.is_file():
            return np.zeros(0, np.int64)
        try:
            ids = np.load(self._ids_path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(
                f"{self._ids_path}: unreadable presence index ({exc}); delete {self.path}"
            ) from None
        size = self._rows_path.stat().st_size if self._rows_path.is_file() else 0
        if ids.ndim != 1 or ids.dtype != np.int64 or size < len(ids) * self._row_bytes:
            raise DataError(
                f"{self._ids_path}: index of {ids.shape} {ids.dtype} does not match {self._rows_path} "
                f"({size} bytes); delete {self.path} to rebuild"
            )
        return ids

    def _row_of(self) -> dict[int, int]:
        return {int(n): r for r, n in enumerate(self._read_ids())}

    def __len__(self) -> int:
        return len(self._read_ids())

    def __contains__(self, nsd_id: object) -> bool:
        return int(nsd_id) in set(self._read_ids().tolist())  # type: ignore[call-overload]

    def missing(self, nsd_ids: Sequence[int]) -> list[int]:
        """The given ids not yet stored, ascending and without repeats."""
        have = set(self._read_ids().tolist())
        return sorted({int(n) for n in nsd_ids} - have)

    # ------------------------------------------------------------------ read and write

    def get(self, nsd_ids: Sequence[int]) -> np.ndarray:
        """Stored rows (len(nsd_ids), *shape) in the order given; an id not stored is an error."""
        row_of = self._row_of()
        absent = [int(n) for n in nsd_ids if int(n) not in row_of]
        if absent:
            raise DataError(f"{self.path}: NSD id {absent[0]} has no stored features ({self.extractor_id})")
        out = np.empty((len(nsd_ids), *self.shape), self.dtype)
        if not len(nsd_ids):
            return out
        rows = np.fromiter((row_of[int(n)] for n in nsd_ids), np.int64, len(nsd_ids))
        mm = np.memmap(self._rows_path, self.dtype, "r", shape=(len(row_of), *self.shape))
        out[:] = mm[rows]
        del mm
        return out

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.path / "lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def put(self, nsd_ids: Sequence[int], rows: np.ndarray) -> None:
        """Commit rows for ids (ids already stored are skipped): append, fsync, then replace the index."""
        ids = [int(n) for n in nsd_ids]
        rows = np.asarray(rows)
        if rows.shape != (len(ids), *self.shape):
            raise DataError(
                f"feature store {self.extractor_id}: computed shape {rows.shape}, expected {(len(ids), *self.shape)}"
            )
        if not np.issubdtype(rows.dtype, np.number) and rows.dtype != np.bool_:
            raise DataError(f"feature store {self.extractor_id}: computed dtype {rows.dtype} is not numeric")
        with self._locked():
            have = self._read_ids()
            known = set(have.tolist())
            keep = []
            for i, n in enumerate(ids):
                if n not in known:
                    known.add(n)
                    keep.append(i)
            if not keep:
                return
            data = np.ascontiguousarray(rows[keep], dtype=self.dtype)
            with open(self._rows_path, "ab") as fh:
                fh.truncate(len(have) * self._row_bytes)  # rows of a writer killed before its commit
                fh.write(memoryview(data).cast("B"))
                fh.flush()
                os.fsync(fh.fileno())
            buf = io.BytesIO()
            np.save(buf, np.concatenate([have, np.asarray([ids[i] for i in keep], np.int64)]))
            atomic_write_bytes(self._ids_path, buf.getvalue())

    def get_or_compute(
        self,
        nsd_ids: Sequence[int],
        compute: Callable[[list[int]], np.ndarray],
        batch_size: int,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Rows for `nsd_ids` (in the order given), computing only the missing ids, ascending, in batches of
        `batch_size` (the last may be shorter), each committed as soon as it is computed."""
        if int(batch_size) < 1:
            raise UsageError(f"feature store: batch_size must be >= 1 (got {batch_size})")
        todo = self.missing(nsd_ids)
        for start in range(0, len(todo), int(batch_size)):
            batch = todo[start : start + int(batch_size)]
            self.put(batch, np.asarray(compute(batch)))
            if progress is not None:
                progress(len(batch))
        return self.get(nsd_ids)


@dataclass(frozen=True)
class Extractor:
    """One feature of the NSD images: its store identity, row shape and dtype, and the batch function."""

    name: str
    identity: str
    shape: tuple[int, ...]
    dtype: str
    compute: Callable[[list[int]], np.ndarray]


def stored_features(
    extractor: Extractor,
    nsd_ids: Sequence[int],
    batch_size: int,
    progress: Callable[[int], None] | None = None,
    *,
    dataset: str,
) -> np.ndarray:
    """Rows (len(nsd_ids), *shape) from the shared per-id store, computing only the ids not yet stored.
    `dataset` names the image set (`SubjectData.data_identity`): NSD ids of different roots never mix."""
    store = FeatureStore(default_root(), f"{dataset}/{extractor.identity}", extractor.shape, extractor.dtype)
    if progress is not None:
        progress(len(nsd_ids) - len(store.missing(nsd_ids)))  # rows already stored count as done
    return store.get_or_compute(list(nsd_ids), extractor.compute, batch_size, progress=progress)
