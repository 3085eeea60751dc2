"""The Parquet score format: one long table of per-image scores whose schema metadata carries provenance.

`nsdbench.scoring` writes these files, the leaderboard store ingests them and reports read them; the
format lives here, beneath all three, so none of them imports another for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from nsdbench.errors import NSDBenchError
from nsdbench.files import atomic_path

PARQUET_META_KEY = b"nsdbench"  # the schema-metadata key holding a score file's provenance (JSON)
PARQUET_FORMAT = "nsdbench-scores/1"


def write_score_file(
    df: pd.DataFrame, out_path: Path, meta: dict[str, Any], temp: Path | None = None
) -> Path:
    """Write `df` with `meta` as its provenance, atomically; `temp` names the temp file (see atomic_path)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_path = Path(out_path)
    table = pa.Table.from_pandas(df, preserve_index=False)
    info = {"format": PARQUET_FORMAT, **meta}
    table = table.replace_schema_metadata(
        {
            **(table.schema.metadata or {}),
            PARQUET_META_KEY: json.dumps(info, sort_keys=True, default=str).encode(),
        }
    )
    with atomic_path(out_path, temp) as tmp:
        pq.write_table(table, tmp)
    return out_path


def read_parquet_meta(path: str | Path) -> dict[str, Any]:
    """The nsdbench metadata of one score file (raises NSDBenchError for a file that is not one)."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, ValueError) as exc:
        raise NSDBenchError(f"{path}: not a readable Parquet score file ({exc})") from None
    if PARQUET_META_KEY not in meta:
        raise NSDBenchError(f"{path}: Parquet file has no nsdbench score metadata")
    info = json.loads(meta[PARQUET_META_KEY])
    if info.get("format") != PARQUET_FORMAT:
        raise NSDBenchError(f"{path}: score file format {info.get('format')!r}, expected {PARQUET_FORMAT!r}")
    return info
