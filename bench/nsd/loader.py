"""Read an NSD root (real, or synthetic with the same layout): trials, images, captions, ROIs and betas.

Sizes are read from the files, never hard-coded. Every inconsistency is a one-line DataError naming the file.
"""

from __future__ import annotations

import hashlib
import json
import sys
import zlib
from functools import cached_property
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from nsdbench import config
from nsdbench.errors import DataError, UsageError
from nsdbench.nsd import layout
from nsdbench.nsd.betas import cached_betas, check_grid, file_stamp, h5_shape, session_file
from nsdbench.nsd.captions import curated_row, read_coco_json, read_curated
from nsdbench.nsd.rois import RoiSpec, label_value, parse_roi, roi_key
from nsdbench.progress import progress_bar

NORMALIZE_TRIALS = ("none", "session-zscore")


def _as_int(arr: np.ndarray, path: Path, key: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.size and not np.all(np.isfinite(arr)):
        raise DataError(f"{path}: '{key}' has non-finite entries")
    out = np.rint(arr).astype(np.int64)
    if arr.size and not np.array_equal(out, arr):
        raise DataError(f"{path}: '{key}' has non-integer entries")
    return out


def read_expdesign(path: Path) -> dict[str, np.ndarray]:
    """masterordering (T,), subjectim (8, n), sharedix (n_shared,), all 1-based as stored, validated."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(path)
    except (OSError, ValueError, NotImplementedError) as exc:
        raise DataError(f"{path}: cannot read MATLAB file ({exc})") from None
    out = {}
    for key in ("masterordering", "subjectim", "sharedix"):
        if key not in mat:
            raise DataError(f"{path}: no variable '{key}'")
        out[key] = _as_int(mat[key], path, key)
    out["masterordering"] = out["masterordering"].ravel()
    out["sharedix"] = out["sharedix"].ravel()
    sim = out["subjectim"]
    if sim.ndim != 2 or sim.shape[0] != layout.N_SUBJECTS:
        raise DataError(
            f"{path}: subjectim has shape {sim.shape}, expected ({layout.N_SUBJECTS}, n_images_per_subject)"
        )
    for key in ("masterordering", "subjectim", "sharedix"):
        if out[key].size and out[key].min() < 1:
            raise DataError(
                f"{path}: '{key}' contains {out[key].min()}; NSD stores it 1-based (a 0-based/1-based mix-up?)"
            )
    mo = out["masterordering"]
    if mo.max() > sim.shape[1]:
        raise DataError(
            f"{path}: masterordering value {mo.max()} out of range 1..{sim.shape[1]} (subjectim columns)"
        )
    n_shared = out["sharedix"].size
    for k in range(layout.N_SUBJECTS):
        if not np.array_equal(np.sort(sim[k, :n_shared]), np.sort(out["sharedix"])):
            raise DataError(f"{path}: subjectim row {k + 1} does not start with the {n_shared} shared images")
    return out


class NSD:
    """One NSD root. Cheap to construct; files are read on first use."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise DataError(f"NSD root {self.root} does not exist")
        for rel in (layout.EXPDESIGN, layout.STIM_INFO, layout.STIMULI):
            if not (self.root / rel).is_file():
                raise DataError(f"{self.root / rel}: missing (is {self.root} an NSD root?)")
        self._trials: dict[int, pd.DataFrame] = {}
        self._rois: dict[tuple[int, str], np.ndarray] = {}

    def __repr__(self) -> str:
        return f"NSD({str(self.root)!r}{', synthetic' if self.is_synthetic else ''})"

    # ------------------------------------------------------------------ metadata

    @cached_property
    def synthetic_meta(self) -> dict | None:
        path = self.root / layout.SYNTH_META
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except ValueError as exc:
            raise DataError(f"{path}: not valid JSON ({exc})") from None

    @property
    def is_synthetic(self) -> bool:
        return self.synthetic_meta is not None

    @property
    def legacy_sessions(self) -> int:
        """Sessions public before 2023-08 (37 on the real NSD; recorded by the synthetic generator)."""
        meta = self.synthetic_meta
        return int(meta["legacy_sessions"]) if meta else layout.LEGACY_SESSIONS

    @cached_property
    def design(self) -> dict[str, np.ndarray]:
        d = read_expdesign(self.root / layout.EXPDESIGN)
        if d["subjectim"].max() > self.n_images:
            raise DataError(
                f"{self.root / layout.EXPDESIGN}: subjectim id {d['subjectim'].max()} > {self.n_images} images"
            )
        return d

    @cached_property
    def shared_ids(self) -> np.ndarray:
        """0-based NSD ids of the shared images, ascending."""
        return np.sort(self.design["sharedix"] - 1)

    @cached_property
    def stim_info(self) -> pd.DataFrame:
        path = self.root / layout.STIM_INFO
        try:
            df = pd.read_csv(path, index_col=0)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot read ({exc})") from None
        need = ["cocoId", "cocoSplit", "nsdId"] + [
            f"subject{k}_rep{r}" for k in range(1, 9) for r in range(3)
        ]
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise DataError(f"{path}: missing columns {', '.join(missing[:4])}")
        if not np.array_equal(df["nsdId"].to_numpy(), np.arange(len(df))):
            raise DataError(f"{path}: nsdId must be the 0-based row number (0..{len(df) - 1})")
        return df

    @cached_property
    def _stim_shape(self) -> tuple[int, ...]:
        path = self.root / layout.STIMULI
        shape = h5_shape(path, layout.STIM_IMAGE_KEY)
        if len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2]:
            raise DataError(f"{path}: {layout.STIM_IMAGE_KEY} has shape {shape}, expected (n, S, S, 3)")
        return shape

    @property
    def n_images(self) -> int:
        return int(self._stim_shape[0])

    @property
    def image_size(self) -> int:
        return int(self._stim_shape[1])

    @cached_property
    def subjects(self) -> list[int]:
        """Subjects with behavioral data (responses.tsv)."""
        return [s for s in range(1, layout.N_SUBJECTS + 1) if (self.root / layout.responses(s)).is_file()]

    def _check_subject(self, subject: int) -> int:
        subject = int(subject)
        if subject not in self.subjects:
            raise UsageError(f"subject {subject} has no data in {self.root} (subjects: {self.subjects})")
        return subject

    def sessions(self, subject: int) -> list[int]:
        """1-based sessions the subject completed (from responses.tsv)."""
        return sorted(int(s) for s in self.trials(subject)["session"].unique())

    def betas_sessions(self, subject: int) -> list[int]:
        """Sessions whose betas file (.hdf5 or .nii.gz) is present."""
        out = []
        for s in self.sessions(subject):
            if (self.root / layout.betas_hdf5(subject, s)).is_file() or (
                self.root / layout.betas_nifti(subject, s)
            ).is_file():
                out.append(s)
        return out

    # ------------------------------------------------------------------ trials

    def trials(self, subject: int) -> pd.DataFrame:
        """One row per trial: global_trial (0-based), session (1-based), run, trial, nsd_id (0-based), shared,
        rep (0-based presentation number), tenk (1-based masterordering value). Checked against all three
        sources of the NSD id (expdesign, responses.tsv 73KID, stim-info subjectK_repN)."""
        subject = self._check_subject(subject)
        if subject not in self._trials:
            self._trials[subject] = self._build_trials(subject)
        return self._trials[subject]

    def _build_trials(self, subject: int) -> pd.DataFrame:
        rpath = self.root / layout.responses(subject)
        try:
            resp = pd.read_csv(rpath, sep="\t")
        except (OSError, ValueError) as exc:
            raise DataError(f"{rpath}: cannot read ({exc})") from None
        for col in ("SUBJECT", "SESSION", "RUN", "TRIAL", "73KID", "10KID"):
            if col not in resp.columns:
                raise DataError(f"{rpath}: missing column {col}")
        if resp.empty:
            raise DataError(f"{rpath}: no trials")
        if not (resp["SUBJECT"] == subject).all():
            raise DataError(f"{rpath}: SUBJECT column is not {subject}")
        sess = resp["SESSION"].to_numpy(np.int64)
        counts = pd.Series(sess).value_counts().sort_index()
        expected = np.arange(1, counts.index.max() + 1)
        if (
            not np.array_equal(counts.index.to_numpy(), expected)
            or (counts != layout.TRIALS_PER_SESSION).any()
        ):
            bad = [int(s) for s in expected if counts.get(s, 0) != layout.TRIALS_PER_SESSION]
            raise DataError(
                f"{rpath}: session(s) {bad[:5]} do not have {layout.TRIALS_PER_SESSION} trials "
                f"(sessions must be 1..N, complete, in order)"
            )
        if np.any(np.diff(sess) < 0):
            raise DataError(f"{rpath}: rows are not in session order")
        n = len(resp)
        t = np.arange(n)
        design = self.design
        mo = design["masterordering"]
        if n > mo.size:
            raise DataError(f"{rpath}: {n} trials but nsd_expdesign.mat masterordering has {mo.size}")
        a = design["subjectim"][subject - 1, mo[:n] - 1] - 1  # from the experimental design
        kid = resp["73KID"].to_numpy()
        b = kid.astype(np.int64) - 1  # responses.tsv, 1-based
        tenk = resp["10KID"].to_numpy(np.int64)
        if not np.array_equal(tenk, mo[:n]):
            self._disagree(rpath, "10KID", tenk, mo[:n], resp, "nsd_expdesign.mat masterordering")
        if b.min() < 0 or b.max() >= self.n_images:
            if b.min() == -1:
                raise DataError(
                    f"{rpath}: 73KID contains 0; NSD stores it 1-based (a 0-based/1-based mix-up?)"
                )
            raise DataError(f"{rpath}: 73KID {int(kid.max())} out of range 1..{self.n_images}")
        if not np.array_equal(a, b):
            if np.array_equal(a, b + 1):
                raise DataError(
                    f"{rpath}: every 73KID is one less than nsd_expdesign.mat gives; "
                    "73KID must be 1-based (a 0-based/1-based mix-up)"
                )
            self._disagree(rpath, "73KID-1", b, a, resp, "nsd_expdesign.mat")
        self._check_stim_info(subject, a, resp)
        rep = pd.Series(mo[:n]).groupby(mo[:n]).cumcount().to_numpy()
        shared = np.isin(a, self.shared_ids)
        return pd.DataFrame(
            {
                "global_trial": t,
                "session": sess,
                "run": resp["RUN"].to_numpy(np.int64),
                "trial": resp["TRIAL"].to_numpy(np.int64),
                "nsd_id": a,
                "shared": shared,
                "rep": rep,
                "tenk": mo[:n],
            }
        )

    def _ids_from_stim_info(self, subject: int, n: int, base: int = 1) -> np.ndarray:
        """NSD id of each global trial from the stim-info csv's subjectK_rep0..2 (1-based trial numbers,
        0 = not shown); -1 where no image lists the trial. base=0 reads the numbers as 0-based (diagnosis)."""
        info = self.stim_info
        path = self.root / layout.STIM_INFO
        if len(info) != self.n_images:
            raise DataError(
                f"{path}: {len(info)} rows but {layout.STIM_IMAGE_KEY} has {self.n_images} images"
            )
        out = np.full(n, -1, np.int64)
        ids = info["nsdId"].to_numpy(np.int64)
        for r in range(3):
            col = f"subject{subject}_rep{r}"
            trial = info[col].to_numpy(np.int64)
            shown = (trial > 0) & (trial - base < n)
            tt = trial[shown] - base
            if np.any(out[tt] >= 0) or len(np.unique(tt)) != len(tt):
                raise DataError(f"{path}: {col} assigns a trial to two images")
            out[tt] = ids[shown]
        return out

    def _check_stim_info(self, subject: int, a: np.ndarray, resp: pd.DataFrame) -> None:
        n = len(a)
        c = self._ids_from_stim_info(subject, n)
        if np.array_equal(a, c):
            return
        path = self.root / layout.STIM_INFO
        c0 = self._ids_from_stim_info(subject, n, base=0)
        if np.array_equal(a[1:], c0[1:]):
            raise DataError(
                f"{path}: subject{subject}_rep0..2 are 0-based trial numbers; NSD stores them 1-based "
                "(a 0-based/1-based mix-up)"
            )
        if np.any(c < 0):
            first = int(np.flatnonzero(c < 0)[0])
            raise DataError(
                f"{path}: no image lists global trial {first + 1} (1-based) in subject{subject}_rep0..2"
            )
        self._disagree(path, f"subject{subject}_repN", c, a, resp, "nsd_expdesign.mat")

    @staticmethod
    def _disagree(
        path: Path, what: str, got: np.ndarray, want: np.ndarray, resp: pd.DataFrame, ref: str
    ) -> None:
        bad = np.flatnonzero(got != want)
        i = int(bad[0])
        r = resp.iloc[i]
        raise DataError(
            f"{path}: {what} gives {int(got[i])} for global trial {i} (session {int(r['SESSION'])}, run "
            f"{int(r['RUN'])}, trial {int(r['TRIAL'])}) but {ref} gives {int(want[i])} ({len(bad)} trials disagree)"
        )

    # ------------------------------------------------------------------ images and captions

    def _check_ids(self, nsd_ids) -> np.ndarray:
        ids = np.asarray(nsd_ids, dtype=np.int64).ravel()
        if ids.size and (ids.min() < 0 or ids.max() >= self.n_images):
            bad = ids[(ids < 0) | (ids >= self.n_images)][0]
            raise DataError(
                f"{self.root / layout.STIMULI}: nsd id {int(bad)} out of range 0..{self.n_images - 1}"
            )
        return ids

    @cached_property
    def stimuli_identity(self) -> str:
        """Which image set this root holds (stimuli file path, size and mtime): features cached per NSD id
        are keyed by it, so a synthetic NSD (or a regenerated one) never shares rows with the real one."""
        path = self.root / layout.STIMULI
        st = path.stat()
        return hashlib.sha256(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]

    def images(self, nsd_ids) -> np.ndarray:
        """uint8 (N, S, S, 3) for the given 0-based NSD ids, in the order given (read lazily)."""
        ids = self._check_ids(nsd_ids)
        if not ids.size:
            return np.zeros((0, self.image_size, self.image_size, 3), np.uint8)
        uniq, inv = np.unique(ids, return_inverse=True)
        path = self.root / layout.STIMULI
        try:
            with h5py.File(path, "r") as f:
                brick = f[layout.STIM_IMAGE_KEY]
                data = np.empty((len(uniq), *brick.shape[1:]), brick.dtype)
                for k, i in enumerate(uniq):  # one read per image: h5py's fancy indexing is ~20x slower
                    brick.read_direct(data, np.s_[int(i)], np.s_[k])
        except OSError as exc:
            raise DataError(f"{path}: cannot read images (truncated or corrupt? {exc})") from None
        return data[inv]

    @cached_property
    def _captions(self):
        ann = self.root / layout.ANNOTATIONS_DIR
        jsons = [ann / name for name in layout.COCO_CAPTIONS if (ann / name).is_file()]
        if jsons:
            return ("coco", read_coco_json(jsons))
        curated = layout.find_curated_captions(self.root)
        if curated is not None:
            return ("curated", read_curated(curated, self.n_images))
        raise DataError(
            f"no captions under {self.root}: expected {ann}/captions_train2017.json or COCO_73k_annots_curated.npy"
        )

    def captions(self, nsd_ids) -> list[list[str]]:
        """COCO captions per image (usually 5), in the order given."""
        ids = self._check_ids(nsd_ids)
        kind, table = self._captions
        if kind == "curated":
            return [curated_row(table[i]) for i in ids]
        coco = self.stim_info["cocoId"].to_numpy(np.int64)
        out = []
        for i in ids:
            caps = table.get(int(coco[i]))
            if not caps:
                raise DataError(
                    f"{self.root / layout.ANNOTATIONS_DIR}: no caption for cocoId {coco[i]} (nsd id {i})"
                )
            out.append(list(caps))
        return out

    # ------------------------------------------------------------------ ROIs

    def roi(self, subject: int, name: str) -> np.ndarray:
        """ROI volume (X, Y, Z) as int; nsdgeneral is -1/0/1 (use > 0)."""
        import nibabel as nib

        subject = int(subject)
        key = (subject, name)
        if key not in self._rois:
            path = self.root / layout.roi_file(subject, name)
            if not path.is_file():
                raise DataError(f"{path}: ROI file missing")
            try:
                arr = np.asarray(nib.load(str(path)).dataobj)
            except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as exc:
                raise DataError(f"{path}: cannot read NIfTI ({exc})") from None
            if arr.ndim != 3:
                raise DataError(f"{path}: ROI has shape {arr.shape}, expected (X, Y, Z)")
            self._rois[key] = np.rint(arr).astype(np.int32)
        return self._rois[key]

    def roi_labels(self, subject: int, name: str) -> dict[int, str]:
        """Label table from nsddata/freesurfer/subjXX/label/NAME.mgz.ctab (lines `<int> <name>`)."""
        path = self.root / layout.ctab_file(int(subject), name)
        if not path.is_file():
            raise DataError(f"{path}: label table missing")
        out: dict[int, str] = {}
        for n, line in enumerate(path.read_text().splitlines(), 1):
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            try:
                out[int(parts[0])] = parts[1]
            except (ValueError, IndexError):
                raise DataError(f"{path}: line {n} is not '<int> <name>': {line!r}") from None
        return out

    def roi_mask(self, subject: int, roi: RoiSpec) -> np.ndarray:
        """Boolean (X, Y, Z) mask of an ROI spec: "nsdgeneral" (positive labels), "streams:early" (one ctab
        label) or a list of them (their union)."""
        subject = int(subject)
        mask: np.ndarray | None = None
        for name, label in parse_roi(roi):
            vol = self.roi(subject, name)
            if label is None:
                part = vol > 0
            else:
                labels = self.roi_labels(subject, name)
                part = vol == label_value(labels, label, str(self.root / layout.ctab_file(subject, name)))
            if mask is not None and part.shape != mask.shape:
                raise DataError(
                    f"{self.root / layout.roi_file(subject, name)}: grid {part.shape} differs from {mask.shape}"
                )
            mask = part if mask is None else mask | part
        assert mask is not None
        if not mask.any():
            raise DataError(
                f"{self.root / layout.roi_file(subject, parse_roi(roi)[0][0])}: ROI {roi_key(roi)} has no voxels"
            )
        return mask

    def roi_paths(self, subject: int, roi: RoiSpec) -> list[Path]:
        """The ROI volume files a spec reads (label tables too when it names labels)."""
        out: list[Path] = []
        for name, label in parse_roi(roi):
            for rel in (
                layout.roi_file(int(subject), name),
                *([layout.ctab_file(int(subject), name)] if label else []),
            ):
                if self.root / rel not in out:
                    out.append(self.root / rel)
        return out

    def roi_voxel_masks(self, subject: int) -> dict[str, np.ndarray]:
        """Boolean masks over the nsdgeneral voxels: V1, V2, V3, V4, early, higher_vis, nsdgeneral."""
        general = self.roi_mask(subject, "nsdgeneral")
        vis = self.roi(subject, "prf-visualrois")
        if vis.shape != general.shape:
            raise DataError(
                f"{self.root / layout.roi_file(subject, 'prf-visualrois')}: grid {vis.shape} differs from nsdgeneral "
                f"{general.shape}"
            )
        labels = self.roi_labels(subject, "prf-visualrois")
        vv = vis[general]
        out = {}
        for area, prefix in (("V1", "V1"), ("V2", "V2"), ("V3", "V3"), ("V4", "hV4")):
            ids = [
                k
                for k, v in labels.items()
                if k > 0 and v.startswith(prefix) and not v.startswith(prefix + "A")
            ]
            if not ids:
                raise DataError(
                    f"{self.root / layout.ctab_file(subject, 'prf-visualrois')}: no label for {area}"
                )
            out[area] = np.isin(vv, ids)
        out["early"] = out["V1"] | out["V2"] | out["V3"] | out["V4"]
        out["higher_vis"] = ~out["early"]
        out["nsdgeneral"] = np.ones(int(general.sum()), bool)
        return out

    # ------------------------------------------------------------------ betas

    def betas(
        self,
        subject: int,
        sessions=None,
        roi: str = "nsdgeneral",
        normalize: str = "none",
        source: str = "auto",
        progress: bool = False,
    ) -> np.ndarray:
        """Masked betas (n_trials, n_vox) float32 in percent signal change (/300), rows in global-trial order
        of the sessions (ascending), voxels in C order over (X, Y, Z). Cached as a memory-mapped .npy."""
        subject = self._check_subject(subject)
        if normalize not in NORMALIZE_TRIALS:
            raise UsageError(
                f"normalize must be one of {NORMALIZE_TRIALS} for trial betas (got {normalize!r})"
            )
        if source not in ("auto", "hdf5", "nifti"):
            raise UsageError(f"source must be auto, hdf5 or nifti (got {source!r})")
        have = self.sessions(subject)
        sessions = have if sessions is None else sorted({int(s) for s in sessions})
        bad = [s for s in sessions if s not in have]
        if bad:
            raise UsageError(f"subject {subject} has no session(s) {bad} (sessions 1..{max(have)})")
        mask = self.roi_mask(subject, roi)
        roi_path, *more_rois = self.roi_paths(subject, roi)
        files = [session_file(self.root, subject, s, source) for s in sessions]
        for path, kind in files:
            check_grid(path, kind, mask.shape, roi_path)
        params = {"subject": subject, "sessions": sessions, "roi": roi_key(roi), "source": source}
        if more_rois:
            params["roi_files"] = [file_stamp(p) for p in more_rois]
        if not progress:
            return cached_betas(files, mask, roi_path, normalize, params)
        with progress_bar(True, len(files), f"betas subj{subject:02d} {roi}", transient=True) as advance:
            return cached_betas(files, mask, roi_path, normalize, params, advance)

    def trial_rows(self, subject: int, sessions) -> pd.Series:
        """global_trial -> row index in `betas(subject, sessions)`."""
        tr = self.trials(subject)
        sel = tr[tr["session"].isin(sorted({int(s) for s in sessions}))]
        return pd.Series(np.arange(len(sel)), index=sel["global_trial"].to_numpy())


def synthetic_root() -> Path:
    return config.home() / "synthetic-nsd"


def open_nsd(data: str | Path | None = None) -> NSD:
    """Open an NSD root. None -> config `data` (NSDBENCH_DATA); unset or "synthetic" -> the synthetic NSD in
    NSDBENCH_HOME, generated on first use."""
    value = config.get("data", data)
    if value is None or str(value) == "synthetic":
        root = synthetic_root()
        from nsdbench.nsd.synth import SYNTH_VERSION, synthesize

        meta = root / layout.SYNTH_META
        if not meta.is_file() or json.loads(meta.read_text()).get("version") != SYNTH_VERSION:
            print(f"generating the synthetic NSD in {root} (first use or new generator)", file=sys.stderr)
            synthesize(root, seed=0, overwrite=root.exists())
        return NSD(root)
    path = Path(str(value)).expanduser()
    if not path.is_dir():
        raise DataError(
            f"NSD root {path} does not exist (set --data PATH, NSDBENCH_DATA, or use 'synthetic')"
        )
    return NSD(path)
