"""Fill `ReportData` from the places runs live: the DuckDB leaderboard (by run id) or a run folder.

A run folder (nsdbench.runs) holds spec.toml, subjXX/<nsd_id>_<sample>.png (and image extras such as
stage-1 images, shown as extra columns) and Parquet score files per protocol; a leaderboard run records
where its images are (the run folder for `run`, the submission for `score`). Images that cannot be
found are reported as missing, never invented.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from nsdbench import config
from nsdbench.errors import DataError, NSDBenchError, UsageError
from nsdbench.leaderboards.aggregate import aggregate_scores
from nsdbench.leaderboards.published import is_papers_protocol, published_wide
from nsdbench.nsd import open_nsd
from nsdbench.report.data import ReportData, RunInfo
from nsdbench.runs.folder import scored_protocols
from nsdbench.runs.spec import SPEC_FILE, read_spec
from nsdbench.score_files import read_parquet_meta

if TYPE_CHECKING:
    from nsdbench.nsd.loader import NSD

IMAGE_NAME = re.compile(r"^(\d+)_(\d+)\.(png|jpg|jpeg|webp)$", re.IGNORECASE)
EXTRA_IMAGE = re.compile(r"^(\d+)_(\d+)\.([a-z0-9][a-z0-9_-]*)\.png$")  # a run's image extras (stage-1 ...)
SUBJECT_DIR = re.compile(r"^subj0*(\d+)$")
# Where a leaderboard run's reconstructions are: the recorded config key, by run kind.
IMAGE_LOCATION_KEYS = {"run": "run_dir", "score": "submission"}
PROVENANCE_COLUMNS = (
    "method",
    "protocol_version",
    "protocol_hash",
    "weights_mode",
    "weights_sha256",
    "seeds",
    "nsdbench_version",
    "git_sha",
    "torch_version",
    "cuda_version",
    "device",
    "precision",
    "submission_sha256",
    "data",
    "brain",
    "config",
    "created_at",
    "recorded_at",
    "status",
)


# ---------------------------------------------------------------------------------------------------
# Reconstructions on disk


class FolderImages:
    """Reconstructions in subjXX/<nsd_id>_<sample>.png under a root (or, with `extra`, the image extra
    subjXX/<nsd_id>_<sample>.<extra>.png); the lowest sample is shown."""

    def __init__(self, root: Path, notes: list[str], label: str, extra: str | None = None) -> None:
        self.root = Path(root)
        self.notes = notes
        self.label = label
        self.extra = extra
        self._index: dict[int, dict[int, Path]] | None = None

    def _match(self, name: str) -> tuple[int, int] | None:
        if self.extra is None:
            fm = IMAGE_NAME.match(name)
        else:
            fm = EXTRA_IMAGE.match(name)
            if fm and fm.group(3) != self.extra:
                return None
        return (int(fm.group(1)), int(fm.group(2))) if fm else None

    def index(self) -> dict[int, dict[int, Path]]:
        if self._index is None:
            index: dict[int, dict[int, Path]] = {}
            if self.root.is_dir():
                for sub in sorted(self.root.iterdir()):
                    m = SUBJECT_DIR.match(sub.name)
                    if not (m and sub.is_dir()):
                        continue
                    chosen: dict[int, tuple[int, Path]] = {}
                    for f in sub.iterdir():
                        key = self._match(f.name)
                        if key:
                            nsd_id, sample = key
                            if nsd_id not in chosen or sample < chosen[nsd_id][0]:
                                chosen[nsd_id] = (sample, f)
                    index[int(m.group(1))] = {i: p for i, (_, p) in chosen.items()}
            self._index = index
        return self._index

    def __call__(self, subject: int, nsd_id: int) -> np.ndarray | None:
        path = self.index().get(subject, {}).get(nsd_id)
        if path is None:
            return None
        return read_image(path, self.notes, self.label)


def read_image(path: Path, notes: list[str], label: str) -> np.ndarray | None:
    """An image file as uint8 RGB; a damaged file becomes a note and a missing tile."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        notes.append(f"run {label}: cannot read {path} ({type(exc).__name__}); shown as missing")
        return None


class SubmissionImages:
    """Reconstructions read from a scored submission, in any format nsdbench.submissions.validation reads.

    `how` holds the reading options the score run recorded (format, order, ids) so that array
    submissions map rows to the same NSD ids as when they were scored.
    """

    def __init__(
        self,
        path: Path,
        notes: list[str],
        label: str,
        subjects: Sequence[int],
        split: str,
        how: dict[str, Any],
        gt: GroundTruth,
    ) -> None:
        self.path, self.notes, self.label = Path(path), notes, label
        self.subjects, self.split, self.how, self.gt = list(subjects), split, how, gt
        self._sub: Any = None
        self._index: dict[tuple[int, int], Any] | None = None

    def _load(self) -> dict[tuple[int, int], Any]:
        if self._index is None:
            from nsdbench.submissions.validation import load_submission

            self._index = {}
            try:
                sub = load_submission(
                    self.path,
                    fmt=self.how.get("format"),
                    order=self.how.get("order"),
                    ids=self.how.get("ids"),
                    subjects=self.subjects,
                )
                if sub.reader.blocks:
                    sub.resolve(self.gt.nsd(), self.split)
            except NSDBenchError as exc:
                self.notes.append(
                    f"run {self.label}: cannot read its submission ({exc}); reconstructions shown as missing"
                )
                return self._index
            self._sub = sub
            for e in sorted(sub.entries, key=lambda e: (e.subject, e.nsd_id, e.sample)):
                self._index.setdefault((e.subject, e.nsd_id), e)
        return self._index

    def __call__(self, subject: int, nsd_id: int) -> np.ndarray | None:
        entry = self._load().get((subject, nsd_id))
        if entry is None:
            return None
        img, problems, _ = self._sub.load(entry)
        if img is None:
            first = problems[0].line() if problems else "unreadable"
            self.notes.append(f"run {self.label}: {first}; shown as missing")
        return img


# ---------------------------------------------------------------------------------------------------
# Run folders


def is_run_folder(path: Path) -> bool:
    return path.is_dir() and (path / SPEC_FILE).is_file()


def run_score_paths(folder: Path, protocol: str) -> list[Path]:
    """The Parquet score files of a run folder under one protocol (scores/<protocol>/subjXX.parquet)."""
    return sorted(
        p for p in (folder / "scores" / protocol).glob("subj*.parquet") if not p.name.startswith(".")
    )


def image_extras(folder: Path) -> list[str]:
    """Names of the image extras (`<id>_<sample>.<name>.png`, e.g. stage-1 images) a run folder holds."""
    names: set[str] = set()
    for sub in folder.glob("subj*"):
        for f in sub.glob("*_*.*.png") if sub.is_dir() else ():
            m = EXTRA_IMAGE.match(f.name)
            if m:
                names.add(m.group(3))
    return sorted(names)


def choose_protocol(folder: Path, protocol: str | None, notes: list[str]) -> str:
    """The protocol a run folder's scores are shown under: the one asked for, else the only one, else the
    configured default when scored, else the first (with a note naming the others)."""
    have = [p for p in scored_protocols(folder) if run_score_paths(folder, p)]
    if protocol:
        if protocol not in have:
            notes.append(
                f"{folder}: no scores under protocol {protocol} (scored: {', '.join(have) or 'none'})"
            )
        return protocol
    if not have:
        return str(config.get("protocol", None))
    default = str(config.get("protocol", None))
    chosen = default if default in have else have[0]
    if len(have) > 1:
        others = ", ".join(p for p in have if p != chosen)
        notes.append(
            f"{folder.name}: showing scores under {chosen}; also scored under {others} "
            f"(give {folder}@PROTOCOL)"
        )
    return chosen


def read_scores(
    paths: Sequence[Path], run_label: str, notes: list[str]
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-image rows [subject, nsd_id, metric, value] of the nsdbench score files among `paths`."""
    frames, meta = [], {}
    for p in paths:
        try:
            info = read_parquet_meta(p)
        except NSDBenchError as exc:
            notes.append(f"run {run_label}: skipped {exc}")
            continue
        try:
            df = pd.read_parquet(p, columns=["level", "subject", "nsd_id", "metric", "value"])
        except (OSError, ValueError, KeyError) as exc:  # pyarrow's errors derive from these
            notes.append(f"run {run_label}: skipped unreadable score file {p} ({type(exc).__name__})")
            continue
        meta = meta or info
        frames.append(df[df["level"] == "image"].drop(columns="level"))
    if not frames:
        return pd.DataFrame(columns=["subject", "nsd_id", "metric", "value"]), meta
    return pd.concat(frames, ignore_index=True), meta


def from_folder(
    folder: Path, notes: list[str], subjects: Sequence[int] | None, protocol: str | None = None
) -> tuple[RunInfo, pd.DataFrame, pd.DataFrame, Any, dict]:
    """A run folder → (RunInfo, aggregates, image_scores, recon fetcher, unscored ids per subject).

    Aggregates are computed from the folder's score files with the leaderboard's own function
    (same bootstrap seed), so they equal what `ingest` records for the run.
    """
    from nsdbench.runs.scores import row_id

    folder = folder.resolve()
    spec, doc = read_spec(folder)
    protocol = choose_protocol(folder, protocol, notes)
    run_id = row_id(str(doc.get("run_id") or spec.run_id), protocol)
    images, meta = read_scores(run_score_paths(folder, protocol), run_id, notes)
    subj = list(spec.subjects)
    if subjects is not None:
        subj = [s for s in subj if s in set(subjects)]
        if not subj:
            raise UsageError(
                f"run {run_id} ({folder}) has subjects {list(spec.subjects)}, none of --subjects "
                f"{list(subjects)}"
            )
    images = images[images["subject"].astype(int).isin(subj)]
    scored = set(images["subject"].astype(int))
    found = FolderImages(folder, notes, run_id)
    unscored: dict[int, set[int]] = {}
    for s in subj:
        if s not in scored:
            notes.append(
                f"run {run_id}: subject {s} has no scores in {folder / 'scores' / protocol} (not scored yet?)"
            )
            unscored[s] = set(found.index().get(s, {}))
    agg = (
        aggregate_scores(images)
        if not images.empty
        else pd.DataFrame(columns=["subject", "metric", "mean", "ci_lo", "ci_hi", "n"])
    )
    if scored and scored != set(subj):
        agg = agg[agg["subject"] != "mean"]  # a mean over some subjects only would mislead
    prov: dict[str, Any] = {"created": doc.get("created", ""), "spec_hash": doc.get("spec_hash", "")}
    prov.update({k: v for k, v in spec.identity().items() if k not in ("subjects",)})
    if meta.get("provenance"):
        prov["scoring"] = meta["provenance"]
    info = RunInfo(
        run_id=run_id,
        label=f"{spec.method} ({spec.variant})" if spec.variant else spec.method,
        kind="run",
        protocol=protocol,
        subjects=tuple(subj),
        split=str(meta.get("split") or spec.split),  # a protocol on a nested split: its own
        smoke=spec.smoke,
        source=str(folder),
        provenance=prov,
    )
    return info, agg, images, lambda s, i: found(s, i), unscored


# ---------------------------------------------------------------------------------------------------
# Leaderboard runs


def _recorded_image_location(row: dict[str, Any]) -> Path | None:
    cfg = row.get("config") or {}
    value = cfg.get(IMAGE_LOCATION_KEYS.get(str(row.get("kind")), ""))
    return Path(value) if isinstance(value, str) and value else None


def from_store(
    store: Any, run_id: str, notes: list[str], subjects: Sequence[int] | None, gt: GroundTruth
) -> tuple[RunInfo, pd.DataFrame, pd.DataFrame, Any]:
    """A leaderboard run → (RunInfo, aggregates, image_scores, recon fetcher)."""
    row = store.run(run_id)
    full = row["id"]
    agg = store.aggregates(full)
    images = store.image_scores(full)
    subj = [int(s) for s in row["subjects"]]
    if subjects is not None:
        subj = [s for s in subj if s in set(subjects)]
        if not subj:
            raise UsageError(
                f"run {full} has subjects {row['subjects']}, none of --subjects {list(subjects)}"
            )
        keep = {str(s) for s in subj}
        if set(row["subjects"]) != set(subj):
            agg = agg[agg["subject"].isin(keep)]  # the recorded 'mean' covers other subjects: drop it
        else:
            agg = agg[agg["subject"].isin(keep | {"mean"})]
        images = images[images["subject"].isin(subj)]
    location = _recorded_image_location(row)
    label = str(row.get("method") or full)
    if location is None:
        notes.append(
            f"run {full}: the leaderboard records no image location; reconstructions shown as missing"
        )
        fetch = _none_fetcher
    elif not location.exists():
        notes.append(
            f"run {full}: its images at {location} no longer exist; reconstructions shown as missing"
        )
        fetch = _none_fetcher
    elif row.get("kind") == "run":
        folder = FolderImages(location, notes, full)
        fetch = lambda s, i: folder(s, i)
    else:
        sub = SubmissionImages(
            location, notes, full, subj, str(row.get("split") or ""), row.get("config") or {}, gt
        )
        fetch = lambda s, i: sub(s, i)
    prov = {k: row.get(k) for k in PROVENANCE_COLUMNS if row.get(k) not in (None, "", {}, [])}
    for k, v in list(prov.items()):
        if hasattr(v, "isoformat"):
            prov[k] = v.isoformat()
    info = RunInfo(
        run_id=full,
        label=label,
        kind=str(row.get("kind") or ""),
        protocol=str(row.get("protocol") or ""),
        subjects=tuple(subj),
        split=str(row.get("split") or ""),
        smoke=bool(row.get("smoke")),
        source=str(store.path),
        provenance=prov,
    )
    return info, agg.rename(columns={"run_id": "run"}), images.rename(columns={"run_id": "run"}), fetch


def _none_fetcher(subject: int, nsd_id: int) -> None:
    return None


# ---------------------------------------------------------------------------------------------------
# Ground truth and reported rows


def recorded_data_root(value: str | None) -> str | None:
    """The NSD a run recorded, as open_nsd takes it: "synthetic:<root>" → <root>; "synthetic" and roots as is."""
    if not value:
        return None
    if value.startswith("synthetic:"):
        return value.split(":", 1)[1] or "synthetic"
    return value


def ground_truth_root(recorded: Sequence[tuple[str, str]], notes: list[str]) -> str | None:
    """The NSD root for the ground truth from what the runs recorded (run id, data); never a silent stand-in."""
    roots = [(run_id, recorded_data_root(d)) for run_id, d in recorded]
    roots = [(run_id, r) for run_id, r in roots if r]
    if not roots:
        return None
    run_id, root = roots[0]
    if root != "synthetic" and not Path(root).exists():
        raise DataError(
            f"run {run_id} was scored against the NSD at {root}, which no longer exists; pass --data NSD_ROOT"
        )
    others = sorted({r for _, r in roots if r != root})
    if others:
        notes.append(
            f"the runs recorded different NSD roots ({', '.join([root, *others])}); ground truth is from "
            f"{root} (choose with --data)"
        )
    return root


class GroundTruth:
    """Stimuli from the NSD (opened on first use); ids the dataset lacks are left out."""

    def __init__(self, data: str | None) -> None:
        self.data = data
        self._nsd: NSD | None = None

    def nsd(self) -> NSD:
        if self._nsd is None:
            self._nsd = open_nsd(self.data)
        return self._nsd

    def __call__(self, nsd_ids: Sequence[int]) -> dict[int, np.ndarray]:
        n = int(self.nsd().n_images)
        valid = [int(i) for i in nsd_ids if 0 <= int(i) < n]
        if not valid:
            return {}
        arr = self.nsd().images(valid)
        return {i: arr[k] for k, i in enumerate(valid)}


def published_rows(runs: Sequence[RunInfo]) -> pd.DataFrame | None:
    """Reported rows comparable to the runs: same split and the same set of subjects in the mean row.

    When a run's protocol is a paper's own protocol, only the rows whose `protocol` column names it are
    shown (as the leaderboard views do). Ablations and
    search iterations are left out (they are in `nsdbench leaderboard --reported`).
    """
    pub = published_wide()
    splits = {r.split for r in runs if r.split}
    subject_sets = {",".join(str(s) for s in sorted(r.subjects)) for r in runs}
    protocols = {r.protocol for r in runs}
    keep = pub["split"].isin(splits)
    keep &= pub["subjects"].str.replace("|", ",", regex=False).isin(subject_sets)
    keep &= ~pub["note"].str.contains("ablation|search iteration", case=False, regex=True)
    papers = {p for p in protocols if is_papers_protocol(p)}
    if papers:  # a paper's protocol: the rows of its board (the published table's protocol column)
        keep &= pub["protocol"].isin(papers)
    rows = pub[keep]
    return rows.reset_index(drop=True) if len(rows) else None


# ---------------------------------------------------------------------------------------------------
# Entry point


def load_report_data(
    runs: Sequence[str],
    db: str | Path | None = None,
    data: str | None = None,
    subjects: Sequence[int] | None = None,
    with_published: bool = True,
) -> ReportData:
    """Each RUN is a run folder (a directory) or a leaderboard run id (or unambiguous prefix)."""
    from nsdbench.leaderboards.store import Store

    if not runs:
        raise UsageError("give at least one RUN (a leaderboard run id or a run folder)")
    notes: list[str] = []
    store = Store(db)
    gt = GroundTruth(data)  # its root is settled below, before any image is read
    infos, aggs, scores, fetchers = [], [], [], {}
    recorded_data = []
    unscored: dict[int, set[int]] = {}
    extras: list[tuple[RunInfo, Path]] = []
    for arg in runs:
        path = Path(arg).expanduser()
        folder_protocol = None
        if not path.is_dir() and "@" in path.name and (path.parent / path.name.rsplit("@", 1)[0]).is_dir():
            folder_protocol = path.name.rsplit("@", 1)[1]
            path = path.parent / path.name.rsplit("@", 1)[0]
        if path.is_dir():
            if not is_run_folder(path):
                raise UsageError(
                    f"{path}: not a run folder (no spec.toml); a RUN is a run folder or a leaderboard run id"
                )
            info, agg, img, fetch, more = from_folder(path, notes, subjects, folder_protocol)
            extras.append((info, path))
            for s, ids in more.items():
                unscored.setdefault(s, set()).update(ids)
            recorded_data.append((info.run_id, str(info.provenance.get("data") or "")))
        elif path.exists():
            raise UsageError(f"{path}: a RUN is a run folder or a leaderboard run id, not a file")
        else:
            if not store.path.exists():
                raise UsageError(f"run {arg!r} not found: no such folder, and no leaderboard at {store.path}")
            try:
                full = store.resolve_id(arg)
            except UsageError as exc:
                raise UsageError(f"run {arg!r} not found: no such folder, and {exc}") from None
            info, agg, img, fetch = from_store(store, full, notes, subjects, gt)
            recorded_data.append((info.run_id, str(info.provenance.get("data") or "")))
            location = Path(str((info.provenance.get("config") or {}).get("run_dir") or ""))
            if info.kind == "run" and str(location) not in ("", ".") and location.is_dir():
                extras.append((info, location))
        if info.run_id in fetchers:
            raise UsageError(f"run {info.run_id} given twice")
        infos.append(info)
        aggs.append(agg.assign(run=info.run_id))
        scores.append(img.assign(run=info.run_id))
        fetchers[info.run_id] = fetch
    for info, folder in extras:  # stage-1 images (and other image extras) beside the final ones
        for extra in image_extras(folder):
            found = FolderImages(folder, notes, f"{info.run_id}:{extra}", extra=extra)
            infos.append(replace(info, run_id=f"{info.run_id}:{extra}", label=f"{info.label} · {extra}"))
            fetchers[f"{info.run_id}:{extra}"] = lambda s, i, f=found: f(s, i)
    if data is None:
        gt.data = ground_truth_root(recorded_data, notes)
    aggregates = pd.concat(aggs, ignore_index=True) if aggs else None
    published = published_rows(infos) if with_published else None

    def recon(run_id: str, subject: int, nsd_id: int) -> np.ndarray | None:
        return fetchers[run_id](subject, nsd_id)

    return ReportData(
        runs=infos,
        aggregates=aggregates,
        image_scores=pd.concat(scores, ignore_index=True),
        recon=recon,
        gt=gt,
        published=published,
        notes=notes,
        unscored_ids=unscored,
    )
