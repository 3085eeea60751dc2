"""The visual report's input model and the deterministic choice of images to show.

Rendering (report.html, report.plots) works on `ReportData` only, so it does not care whether a run
came from the DuckDB leaderboard or from a run folder; `report.sources` fills ReportData from either.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from nsdbench.errors import UsageError

# (run_id, subject, nsd_id) -> uint8 HxWx3 reconstruction (first sample), or None when it is missing.
ReconFetcher = Callable[[str, int, int], "np.ndarray | None"]
# nsd_ids -> {nsd_id: uint8 HxWx3 ground truth}; ids it cannot provide are left out.
GTFetcher = Callable[[Sequence[int]], "dict[int, np.ndarray]"]

AGG_COLUMNS = ("run", "subject", "metric", "mean", "ci_lo", "ci_hi", "n")
IMAGE_COLUMNS = ("run", "subject", "nsd_id", "metric", "value")


@dataclass(frozen=True)
class RunInfo:
    """One run as the report shows it: identity, where it came from, and its provenance record."""

    run_id: str
    label: str  # display name: method (variant) or submission name
    kind: str  # "score" | "run"
    protocol: str
    subjects: tuple[int, ...]
    split: str = ""
    smoke: bool = False
    source: str = ""  # the leaderboard file or the run folder it was read from
    provenance: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class ReportData:
    """Everything the page needs; build it from a store or a run folder, or by hand in tests.

    aggregates: run, subject ("1".."8" or "mean"), metric, mean, ci_lo, ci_hi, n
    image_scores: run, subject (int), nsd_id (int), metric, value  (per-image value, mean over samples)
    published: reported rows from the papers (columns of leaderboards/data/published_results.csv) or None.
    notes: problems found while reading the inputs, shown at the top of the page.
    unscored_ids: subject -> NSD ids that have reconstructions but no scores (a run not scored yet);
        they are candidates for the grids too.
    """

    runs: list[RunInfo]
    aggregates: pd.DataFrame
    image_scores: pd.DataFrame
    recon: ReconFetcher
    gt: GTFetcher
    published: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)
    unscored_ids: dict[int, set[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.runs:
            raise UsageError("a report needs at least one run")
        ids = [r.run_id for r in self.runs]
        if len(set(ids)) != len(ids):
            raise UsageError(f"run given twice: {sorted({i for i in ids if ids.count(i) > 1})}")
        self.aggregates = _normalize(self.aggregates, AGG_COLUMNS, "aggregates")
        self.aggregates["subject"] = self.aggregates["subject"].astype(str)
        self.image_scores = _normalize(self.image_scores, IMAGE_COLUMNS, "image_scores")
        self.image_scores["subject"] = self.image_scores["subject"].astype(int)
        self.image_scores["nsd_id"] = self.image_scores["nsd_id"].astype(int)

    @property
    def subjects(self) -> list[int]:
        return sorted({s for r in self.runs for s in r.subjects})

    def run(self, run_id: str) -> RunInfo:
        return next(r for r in self.runs if r.run_id == run_id)

    def metrics(self) -> list[str]:
        """Metrics present in the data, in the canonical order."""
        present = set(self.aggregates["metric"]) | set(self.image_scores["metric"])
        return ordered_metrics(present)


def _normalize(df: pd.DataFrame | None, columns: Sequence[str], what: str) -> pd.DataFrame:
    if df is None or (df.empty and not set(columns) <= set(df.columns)):
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise UsageError(f"report {what} table lacks columns {missing} (has {list(df.columns)})")
    return df.loc[:, list(columns)].reset_index(drop=True).copy()


def metric_names() -> tuple[list[str], dict[str, str], dict[str, bool]]:
    """(order, labels, higher_is_better) from nsdbench.metrics.names."""
    from nsdbench.metrics import names

    return list(names.METRIC_ORDER), dict(names.LABELS), dict(names.HIGHER_IS_BETTER)


def ordered_metrics(present: set[str] | Sequence[str]) -> list[str]:
    order, _, _ = metric_names()
    present = set(present)
    return [m for m in order if m in present] + sorted(present - set(order))


def metric_label(metric: str) -> str:
    return metric_names()[1].get(metric, metric)


def higher_is_better(metric: str) -> bool:
    return metric_names()[2].get(metric, True)


# ---------------------------------------------------------------------------------------------------
# Which images the page shows


def choose_ids(data: ReportData, n: int, seed: int, ids: Sequence[int] | None = None) -> dict[int, list[int]]:
    """Per subject, the NSD ids shown in the grids: `ids` as given, else a seeded sample of n.

    Candidates are the ids scored for that subject in any of the runs (or with reconstructions but
    no scores yet). When every subject has at
    least n ids in common, all subjects show the same images (so rows can be compared across
    subjects); otherwise each subject gets its own sample. Output is sorted ascending and depends
    only on (candidates, n, seed).
    """
    subjects = data.subjects
    scores = data.image_scores
    candidates = {
        s: np.union1d(
            scores.loc[scores["subject"] == s, "nsd_id"].to_numpy(dtype=np.int64),
            np.asarray(sorted(data.unscored_ids.get(s, ())), dtype=np.int64),
        )
        for s in subjects
    }
    if ids is not None:
        pinned = list(dict.fromkeys(int(i) for i in ids))
        known = set().union(*(c.tolist() for c in candidates.values())) if candidates else set()
        unknown = [i for i in pinned if i not in known]
        if unknown:
            raise UsageError(
                f"--ids: NSD id {unknown[0]} is not an image of run(s) {', '.join(r.run_id for r in data.runs)} "
                f"(subjects {', '.join(map(str, subjects))}); expected ids of their test images"
            )
        return {s: pinned for s in subjects}
    if n <= 0:
        raise UsageError(f"--n must be positive (got {n})")
    common = None
    for s in subjects:
        common = candidates[s] if common is None else np.intersect1d(common, candidates[s])
    out: dict[int, list[int]] = {}
    for s in subjects:
        pool = common if common is not None and len(common) >= n else candidates[s]
        out[s] = _sample(pool, n, seed)
    return out


def _sample(pool: np.ndarray, n: int, seed: int) -> list[int]:
    pool = np.sort(np.asarray(pool, dtype=np.int64))
    if len(pool) <= n:
        return pool.tolist()
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(pool, size=n, replace=False)).tolist()


def extremes(data: ReportData, run_id: str, metric: str, k: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The k best and k worst (subject, nsd_id, value) of one run on one metric.

    Ties break by subject then nsd id, so the choice is deterministic.
    """
    s = data.image_scores
    rows = s[(s["run"] == run_id) & (s["metric"] == metric)].dropna(subset=["value"])
    rows = rows.loc[:, ["subject", "nsd_id", "value"]]
    hib = higher_is_better(metric)
    best = rows.sort_values(["value", "subject", "nsd_id"], ascending=[not hib, True, True], kind="mergesort")
    worst = rows.sort_values(["value", "subject", "nsd_id"], ascending=[hib, True, True], kind="mergesort")
    return best.head(k).reset_index(drop=True), worst.head(k).reset_index(drop=True)


@dataclass(frozen=True)
class ReportOptions:
    n: int = 48  # images per subject in the grids
    seed: int = 0
    ids: tuple[int, ...] | None = None
    k_extremes: int = 4  # best and worst images per metric and run
    thumb: int = 112  # thumbnail edge in pixels (display size; encoded smaller when over the budget)
    max_bytes: int = 25_000_000  # budget for the embedded thumbnails of one page
    title: str = ""
    command: str = ""  # the command line that produced the page, shown in its footer
