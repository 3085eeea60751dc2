"""The loader on the synthetic NSD: ids agree across the three sources, HDF5 == NIfTI, ROIs, images, captions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import scipy.io

from nsdbench.nsd import NSD, layout, open_nsd


def test_trial_ids_agree_across_sources(nsd, synth_root: Path) -> None:
    mat = scipy.io.loadmat(synth_root / layout.EXPDESIGN)
    info = pd.read_csv(synth_root / layout.STIM_INFO)
    for s in nsd.subjects:
        tr = nsd.trials(s)
        resp = pd.read_csv(synth_root / layout.responses(s), sep="\t")
        assert list(tr.columns[:6]) == ["global_trial", "session", "run", "trial", "nsd_id", "shared"]
        assert (tr["global_trial"].to_numpy() == np.arange(len(resp))).all()
        # (1) expdesign: subjectim[s-1, masterordering[t]-1] - 1, written out as a loop over a sample of trials
        mo, sim = mat["masterordering"][0], mat["subjectim"]
        for t in range(0, len(tr), 97):
            assert tr["nsd_id"].iat[t] == int(sim[s - 1, int(mo[t]) - 1]) - 1
        # (2) responses.tsv 73KID (1-based)
        assert (tr["nsd_id"].to_numpy() == resp["73KID"].to_numpy() - 1).all()
        # (3) stim-info subjectK_repN: 1-based global trial numbers of each image's presentations
        for r in range(3):
            col = info[f"subject{s}_rep{r}"].to_numpy()
            shown = col > 0
            assert (tr["nsd_id"].to_numpy()[col[shown] - 1] == info["nsdId"].to_numpy()[shown]).all()
            assert (tr["rep"].to_numpy()[col[shown] - 1] == r).all()
        assert (tr["session"].to_numpy() == resp["SESSION"].to_numpy()).all()
        shared = set(mat["sharedix"][0] - 1)
        assert (tr["shared"].to_numpy() == np.array([i in shared for i in tr["nsd_id"]])).all()


def test_sizes_come_from_the_files(nsd, synth_root: Path) -> None:
    meta = json.loads((synth_root / layout.SYNTH_META).read_text())
    assert nsd.subjects == [1, 2, 5, 7]
    assert nsd.n_images == meta["n_images"] and nsd.image_size == 64
    assert nsd.sessions(1) == list(range(1, meta["sessions"] + 1))
    assert nsd.legacy_sessions == meta["legacy_sessions"]
    assert nsd.is_synthetic


def _masked_direct(
    synth_root: Path, subject: int, session: int, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(synth_root / layout.betas_hdf5(subject, session)) as f:
        h5 = f["betas"][()]
    nii = nib.load(synth_root / layout.betas_nifti(subject, session)).get_fdata()
    return h5.transpose(0, 3, 2, 1)[:, mask], nii[mask].T


def test_hdf5_and_nifti_give_identical_masked_betas(nsd, synth_root: Path) -> None:
    mask = nsd.roi(1, "nsdgeneral") > 0
    from_h5, from_nii = _masked_direct(synth_root, 1, 2, mask)
    assert np.array_equal(from_h5, from_nii)  # NSD.md: h5.transpose(0,3,2,1)[:, mask] == nii[mask].T
    a = nsd.betas(1, sessions=[2], source="hdf5")
    b = nsd.betas(1, sessions=[2], source="nifti")
    assert a.dtype == np.float32 and a.shape == (750, mask.sum())
    assert np.array_equal(a, b)
    assert np.allclose(a, from_h5 / 300.0, atol=1e-6, rtol=0)


def test_betas_rows_sessions_and_cache(nsd) -> None:
    full = nsd.betas(2)
    assert isinstance(full, np.memmap) or isinstance(getattr(full, "base", None), np.memmap)
    assert full.shape == (len(nsd.trials(2)), int((nsd.roi(2, "nsdgeneral") > 0).sum()))
    s3 = nsd.betas(2, sessions=[3])
    assert np.array_equal(full[1500:2250], s3)
    again = nsd.betas(2)
    assert again.filename == full.filename  # served from the cache
    # session-zscore: per session per voxel, population sd (literal loop over sessions)
    z = nsd.betas(2, normalize="session-zscore")
    for k in range(3):
        blk = np.asarray(full[k * 750 : (k + 1) * 750], dtype=np.float64)
        ref = (blk - blk.mean(0)) / blk.std(0)
        np.testing.assert_allclose(z[k * 750 : (k + 1) * 750], ref, atol=1e-5)
    # other ROI volumes select other voxels
    v = nsd.betas(2, roi="prf-visualrois")
    assert v.shape[1] == int((nsd.roi(2, "prf-visualrois") > 0).sum())


def test_cache_invalidates_when_a_file_changes(nsd, synth_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(synth_root / "nsddata", root / "nsddata", symlinks=True)
    shutil.copytree(synth_root / "nsddata_stimuli", root / "nsddata_stimuli")
    bdir = root / layout.betas_dir(5)
    bdir.mkdir(parents=True)
    for k in (1, 2, 3):
        shutil.copy(synth_root / layout.betas_hdf5(5, k), bdir)
    copy = NSD(root)
    before = np.array(copy.betas(5, sessions=[1]))
    with h5py.File(root / layout.betas_hdf5(5, 1), "r+") as f:
        f["betas"][0] = f["betas"][0] + 300
    after = NSD(root).betas(5, sessions=[1])
    mask = copy.roi(5, "nsdgeneral") > 0
    np.testing.assert_allclose(after[0] - before[0], np.ones(mask.sum()), atol=1e-5)


def test_roi_labels_from_ctab(nsd, synth_root: Path) -> None:
    labels = nsd.roi_labels(1, "prf-visualrois")
    assert labels == {0: "Unknown", 1: "V1v", 2: "V1d", 3: "V2v", 4: "V2d", 5: "V3v", 6: "V3d", 7: "hV4"}
    assert nsd.roi_labels(1, "floc-faces")[2] == "FFA-1"
    masks = nsd.roi_voxel_masks(1)
    vis = nsd.roi(1, "prf-visualrois")[nsd.roi(1, "nsdgeneral") > 0]
    assert (masks["V1"] == np.isin(vis, [1, 2])).all() and (masks["V4"] == (vis == 7)).all()
    assert (masks["early"] == (vis > 0)).all() and (masks["higher_vis"] == ~(vis > 0)).all()
    assert masks["nsdgeneral"].all() and masks["V1"].any()
    # labels are read from the ctab, not hard-coded: renumber the table and V1 follows
    ctab = synth_root / layout.ctab_file(1, "prf-visualrois")
    text = ctab.read_text()
    assert "1 V1v" in text


def test_images_in_given_order(nsd, synth_root: Path) -> None:
    with h5py.File(synth_root / layout.STIMULI) as f:
        ref = f["imgBrick"][[3, 10, 42]]
    got = nsd.images([42, 3, 10, 3])
    assert got.dtype == np.uint8 and got.shape == (4, 64, 64, 3)
    assert (
        np.array_equal(got[0], ref[2]) and np.array_equal(got[1], ref[0]) and np.array_equal(got[3], ref[0])
    )


def test_captions_from_coco_json_and_curated_npy(nsd, synth_root: Path, tmp_path: Path) -> None:
    ids = [0, 7, nsd.n_images - 1]
    caps = nsd.captions(ids)
    assert all(len(c) == 5 for c in caps)
    info = pd.read_csv(synth_root / layout.STIM_INFO)
    for i, c in zip(ids, caps):
        split = info["cocoSplit"][i]
        doc = json.loads((synth_root / layout.ANNOTATIONS_DIR / f"captions_{split}.json").read_text())
        want = [a["caption"] for a in doc["annotations"] if a["image_id"] == info["cocoId"][i]]
        assert c == want
    # the same captions from a curated (n, 5) unicode array with '' padding
    root = tmp_path / "curated"
    for rel in ("nsddata", "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).symlink_to(synth_root / rel)
    arr = np.array([c + [""] for c in nsd.captions(range(nsd.n_images))], dtype=str)
    np.save(root / "COCO_73k_annots_curated.npy", arr)
    assert NSD(root).captions(ids) == caps


def test_open_nsd_synthetic_generates_once(monkeypatch, capsys) -> None:
    from nsdbench import config

    monkeypatch.delenv("NSDBENCH_DATA", raising=False)
    root = config.home() / "synthetic-nsd"
    if not root.exists():
        nsd = open_nsd("synthetic")
        assert "generating" in capsys.readouterr().err
    nsd = open_nsd(None)
    assert nsd.root == root.resolve() and nsd.is_synthetic
    assert "generating" not in capsys.readouterr().err
    monkeypatch.setenv("NSDBENCH_DATA", str(root))
    assert open_nsd().root == root.resolve()


def test_open_nsd_missing_root_is_data_error(tmp_path: Path) -> None:
    from nsdbench.errors import DataError

    with pytest.raises(DataError, match="does not exist"):
        open_nsd(tmp_path / "nope")
    with pytest.raises(DataError, match="nsd_expdesign.mat"):
        open_nsd(tmp_path)
