"""Published results (leaderboards/data/published_results.csv) as `reported` rows.

These numbers were copied from the papers' tables. They are shown beside reproduced rows and are
never mixed into computed aggregates.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import pandas as pd

# The CSV names test sets by size; nsdbench split names for the ones it defines.
SPLIT_NAMES = {"982": "nsd982", "897": "nsd897", "1000": "nsd1000"}
ID_COLUMNS = ["source", "table", "method", "subjects", "split", "note"]


@lru_cache(maxsize=1)
def published_wide() -> pd.DataFrame:
    """The shipped CSV, one row per (paper table, method, subjects)."""
    with resources.files("nsdbench.leaderboards").joinpath("data/published_results.csv").open("r") as fh:
        df = pd.read_csv(fh, dtype={"table": str, "subjects": str, "split": str, "note": str})
    df["note"] = df["note"].fillna("")
    df["split"] = df["split"].map(lambda s: SPLIT_NAMES.get(str(s), str(s)))
    return df


def reported_rows() -> pd.DataFrame:
    """Long format: source, table, method, subjects (comma list), split, note, metric, value."""
    wide = published_wide()
    metric_cols = [c for c in wide.columns if c not in ID_COLUMNS]
    long = wide.melt(id_vars=ID_COLUMNS, value_vars=metric_cols, var_name="metric", value_name="value")
    long = long.dropna(subset=["value"]).copy()
    long["subjects"] = long["subjects"].str.replace("|", ",", regex=False)
    return long.reset_index(drop=True)
