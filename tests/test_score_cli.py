"""`nsdbench score` end to end on a small synthetic NSD with tiny networks: formats round-trip to the same
scores, the recorded values are exactly the engine's, invalid submissions record nothing, reruns are no-ops."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_score_fixtures import small_root_fixture  # noqa: F401

from nsdbench.cli import main
from nsdbench.leaderboards.store import Store
from nsdbench.nsd import open_nsd
from nsdbench.submissions.writers import demo_images, write_submission

SCORE = ["--weights", "tiny", "--no-brain", "--bootstrap", "200", "--device", "cpu"]


@pytest.fixture(scope="module")
def images(small_root) -> dict:
    return demo_images(open_nsd(small_root), "nsd982", [1], "blur", radius=4, samples=2)


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("score-db") / "lb.duckdb"


def _score(path: Path, root: Path, db: Path, capsys, *extra: str) -> dict:
    rc = main(["score", str(path), "--data", str(root), "--db", str(db), "--json", *SCORE, *extra])
    cap = capsys.readouterr()
    assert rc == 0, cap.err[-2000:]
    return json.loads(cap.out)


@pytest.fixture(scope="module")
def scored(images, small_root, db, tmp_path_factory) -> dict:
    """The same reconstructions as a PNG folder (2 samples), a webdataset tar and a MindEye2-style float
    (N, 3, H, W) tensor in ascending-id order (sample 0 only), each scored through the CLI."""
    import contextlib
    import io

    tmp = tmp_path_factory.mktemp("formats")
    first = {k: v for k, v in images.items() if k[2] == 0}
    subs = {
        "png": (write_submission(images, tmp / "png", "folder"), ()),
        "tar": (write_submission(first, tmp / "w.tar", "tar"), ()),
        "pt": (
            write_submission(
                first, tmp / "subj01_all_recons.pt", "pt", channels_first=True, as_float=True, with_ids=False
            ),
            ("--order", "nsd-ascending"),
        ),
    }
    out = {}
    for name, (path, extra) in subs.items():
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = main(
                [
                    "score",
                    str(path),
                    "--data",
                    str(small_root),
                    "--db",
                    str(db),
                    "--json",
                    *SCORE,
                    "--method-name",
                    name,
                    *extra,
                ]
            )
        assert rc == 0
        doc = json.loads(buf.getvalue())
        assert doc["recorded"] is True
        out[name] = (path, doc["run_id"])
    return out


def test_formats_round_trip_to_identical_scores(scored, db):
    store = Store(db)
    a = store.sample_scores(scored["png"][1]).drop(columns="run_id")
    assert len(a) == 2 * 8 * 10  # 8 ids x 2 samples x 10 metrics
    a0 = a[a["sample"] == 0].reset_index(drop=True)  # each sample is scored on its own
    for name in ("tar", "pt"):
        other = store.sample_scores(scored[name][1]).drop(columns="run_id").reset_index(drop=True)
        assert len(other) == 8 * 10 and other.equals(a0), name  # bit-identical


def test_recorded_values_are_the_engines(scored, images, small_root, db):
    """Independent path: call the engine directly on the same images and compare with what the store holds."""
    from nsdbench.metrics.bootstrap import bootstrap_ci
    from nsdbench.metrics.engine import ScoreOptions, score_reconstructions

    run_id = scored["pt"][1]
    store = Store(db)
    nsd = open_nsd(small_root)
    gt_ids = sorted({i for (_, i, _) in images})
    res = score_reconstructions(
        gt_ids,
        nsd.images(gt_ids),
        gt_ids,
        [0] * len(gt_ids),
        [images[(1, i, 0)] for i in gt_ids],
        "nsdbench-v1",
        ScoreOptions("tiny"),
    )
    stored = store.image_scores(run_id)
    merged = stored.merge(res.per_image, on=["nsd_id", "metric"], suffixes=("_db", "_engine"))
    assert len(merged) == len(res.per_image) == len(stored)
    np.testing.assert_array_equal(merged["value_db"], merged["value_engine"])
    sets = store.set_scores(run_id).set_index("metric")["value"]
    agg = store.aggregates(run_id)
    for metric, value in res.set_scores.items():
        assert sets[metric] == value
        row = agg[(agg["subject"] == "1") & (agg["metric"] == metric)].iloc[0]
        vals = res.per_image[res.per_image["metric"] == metric].sort_values("nsd_id")["value"].to_numpy()
        assert (row["mean"], row["ci_lo"], row["ci_hi"]) == pytest.approx(
            bootstrap_ci(vals, 200, 0), abs=1e-12
        )
        assert row["mean"] == pytest.approx(value, abs=1e-12) and row["n"] == 8
        mean_row = agg[(agg["subject"] == "mean") & (agg["metric"] == metric)].iloc[0]
        assert mean_row["mean"] == pytest.approx(value, abs=1e-12)  # one subject: mean of subject means
    run = store.run(run_id)
    assert run["smoke"] and run["kind"] == "score" and run["weights_mode"] == "tiny"
    assert run["protocol_hash"] and run["submission_sha256"] and run["torch_version"]


def test_score_files_record_feature_and_brain_forward_batches(scored, nsdbench_home):
    """The per-network chunk sizes and the brain encoders' buffering are both in the provenance."""
    from nsdbench.metrics.forward import forward_batch
    from nsdbench.score_files import read_parquet_meta

    prov = read_parquet_meta(nsdbench_home / "scores" / scored["png"][1] / "subj01.parquet")["provenance"]
    assert prov["brain_forward_batch"] == forward_batch("cpu")
    assert prov["forward_batch"] and prov["forward_batch"] == {
        n: forward_batch("cpu", n) for n in prov["forward_batch"]
    }
    assert {n.split(":")[0] for n in prov["networks"]} == set(prov["forward_batch"])


def test_invalid_submission_scores_nothing(images, small_root, tmp_path, capsys):
    path = write_submission(images, tmp_path / "bad", "folder")
    victim = min((path / "subj01").iterdir())
    victim.write_bytes(b"not a png")
    db = tmp_path / "lb.duckdb"
    rc = main(["score", str(path), "--data", str(small_root), "--db", str(db), *SCORE])
    cap = capsys.readouterr()
    assert rc == 3 and "unreadable" in cap.out and "nothing was scored" in cap.err
    assert not db.exists()


def test_rescoring_the_same_submission_records_it_once(scored, small_root, db, capsys):
    path, run_id = scored["png"]
    counts = Store(db).counts()
    doc = _score(path, small_root, db, capsys, "--method-name", "png")
    assert doc["already_recorded"] is True and doc["run_id"] == run_id
    assert Store(db).counts() == counts


def test_protocol_list_records_one_run_per_protocol(scored, small_root, db, capsys):
    """`--protocol A,B` scores the same submission under each protocol: two runs, each equal to scoring
    under that protocol alone (same deterministic run id, so the single-protocol call records nothing)."""
    path = scored["tar"][0]
    doc = _score(
        path, small_root, db, capsys, "--method", "tar", "--protocol", "nsdbench-v1,brain-diffuser-2023"
    )
    runs = doc["runs"]
    assert [r["protocol"] for r in runs] == ["nsdbench-v1", "brain-diffuser-2023"]
    assert runs[0]["run_id"] == scored["tar"][1] and runs[0]["already_recorded"]  # --method = --method-name
    alone = _score(path, small_root, db, capsys, "--method", "tar", "--protocol", "brain-diffuser-2023")
    assert alone["run_id"] == runs[1]["run_id"] and alone["already_recorded"]
    assert Store(db).run(runs[1]["run_id"])["protocol"] == "brain-diffuser-2023"


def test_timings_document_names_every_stage_that_ran(images, small_root, tmp_path, capsys):
    """`--timings PATH`: start-up, ground truth, decode, resize, one forward key per network, pixel,
    statistics and store, each a non-negative number of seconds within the wall time; the main thread's
    stages (all but those the prefetch threads also time) together stay within it too."""
    path = write_submission({k: v for k, v in images.items() if k[2] == 0}, tmp_path / "sub", "folder")
    out = tmp_path / "t" / "timings.json"
    _score(path, small_root, tmp_path / "lb.duckdb", capsys, "--timings", str(out))
    doc = json.loads(out.read_text())
    assert doc["images"] == 8 and doc["protocols"] == ["nsdbench-v1"]
    stages = doc["stages"]
    for name in ("startup", "ground_truth", "decode", "resize", "pixel", "statistics", "store"):
        assert stages[name] >= 0, name
    forwards = {k for k in stages if k.startswith("forward:")}
    assert forwards == {
        f"forward:{n}"
        for n in ("alexnet", "inception_v3", "clip_vit_l14", "efficientnet_b1", "swav_resnet50")
    }
    assert "brain" not in stages  # --no-brain: a stage that does not occur is omitted
    assert all(v <= doc["wall_s"] for v in stages.values())
    prefetched = ("ground_truth", "decode", "resize")
    assert 0 < sum(v for k, v in stages.items() if k not in prefetched) <= doc["wall_s"]


@pytest.mark.slow
def test_protocol_all_scores_in_one_pass_with_the_values_of_separate_runs(
    images, small_root, tmp_path, capsys
):
    """`--protocol all` on an nsd982 submission: one pass per subject, one recorded run per protocol within
    nsd982 (second-sight-2023 restricted to nsd897; mindeye on nsd1000 left out with a note), each with the
    per-image values of a separate run of that protocol (second-sight on a submission of its 897 ids)."""
    from nsdbench.nsd.splits import get_split

    first = {k: v for k, v in images.items() if k[2] == 0}
    path = write_submission(first, tmp_path / "all", "folder")
    db = tmp_path / "lb.duckdb"
    doc = _score(path, small_root, db, capsys, "--protocol", "all", "--timings", str(tmp_path / "t.json"))
    runs = {r["protocol"]: r["run_id"] for r in doc["runs"]}
    assert list(runs) == ["nsdbench-v1", "brain-diffuser-2023", "second-sight-2023", "mindeye1"]
    assert json.loads((tmp_path / "t.json").read_text())["images"] == 8
    store = Store(db)
    ss_ids = set(get_split(open_nsd(small_root), "nsd897", 1).test_ids)
    narrow = write_submission({k: v for k, v in first.items() if k[1] in ss_ids}, tmp_path / "ss", "folder")
    for name, run_id in runs.items():
        alone_path = narrow if name == "second-sight-2023" else path
        other = tmp_path / f"{name}.duckdb"
        alone = _score(alone_path, small_root, other, capsys, "--protocol", name)
        a = store.image_scores(run_id).drop(columns="run_id").sort_values(["metric", "nsd_id"])
        b = (
            Store(other)
            .image_scores(alone["run_id"])
            .drop(columns="run_id")
            .sort_values(["metric", "nsd_id"])
        )
        assert len(a) and a.reset_index(drop=True).equals(b.reset_index(drop=True)), name
        if name != "second-sight-2023":
            assert alone["run_id"] == run_id  # the same run a separate command records
    assert set(store.image_scores(runs["second-sight-2023"])["nsd_id"]) == ss_ids


@pytest.mark.slow
def test_protocol_all_with_an_explicit_split_keeps_each_protocols_own_split(
    images, small_root, tmp_path, capsys
):
    """`--protocol all --split nsd982`: --split bounds the protocols, it does not replace their splits:
    second-sight-2023 is recorded on nsd897, mindeye (nsd1000) is left out with a note."""
    first = {k: v for k, v in images.items() if k[2] == 0}
    path = write_submission(first, tmp_path / "all", "folder")
    db = tmp_path / "lb.duckdb"
    argv = ["score", str(path), "--data", str(small_root), "--db", str(db), "--json", *SCORE]
    rc = main([*argv, "--protocol", "all", "--split", "nsd982", "--bootstrap", "10"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err[-2000:]
    runs = Store(db).runs(include_smoke=True).set_index("protocol")
    assert runs.loc["second-sight-2023", "split"] == "nsd897"
    assert runs.loc["nsdbench-v1", "split"] == "nsd982"
    assert "mindeye" not in runs.index and "mindeye1" in runs.index
    assert "scores on nsd1000, which is not within nsd982: not scored" in cap.err
