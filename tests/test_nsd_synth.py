"""The synthetic NSD has the real layout (keys, dtypes, axis orders, 0/1-based ids) and a decodable signal."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import scipy.io

from nsdbench.nsd import layout, synth

SMALL = {
    "sessions": 2,
    "shared": 20,
    "image_size": 16,
    "missing_shared": 2,
    "grids": {1: (6, 7, 5), 2: (6, 6, 5), 5: (5, 7, 5), 7: (6, 7, 6)},
}


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_layout_matches_real_nsd(synth_root: Path) -> None:
    meta = json.loads((synth_root / layout.SYNTH_META).read_text())
    n_img, n_sess = meta["n_images"], meta["sessions"]
    n_per = meta["images_per_subject"]

    mat = scipy.io.loadmat(synth_root / layout.EXPDESIGN)
    assert mat["masterordering"].shape == (1, n_sess * 750)
    assert mat["subjectim"].shape == (8, n_per)
    assert mat["sharedix"].shape[0] == 1
    assert mat["masterordering"].min() == 1 and mat["masterordering"].max() == n_per  # 1-based
    assert mat["subjectim"].min() >= 1 and mat["subjectim"].max() <= n_img
    # the first columns of subjectim are the shared images for every subject
    n_shared = mat["sharedix"].shape[1]
    for k in range(8):
        assert set(mat["subjectim"][k, :n_shared]) == set(mat["sharedix"][0])

    info = pd.read_csv(synth_root / layout.STIM_INFO, index_col=0)
    assert list(info.columns[:8]) == ["cocoId", "cocoSplit", "cropBox", "loss", "nsdId", "flagged", "BOLD5000",
                                      "shared1000"]  # fmt: skip
    assert [f"subject{k}" for k in range(1, 9)] == list(info.columns[8:16])
    assert [f"subject{k}_rep{r}" for k in range(1, 9) for r in range(3)] == list(info.columns[16:])
    assert len(info) == n_img and (info["nsdId"].to_numpy() == np.arange(n_img)).all()
    assert info["shared1000"].sum() == n_shared

    with h5py.File(synth_root / layout.STIMULI) as f:
        ds = f["imgBrick"]
        assert ds.dtype == np.uint8 and ds.shape == (n_img, 64, 64, 3)

    for s in (1, 2, 5, 7):
        resp = pd.read_csv(synth_root / layout.responses(s), sep="\t")
        assert list(resp.columns) == synth.RESPONSES_COLUMNS and len(resp.columns) == 19
        assert len(resp) == n_sess * 750 and resp["73KID"].min() >= 1
        assert resp["RUN"].max() == 12 and resp["TRIAL"].min() == 1
        grid = tuple(synth.SYNTH_GRIDS[s])
        with h5py.File(synth_root / layout.betas_hdf5(s, 1)) as f:
            assert f["betas"].dtype == np.int16
            assert f["betas"].shape == (750, grid[2], grid[1], grid[0])  # (trials, Z, Y, X)
        for name in layout.ROI_NAMES:
            assert nib.load(synth_root / layout.roi_file(s, name)).shape == grid
            assert (synth_root / layout.ctab_file(s, name)).read_text().startswith("0 Unknown")
        gen = np.asarray(nib.load(synth_root / layout.roi_file(s, "nsdgeneral")).dataobj)
        assert set(np.unique(gen)) == {-1, 0, 1}
    nii = nib.load(synth_root / layout.betas_nifti(1, 1))
    assert nii.shape == (*synth.SYNTH_GRIDS[1], 750) and nii.get_data_dtype() == np.int16
    # no subject other than 1, 2, 5, 7 has data, but per-8-subject rows exist
    assert not (synth_root / layout.responses(3)).exists()
    assert (info["subject3"] == 1).sum() == n_per


def test_legacy_sessions_miss_some_shared_images(synth_root: Path) -> None:
    meta = json.loads((synth_root / layout.SYNTH_META).read_text())
    assert meta["legacy_sessions"] == meta["sessions"] - 1
    info = pd.read_csv(synth_root / layout.STIM_INFO, index_col=0)
    shared = info[info["shared1000"]]
    first = shared[[f"subject1_rep{r}" for r in range(3)]].min(axis=1)
    late = (first > meta["legacy_sessions"] * 750).sum()
    assert late >= synth.SYNTH_MISSING_SHARED


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth.synthesize(tmp_path_factory.mktemp("small") / "nsd", seed=3, **SMALL)


def test_deterministic(small_root: Path, tmp_path: Path) -> None:
    a, b = small_root, synth.synthesize(tmp_path / "b", seed=3, **SMALL)
    da, db = _digest(a), _digest(b)
    assert da.keys() == db.keys()
    # .mat headers and gzip streams carry creation times: compare their arrays, everything else byte for byte
    for rel in da:
        if rel.endswith(".nii.gz"):
            assert np.array_equal(
                np.asarray(nib.load(a / rel).dataobj), np.asarray(nib.load(b / rel).dataobj)
            ), rel
        elif rel.endswith(".mat"):
            ma, mb = scipy.io.loadmat(a / rel), scipy.io.loadmat(b / rel)
            assert all(np.array_equal(ma[k], mb[k]) for k in ("masterordering", "subjectim", "sharedix")), rel
        elif rel.endswith(".hdf5"):
            with h5py.File(a / rel) as fa, h5py.File(b / rel) as fb:
                key = next(iter(fa))
                assert np.array_equal(fa[key][()], fb[key][()]), rel
        else:
            assert da[rel] == db[rel], rel


def test_seed_changes_design_and_scenes() -> None:
    sizes = synth.SynthSizes(**SMALL)
    d3 = synth.make_design(sizes, np.random.default_rng(3))
    d4 = synth.make_design(sizes, np.random.default_rng(4))
    assert not np.array_equal(d3["masterordering"], d4["masterordering"])
    assert synth.make_scenes(5, np.random.default_rng(3)) != synth.make_scenes(5, np.random.default_rng(4))
    # each 10k index appears exactly 3 times and the forced-late shared images are all after the legacy sessions
    counts = np.bincount(d3["masterordering"])[1:]
    assert (counts == 3).all()


def test_existing_dataset_is_kept_and_foreign_folder_refused(small_root: Path, tmp_path: Path) -> None:
    stamp = (small_root / layout.SYNTH_META).stat().st_mtime_ns
    assert synth.synthesize(small_root, seed=3, **SMALL) == small_root
    assert (small_root / layout.SYNTH_META).stat().st_mtime_ns == stamp
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    from nsdbench.errors import UsageError

    with pytest.raises(UsageError, match="exists"):
        synth.synthesize(foreign, seed=1, **SMALL)
    assert (foreign / "keep.txt").exists()
    with pytest.raises(UsageError, match="holds a synthetic NSD with seed 3"):
        synth.synthesize(small_root, seed=4, **SMALL)
    # --force replaces a foreign folder atomically
    synth.synthesize(foreign, seed=1, overwrite=True, **SMALL)
    assert not (foreign / "keep.txt").exists() and (foreign / layout.SYNTH_META).is_file()
    # no temp folders left behind
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert not [p for p in small_root.parent.iterdir() if p.name.startswith(".")]


def test_captions_describe_the_scene() -> None:
    rng = np.random.default_rng(0)
    scene = synth.make_scenes(1, rng)[0]
    caps = synth.captions_for(scene)
    assert len(caps) == 5
    for obj in scene["objects"]:
        name = {"person": "person", "sign": "sign", "face": "face"}.get(obj["category"], obj["category"])
        assert any(name in c for c in caps)
        if obj["category"] in ("circle", "square", "triangle"):
            assert any(f"{obj['color']} {name}" in c for c in caps)
    img = synth.render(scene, 64)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8


def test_ridge_decoder_recovers_pixels(nsd) -> None:
    """The simulated encoding model leaves a linear signal: ridge from betas to 16x16 pixels beats chance."""
    from nsdbench.nsd.splits import get_split, split_betas

    split = get_split(nsd, "nsd982", 1)
    x_tr = split_betas(nsd, split, "train", normalize="train-zscore").astype(np.float64)
    x_te = split_betas(nsd, split, "test", normalize="train-zscore").astype(np.float64)

    def pixels(ids):
        im = nsd.images(ids).astype(np.float64) / 255
        return im.reshape(len(ids), 16, 4, 16, 4, 3).mean((2, 4)).reshape(len(ids), -1)

    y_tr, y_te = pixels(split.train_ids), pixels(split.test_ids)
    mu = y_tr.mean(0)
    w = np.linalg.solve(x_tr.T @ x_tr + 1000.0 * np.eye(x_tr.shape[1]), x_tr.T @ (y_tr - mu))
    pred = x_te @ w + mu
    r = np.corrcoef(y_te, pred)[: len(pred), len(pred) :]
    two_way = ((r < np.diag(r)).sum(0) / (len(pred) - 1)).mean()
    assert two_way > 0.8  # chance is 0.5
    shuffled = np.corrcoef(y_te[::-1], pred)[: len(pred), len(pred) :]
    assert ((shuffled < np.diag(shuffled)).sum(0) / (len(pred) - 1)).mean() < 0.7


def test_floc_voxels_are_category_selective(nsd) -> None:
    """Trials whose image shows a face drive floc-faces voxels far more than the other trials, and a sign
    drives floc-words; the other category makes a much smaller difference in each ROI (Welch t)."""
    ids = nsd.trials(1)["nsd_id"].to_numpy()
    uniq = np.unique(ids).tolist()
    caps = dict(zip(uniq, nsd.captions(uniq), strict=True))

    def t_stat(roi: str, word: str) -> float:
        betas = nsd.betas(1, roi=roi, normalize="session-zscore").astype(np.float64).mean(1)
        has = np.array([any(word in c for c in caps[i]) for i in ids])
        assert 0 < has.sum() < len(has)
        a, b = betas[has], betas[~has]
        return (a.mean() - b.mean()) / np.sqrt(a.var() / len(a) + b.var() / len(b))

    assert t_stat("floc-faces", "face") > 50 and abs(t_stat("floc-faces", "sign")) < 20
    assert t_stat("floc-words", "sign") > 50 and abs(t_stat("floc-words", "face")) < 20


def test_streams_roi_follows_the_simulated_encoding_model(synth_root: Path) -> None:
    """streams: NSD's label table; early = the V1-V3 voxels, ventral = the category-selective (floc) ones."""
    from nsdbench.nsd import open_nsd

    nsd = open_nsd(synth_root)
    for s in (1, 7):
        assert nsd.roi_labels(s, "streams") == {
            0: "Unknown", 1: "early", 2: "midventral", 3: "midlateral", 4: "midparietal",
            5: "ventral", 6: "lateral", 7: "parietal",
        }  # fmt: skip
        streams, vis = nsd.roi(s, "streams"), nsd.roi(s, "prf-visualrois")
        floc = np.zeros(streams.shape, bool)
        for name in ("floc-faces", "floc-words", "floc-places", "floc-bodies"):
            floc |= nsd.roi(s, name) > 0
        np.testing.assert_array_equal(nsd.roi_mask(s, "streams:early"), (vis >= 1) & (vis <= 6))
        np.testing.assert_array_equal(nsd.roi_mask(s, "streams:ventral"), floc & (vis <= 0))
        np.testing.assert_array_equal(streams < 0, nsd.roi(s, "nsdgeneral") < 0)  # -1 outside the brain
        assert set(np.unique(streams)) == set(range(-1, 8))
        # the simulated model gives the ventral voxels category weights and the early ones none
        truth = np.load(synth_root / layout.SYNTH_TRUTH)
        gen = nsd.roi_mask(s, "nsdgeneral")
        cats = truth[f"subj{s:02d}_cats"]
        early = nsd.roi_mask(s, "streams:early")[gen]
        ventral = nsd.roi_mask(s, "streams:ventral")[gen]
        assert np.all(cats[early] == 0) and np.all(cats[ventral].max(1) > 0)
