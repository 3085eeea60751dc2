"""Leaderboard views: pick one run per method, gather its aggregates, add the published rows.

Views read the store read-only and never compute anything that is not also stored, except the
subject mean for a subset of a run's subjects (`--subjects`), which reuses the ingest aggregation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from nsdbench import config
from nsdbench.errors import UsageError
from nsdbench.leaderboards.aggregate import aggregate_scores
from nsdbench.leaderboards.published import (
    PAPER_METHODS,
    is_papers_protocol,
    other_test_set,
    reported_rows,
)
from nsdbench.leaderboards.store import Store, subjects_key
from nsdbench.metrics.bootstrap import paired_bootstrap
from nsdbench.metrics.names import BRAIN_ROIS, HIGHER_IS_BETTER, LABELS, METRIC_ORDER, order_key
from nsdbench.metrics.protocols import get_protocol
from nsdbench.nsd.splits import SPLITS


@dataclass(frozen=True)
class Cell:
    mean: float
    lo: float | None = None
    hi: float | None = None
    n: int | None = None
    circular: bool = False  # brain correlation of a run guided by the metric's own encoder


@dataclass
class Row:
    method: str
    origin: str  # "reproduced" | "reported"
    subjects: str
    cells: dict[str, Cell]
    run_id: str = ""
    source: str = ""  # reported: "paper, Table N"
    note: str = ""
    smoke: bool = False
    protocol: str = ""  # reported: the protocol the paper's evaluation follows ("" if none of nsdbench's)
    test_set: str = ""  # reported on a test set nsdbench cannot reproduce: what it is (never ranked)


@dataclass
class Table:
    title: str
    scope: str  # "mean" or the subject number
    metrics: list[str]
    rows: list[Row]


@dataclass
class Leaderboard:
    split: str
    protocol: str
    subjects: tuple[int, ...] | None
    tables: list[Table]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        metrics = sorted({m for t in self.tables for m in t.metrics}, key=_order)
        d["metrics"] = {
            m: {"label": LABELS.get(m, m), "higher_is_better": HIGHER_IS_BETTER.get(m, True)} for m in metrics
        }
        return d


def _order(name: str) -> int:
    return order_key(name)


def resolve_scope(protocol: str | None, split: str | None) -> tuple[str, str]:
    """Protocol (flag > config) and split (flag > the protocol's split > config)."""
    protocol = protocol or str(config.get("protocol"))
    if split:
        return protocol, split
    try:
        return protocol, get_protocol(protocol).split
    except ImportError:
        return protocol, str(config.get("split"))


def _better(metric: str, a: float, b: float) -> bool:
    return a > b if HIGHER_IS_BETTER.get(metric, True) else a < b


def select_runs(
    runs: pd.DataFrame,
    store: Store,
    best_by: str | None,
    pinned: list[str],
) -> list[dict[str, Any]]:
    """One run per method: the pinned run, else the best by `best_by` (mean row), else the latest."""
    chosen: dict[str, dict[str, Any]] = {}
    pinned_ids = [store.resolve_id(r) for r in pinned]
    by_id = {r["id"]: r for r in runs.to_dict("records")}
    for rid in pinned_ids:
        if rid not in by_id:
            raise UsageError(f"run {rid} does not match the leaderboard filters (split, protocol, subjects)")
        chosen[by_id[rid]["method"]] = by_id[rid]
    for method, group in runs.groupby("method", sort=True):
        if method in chosen:
            continue
        records = group.sort_values(["created_at", "id"], ascending=[False, True]).to_dict("records")
        if best_by:
            best, best_val = None, None
            for r in records:
                agg = store.aggregates(r["id"])
                val = agg[(agg["subject"] == "mean") & (agg["metric"] == best_by)]["mean"]
                if len(val) and (best_val is None or _better(best_by, float(val.iloc[0]), best_val)):
                    best, best_val = r, float(val.iloc[0])
            chosen[method] = best or records[0]
        else:
            chosen[method] = records[0]
    return [chosen[m] for m in sorted(chosen)]


def run_aggregates(
    store: Store, run: dict[str, Any], subjects: tuple[int, ...] | None, n_resamples: int
) -> pd.DataFrame:
    """Stored aggregates, or recomputed over a subset of the run's subjects."""
    run_subjects = tuple(int(s) for s in str(run["subjects"]).split(","))
    if subjects is None or tuple(sorted(subjects)) == tuple(sorted(run_subjects)):
        return store.aggregates(run["id"])
    images = store.image_scores(run["id"])
    images = images[images["subject"].isin(subjects)]
    return aggregate_scores(images, n_resamples=n_resamples, seed=0)


def _cells(agg: pd.DataFrame, scope: str) -> dict[str, Cell]:
    sub = agg[agg["subject"] == scope]
    return {
        r["metric"]: Cell(float(r["mean"]), _f(r["ci_lo"]), _f(r["ci_hi"]), int(r["n"]))
        for r in sub.to_dict("records")
    }


CIRCULAR_NOTE = "‡ brain correlation of a run guided by the metric's own encoding model (circular)"


def is_circular(run: dict[str, Any]) -> bool:
    """Whether a runs row was guided by the brain-correlation metric's own encoder (set at ingest)."""
    import json

    cfg = run.get("config")
    if isinstance(cfg, str):
        cfg = json.loads(cfg) if cfg else {}
    return bool((cfg or {}).get("circular_brain", False))


def mark_circular(cells: dict[str, Cell]) -> dict[str, Cell]:
    from dataclasses import replace

    return {m: replace(c, circular=True) if m in BRAIN_ROIS else c for m, c in cells.items()}


def _f(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and np.isnan(x)) else float(x)


def build_leaderboard(
    store: Store,
    split: str | None = None,
    protocol: str | None = None,
    subjects: tuple[int, ...] | None = None,
    metrics: list[str] | None = None,
    include_smoke: bool = False,
    runs: list[str] | None = None,
    best_by: str | None = None,
    reported: bool = True,
    per_subject: bool = True,
    n_resamples: int = 2000,
    other_test_sets: bool = False,
) -> Leaderboard:
    """The leaderboard for one (split, protocol): a subject-mean table and one table per subject.

    Reported rows on a test set nsdbench cannot reproduce come beside runs of the paper's own method,
    or everywhere with `other_test_sets`; they carry `test_set` and are never ranked.
    """
    protocol, split = resolve_scope(protocol, split)
    if split not in SPLITS:
        raise UsageError(f"--split: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if metrics:
        unknown = [m for m in metrics if m not in METRIC_ORDER]
        if unknown:
            raise UsageError(f"unknown metric {unknown[0]!r}; expected names from {', '.join(METRIC_ORDER)}")
    if best_by and best_by not in METRIC_ORDER:
        raise UsageError(f"unknown metric {best_by!r} for --best-by")
    notes: list[str] = []
    all_runs = store.runs(include_smoke=True)
    pinned = list(runs or [])
    if len(all_runs):
        mask = (
            (all_runs["split"] == split)
            & (all_runs["protocol"] == protocol)
            & (all_runs["status"] == "complete")
        )
        if subjects:
            want = set(subjects)
            mask &= all_runs["subjects"].map(lambda s: want <= {int(x) for x in str(s).split(",")})
        cand = all_runs[mask]
        pinned_full = {store.resolve_id(r) for r in pinned}
        n_smoke = int((cand["smoke"] & ~cand["id"].isin(pinned_full)).sum())
        if not include_smoke:
            cand = cand[~cand["smoke"] | cand["id"].isin(pinned_full)]
            if n_smoke:
                notes.append(
                    f"{n_smoke} smoke run(s) (random/tiny weights) hidden; --include-smoke shows them"
                )
        if cand.empty:
            here = all_runs[(all_runs["split"] == split) & (all_runs["protocol"] == protocol)]
            if here.empty:
                others = sorted(set(all_runs["protocol"] + " on " + all_runs["split"]))
                notes.append(f"no runs under protocol {protocol} on {split}; recorded: {', '.join(others)}")
            elif subjects:
                notes.append(f"no run under {protocol} on {split} covers subjects {subjects_key(subjects)}")
    else:
        cand = all_runs
        notes.append(f"no runs recorded in {store.path}")
    selected = select_runs(cand, store, best_by, pinned) if len(cand) else []

    aggs = {r["id"]: run_aggregates(store, r, subjects, n_resamples) for r in selected}
    present = {m for a in aggs.values() for m in a["metric"]}
    rep = (
        board_reported(reported_rows(), split, protocol, {r["method"] for r in selected}, other_test_sets)
        if reported
        else pd.DataFrame(columns=["split", "metric", "test_set"])
    )
    if reported and is_papers_protocol(protocol) and not (rep["test_set"] == "").any():
        notes.append(f"no published rows under protocol {protocol} on {split} in the shipped table")
    if metrics:
        cols = [m for m in METRIC_ORDER if m in metrics]
    else:
        cols = [m for m in METRIC_ORDER if m in present or (not present and m in set(rep["metric"]))]

    def reproduced_row(r: dict[str, Any], scope: str) -> Row | None:
        cells = _cells(aggs[r["id"]], scope)
        if not cells:
            return None
        if is_circular(r):
            cells = mark_circular(cells)
            if CIRCULAR_NOTE not in notes:
                notes.append(CIRCULAR_NOTE)
        run_subjects = (
            subjects_key(subjects)
            if subjects and scope == "mean"
            else (r["subjects"] if scope == "mean" else scope)
        )
        return Row(
            r["method"],
            "reproduced",
            run_subjects,
            cells,
            run_id=r["id"],
            smoke=bool(r["smoke"]),
            note="smoke" if r["smoke"] else "",
        )

    def reported_for(subject_set: str | None) -> list[Row]:
        if rep.empty:
            return []
        sel = rep if subject_set is None else rep[rep["subjects"] == subject_set]
        out = []
        for (src, tbl, method, subj, note, proto, test_set), g in sel.groupby(
            ["source", "table", "method", "subjects", "note", "protocol", "test_set"], sort=False
        ):
            cells = {m: Cell(float(v)) for m, v in zip(g["metric"], g["value"]) if m in cols}
            if not cells:
                continue
            out.append(
                Row(
                    method,
                    "reported",
                    subj,
                    cells,
                    source=f"{src}, Table {tbl}",
                    note=note,
                    protocol=proto,
                    test_set=test_set,
                )
            )
        return out

    tables: list[Table] = []
    mean_rows = [row for r in selected if (row := reproduced_row(r, "mean"))]
    if subjects:
        mean_rep = reported_for(subjects_key(subjects))
    else:
        mean_rep = [
            row
            for row in reported_for(None)
            if "," in row.subjects
            or len(selected) == 0
            or row.subjects in {str(r["subjects"]) for r in selected}
        ]
    tables.append(Table(f"{split} · {protocol} · subject mean", "mean", cols, mean_rows + mean_rep))
    if per_subject:
        subj_set = (
            sorted(subjects)
            if subjects
            else sorted({int(s) for r in selected for s in str(r["subjects"]).split(",")})
        )
        for s in subj_set:
            rows = [row for r in selected if (row := reproduced_row(r, str(s)))]
            if rows:
                tables.append(
                    Table(f"{split} · {protocol} · subject {s}", str(s), cols, rows + reported_for(str(s)))
                )
    return Leaderboard(split, protocol, tuple(subjects) if subjects else None, tables, notes)


def board_reported(
    rep: pd.DataFrame, split: str, protocol: str, methods: set[str], other_test_sets: bool
) -> pd.DataFrame:
    """The reported rows a (split, protocol) board shows, with `test_set` ("" when on `split`).

    A paper's own protocol shows only the rows of that evaluation; nsdbench's own protocols show every
    paper's rows on the split. Rows on a test set no nsdbench split reproduces come when asked for, or
    when the board has a run of the paper's method, and only where their protocol does not differ.
    """
    from nsdbench.nsd.splits import SPLITS

    own = is_papers_protocol(protocol)
    fits = (rep["protocol"] == protocol) if own else pd.Series(True, index=rep.index)
    on_split = rep[(rep["split"] == split) & fits].assign(test_set="")
    wanted = rep["source"].map(lambda s: other_test_sets or bool(methods & set(PAPER_METHODS.get(s, ()))))
    other = rep[~rep["split"].isin(list(SPLITS)) & (fits | (rep["protocol"] == "")) & wanted]
    other = other.assign(test_set=[other_test_set(s, sp) for s, sp in zip(other["source"], other["split"])])
    return pd.concat([on_split, other], ignore_index=True)


def compare_runs(
    store: Store,
    run_a: str,
    run_b: str,
    metrics: list[str] | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    allow_protocol_mismatch: bool = False,
) -> dict[str, Any]:
    """Paired bootstrap of A − B per metric over the (subject, nsd_id) images both runs scored."""
    unknown = [m for m in metrics or [] if m not in HIGHER_IS_BETTER]
    if unknown:
        raise UsageError(f"unknown metric {unknown[0]!r}; expected names from {', '.join(HIGHER_IS_BETTER)}")
    a, b = store.run(run_a), store.run(run_b)
    if (a["protocol"], a["protocol_hash"]) != (
        b["protocol"],
        b["protocol_hash"],
    ) and not allow_protocol_mismatch:
        raise UsageError(
            f"runs {a['id']} and {b['id']} were scored under different protocols "
            f"({a['protocol']}#{a['protocol_hash']} vs {b['protocol']}#{b['protocol_hash']}); their metrics are not "
            f"the same quantities (--allow-protocol-mismatch to compare anyway)"
        )
    rows = paired_differences(
        store.image_scores(a["id"]), store.image_scores(b["id"]), metrics, n_resamples, seed
    )
    if not rows:
        raise UsageError(
            f"runs {a['id']} and {b['id']} share no scored (subject, nsd_id) images"
            + (f" for metrics {', '.join(metrics)}" if metrics else "")
            + "; compare needs the same images scored in both"
        )
    return {
        "run_a": a["id"],
        "run_b": b["id"],
        "method_a": a["method"],
        "method_b": b["method"],
        "protocol": a["protocol"],
        "n_resamples": n_resamples,
        "rows": rows,
    }


def paired_differences(
    ia: pd.DataFrame,
    ib: pd.DataFrame,
    metrics: list[str] | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Per metric, the paired bootstrap of A − B over the (subject, nsd_id) images both frames scored.

    Frames have columns subject, nsd_id, metric, value (per-image values); used by `compare` and the report.
    """
    cols = ["subject", "nsd_id", "metric", "value"]
    merged = (
        ia[cols]
        .merge(ib[cols], on=["subject", "nsd_id", "metric"], suffixes=("_a", "_b"))
        .dropna(subset=["value_a", "value_b"])
    )
    rows = []
    for metric, g in sorted(merged.groupby("metric"), key=lambda kv: order_key(kv[0])):
        if metrics and metric not in metrics:
            continue
        g = g.sort_values(["subject", "nsd_id"])
        diff, lo, hi, p = paired_bootstrap(
            g["value_a"].to_numpy(), g["value_b"].to_numpy(), n_resamples=n_resamples, seed=seed
        )
        rows.append(
            {
                "metric": metric,
                "n": len(g),
                "mean_a": float(g["value_a"].mean()),
                "mean_b": float(g["value_b"].mean()),
                "diff": float(diff),
                "ci_lo": float(lo),
                "ci_hi": float(hi),
                "p_value": float(p),
                "higher_is_better": HIGHER_IS_BETTER.get(metric, True),
            }
        )
    return rows


def single_run_board(store: Store, run_id: str) -> Leaderboard:
    """One run's aggregates (subject mean first, then each subject) as a Leaderboard without reported rows."""
    run = store.run(run_id)
    agg = store.aggregates(run["id"])
    cols = sorted(set(agg["metric"]), key=order_key) if len(agg) else []
    subj = ",".join(map(str, run["subjects"]))
    tables = []
    for scope in ["mean", *[str(s) for s in run["subjects"]]]:
        cells = _cells(agg, scope) if len(agg) else {}
        title = f"{run['method']} · {run['split']} · {run['protocol']} · " + (
            "subject mean" if scope == "mean" else f"subject {scope}"
        )
        row = Row(
            run["method"],
            "reproduced",
            subj if scope == "mean" else scope,
            cells,
            run_id=run["id"],
            smoke=bool(run["smoke"]),
            note="smoke" if run["smoke"] else "",
        )
        tables.append(Table(title, scope, cols, [row]))
    notes = (
        ["smoke run (random/tiny weights): hidden from leaderboard views unless --include-smoke"]
        if run["smoke"]
        else []
    )
    return Leaderboard(run["split"], run["protocol"], tuple(run["subjects"]), tables, notes)
