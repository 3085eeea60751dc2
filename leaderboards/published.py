"""Published results (leaderboards/data/published_results.csv) as `reported` rows.

These numbers were copied from the papers' tables. They are shown beside reproduced rows and are
never mixed into computed aggregates. The `protocol` column names the nsdbench protocol whose board
a row belongs to (the evaluation the paper's table follows); it is empty where no nsdbench protocol
follows it. A row whose split is none of nsdbench's was measured on a test set nsdbench cannot
reproduce: it is shown only on request or beside a run of the paper's own method, marked as such.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import pandas as pd

# The CSV names test sets by size; nsdbench split names for the ones it defines.
SPLIT_NAMES = {"982": "nsd982", "897": "nsd897", "1000": "nsd1000"}
ID_COLUMNS = ["source", "table", "method", "subjects", "split", "protocol", "note"]

# Test sets of the papers that no nsdbench split reproduces, keyed by (source, split).
OTHER_TEST_SETS = {
    (
        "minddiffuser-2023",
        "subset",
    ): "MindDiffuser's subset: subject 1 test images with decoding accuracy >= 0.3",
    ("stochastic-search-ccn2023", "test"): (
        "the paper's own test set (n=2,218 from the shared 1,000 images, apart from n=552 used for tuning)"
    ),
    ("brain-diffuser-2023", "custom"): "Lin et al.'s custom train/test split (subject 1)",
}

# nsdbench methods whose runs bring a paper's rows on another test set beside them.
PAPER_METHODS = {
    "minddiffuser-2023": ("minddiffuser", "takagi2023"),
    "stochastic-search-ccn2023": ("stochastic-search", "clip-decoding-only", "best-library-image"),
}


@lru_cache(maxsize=1)
def published_wide() -> pd.DataFrame:
    """The shipped CSV, one row per (paper table, method, subjects)."""
    with resources.files("nsdbench.leaderboards").joinpath("data/published_results.csv").open("r") as fh:
        df = pd.read_csv(
            fh, dtype={"table": str, "subjects": str, "split": str, "protocol": str, "note": str}
        )
    df["note"] = df["note"].fillna("")
    df["protocol"] = df["protocol"].fillna("")
    df["split"] = df["split"].map(lambda s: SPLIT_NAMES.get(str(s), str(s)))
    return df


def reported_rows() -> pd.DataFrame:
    """Long format: source, table, method, subjects (comma list), split, protocol, note, metric, value."""
    wide = published_wide()
    metric_cols = [c for c in wide.columns if c not in ID_COLUMNS]
    long = wide.melt(id_vars=ID_COLUMNS, value_vars=metric_cols, var_name="metric", value_name="value")
    long = long.dropna(subset=["value"]).copy()
    long["subjects"] = long["subjects"].str.replace("|", ",", regex=False)
    return long.reset_index(drop=True)


def is_papers_protocol(protocol: str) -> bool:
    """A protocol that reproduces one paper's evaluation (nsdbench's own are named nsdbench-*)."""
    return not protocol.startswith("nsdbench-")


def other_test_set(source: str, split: str) -> str:
    """What a paper's test set is, for a split nsdbench does not define."""
    return OTHER_TEST_SETS.get((source, split), f"{source}'s test set {split!r}")
