"""The DuckDB leaderboard store: long-format schema, one-transaction ingest, read-only readers.

Workers never write the database. Scoring writes one Parquet file per (run, subject) atomically;
`Store.ingest` records a run from those files in ONE transaction whose last statement inserts the
`runs` row, so a run is either fully visible or absent. DuckDB allows one writing process per file:
every connection retries with backoff while another process holds the lock.
"""

from __future__ import annotations

import json
import random
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from nsdbench import config
from nsdbench.errors import NSDBenchError, UsageError
from nsdbench.leaderboards.aggregate import aggregate_scores
from nsdbench.score_files import read_parquet_meta

if TYPE_CHECKING:
    from duckdb import DuckDBPyConnection

    from nsdbench.metrics.protocols import Protocol

SCHEMA_VERSION = 1


_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_info (version INTEGER);
CREATE TABLE IF NOT EXISTS runs (
    id VARCHAR PRIMARY KEY,
    kind VARCHAR NOT NULL,              -- 'score' (a submission) or 'run' (a method run by nsdbench)
    method VARCHAR NOT NULL,
    subjects VARCHAR NOT NULL,          -- comma-separated, ascending: '1,2,5,7'
    split VARCHAR NOT NULL,
    protocol VARCHAR NOT NULL,
    protocol_version VARCHAR,
    protocol_hash VARCHAR,
    weights_mode VARCHAR NOT NULL,
    smoke BOOLEAN NOT NULL,
    weights_sha256 VARCHAR,             -- JSON {network: sha256}
    seeds VARCHAR,                      -- JSON
    nsdbench_version VARCHAR,
    git_sha VARCHAR,
    torch_version VARCHAR,
    cuda_version VARCHAR,
    device VARCHAR,
    precision VARCHAR,                  -- JSON of precision flags
    submission_sha256 VARCHAR,
    data VARCHAR,                       -- NSD root (or 'synthetic:<root>')
    brain BOOLEAN,
    config VARCHAR,                     -- JSON of the remaining settings
    created_at TIMESTAMP,
    recorded_at TIMESTAMP,
    status VARCHAR NOT NULL,
    run VARCHAR,                        -- kind 'run': the run folder's id (one row per protocol scored)
    guiding_encoders VARCHAR            -- JSON list: identities of the encoders that guided generation
);
ALTER TABLE runs ADD COLUMN IF NOT EXISTS run VARCHAR;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS guiding_encoders VARCHAR;
CREATE TABLE IF NOT EXISTS sample_scores (
    run_id VARCHAR, subject INTEGER, nsd_id INTEGER, sample INTEGER, metric VARCHAR, value DOUBLE,
    PRIMARY KEY (run_id, subject, nsd_id, sample, metric)
);
CREATE TABLE IF NOT EXISTS image_scores (
    run_id VARCHAR, subject INTEGER, nsd_id INTEGER, metric VARCHAR, value DOUBLE,
    PRIMARY KEY (run_id, subject, nsd_id, metric)
);
CREATE TABLE IF NOT EXISTS set_scores (
    run_id VARCHAR, subject INTEGER, metric VARCHAR, value DOUBLE,
    PRIMARY KEY (run_id, subject, metric)
);
CREATE TABLE IF NOT EXISTS aggregates (
    run_id VARCHAR, subject VARCHAR, metric VARCHAR, mean DOUBLE, ci_lo DOUBLE, ci_hi DOUBLE, n INTEGER,
    PRIMARY KEY (run_id, subject, metric)
);
"""

SCORE_TABLES = ("sample_scores", "image_scores", "set_scores", "aggregates")


@dataclass(frozen=True)
class RunRecord:
    """Everything recorded about one run besides its scores (the `runs` row)."""

    id: str
    kind: str
    method: str
    subjects: tuple[int, ...]
    split: str
    protocol: str
    protocol_version: str = ""
    protocol_hash: str = ""
    weights_mode: str = "pretrained"
    weights_sha256: dict[str, str] = field(default_factory=dict)
    seeds: dict[str, Any] = field(default_factory=dict)
    nsdbench_version: str = ""
    git_sha: str = ""
    torch_version: str = ""
    cuda_version: str = ""
    device: str = ""
    precision: dict[str, Any] = field(default_factory=dict)
    submission_sha256: str = ""
    data: str = ""
    brain: bool = False
    config: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    run: str = ""  # kind 'run': the run's id; the row id is `<run>@<protocol>`
    guiding_encoders: tuple[str, ...] = ()

    @property
    def smoke(self) -> bool:
        return self.weights_mode != "pretrained"

    def row(self, status: str = "complete") -> dict[str, Any]:
        d = asdict(self)
        d["subjects"] = ",".join(str(s) for s in sorted(self.subjects))
        d["guiding_encoders"] = json.dumps(sorted(self.guiding_encoders))
        for key in ("weights_sha256", "seeds", "precision", "config"):
            d[key] = json.dumps(d[key], sort_keys=True, default=str)
        d["smoke"] = self.smoke
        d["created_at"] = _parse_ts(self.created_at)
        d["recorded_at"] = datetime.now(UTC).replace(tzinfo=None)
        d["status"] = status
        return d


@dataclass(frozen=True)
class IngestResult:
    run_id: str
    inserted: bool  # False when the run was already recorded (nothing changed)
    rows: dict[str, int]


def _parse_ts(value: str) -> datetime:
    if not value:
        return datetime.now(UTC).replace(tzinfo=None)
    ts = datetime.fromisoformat(value)
    return ts.astimezone(UTC).replace(tzinfo=None) if ts.tzinfo else ts


def _git_sha() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def environment() -> dict[str, str]:
    """Versions recorded with every run."""
    import nsdbench

    env = {
        "nsdbench_version": nsdbench.__version__,
        "git_sha": _git_sha(),
        "torch_version": "",
        "cuda_version": "",
    }
    try:
        import torch

        env["torch_version"] = torch.__version__
        env["cuda_version"] = torch.version.cuda or ""
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    return env


def subjects_key(subjects: Sequence[int]) -> str:
    return ",".join(str(s) for s in sorted({int(s) for s in subjects}))


def _is_lock_error(exc: Exception) -> bool:
    import duckdb

    msg = str(exc).lower()
    if isinstance(exc, duckdb.IOException) and ("lock" in msg or "resource temporarily unavailable" in msg):
        return True
    return isinstance(exc, duckdb.TransactionException) and "conflict" in msg


class Store:
    """A leaderboard database file. Writers take the file lock briefly; readers open it read-only."""

    def __init__(self, db_path: str | Path | None = None, lock_timeout: float | None = None) -> None:
        self.path = config.default_db(db_path)
        self.lock_timeout = float(
            lock_timeout if lock_timeout is not None else config.get("db_lock_timeout") or 300
        )

    # -- connections ---------------------------------------------------------------------------
    @contextmanager
    def _connect(self, read_only: bool) -> Iterator[Any]:
        import duckdb

        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.02
        while True:
            try:
                con = duckdb.connect(str(self.path), read_only=read_only)
                break
            except (duckdb.IOException, duckdb.TransactionException) as exc:
                if not _is_lock_error(exc):
                    raise NSDBenchError(f"cannot open leaderboard database {self.path}: {exc}") from None
                if time.monotonic() + delay > deadline:
                    raise NSDBenchError(
                        f"leaderboard database {self.path} stayed locked by another process for "
                        f"{self.lock_timeout:.0f} s (NSDBENCH_DB_LOCK_TIMEOUT); try again later"
                    ) from None
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 1.0)
        try:
            yield con
        finally:
            con.close()

    @contextmanager
    def reader(self) -> Iterator[DuckDBPyConnection | None]:
        """A read-only connection, or None when the database does not exist yet."""
        if not self.path.exists():
            yield None
            return
        with self._connect(read_only=True) as con:
            yield con

    @contextmanager
    def writer(self) -> Iterator[DuckDBPyConnection]:
        with self._connect(read_only=False) as con:
            con.execute(_SCHEMA)
            if not con.execute("SELECT count(*) FROM schema_info").fetchall()[0][0]:
                con.execute("INSERT INTO schema_info VALUES (?)", [SCHEMA_VERSION])
            yield con

    # -- records -------------------------------------------------------------------------------
    def new_run_record(
        self,
        *,
        kind: str,
        method: str,
        subjects: Sequence[int],
        split: str,
        protocol: Protocol,
        weights_mode: str,
        run_id: str,
        **fields: Any,
    ) -> RunRecord:
        """A RunRecord with the environment filled in. `protocol`: a Protocol object or its name."""
        if kind not in ("score", "run"):
            raise UsageError(f"run kind must be 'score' or 'run', not {kind!r}")
        name = getattr(protocol, "name", protocol)
        version = str(getattr(protocol, "version", fields.pop("protocol_version", "")))
        phash = str(getattr(protocol, "hash", fields.pop("protocol_hash", "")))
        env = environment()
        env.update({k: fields.pop(k) for k in list(fields) if k in env})
        return RunRecord(
            id=run_id,
            kind=kind,
            method=method,
            subjects=tuple(sorted(int(s) for s in subjects)),
            split=split,
            protocol=str(name),
            protocol_version=version,
            protocol_hash=phash,
            weights_mode=weights_mode,
            created_at=fields.pop("created_at", "") or datetime.now(UTC).isoformat(),
            **env,
            **fields,
        )

    # -- ingest --------------------------------------------------------------------------------
    def ingest(
        self,
        record: RunRecord,
        parquet_paths: Sequence[str | Path],
        n_resamples: int = 2000,
        seed: int = 0,
    ) -> IngestResult:
        """Record a run from its Parquet score files in one transaction (idempotent)."""
        paths = [Path(p) for p in parquet_paths]
        if not paths:
            raise NSDBenchError(f"run {record.id}: no score files to ingest")
        metas = [read_parquet_meta(p) for p in paths]
        record = _merge_provenance(record, metas)
        covered = sorted(int(m["subject"]) for m in metas)
        if covered != sorted(record.subjects):
            raise NSDBenchError(
                f"run {record.id}: score files cover subjects {covered}, expected {sorted(record.subjects)}"
            )
        for p, m in zip(paths, metas):
            if m.get("run_id") != record.id:
                raise NSDBenchError(f"{p}: score file belongs to run {m.get('run_id')!r}, not {record.id!r}")
            if record.protocol_hash and m.get("protocol_hash") and m["protocol_hash"] != record.protocol_hash:
                raise NSDBenchError(
                    f"{p}: scored under protocol hash {m['protocol_hash']}, expected {record.protocol_hash}"
                )
        if self.has_run(record.id):
            return IngestResult(record.id, False, {})
        images = pd.read_parquet(paths, columns=["level", "subject", "nsd_id", "metric", "value"])
        images = images[images["level"] == "image"]
        agg = aggregate_scores(images, n_resamples=n_resamples, seed=seed)
        agg.insert(0, "run_id", record.id)
        files = [str(p) for p in paths]
        row = record.row()
        with self.writer() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                if con.execute("SELECT count(*) FROM runs WHERE id = ?", [record.id]).fetchall()[0][0]:
                    con.execute("ROLLBACK")
                    return IngestResult(record.id, False, {})
                counts = {}
                for table, level, cols in (
                    ("sample_scores", "sample", "run_id, subject, nsd_id, sample, metric, value"),
                    ("image_scores", "image", "run_id, subject, nsd_id, metric, value"),
                    ("set_scores", "set", "run_id, subject, metric, value"),
                ):
                    con.execute(
                        f"INSERT OR IGNORE INTO {table} SELECT {cols} FROM read_parquet(?) "
                        f"WHERE level = ? AND run_id = ?",
                        [files, level, record.id],
                    )
                    counts[table] = con.execute(
                        f"SELECT count(*) FROM {table} WHERE run_id = ?", [record.id]
                    ).fetchall()[0][0]
                con.register("_agg", agg)
                con.execute(
                    "INSERT OR IGNORE INTO aggregates SELECT run_id, subject, metric, mean, ci_lo, ci_hi, n FROM _agg"
                )
                con.unregister("_agg")
                counts["aggregates"] = len(agg)
                cols = list(row)
                con.execute(
                    f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})",
                    [row[c] for c in cols],
                )
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return IngestResult(record.id, True, counts)

    def delete(self, run_id: str) -> str:
        """Remove a run and all its scores in one transaction; returns the full id."""
        full = self.resolve_id(run_id)
        with self.writer() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                con.execute("DELETE FROM runs WHERE id = ?", [full])
                for table in SCORE_TABLES:
                    con.execute(f"DELETE FROM {table} WHERE run_id = ?", [full])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return full

    # -- readers -------------------------------------------------------------------------------
    def _query(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        import duckdb

        with self.reader() as con:
            if con is None:
                return pd.DataFrame()
            try:
                return con.execute(sql, list(params)).df()
            except duckdb.CatalogException:  # a file with no nsdbench schema yet
                return pd.DataFrame()

    def has_run(self, run_id: str) -> bool:
        df = self._query("SELECT id FROM runs WHERE id = ?", [run_id])
        return len(df) > 0

    def runs(self, include_smoke: bool = True) -> pd.DataFrame:
        """All recorded runs, newest first."""
        df = self._query("SELECT * FROM runs ORDER BY created_at DESC, id")
        if df.empty:
            return df
        if not include_smoke:
            df = df[~df["smoke"]]
        return df.reset_index(drop=True)

    def resolve_id(self, run_id: str) -> str:
        """A full run id from an unambiguous prefix."""
        df = self._query("SELECT id FROM runs WHERE starts_with(id, ?) ORDER BY id", [run_id])
        ids = list(df["id"]) if len(df) else []
        if run_id in ids:
            return run_id
        if not ids:
            raise UsageError(f"no run {run_id!r} in {self.path}")
        if len(ids) > 1:
            raise UsageError(f"run id prefix {run_id!r} is ambiguous in {self.path}: {', '.join(ids[:5])}")
        return ids[0]

    def run(self, run_id: str) -> dict[str, Any]:
        full = self.resolve_id(run_id)
        row = self._query("SELECT * FROM runs WHERE id = ?", [full]).iloc[0].to_dict()
        for key in ("weights_sha256", "seeds", "precision", "config"):
            row[key] = json.loads(row[key]) if row.get(key) else {}
        row["guiding_encoders"] = json.loads(row["guiding_encoders"]) if row.get("guiding_encoders") else []
        row["subjects"] = [int(s) for s in str(row["subjects"]).split(",") if s]
        return row

    def aggregates(self, run_id: str | None = None) -> pd.DataFrame:
        if run_id is None:
            return self._query("SELECT * FROM aggregates ORDER BY run_id, subject, metric")
        return self._query(
            "SELECT * FROM aggregates WHERE run_id = ? ORDER BY subject, metric", [self.resolve_id(run_id)]
        )

    def image_scores(self, run_id: str) -> pd.DataFrame:
        return self._query(
            "SELECT * FROM image_scores WHERE run_id = ? ORDER BY subject, nsd_id, metric",
            [self.resolve_id(run_id)],
        )

    def sample_scores(self, run_id: str) -> pd.DataFrame:
        return self._query(
            "SELECT * FROM sample_scores WHERE run_id = ? ORDER BY subject, nsd_id, sample, metric",
            [self.resolve_id(run_id)],
        )

    def set_scores(self, run_id: str) -> pd.DataFrame:
        return self._query(
            "SELECT * FROM set_scores WHERE run_id = ? ORDER BY subject, metric", [self.resolve_id(run_id)]
        )

    def counts(self) -> dict[str, int]:
        """Row counts per table (used by tests and `runs list --json`)."""
        import duckdb

        out = {}
        with self.reader() as con:
            if con is None:
                return {t: 0 for t in ("runs", *SCORE_TABLES)}
            for table in ("runs", *SCORE_TABLES):
                try:
                    out[table] = con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
                except duckdb.CatalogException:  # a file without the nsdbench schema
                    out[table] = 0
        return out


def _merge_provenance(record: RunRecord, metas: list[dict[str, Any]]) -> RunRecord:
    """Fill what the scoring engine reported (network hashes, precision, device) into the record."""
    weights_sha = dict(record.weights_sha256)
    precision = dict(record.precision)
    device = record.device
    for m in metas:
        prov = m.get("provenance") or {}
        weights_sha.update(prov.get("weights_sha256") or {})
        for key, net in (prov.get("networks") or {}).items():
            if isinstance(net, dict) and net.get("sha256"):
                weights_sha[key] = str(net["sha256"])
        precision.update(prov.get("precision") or {})
        device = device or str(prov.get("device") or "")
    phash = record.protocol_hash or str(metas[0].get("protocol_hash") or "")
    return replace(
        record, weights_sha256=weights_sha, precision=precision, device=device, protocol_hash=phash
    )


def default_store(db: str | Path | None = None) -> Store:
    return Store(db)
