"""Importers round-trip the derivative files the generator wrote (brain-diffuser processed_data, MindEye2)."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from nsdbench.errors import DataError
from nsdbench.nsd import layout
from nsdbench.nsd.importers import import_brain_diffuser, import_mindeye2
from nsdbench.nsd.splits import get_split, split_betas


def test_brain_diffuser_round_trip(nsd, synth_root: Path) -> None:
    imp = import_brain_diffuser(nsd, synth_root / layout.BD_PROCESSED, 1)
    sp = get_split(nsd, "nsd982", 1)
    assert imp.test_ids == sp.first_presentation and imp.train_ids == sp.train_first_presentation
    for part in ("test", "train"):
        ids, x = imp.ascending(part)
        assert ids == (sp.test_ids if part == "test" else sp.train_ids)
        np.testing.assert_allclose(x, split_betas(nsd, sp, part), atol=2e-6)
    # the subject folder itself is accepted too
    assert import_brain_diffuser(nsd, synth_root / layout.BD_PROCESSED / "subj01", 1).test_ids == imp.test_ids


def test_brain_diffuser_wrong_order_or_shape(nsd, synth_root: Path, tmp_path: Path) -> None:
    src = synth_root / layout.BD_PROCESSED / "subj01"
    dst = tmp_path / "subj01"
    shutil.copytree(src, dst)
    stim = np.load(dst / "nsd_test_stim_sub1.npy")
    np.save(dst / "nsd_test_stim_sub1.npy", stim[::-1])  # ascending-vs-first-presentation style mix-up
    with pytest.raises(DataError, match=r"nsd_test_stim_sub1\.npy: row 0 is not image nsd id"):
        import_brain_diffuser(nsd, dst, 1)
    fmri = np.load(src / "nsd_train_fmriavg_nsdgeneral_sub1.npy")
    np.save(dst / "nsd_train_fmriavg_nsdgeneral_sub1.npy", fmri[:-1])
    with pytest.raises(DataError, match=r"nsd_train_fmriavg_nsdgeneral_sub1\.npy: shape"):
        import_brain_diffuser(nsd, dst, 1, check_images=False)
    with pytest.raises(DataError, match="no brain-diffuser file"):
        import_brain_diffuser(nsd, synth_root / layout.BD_PROCESSED, 2)


def test_mindeye2_round_trip(nsd, synth_root: Path) -> None:
    got = import_mindeye2(nsd, synth_root / layout.me2_betas(1), 1)
    raw = np.asarray(nsd.betas(1), dtype=np.float64)
    train = ~nsd.trials(1)["shared"].to_numpy()
    ref = (raw - raw[train].mean(0)) / raw[train].std(0)  # MindEye2-style training-only z-score
    assert got.dtype == np.float32 and got.shape == raw.shape
    np.testing.assert_allclose(got, ref, atol=1e-4)
    assert np.array_equal(import_mindeye2(nsd, synth_root / layout.ME2_DIR, 1), got)  # folder form, cached


def test_mindeye2_wrong_voxels(nsd, tmp_path: Path) -> None:
    path = tmp_path / "betas_all_subj02_fp32_renorm.hdf5"
    with h5py.File(path, "w") as f:
        f.create_dataset("betas", data=np.zeros((750, 7), np.float32))
    with pytest.raises(DataError, match=r"betas shape \(750, 7\).*nsdgeneral voxels of subject 2"):
        import_mindeye2(nsd, path, 2)
    path.write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="cannot read HDF5"):
        import_mindeye2(nsd, path, 2)
