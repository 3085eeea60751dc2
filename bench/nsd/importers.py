"""Importers for derivatives users already have: brain-diffuser processed_data and MindEye2 betas files.

Each importer checks the file against the NSD it claims to come from (row counts, voxel counts, and for
brain-diffuser the stimuli in the same order) so rows can be keyed by NSD id / global trial.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from nsdbench import config
from nsdbench.errors import DataError
from nsdbench.files import atomic_path
from nsdbench.nsd import layout
from nsdbench.nsd.betas import cache_key
from nsdbench.nsd.splits import get_split


@dataclass(frozen=True, eq=False)
class BrainDiffuserImport:
    """brain-diffuser's averaged nsdgeneral betas, /300, rows in its first-presentation order (legacy sessions)."""

    subject: int
    folder: Path
    train_ids: tuple[int, ...]
    test_ids: tuple[int, ...]
    train_betas: np.ndarray = field(repr=False)
    test_betas: np.ndarray = field(repr=False)

    def ascending(self, part: str = "test") -> tuple[tuple[int, ...], np.ndarray]:
        """(ids ascending, betas rows reordered to match)."""
        ids = np.array(self.test_ids if part == "test" else self.train_ids)
        x = self.test_betas if part == "test" else self.train_betas
        order = np.argsort(ids, kind="stable")
        return tuple(int(i) for i in ids[order]), x[order]


def _bd_folder(path: Path, subject: int) -> Path:
    path = Path(path).expanduser()
    for cand in (
        path / layout.subj(subject),
        path / "processed_data" / layout.subj(subject),
        path / layout.BD_PROCESSED / layout.subj(subject),
        path,
    ):
        if (cand / f"nsd_test_fmriavg_nsdgeneral_sub{subject}.npy").is_file():
            return cand
    raise DataError(
        f"{path}: no brain-diffuser file nsd_test_fmriavg_nsdgeneral_sub{subject}.npy "
        f"(give the processed_data folder or its {layout.subj(subject)} subfolder)"
    )


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read .npy ({exc})") from None


def import_brain_diffuser(
    nsd, path: str | Path, subject: int, check_images: bool = True
) -> BrainDiffuserImport:
    """Read nsd_{train,test}_fmriavg_nsdgeneral_sub{S}.npy (float, x300 units) and key the rows by NSD id.

    brain-diffuser orders images by first presentation in sessions 1..37 (the nsd982 split and its training
    set); when nsd_{part}_stim_sub{S}.npy is present, its images are compared with imgBrick to prove the order.
    """
    folder = _bd_folder(Path(path), subject)
    split = get_split(nsd, "nsd982", subject)
    n_vox = int(nsd.roi_mask(subject, "nsdgeneral").sum())
    out = {}
    for part, ids in (("train", split.train_first_presentation), ("test", split.first_presentation)):
        f = folder / f"nsd_{part}_fmriavg_nsdgeneral_sub{subject}.npy"
        if not f.is_file():
            raise DataError(f"{f}: missing")
        arr = _load_npy(f)
        if arr.ndim != 2 or arr.shape != (len(ids), n_vox):
            raise DataError(
                f"{f}: shape {arr.shape}, expected ({len(ids)}, {n_vox}) = ({part} images of nsd982, nsdgeneral voxels)"
            )
        stim = folder / f"nsd_{part}_stim_sub{subject}.npy"
        if check_images and stim.is_file():
            _check_stim(nsd, stim, ids)
        out[part] = (ids, (np.asarray(arr, dtype=np.float64) / layout.BETAS_SCALE).astype(np.float32))
    return BrainDiffuserImport(
        subject=subject,
        folder=folder,
        train_ids=out["train"][0],
        test_ids=out["test"][0],
        train_betas=out["train"][1],
        test_betas=out["test"][1],
    )


def _check_stim(nsd, stim: Path, ids: tuple[int, ...]) -> None:
    arr = _load_npy(stim)
    if arr.shape[0] != len(ids) or arr.ndim != 4:
        raise DataError(f"{stim}: shape {arr.shape}, expected ({len(ids)}, S, S, 3)")
    probe = sorted({0, len(ids) // 2, len(ids) - 1, *range(0, len(ids), max(1, len(ids) // 8))})
    ref = nsd.images([ids[k] for k in probe])
    if arr.shape[1:] != ref.shape[1:]:
        return  # resized copies cannot be compared exactly; the row count check stands
    for j, k in enumerate(probe):
        if not np.array_equal(np.asarray(arr[k]), ref[j]):
            raise DataError(
                f"{stim}: row {k} is not image nsd id {ids[k]} (expected brain-diffuser's first-presentation order)"
            )


def import_mindeye2(nsd, path: str | Path, subject: int) -> np.ndarray:
    """MindEye2 `betas_all_subj0S_fp32_renorm.hdf5`: dataset `betas` (n_trials, nsdgeneral voxels) float32,
    rows in global trial order. Returned as-is (MindEye2's own normalization), memory-mapped from the cache."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / Path(layout.me2_betas(subject)).name
    if not path.is_file():
        raise DataError(f"{path}: missing")
    n_vox = int(nsd.roi_mask(subject, "nsdgeneral").sum())
    n_trials = len(nsd.trials(subject))
    try:
        with h5py.File(path, "r") as f:
            if "betas" not in f:
                raise DataError(f"{path}: no dataset 'betas'")
            shape = f["betas"].shape
            if (
                len(shape) != 2
                or shape[1] != n_vox
                or shape[0] > n_trials
                or shape[0] % layout.TRIALS_PER_SESSION
            ):
                raise DataError(
                    f"{path}: betas shape {shape}, expected (k x {layout.TRIALS_PER_SESSION} <= {n_trials} trials, "
                    f"{n_vox} nsdgeneral voxels of subject {subject})"
                )
            key = cache_key([path], {"importer": "mindeye2", "subject": subject})
            folder = config.cache_dir("imported")
            final = folder / f"{key}.npy"
            if not final.is_file():
                with atomic_path(final) as tmp:
                    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
                    step = 4 * layout.TRIALS_PER_SESSION
                    for i in range(0, shape[0], step):
                        out[i : i + step] = f["betas"][i : i + step]
                    out.flush()
                    del out
    except OSError as exc:
        raise DataError(f"{path}: cannot read HDF5 (truncated or corrupt? {exc})") from None
    return np.load(final, mmap_mode="r")
