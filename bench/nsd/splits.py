"""The fixed test splits nsd982 / nsd897 / nsd1000 and their training sets, defined by rules on the trials.

- nsd982: shared images the subject saw at least once in the legacy sessions (1..37 on the real NSD);
  betas averaged over the available repetitions in those sessions.
- nsd897: nsd982 sorted by ascending NSD id minus the 85 positions in data/ss897_excluded_positions.txt.
  On the synthetic NSD (fewer test images) the generator records its own exclusion list in
  nsdbench_synthetic.json (the same 85/982 fraction of positions, drawn with the seed).
- nsd1000: all shared images over all sessions.
- training set of each: the subject's non-shared images in the same sessions.
On a full NSD (73,000 images, 37 legacy sessions) the counts are checked: 982 / 897 / 1000 test images
and 8859 (9000 for nsd1000) training images for subjects 1, 2, 5, 7.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np
import pandas as pd

from nsdbench.errors import DataError, NSDBenchError, UsageError
from nsdbench.nsd import layout

SPLITS = ("nsd982", "nsd897", "nsd1000")
ORDERS = ("nsd-ascending", "first-presentation")
NORMALIZE = ("none", "train-zscore", "session-zscore")
FULL_NSD_IMAGES = 73_000
# (test images, test trials, train images) on the full NSD for subjects 1, 2, 5, 7.
FULL_COUNTS = {"nsd982": (982, 2770, 8859), "nsd897": (897, None, 8859), "nsd1000": (1000, 3000, 9000)}


@dataclass(frozen=True)
class Split:
    """A test split for one subject: NSD ids (0-based, ascending) with their global trials, and its train set."""

    name: str
    subject: int
    sessions: tuple[int, ...]
    test_ids: tuple[int, ...]
    first_presentation: tuple[int, ...]
    test_trials: tuple[tuple[int, ...], ...]
    train_ids: tuple[int, ...]
    train_first_presentation: tuple[int, ...]
    train_trials: tuple[tuple[int, ...], ...]

    def order(self, kind: str = "nsd-ascending") -> tuple[int, ...]:
        """Test ids in canonical (ascending NSD id) or brain-diffuser's first-presentation order."""
        return _pick_order(kind, self.test_ids, self.first_presentation)

    def train_order(self, kind: str = "nsd-ascending") -> tuple[int, ...]:
        """Training ids in either order, like `order`."""
        return _pick_order(kind, self.train_ids, self.train_first_presentation)

    @property
    def n_test_trials(self) -> int:
        return sum(len(t) for t in self.test_trials)


def ss897_excluded_positions() -> tuple[int, ...]:
    """The 85 positions (0-based, into nsd982 sorted by NSD id) that Second Sight leaves out."""
    text = resources.files("nsdbench").joinpath("data/ss897_excluded_positions.txt").read_text()
    out: list[int] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.extend(int(x) for x in line.replace(",", " ").split())
    return tuple(out)


def group_trials(
    trials: pd.DataFrame, sessions, shared: bool
) -> tuple[dict[int, tuple[int, ...]], tuple[int, ...]]:
    """Pure rule: images (shared or not) with trials in `sessions` -> ({nsd_id: sorted trials}, first-presentation order)."""
    sel = trials[trials["session"].isin(list(sessions)) & (trials["shared"] == shared)]
    sel = sel.sort_values("global_trial")
    groups: dict[int, list[int]] = {}
    for nid, t in zip(sel["nsd_id"].to_numpy(), sel["global_trial"].to_numpy()):
        groups.setdefault(int(nid), []).append(int(t))
    first = tuple(groups)  # dict keeps insertion = first-presentation order
    return {k: tuple(v) for k, v in groups.items()}, first


def select_positions(sorted_ids: tuple[int, ...], excluded: tuple[int, ...], source: str) -> tuple[int, ...]:
    """Drop 0-based positions from an ascending id list (the nsd897 rule)."""
    bad = [p for p in excluded if not 0 <= p < len(sorted_ids)]
    if bad:
        raise DataError(f"{source}: position {bad[0]} out of range 0..{len(sorted_ids) - 1}")
    drop = set(excluded)
    return tuple(i for k, i in enumerate(sorted_ids) if k not in drop)


def check_full_counts(name: str, subject: int, n_test: int, n_test_trials: int, n_train: int) -> None:
    """On the full NSD the published counts must come out; anything else means the data or the rule is wrong."""
    want_test, want_trials, want_train = FULL_COUNTS[name]
    got = (n_test, n_test_trials, n_train)
    if (
        n_test != want_test
        or (want_trials is not None and n_test_trials != want_trials)
        or n_train != want_train
    ):
        raise DataError(
            f"{name} for subject {subject} on the full NSD gives {got[0]} test images / {got[1]} test trials / "
            f"{got[2]} train images; expected {want_test} / {want_trials or 'any'} / {want_train}"
        )


def build_split(
    trials: pd.DataFrame,
    name: str,
    subject: int,
    sessions: tuple[int, ...],
    excluded: tuple[int, ...] = (),
    excluded_source: str = "",
) -> Split:
    """Pure: a Split from a trial table (columns global_trial, session, nsd_id, shared)."""
    test, test_first = group_trials(trials, sessions, shared=True)
    train, train_first = group_trials(trials, sessions, shared=False)
    test_ids = tuple(sorted(test))
    if name == "nsd897":
        test_ids = select_positions(test_ids, excluded, excluded_source)
        keep = set(test_ids)
        test_first = tuple(i for i in test_first if i in keep)
    train_ids = tuple(sorted(train))
    return Split(
        name=name,
        subject=subject,
        sessions=tuple(sessions),
        test_ids=test_ids,
        first_presentation=test_first,
        test_trials=tuple(test[i] for i in test_ids),
        train_ids=train_ids,
        train_first_presentation=train_first,
        train_trials=tuple(train[i] for i in train_ids),
    )


def _pick_order(kind: str, ascending: tuple[int, ...], first: tuple[int, ...]) -> tuple[int, ...]:
    if kind == "nsd-ascending":
        return ascending
    if kind == "first-presentation":
        return first
    raise UsageError(f"unknown order {kind!r} (known: {', '.join(ORDERS)})")


def get_split(nsd, name: str, subject: int) -> Split:
    """The named split for one subject of an opened NSD (checked against the published counts on the full NSD)."""
    if name not in SPLITS:
        raise UsageError(f"unknown split {name!r} (known: {', '.join(SPLITS)})")
    subject = int(subject)
    have = nsd.sessions(subject)  # UsageError for a subject without data
    legacy = nsd.legacy_sessions
    all_sessions = nsd.design["masterordering"].size // layout.TRIALS_PER_SESSION
    if name == "nsd1000":
        sessions = tuple(range(1, all_sessions + 1))
    else:
        sessions = tuple(range(1, legacy + 1))
    missing = [s for s in sessions if s not in have]
    if missing:
        raise UsageError(
            f"{name} needs sessions {sessions[0]}..{sessions[-1]}; subject {subject} has {have[0]}..{have[-1]}"
        )
    excluded: tuple[int, ...] = ()
    source = ""
    if name == "nsd897":
        meta = nsd.synthetic_meta
        if meta is not None and "ss897_excluded_positions" in meta:
            excluded = tuple(int(p) for p in meta["ss897_excluded_positions"])
            source = str(nsd.root / layout.SYNTH_META)
        else:
            excluded = ss897_excluded_positions()
            source = "nsdbench/data/ss897_excluded_positions.txt"
            n982 = len(build_split(nsd.trials(subject), "nsd982", subject, sessions).test_ids)
            if n982 != 982:
                raise UsageError(
                    f"nsd897 is defined on the 982-image nsd982 set; subject {subject} has {n982}"
                )
    split = build_split(nsd.trials(subject), name, subject, sessions, excluded, source)
    if (
        nsd.n_images == FULL_NSD_IMAGES
        and legacy == layout.LEGACY_SESSIONS
        and subject in layout.DATA_SUBJECTS
    ):
        check_full_counts(name, subject, len(split.test_ids), split.n_test_trials, len(split.train_ids))
    return split


def split_test_ids(nsd, name: str, subjects) -> dict[int, set[int]] | None:
    """Test ids of split `name` per subject (None where a subject has no such split, e.g. lacks sessions)."""
    try:
        return {int(s): {int(i) for i in get_split(nsd, name, s).test_ids} for s in subjects}
    except NSDBenchError:
        return None


def ids_within(inner: dict[int, set[int]] | None, outer: dict[int, set[int]] | None) -> bool:
    """True when every subject's `inner` ids lie within its `outer` ids (False where either is missing)."""
    return inner is not None and outer is not None and all(inner[s] <= outer[s] for s in outer)


def split_within(nsd, inner: str, outer: str, subjects) -> bool:
    """True when split `inner` is nested in split `outer` for these subjects: a protocol on `inner` scores a
    subset of the images made for `outer` (decided by the subjects' split ids, not by the names)."""
    if inner == outer:
        return True
    return ids_within(split_test_ids(nsd, inner, subjects), split_test_ids(nsd, outer, subjects))


def average_rows(betas: np.ndarray, rows: pd.Series, groups: tuple[tuple[int, ...], ...]) -> np.ndarray:
    """Mean of the rows of each group of global trials -> (n_groups, n_vox) float32 (accumulated in float64)."""
    lookup = np.full(int(rows.index.max()) + 1, -1, np.int64)
    lookup[rows.index.to_numpy()] = rows.to_numpy()
    out = np.empty((len(groups), betas.shape[1]), np.float32)
    for k, g in enumerate(groups):
        idx = np.sort(lookup[list(g)])
        if idx[0] < 0:
            raise DataError(f"trial(s) {list(g)} are not in the loaded sessions")
        out[k] = betas[idx].mean(0, dtype=np.float64)
    return out


def split_betas(
    nsd,
    split: Split,
    part: str = "test",
    roi: str = "nsdgeneral",
    normalize: str = "none",
    progress: bool = False,
) -> np.ndarray:
    """Repetition-averaged betas (n_ids, n_vox) float32, rows aligned with test_ids / train_ids.

    normalize: none (/300 only), session-zscore (per session per voxel, before averaging), or train-zscore
    (brain-diffuser: mean/std per voxel of the training images' averaged betas, applied to both parts).
    """
    if part not in ("test", "train"):
        raise UsageError(f"part must be 'test' or 'train' (got {part!r})")
    if normalize not in NORMALIZE:
        raise UsageError(f"normalize must be one of {', '.join(NORMALIZE)} (got {normalize!r})")
    trial_norm = "session-zscore" if normalize == "session-zscore" else "none"
    betas = nsd.betas(
        split.subject, sessions=split.sessions, roi=roi, normalize=trial_norm, progress=progress
    )
    rows = nsd.trial_rows(split.subject, split.sessions)
    groups = split.test_trials if part == "test" else split.train_trials
    out = average_rows(betas, rows, groups)
    if normalize == "train-zscore":
        train = out if part == "train" else average_rows(betas, rows, split.train_trials)
        mu = train.mean(0, dtype=np.float64)
        sd = train.std(0, dtype=np.float64)
        out = ((out - mu) / np.where(sd > 0, sd, 1.0)).astype(np.float32)
    return out
