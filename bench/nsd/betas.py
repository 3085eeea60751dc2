"""Masked betas: read one session from HDF5 or NIfTI, and the float32 memory-mapped cache keyed by content."""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import h5py
import numpy as np

from nsdbench import config
from nsdbench.errors import DataError
from nsdbench.files import atomic_path, atomic_write_text
from nsdbench.nsd import layout

CACHE_VERSION = 1


def bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice]:
    """The smallest (X, Y, Z) box holding every voxel of the mask (slab reads touch only that)."""
    idx = np.nonzero(mask)
    if not idx[0].size:
        return (slice(0, 0),) * 3
    return tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)


def h5_shape(path: Path, key: str) -> tuple[int, ...]:
    """Shape of dataset `key` in an HDF5 file; a missing key or unreadable file is a DataError naming it."""
    try:
        with h5py.File(path, "r") as f:
            return tuple(f[key].shape)
    except KeyError:
        raise DataError(f"{path}: no dataset '{key}'") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read HDF5 (truncated or corrupt? {exc})") from None


def hdf5_grid(path: Path) -> tuple[int, tuple[int, int, int]]:
    """(n_trials, (X, Y, Z)) of an HDF5 betas file stored as (trials, Z, Y, X)."""
    shape = h5_shape(path, layout.BETAS_KEY)
    if len(shape) != 4:
        raise DataError(f"{path}: '{layout.BETAS_KEY}' has shape {shape}, expected (trials, Z, Y, X)")
    return shape[0], (shape[3], shape[2], shape[1])


def read_session_hdf5(path: Path, mask: np.ndarray) -> np.ndarray:
    """(n_trials, n_vox) raw betas of one session; voxels in C order over (X, Y, Z), like nii[mask].T."""
    box = bounding_box(mask)
    sub = mask[box]
    try:
        with h5py.File(path, "r") as f:
            ds = f[layout.BETAS_KEY]
            slab = ds[:, box[2], box[1], box[0]]  # (trials, z, y, x)
    except KeyError:
        raise DataError(f"{path}: no dataset '{layout.BETAS_KEY}'") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read HDF5 (truncated or corrupt? {exc})") from None
    return slab.transpose(0, 3, 2, 1)[:, sub]


def nifti_grid(path: Path) -> tuple[int, tuple[int, int, int]]:
    import nibabel as nib

    try:
        shape = nib.load(str(path)).shape
    except (OSError, EOFError, ValueError, nib.filebasedimages.ImageFileError) as exc:
        raise DataError(f"{path}: cannot read NIfTI header ({exc})") from None
    if len(shape) != 4:
        raise DataError(f"{path}: shape {shape}, expected (X, Y, Z, trials)")
    return shape[3], tuple(shape[:3])


def read_session_nifti(path: Path, mask: np.ndarray) -> np.ndarray:
    """(n_trials, n_vox) raw betas of one session from a .nii.gz (X, Y, Z, trials), without float64 copies."""
    import nibabel as nib

    box = bounding_box(mask)
    try:
        img = nib.load(str(path))
        slab = np.asarray(img.dataobj[box[0], box[1], box[2], :])
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise DataError(f"{path}: cannot read NIfTI (truncated or corrupt? {exc})") from None
    return slab[mask[box]].T


def session_file(root: Path, subject: int, session: int, source: str = "auto") -> tuple[Path, str]:
    """The betas file of one session: HDF5 preferred (fast slab reads), else .nii.gz."""
    h5, nii = root / layout.betas_hdf5(subject, session), root / layout.betas_nifti(subject, session)
    if source in ("auto", "hdf5") and h5.is_file():
        return h5, "hdf5"
    if source in ("auto", "nifti") and nii.is_file():
        return nii, "nifti"
    wanted = {"auto": f"{h5} or {nii.name}", "hdf5": str(h5), "nifti": str(nii)}[source]
    raise DataError(f"missing betas file for subject {subject} session {session}: {wanted}")


def check_grid(path: Path, kind: str, mask_grid: tuple[int, ...], roi_path: Path) -> None:
    n, grid = hdf5_grid(path) if kind == "hdf5" else nifti_grid(path)
    if tuple(grid) != tuple(mask_grid):
        raise DataError(
            f"{path}: voxel grid mismatch, betas are {'x'.join(map(str, grid))} (X x Y x Z) "
            f"but ROI {roi_path.name} is {'x'.join(map(str, mask_grid))}"
        )
    if n != layout.TRIALS_PER_SESSION:
        raise DataError(f"{path}: {n} trials, expected {layout.TRIALS_PER_SESSION} per session")


def zscore_rows(x: np.ndarray) -> np.ndarray:
    """Per-voxel z-score over rows (population sd); constant voxels become 0."""
    mu = x.mean(0, dtype=np.float64)
    sd = x.std(0, dtype=np.float64)
    return ((x - mu) / np.where(sd > 0, sd, 1.0)).astype(np.float32)


def file_stamp(path: Path) -> list:
    st = path.stat()
    return [str(path), st.st_size, st.st_mtime_ns]


def cache_key(files: Sequence[Path], params: dict) -> str:
    doc = {"version": CACHE_VERSION, "files": [file_stamp(p) for p in files], "params": params}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]


def cached_betas(
    files: Sequence[tuple[Path, str]],
    mask: np.ndarray,
    roi_path: Path,
    normalize: str,
    params: dict,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Masked betas of the given session files, /300, float32, memory-mapped from the cache."""
    key = cache_key([p for p, _ in files] + [roi_path], {**params, "normalize": normalize})
    folder = config.cache_dir("betas")
    final = folder / f"{key}.npy"
    if final.is_file():
        try:
            return np.load(final, mmap_mode="r")
        except (OSError, ValueError):
            final.unlink(missing_ok=True)  # a damaged cache entry is rebuilt
    n_vox = int(mask.sum())
    with atomic_path(final) as tmp:
        out = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.float32, shape=(len(files) * layout.TRIALS_PER_SESSION, n_vox)
        )
        for i, (path, kind) in enumerate(files):
            raw = read_session_hdf5(path, mask) if kind == "hdf5" else read_session_nifti(path, mask)
            x = raw.astype(np.float32) / np.float32(layout.BETAS_SCALE)
            if normalize == "session-zscore":
                x = zscore_rows(x)
            out[i * layout.TRIALS_PER_SESSION : (i + 1) * layout.TRIALS_PER_SESSION] = x
            if progress is not None:
                progress(1)
        out.flush()
        del out
    atomic_write_text(
        folder / f"{key}.json", json.dumps({"files": [str(p) for p, _ in files], **params}, indent=1)
    )
    return np.load(final, mmap_mode="r")
