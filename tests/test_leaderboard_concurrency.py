"""Real `nsdbench score` processes against one database: one is killed mid-way while another scores and
ingests; both runs land, and the killed one, rerun, is recorded exactly once (resuming from finished files).
Heavy lock contention between two ingesting processes is in test_leaderboard_store.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_score_fixtures import small_root_fixture  # noqa: F401

from nsdbench.cli import main
from nsdbench.leaderboards.store import Store
from nsdbench.nsd import open_nsd
from nsdbench.submissions.writers import demo_images, write_submission

N_IDS, N_METRICS = 8, 10


def _cmd(sub: Path, root: Path, db: Path, work: Path, subjects: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "nsdbench.cli",
        "score",
        str(sub),
        "--data",
        str(root),
        "--db",
        str(db),
        "--weights",
        "tiny",
        "--no-brain",
        "--bootstrap",
        "100",
        "--subjects",
        subjects,
        "--work-dir",
        str(work),
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "NSDBENCH_DB_LOCK_TIMEOUT": "240"}


def test_concurrent_scoring_and_a_killed_run_record_each_run_once(small_root, tmp_path, capsys):
    """A scores subjects 1 and 2 and is killed once subject 1's file exists; B scores and ingests meanwhile;
    rerunning A's command resumes from the finished file and records A once (a second rerun changes nothing)."""
    nsd = open_nsd(small_root)
    db = tmp_path / "lb.duckdb"
    work_a = tmp_path / "work-a"
    sub_a = write_submission(
        demo_images(nsd, "nsd982", [1, 2], "blur", radius=3), tmp_path / "blurA", "folder"
    )
    sub_b = write_submission(demo_images(nsd, "nsd982", [1], "blur", radius=6), tmp_path / "blurB", "folder")
    cmd_a = _cmd(sub_a, small_root, db, work_a, "1,2")
    a = subprocess.Popen(cmd_a, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    b = subprocess.Popen(
        _cmd(sub_b, small_root, db, tmp_path / "work-b", "1"),
        env=_env(),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 240
    while not (work_a / "subj01.parquet").exists() and a.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    a.send_signal(signal.SIGKILL)  # mid-way: subject 1 written, subject 2 being scored (or later, by chance)
    a.wait(timeout=60)
    _, err = b.communicate(timeout=300)
    assert b.returncode == 0, err[-2000:]
    for _ in range(2):
        assert main(cmd_a[3:]) == 0
        capsys.readouterr()
    store = Store(db)
    assert sorted(store.runs()["method"]) == ["blurA", "blurB"]
    counts = store.counts()
    assert counts["image_scores"] == counts["sample_scores"] == 3 * N_IDS * N_METRICS
    assert counts["set_scores"] == 3 * N_METRICS
    assert counts["aggregates"] == (3 + 2) * N_METRICS  # A: subjects 1, 2 and mean; B: subject 1 and mean
