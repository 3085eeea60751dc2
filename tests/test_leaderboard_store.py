"""The DuckDB store: one-transaction ingest, idempotence, no half-recorded runs, concurrent writers from
two processes, read-only readers. Scores here are hand-made Parquet files written by nsdbench.scoring."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import duckdb
import numpy as np
import pandas as pd
import pytest

from nsdbench.errors import NSDBenchError
from nsdbench.leaderboards.store import RunRecord, Store
from nsdbench.metrics.protocols import get_protocol
from nsdbench.score_files import write_score_file
from nsdbench.scoring import scores_frame

METRICS = ("pixcorr", "ssim", "effnet_b")


def fake_result(values: dict[str, np.ndarray], ids: list[int]) -> SimpleNamespace:
    """A ScoreResult-shaped object with one sample per image."""
    rows = [(i, 0, m, float(v[k])) for m, v in values.items() for k, i in enumerate(ids)]
    per_sample = pd.DataFrame(rows, columns=["nsd_id", "sample", "metric", "value"])
    per_image = per_sample.drop(columns="sample")
    return SimpleNamespace(
        per_sample=per_sample,
        per_image=per_image,
        set_scores={m: float(np.mean(v)) for m, v in values.items()},
        provenance={"networks": {"alexnet:x:fp32": {"sha256": "abc"}}, "device": "cpu"},
    )


def write_fake_run(
    folder: Path, run_id: str, subjects=(1, 2), seed=0, protocol="nsdbench-v1", n=12, shift=0.0
) -> list[Path]:
    proto = get_protocol(protocol)
    rng = np.random.default_rng(seed)
    ids = list(range(100, 100 + n))
    paths = []
    for s in subjects:
        values = {m: rng.uniform(0, 1, n) + shift for m in METRICS}
        df = scores_frame(fake_result(values, ids), run_id, s)
        paths.append(
            write_score_file(
                df,
                folder / run_id / f"subj{s:02d}.parquet",
                {
                    "run_id": run_id,
                    "subject": s,
                    "protocol_hash": proto.hash,
                    "provenance": fake_result(values, ids).provenance,
                },
            )
        )
    return paths


def record(
    store: Store,
    run_id: str,
    method="m",
    subjects=(1, 2),
    weights="pretrained",
    protocol="nsdbench-v1",
    created_at="",
) -> RunRecord:
    return store.new_run_record(
        kind="score",
        method=method,
        subjects=subjects,
        split="nsd982",
        protocol=get_protocol(protocol),
        weights_mode=weights,
        run_id=run_id,
        created_at=created_at,
    )


def test_ingest_records_everything_once(tmp_path):
    store = Store(tmp_path / "lb.duckdb")
    paths = write_fake_run(tmp_path, "r1")
    res = store.ingest(record(store, "r1"), paths, n_resamples=100)
    assert res.inserted
    counts = store.counts()
    assert counts == {
        "runs": 1,
        "sample_scores": 2 * 12 * 3,
        "image_scores": 2 * 12 * 3,
        "set_scores": 2 * 3,
        "aggregates": 3 * 3,
    }
    assert not store.ingest(record(store, "r1"), paths).inserted
    assert store.counts() == counts
    run = store.run("r1")
    assert run["weights_sha256"] == {"alexnet:x:fp32": "abc"} and run["subjects"] == [1, 2]
    assert run["status"] == "complete" and not run["smoke"]
    images = pd.concat([pd.read_parquet(p) for p in paths])
    images = images[images["level"] == "image"].sort_values(["subject", "nsd_id", "metric"])
    got = store.image_scores("r1")
    np.testing.assert_array_equal(got["value"].to_numpy(), images["value"].to_numpy())


def test_failed_transaction_leaves_nothing_visible(tmp_path, monkeypatch):
    store = Store(tmp_path / "lb.duckdb")
    paths = write_fake_run(tmp_path, "r1")
    rec = record(store, "r1")
    good_row = RunRecord.row

    def broken_row(self, status="complete"):
        row = good_row(self, status)
        row["kind"] = None  # violates NOT NULL: the runs insert (the last statement) fails
        return row

    monkeypatch.setattr(RunRecord, "row", broken_row)
    with pytest.raises(duckdb.ConstraintException):
        store.ingest(rec, paths)
    assert store.counts() == {
        "runs": 0,
        "sample_scores": 0,
        "image_scores": 0,
        "set_scores": 0,
        "aggregates": 0,
    }
    monkeypatch.setattr(RunRecord, "row", good_row)
    assert store.ingest(rec, paths, n_resamples=50).inserted and store.counts()["runs"] == 1


def test_ingest_refuses_foreign_or_incomplete_files(tmp_path):
    store = Store(tmp_path / "lb.duckdb")
    paths = write_fake_run(tmp_path, "r1")
    with pytest.raises(NSDBenchError, match="belongs to run 'r1'"):
        store.ingest(record(store, "r2"), paths)
    with pytest.raises(NSDBenchError, match=r"cover subjects \[1\], expected \[1, 2\]"):
        store.ingest(record(store, "r1"), paths[:1])
    with pytest.raises(NSDBenchError, match="protocol hash"):
        store.ingest(record(store, "r1", protocol="mindeye"), paths)
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 nope")
    with pytest.raises(NSDBenchError, match="not a readable Parquet"):
        store.ingest(record(store, "r1", subjects=(1,)), [tmp_path / "junk.parquet"])
    assert not (tmp_path / "lb.duckdb").exists()


def test_readers_never_create_or_lock_for_writing(tmp_path):
    store = Store(tmp_path / "none.duckdb")
    assert store.runs().empty and store.counts()["runs"] == 0
    assert not store.path.exists()
    store2 = Store(tmp_path / "lb.duckdb")
    store2.ingest(record(store2, "abc123"), write_fake_run(tmp_path, "abc123"), n_resamples=50)
    store2.path.chmod(0o444)  # a read-only file still reads
    try:
        assert store2.resolve_id("abc") == "abc123" and len(store2.aggregates("abc")) == 9
    finally:
        store2.path.chmod(0o644)


def test_delete_removes_run_and_scores(tmp_path):
    store = Store(tmp_path / "lb.duckdb")
    store.ingest(record(store, "r1"), write_fake_run(tmp_path, "r1"), n_resamples=50)
    store.ingest(record(store, "r2"), write_fake_run(tmp_path, "r2", seed=1), n_resamples=50)
    store.delete("r1")
    assert list(store.runs()["id"]) == ["r2"]
    assert store.counts()["image_scores"] == 2 * 12 * 3


WORKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_leaderboard_store import record, write_fake_run
    from nsdbench.leaderboards.store import Store

    tag, folder, db = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    store = Store(db, lock_timeout=120)
    for k in range(5):
        run_id = f"{{tag}}-{{k}}"
        paths = write_fake_run(folder, run_id, seed=k)
        store.ingest(record(store, run_id, method=tag), paths, n_resamples=50)
        store.ingest(record(store, run_id, method=tag), paths, n_resamples=50)  # a rerun: no-op
        store.runs()  # readers interleave with writers
    """
)


def test_two_processes_ingesting_concurrently_lose_nothing(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).parent)))
    db = tmp_path / "lb.duckdb"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), tag, str(tmp_path / tag), str(db)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("a", "b")
    ]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-2000:]
    store = Store(db)
    runs = store.runs()
    assert sorted(runs["id"]) == sorted(f"{t}-{k}" for t in "ab" for k in range(5))
    assert store.counts() == {
        "runs": 10,
        "sample_scores": 10 * 72,
        "image_scores": 10 * 72,
        "set_scores": 10 * 6,
        "aggregates": 10 * 9,
    }
