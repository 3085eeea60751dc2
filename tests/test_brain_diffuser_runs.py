"""brain-diffuser end to end on the synthetic NSD with tiny weights (slow: minutes on 2 busy cores).

- `nsdbench run --method brain-diffuser` through the installed console script ends with a leaderboard row,
  shown beside the paper's published brain-diffuser rows; a second run of the same subject fits nothing.
- The VDVAE stage carries signal: `--variant vdvae-only` beats `shuffled` on PixCorr and AlexNet(2) with
  disjoint bootstrap CIs (scored under a reduced protocol with just those two metrics).
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

SIGNAL = "bd-test-signal"


def _nsdbench(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "nsdbench"
    return subprocess.run(
        [str(exe), *args], check=False, capture_output=True, text=True, env=os.environ.copy(), timeout=3000
    )


@pytest.mark.ci
def test_cli_run_records_a_row_beside_the_published_ones_and_refits_nothing(synth_root, tmp_path):
    db = tmp_path / "lb.duckdb"
    argv = ["run", "--method", "brain-diffuser", "--subjects", "1", "--data", "synthetic", "--weights", "tiny",
            "--device", "cpu", "--set", "steps=4", "--protocol", "brain-diffuser-2023", "--db", str(db)]  # fmt: skip
    first = _nsdbench(*argv, "--out", str(tmp_path / "run"))
    assert first.returncode == 0, first.stderr[-2000:]
    run = tmp_path / "run"
    assert len(list((run / "subj01").glob("*_0.stage1.png"))) == 91
    assert len(list((run / "subj01").glob("*_0.clip_vision.npy"))) == 91

    board = _nsdbench("leaderboard", "--include-smoke", "--protocol", "brain-diffuser-2023", "--db", str(db),
                      "--format", "csv", "--no-per-subject")  # fmt: skip
    assert board.returncode == 0, board.stderr[-2000:]
    rows = pd.read_csv(io.StringIO(board.stdout))
    ours = rows[rows["method"] == "brain-diffuser"]
    assert set(ours["origin"]) != {"reported"} and {"pixcorr", "alexnet2"} <= set(ours["metric"])
    reported = rows[rows["origin"] == "reported"]
    assert {"Brain-Diffuser", "Only-VDVAE", "Brain-Diffuser w/o VDVAE"} <= set(reported["method"])

    # a second run of the same subject (another folder) reads every fit from the cache
    second = _nsdbench(*argv, "--out", str(tmp_path / "again"), "--fit-only")
    assert second.returncode == 0, second.stderr[-2000:]
    fit_log = [ln for ln in (tmp_path / "again" / "run.log").read_text().splitlines() if " fit subj01 " in ln]
    assert len(fit_log) == 1 and float(fit_log[0].rsplit(" ", 1)[1].rstrip("s")) < 20.0, fit_log


@pytest.fixture(scope="module")
def signal_protocol():
    from nsdbench.metrics import protocols as P

    c = (P.pil_step("bilinear", 224),)
    proto = P.Protocol(
        name=SIGNAL,
        version="1",
        description="tests only: PixCorr at native size and AlexNet(2) 2-way identification",
        split="nsd982",
        published_order="nsd-ascending",
        metrics=(
            P.PixelMetric("pixcorr", (), (), "rgb", "pearson"),
            P.FeatureMetric("alexnet2", "alexnet", "IMAGENET1K_V1", "features.4", c, c, "imagenet"),
        ),
    )
    P.PROTOCOLS.setdefault(SIGNAL, proto)
    yield SIGNAL
    P.PROTOCOLS.pop(SIGNAL, None)


def _image_scores(method: str, variant: str | None, data: Path, out: Path) -> pd.DataFrame:
    from nsdbench.commands.run import build_spec
    from nsdbench.executors import Worker, run_inprocess
    from nsdbench.runner import prepare_run_dir, score_path

    spec, _, _ = build_spec(method, "1", None, None, None, SIGNAL, str(data), "tiny", "cpu", variant, 100)
    prepare_run_dir(out, spec)
    result = run_inprocess(out, spec, Worker(), protocols=(SIGNAL,))
    assert result.all_complete
    return pd.read_parquet(score_path(out, 1, SIGNAL)).query("level == 'image'")


@pytest.mark.ci
def test_vdvae_only_beats_shuffled_with_disjoint_bootstrap_cis(signal_protocol, synth_root, tmp_path):
    from nsdbench.metrics.bootstrap import bootstrap_ci

    vdvae = _image_scores("brain-diffuser", "vdvae-only", synth_root, tmp_path / "vdvae")
    chance = _image_scores("shuffled", None, synth_root, tmp_path / "shuffled")
    summary = {}
    for metric in ("pixcorr", "alexnet2"):
        mean, lo, _ = bootstrap_ci(vdvae.query("metric == @metric")["value"].to_numpy())
        c_mean, _, hi = bootstrap_ci(chance.query("metric == @metric")["value"].to_numpy())
        summary[metric] = (mean, c_mean)
        assert lo > hi, f"vdvae-only {metric}: CI low {lo:.3f} <= shuffled CI high {hi:.3f}"
    print(json.dumps(summary))
