"""Split rules on the synthetic NSD, recomputed independently from the stim-info csv; full-NSD count checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nsdbench.errors import DataError, UsageError
from nsdbench.nsd import layout
from nsdbench.nsd.splits import (
    SPLITS,
    build_split,
    check_full_counts,
    get_split,
    ids_within,
    split_betas,
    split_test_ids,
    split_within,
    ss897_excluded_positions,
)


def _independent(synth_root: Path, subject: int, last_session: int, shared: bool) -> dict[int, list[int]]:
    """{nsd_id: sorted 0-based global trials} from nsd_stim_info_merged.csv alone."""
    info = pd.read_csv(synth_root / layout.STIM_INFO, index_col=0)
    cutoff = last_session * 750
    out: dict[int, list[int]] = {}
    for _, row in info[(info["shared1000"] == shared) & (info[f"subject{subject}"] == 1)].iterrows():
        trials = sorted(int(row[f"subject{subject}_rep{r}"]) - 1 for r in range(3))
        trials = [t for t in trials if 0 <= t < cutoff]
        if trials:
            out[int(row["nsdId"])] = trials
    return out


@pytest.mark.parametrize("subject", [1, 7])
def test_rules_match_independent_sets(nsd, synth_root: Path, subject: int) -> None:
    meta = json.loads((synth_root / layout.SYNTH_META).read_text())
    legacy, n_sess = meta["legacy_sessions"], meta["sessions"]
    for name, last in (("nsd982", legacy), ("nsd1000", n_sess)):
        sp = get_split(nsd, name, subject)
        test = _independent(synth_root, subject, last, shared=True)
        train = _independent(synth_root, subject, last, shared=False)
        assert sp.sessions == tuple(range(1, last + 1))
        assert sp.test_ids == tuple(sorted(test))
        assert sp.test_trials == tuple(tuple(test[i]) for i in sp.test_ids)
        assert sp.train_ids == tuple(sorted(train))
        assert sp.train_trials == tuple(tuple(train[i]) for i in sp.train_ids)
        assert sp.first_presentation == tuple(sorted(test, key=lambda i: test[i][0]))
        assert sp.order("first-presentation") == sp.first_presentation
        assert sp.order("nsd-ascending") == sp.test_ids == tuple(sorted(sp.first_presentation))
        assert not set(sp.train_ids) & set(sp.test_ids)
    # like the real data: nsd982 < nsd1000, some images have fewer than 3 repetitions in the legacy sessions
    s982, s1000 = get_split(nsd, "nsd982", subject), get_split(nsd, "nsd1000", subject)
    assert set(s982.test_ids) < set(s1000.test_ids)
    assert all(len(t) == 3 for t in s1000.test_trials)
    assert any(len(t) < 3 for t in s982.test_trials)
    assert len(s1000.test_ids) == meta["sizes"]["shared"]


def test_nsd897_uses_the_recorded_positions(nsd, synth_root: Path) -> None:
    meta = json.loads((synth_root / layout.SYNTH_META).read_text())
    s982, s897 = get_split(nsd, "nsd982", 2), get_split(nsd, "nsd897", 2)
    drop = set(meta["ss897_excluded_positions"])
    assert s897.test_ids == tuple(i for k, i in enumerate(s982.test_ids) if k not in drop)
    assert len(drop) == round(len(s982.test_ids) * 85 / 982)
    assert s897.first_presentation == tuple(i for i in s982.first_presentation if i in set(s897.test_ids))
    assert s897.train_ids == s982.train_ids


def test_packaged_exclusion_list() -> None:
    pos = ss897_excluded_positions()
    assert len(pos) == 85 == len(set(pos))
    assert pos[:20] == tuple(range(20)) and max(pos) < 982 and list(pos) == sorted(pos)


def test_split_betas_average_and_normalizations(nsd) -> None:
    sp = get_split(nsd, "nsd982", 5)
    trials = nsd.betas(5, sessions=sp.sessions)
    test = split_betas(nsd, sp, "test")
    for k in (0, 7, len(sp.test_ids) - 1):
        ref = np.mean(
            [trials[t] for t in sp.test_trials[k]], axis=0
        )  # rows = global trials of sessions 1..legacy
        np.testing.assert_allclose(test[k], ref, atol=1e-6)
    train = split_betas(nsd, sp, "train")
    zt = split_betas(nsd, sp, "test", normalize="train-zscore")
    mu, sd = train.astype(np.float64).mean(0), train.astype(np.float64).std(0)
    np.testing.assert_allclose(zt, (test - mu) / sd, atol=1e-5)
    ztr = split_betas(nsd, sp, "train", normalize="train-zscore")
    np.testing.assert_allclose(ztr.mean(0), 0, atol=1e-4)
    sz = split_betas(nsd, sp, "test", normalize="session-zscore")
    zs = nsd.betas(5, sessions=sp.sessions, normalize="session-zscore")
    np.testing.assert_allclose(sz[3], np.mean([zs[t] for t in sp.test_trials[3]], axis=0), atol=1e-6)
    assert test.dtype == np.float32 and test.shape == (len(sp.test_ids), trials.shape[1])


def test_bad_order_and_unavailable_split(nsd) -> None:
    with pytest.raises(UsageError, match="unknown order"):
        get_split(nsd, "nsd982", 1).order("random")
    with pytest.raises(UsageError, match="subject 4"):
        get_split(nsd, "nsd1000", 4)
    assert SPLITS == ("nsd982", "nsd897", "nsd1000")


def test_split_within_is_decided_by_each_subjects_test_ids(nsd) -> None:
    """nsd897 lies within nsd982 within nsd1000 (not the other way); a subject without the split: not within."""
    subjects = (1, 2, 5, 7)
    ids = {n: split_test_ids(nsd, n, subjects) for n in SPLITS}
    for s in subjects:
        assert ids["nsd897"][s] < ids["nsd982"][s] < ids["nsd1000"][s]
        assert ids["nsd982"][s] == set(get_split(nsd, "nsd982", s).test_ids)
    assert split_within(nsd, "nsd897", "nsd982", subjects)
    assert split_within(nsd, "nsd982", "nsd1000", subjects)
    assert not split_within(nsd, "nsd1000", "nsd982", subjects)
    assert split_test_ids(nsd, "nsd982", (1, 4)) is None  # subject 4 has no data
    assert not split_within(nsd, "nsd897", "nsd1000", (1, 4))
    assert ids_within({1: {3}}, {1: {3, 4}}) and not ids_within({1: {5}}, {1: {3, 4}})
    assert not ids_within(None, {1: {3}}) and not ids_within({1: {3}}, None)


# ----------------------------------------------------------------------------- full NSD counts


def full_nsd_trials(late_shared: int = 18, partial_shared: int = 176, late_unique: int = 141) -> pd.DataFrame:
    """A trial table shaped like a subject of the full NSD: 10,000 images x 3 over 40 sessions."""
    rows = []
    for i in range(10_000):
        shared = i < 1000
        if shared and i < late_shared:
            sess = [39, 39, 39]
        elif shared and i < late_shared + partial_shared:
            sess = [1 + i % 37, 1 + (i + 5) % 37, 40]
        elif not shared and i < 1000 + late_unique:
            sess = [38, 39, 40]
        else:
            sess = [1 + i % 37, 1 + (i + 11) % 37, 1 + (i + 23) % 37]
        rows.extend((i, s, shared) for s in sess)
    df = pd.DataFrame(rows, columns=["nsd_id", "session", "shared"])
    df = df.sort_values("session", kind="stable").reset_index(drop=True)
    df["global_trial"] = np.arange(len(df))
    return df


class _FullNSD:
    """The parts of NSD that get_split reads, holding a full-size trial table (73,000 images, 37 legacy sessions)."""

    n_images = 73_000
    legacy_sessions = 37
    synthetic_meta = None
    root = Path("/full-nsd")

    def __init__(self, trials: pd.DataFrame):
        self._t = trials
        self.design = {"masterordering": np.zeros(30_000)}

    def sessions(self, subject: int) -> list[int]:
        return list(range(1, 41))

    def trials(self, subject: int) -> pd.DataFrame:
        return self._t


def test_full_nsd_counts_pass() -> None:
    nsd = _FullNSD(full_nsd_trials())
    s982, s897, s1000 = (get_split(nsd, n, 1) for n in SPLITS)
    assert (len(s982.test_ids), s982.n_test_trials, len(s982.train_ids)) == (982, 2770, 8859)
    assert len(s897.test_ids) == 897 and len(s897.train_ids) == 8859
    assert (len(s1000.test_ids), s1000.n_test_trials, len(s1000.train_ids)) == (1000, 3000, 9000)
    excluded = set(ss897_excluded_positions())
    assert s897.test_ids == tuple(i for k, i in enumerate(s982.test_ids) if k not in excluded)


def test_full_nsd_wrong_counts_fail_loudly() -> None:
    with pytest.raises(DataError, match="nsd982 for subject 2 on the full NSD gives 981 test images"):
        get_split(_FullNSD(full_nsd_trials(late_shared=19)), "nsd982", 2)
    with pytest.raises(DataError, match="8858 train images"):
        get_split(_FullNSD(full_nsd_trials(late_unique=142)), "nsd982", 1)
    with pytest.raises(DataError, match="2771 test trials"):
        get_split(_FullNSD(full_nsd_trials(partial_shared=175)), "nsd982", 1)
    with pytest.raises(DataError, match="expected 982"):
        check_full_counts("nsd982", 1, 980, 2770, 8859)
    check_full_counts("nsd897", 1, 897, 1, 8859)  # trial count not fixed for nsd897
    with pytest.raises(UsageError, match="982-image"):
        # nsd897 is only defined on a 982-image nsd982 (no synthetic list recorded)
        nsd = _FullNSD(full_nsd_trials(late_shared=20))
        nsd.n_images = 1000
        get_split(nsd, "nsd897", 1)


def test_build_split_is_pure() -> None:
    t = full_nsd_trials()
    a = build_split(t, "nsd982", 1, tuple(range(1, 38)))
    b = build_split(t.sample(frac=1.0, random_state=0), "nsd982", 1, tuple(range(1, 38)))
    assert a == b  # row order of the table does not matter
