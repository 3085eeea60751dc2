"""Bad NSD roots give one specific DataError naming the file, never a traceback."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import scipy.io

from nsdbench.errors import DataError, UsageError
from nsdbench.nsd import NSD, layout


def shadow(src: Path, dst: Path, copy: tuple[str, ...] = ()) -> Path:
    """A cheap copy of an NSD root: symlinks to every file, real copies of the files a test will break."""
    for path in src.rglob("*"):
        if path.is_file():
            rel = path.relative_to(src)
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            if str(rel) in copy:
                shutil.copy(path, dst / rel)
            else:
                os.symlink(path, dst / rel)
    return dst


def edited_responses(synth_root: Path, tmp_path: Path, subject: int, edit) -> Path:
    """A shadow root whose responses.tsv for `subject` is `edit(the original DataFrame)`."""
    rel = layout.responses(subject)
    root = shadow(synth_root, tmp_path, copy=(rel,))
    edit(pd.read_csv(root / rel, sep="\t")).to_csv(root / rel, sep="\t", index=False)
    return root


def test_truncated_hdf5_betas(synth_root: Path, tmp_path: Path) -> None:
    rel = layout.betas_hdf5(2, 2)
    root = shadow(synth_root, tmp_path, copy=(rel,))
    size = (root / rel).stat().st_size
    with open(root / rel, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(DataError, match=r"betas_session02\.hdf5.*(truncated|corrupt)"):
        NSD(root).betas(2)


def test_truncated_nifti_betas(synth_root: Path, tmp_path: Path) -> None:
    rel = layout.betas_nifti(1, 1)
    root = shadow(synth_root, tmp_path, copy=(rel,))
    with open(root / rel, "r+b") as f:
        f.truncate((root / rel).stat().st_size // 2)
    with pytest.raises(DataError, match=r"betas_session01\.nii\.gz"):
        NSD(root).betas(1, sessions=[1], source="nifti")


def test_truncated_stimuli(synth_root: Path, tmp_path: Path) -> None:
    root = shadow(synth_root, tmp_path, copy=(layout.STIMULI,))
    with open(root / layout.STIMULI, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(DataError, match="nsd_stimuli.hdf5"):
        NSD(root).images([0])


def test_missing_session_file(synth_root: Path, tmp_path: Path) -> None:
    root = shadow(synth_root, tmp_path)
    (root / layout.betas_hdf5(5, 3)).unlink()
    nsd = NSD(root)
    assert nsd.betas(5, sessions=[1]).shape[0] == 750  # the others still load
    with pytest.raises(
        DataError, match=r"missing betas file for subject 5 session 3: .*betas_session03\.hdf5"
    ):
        nsd.betas(5)
    assert nsd.betas_sessions(5) == [1, 2]


def test_mask_of_the_wrong_grid(synth_root: Path, tmp_path: Path) -> None:
    rel = layout.roi_file(7, "nsdgeneral")
    root = shadow(synth_root, tmp_path, copy=(rel,))
    vol = np.asarray(nib.load(root / rel).dataobj)
    bigger = np.pad(vol, ((0, 1), (0, 0), (0, 0)), constant_values=-1)
    nib.save(nib.Nifti1Image(bigger, np.eye(4)), str(root / rel))
    with pytest.raises(
        DataError,
        match=r"betas_session01.hdf5: voxel grid mismatch, betas are 11x14x10 .* ROI nsdgeneral.nii.gz is 12x14x10",
    ):
        NSD(root).betas(7)


def test_responses_73kid_zero_based(synth_root: Path, tmp_path: Path) -> None:
    def edit(resp: pd.DataFrame) -> pd.DataFrame:
        resp["73KID"] -= 1
        return resp

    root = edited_responses(synth_root, tmp_path, 1, edit)
    with pytest.raises(DataError, match=r"responses\.tsv.*0-based/1-based mix-up"):
        NSD(root).trials(1)


def test_expdesign_zero_based(synth_root: Path, tmp_path: Path) -> None:
    root = shadow(synth_root, tmp_path, copy=(layout.EXPDESIGN,))
    mat = scipy.io.loadmat(root / layout.EXPDESIGN)
    mat = {k: mat[k] for k in ("masterordering", "subjectim", "sharedix")}
    mat["masterordering"] = mat["masterordering"] - 1
    scipy.io.savemat(root / layout.EXPDESIGN, mat)
    with pytest.raises(DataError, match=r"nsd_expdesign\.mat: 'masterordering'.*1-based"):
        NSD(root).trials(1)


def test_stim_info_rep_columns_zero_based(synth_root: Path, tmp_path: Path) -> None:
    root = shadow(synth_root, tmp_path, copy=(layout.STIM_INFO,))
    info = pd.read_csv(root / layout.STIM_INFO, index_col=0)
    for r in range(3):
        col = f"subject2_rep{r}"
        info[col] = np.where(info[col] > 0, info[col] - 1, 0)
    info.to_csv(root / layout.STIM_INFO)
    with pytest.raises(DataError, match=r"nsd_stim_info_merged\.csv: subject2_rep0\.\.2 are 0-based.*mix-up"):
        NSD(root).trials(2)


def test_one_trial_disagrees(synth_root: Path, tmp_path: Path) -> None:
    def edit(resp: pd.DataFrame) -> pd.DataFrame:
        resp.loc[800, "73KID"] = resp.loc[801, "73KID"]
        return resp

    root = edited_responses(synth_root, tmp_path, 5, edit)
    with pytest.raises(
        DataError,
        match=r"responses\.tsv: 73KID-1 .* global trial 800 \(session 2, run 1, trial 51\).*1 trials",
    ):
        NSD(root).trials(5)


def test_ids_out_of_range(nsd, synth_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"nsd id {nsd.n_images} out of range"):
        nsd.images([0, nsd.n_images])
    with pytest.raises(DataError, match="out of range"):
        nsd.captions([-1])

    def edit(resp: pd.DataFrame) -> pd.DataFrame:
        resp.loc[3, "73KID"] = nsd.n_images + 5
        return resp

    root = edited_responses(synth_root, tmp_path, 7, edit)
    with pytest.raises(DataError, match=r"73KID .* out of range"):
        NSD(root).trials(7)


def test_incomplete_session_in_responses(synth_root: Path, tmp_path: Path) -> None:
    root = edited_responses(synth_root, tmp_path, 1, lambda resp: resp.drop(index=[10]))
    with pytest.raises(DataError, match=r"responses\.tsv: session\(s\) \[1\] do not have 750 trials"):
        NSD(root).trials(1)


def test_unknown_subject_split_and_normalization(nsd) -> None:
    from nsdbench.nsd.splits import get_split, split_betas

    with pytest.raises(UsageError, match="subject 3 has no data"):
        nsd.trials(3)
    with pytest.raises(UsageError, match="unknown split"):
        get_split(nsd, "nsd999", 1)
    with pytest.raises(UsageError, match="normalize"):
        split_betas(nsd, get_split(nsd, "nsd982", 1), normalize="zscore")
    with pytest.raises(UsageError, match="no session"):
        nsd.betas(1, sessions=[9])


def test_cli_prints_one_line(synth_root: Path, tmp_path: Path, capsys) -> None:
    from nsdbench.cli import main

    def edit(resp: pd.DataFrame) -> pd.DataFrame:
        resp["73KID"] -= 1
        return resp

    root = edited_responses(synth_root, tmp_path, 1, edit)
    rc = main(["splits", "show", "nsd982", "--subject", "1", "--data", str(root)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "Traceback" not in err and "0-based/1-based" in err
    assert len(err.strip().splitlines()) <= 3  # one message (rich may wrap long paths)
