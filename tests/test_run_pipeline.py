"""End-to-end runs on the synthetic NSD with tiny weights: resume, sharding, Ray, corruption, bad arguments,
seed independence, and the baselines against chance.

Scoring uses a reduced protocol (PixCorr and SSIM at the native 64 px plus brain correlation) so the suite
stays fast; it goes through exactly the code `nsdbench score` uses. Ray workers get the same protocol
through a worker setup hook (a module written next to the test data).
"""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nsdbench.cli import main
from nsdbench.commands.run import build_spec
from nsdbench.errors import NSDBenchError
from nsdbench.methods import baselines
from nsdbench.progress import Progress
from nsdbench.runs.executors import Worker, run_inprocess
from nsdbench.runs.folder import encode_png, png_path, read_png, score_path
from nsdbench.runs.scores import ingest_run, row_id
from nsdbench.runs.session import RunSession
from nsdbench.runs.shards import shard_record_path
from nsdbench.runs.spec import prepare_run_dir

FAST = "h5-test-fast"
HOOK_MODULE = "nsdbench_h5_test_hooks"
HOOK_SOURCE = textwrap.dedent(
    """
    \"\"\"Test-only registrations, imported by the tests and by Ray workers (worker setup hook).\"\"\"
    import os
    from pathlib import Path

    from nsdbench.errors import NSDBenchError
    from nsdbench.methods import baselines, registry
    from nsdbench.metrics import protocols as P

    FAST = P.Protocol(
        name="FAST_NAME",
        version="1",
        description="tests only: pixel metrics at native size and brain correlation",
        split="nsd982",
        published_order="nsd-ascending",
        metrics=(P.PixelMetric("pixcorr", (), (), "rgb", "pearson"),
                 P.PixelMetric("ssim", (), (), "gray", "ssim-2d")) + P.brain_metrics(P.BRAIN_ALL),
    )


    class Flaky(baselines.Shuffled):
        \"\"\"Fails the first attempt of every batch (marker files in $H5_FLAKY_DIR), then succeeds.\"\"\"

        name = "h5-test-flaky"

        def reconstruct(self, test_items, fitted, ctx):
            marker = Path(os.environ["H5_FLAKY_DIR"]) / str(test_items[0].nsd_id)
            if not marker.exists():
                marker.touch()
                raise RuntimeError("transient failure")
            yield from super().reconstruct(test_items, fitted, ctx)


    class Broken(baselines.Shuffled):
        \"\"\"Always fails with a user-facing error (never worth a retry).\"\"\"

        name = "h5-test-broken"

        def reconstruct(self, test_items, fitted, ctx):
            raise NSDBenchError(f"broken adapter at NSD id {test_items[0].nsd_id}")
            yield


    class BrokenFit(baselines.Shuffled):
        \"\"\"Its fit fails with a user-facing error: the run must report it, not finish silently.\"\"\"

        name = "h5-test-broken-fit"

        def fit(self, train, ctx):
            raise NSDBenchError(f"no decoder for subject {ctx.subject}")


    def setup():
        P.PROTOCOLS.setdefault(FAST.name, FAST)
        registry.list_methods()
        for cls in (Flaky, Broken, BrokenFit):
            registry.register_method(cls, source="test hook")
    """
).replace("FAST_NAME", FAST)
SUBJECT = 1
SHARD_SIZE = 30  # 91 synthetic test images -> 4 shards


@pytest.fixture(scope="module")
def hook_dir(tmp_path_factory) -> Path:
    from nsdbench.metrics import protocols

    path = tmp_path_factory.mktemp("hooks")
    (path / f"{HOOK_MODULE}.py").write_text(HOOK_SOURCE)
    sys.path.insert(0, str(path))
    __import__(HOOK_MODULE).setup()
    yield path
    sys.path.remove(str(path))
    protocols.PROTOCOLS.pop(FAST, None)
    from nsdbench.methods import registry

    for name in ("h5-test-flaky", "h5-test-broken", "h5-test-broken-fit"):
        registry.unregister_method(name)


def _spec(method: str, data: Path, shard_size: int = SHARD_SIZE, **kw):
    spec, _, _ = build_spec(
        method,
        str(kw.pop("subjects", SUBJECT)),
        None,
        kw.pop("samples", None),
        kw.pop("seed", None),
        FAST,
        str(data),
        "tiny",
        "cpu",
        kw.pop("variant", None),
        shard_size,
        kw.pop("overrides", None),
        kw.pop("batch_size", None),
    )
    assert not kw
    return spec


def _run(method: str, data: Path, out: Path, worker: Worker | None = None, progress=None, **kw):
    spec = _spec(method, data, **kw)
    prepare_run_dir(out, spec)
    return spec, run_inprocess(out, spec, worker or Worker(), progress=progress, protocols=(FAST,))


def _argv(method: str, data: Path, out: Path, *extra: str) -> list[str]:
    """`nsdbench run` of one subject with the test protocol and shard size."""
    return ["run", "--method", method, "--subjects", str(SUBJECT), "--data", str(data), "--weights", "tiny",
            "--protocol", FAST, "--shard-size", str(SHARD_SIZE), "--device", "cpu", "--out", str(out),
            *extra]  # fmt: skip


class Recorder(Progress):
    """Records what the runner reports: totals per bar and units advanced per bar."""

    def __init__(self) -> None:
        self.totals: dict[str, tuple[int | None, str]] = {}
        self.done: dict[str, int] = {}
        self.steps: dict[str, list[int]] = {}

    def start(self, key, description, total, unit="img"):
        self.totals[key] = (total, unit)
        self.done[key] = 0
        self.steps[key] = []

    def set_total(self, key, total, unit="img"):
        self.totals[key] = (total, unit)

    def advance(self, key, n=1):
        self.done[key] += n
        self.steps[key].append(n)


def _files(run_dir: Path) -> dict[str, bytes]:
    """Every PNG and shard record of a run folder (relative path -> bytes)."""
    paths = list(run_dir.glob("subj*/*.png")) + list(run_dir.glob("shards/*.json"))
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(paths)}


def _scores(run_dir: Path, subject: int = SUBJECT) -> pd.DataFrame:
    df = pd.read_parquet(score_path(run_dir, subject, FAST))
    return df.sort_values(["level", "metric", "nsd_id", "sample"], na_position="first").reset_index(drop=True)


@pytest.fixture(scope="module")
def ridge_run(hook_dir, synth_root, tmp_path_factory) -> tuple[Path, object]:
    """ridge-pixels for one subject, one worker: the reference for sharding, Ray and corruption tests."""
    out = tmp_path_factory.mktemp("ridge") / "run"
    spec, result = _run("ridge-pixels", synth_root, out)
    assert result.all_complete and result.images_written == 91
    return out, spec


@pytest.fixture(scope="module")
def shuffled_run(hook_dir, synth_root, tmp_path_factory) -> Path:
    """shuffled through the CLI, recorded in a leaderboard database."""
    base = tmp_path_factory.mktemp("shuffled")
    assert main(_argv("shuffled", synth_root, base / "run", "--db", str(base / "lb.duckdb"))) == 0
    return base / "run"


def test_cli_run_records_a_smoke_run(shuffled_run):
    from nsdbench.leaderboards.store import Store
    from nsdbench.runs.spec import read_spec

    spec, _ = read_spec(shuffled_run)
    store = Store(shuffled_run.parent / "lb.duckdb")
    row = store.run(row_id(spec.run_id, FAST))
    assert row["kind"] == "run" and row["method"] == "shuffled" and bool(row["smoke"]) is True
    assert row["subjects"] == [SUBJECT] and row["protocol"] == FAST and row["run"] == spec.run_id
    assert len(store.image_scores(row["id"])) == 91 * len(_scores(shuffled_run).query("level == 'set'"))
    assert (shuffled_run / "run.log").read_text().count("scored subj01") == 1


def test_resume_after_kill_gives_identical_files_and_scores(shuffled_run, synth_root, tmp_path, monkeypatch):
    out = tmp_path / "killed"
    original = baselines.Shuffled.reconstruct
    produced = []

    def dying(self, items, fitted, ctx):
        for item in original(self, items, fitted, ctx):
            if len(produced) == 45:  # in the middle of the second shard
                raise RuntimeError("simulated kill")
            produced.append(item[:2])
            yield item

    monkeypatch.setattr(baselines.Shuffled, "reconstruct", dying)
    with pytest.raises(RuntimeError, match="simulated kill"):
        _run("shuffled", synth_root, out)
    assert len(list(out.glob("subj01/*.png"))) == 45
    assert len(list(out.glob("shards/*.json"))) == 1 and not score_path(out, SUBJECT, FAST).exists()
    monkeypatch.setattr(baselines.Shuffled, "reconstruct", original)

    progress = Recorder()
    _, result = _run("shuffled", synth_root, out, progress=progress)
    # finished batches were not redone; the interrupted batch (items 30..45) is regenerated whole
    assert result.images_written == 91 - SHARD_SIZE
    assert result.all_complete
    assert progress.totals["rec-1"] == (91 - SHARD_SIZE, "img") and progress.done["rec-1"] == 91 - SHARD_SIZE
    # the score bar follows the engine as it goes, not one jump at the end
    assert progress.totals["score-1"] == (91, "img") and progress.done["score-1"] == 91
    assert len(progress.steps["score-1"]) > 2 and min(progress.steps["score-1"]) > 0
    assert _files(out) == _files(shuffled_run)
    pd.testing.assert_frame_equal(_scores(out), _scores(shuffled_run))
    progress = Recorder()
    _, again = _run("shuffled", synth_root, out, progress=progress)  # a complete run does nothing
    assert again.images_written == 0 and "rec-1" not in progress.totals and "fit-1" not in progress.totals


def test_ctrl_c_exits_130_in_one_line_and_the_rerun_resumes(
    shuffled_run, synth_root, tmp_path, monkeypatch, capsys
):
    out, db = tmp_path / "run", tmp_path / "lb.duckdb"
    original = baselines.Shuffled.reconstruct
    produced = []

    def interrupted(self, items, fitted, ctx):
        for item in original(self, items, fitted, ctx):
            if len(produced) == 40:  # Ctrl-C in the middle of the second shard
                raise KeyboardInterrupt
            produced.append(item[:2])
            yield item

    monkeypatch.setattr(baselines.Shuffled, "reconstruct", interrupted)
    assert main(_argv("shuffled", synth_root, out, "--db", str(db))) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: interrupted") and "rerun the same command to resume" in err, err
    assert "interrupted" in (out / "run.log").read_text().splitlines()[-1]
    monkeypatch.setattr(baselines.Shuffled, "reconstruct", original)

    assert main(_argv("shuffled", synth_root, out, "--db", str(db), "--json")) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["images_written"] == 91 - SHARD_SIZE and doc["complete"] and doc["ingested"]
    assert _files(out) == _files(shuffled_run)
    pd.testing.assert_frame_equal(_scores(out), _scores(shuffled_run))


def test_one_vs_three_shards_identical(ridge_run, synth_root, tmp_path):
    ref, _ = ridge_run
    three = tmp_path / "three"
    for k in range(3):
        _, result = _run("ridge-pixels", synth_root, three, Worker(k, 3, "--shard"))
        assert result.all_complete == (k == 2)  # the worker completing the subject scores it
    assert _files(three) == _files(ref)
    pd.testing.assert_frame_equal(_scores(three), _scores(ref))


def test_ray_identical_to_one_worker_retries_and_reports_errors(ridge_run, synth_root, hook_dir, tmp_path):
    import os

    ray = pytest.importorskip("ray", reason='Ray is optional: pip install "nsdbench[ray]"')
    from nsdbench.runs.executors import run_ray

    ref, spec = ridge_run
    out = tmp_path / "ray"
    prepare_run_dir(out, spec)
    flaky_dir = tmp_path / "flaky-markers"
    flaky_dir.mkdir()
    env = {
        "PYTHONPATH": os.pathsep.join([str(hook_dir), os.environ.get("PYTHONPATH", "")]),
        "H5_FLAKY_DIR": str(flaky_dir),
    }
    # a worker setup hook is job-level in Ray: the test's ray.init carries it, run_ray reuses that instance
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": env, "worker_process_setup_hook": f"{HOOK_MODULE}.setup"},
    )
    try:
        progress = Recorder()
        result = run_ray(out, spec, progress=progress, protocols=(FAST,))
        # every shard of the flaky adapter fails once and is retried by Ray
        flaky = _spec("h5-test-flaky", synth_root)
        prepare_run_dir(tmp_path / "flaky", flaky)
        flaky_result = run_ray(tmp_path / "flaky", flaky, protocols=(FAST,))
        # a user-facing error is reported once per shard, not retried
        broken = _spec("h5-test-broken", synth_root)
        prepare_run_dir(tmp_path / "broken", broken)
        with pytest.raises(NSDBenchError, match=r"4 task\(s\) failed \(first: subj01-\d+: broken adapter"):
            run_ray(tmp_path / "broken", broken, protocols=(FAST,))
        # a fit that fails is reported (its shards and scoring are skipped, not counted again)
        broken_fit = _spec("h5-test-broken-fit", synth_root)
        prepare_run_dir(tmp_path / "broken-fit", broken_fit)
        with pytest.raises(NSDBenchError, match=r"1 task\(s\) failed \(first: subj01 fit: no decoder for"):
            run_ray(tmp_path / "broken-fit", broken_fit, protocols=(FAST,))
    finally:
        ray.shutdown()
    assert result.all_complete and result.images_written == 91
    # the same bars as in-process: per subject and stage, each run to its total
    assert progress.totals == {"fit-1": (1, "fit"), "rec-1": (91, "img"), "score-1": (91, "img")}
    assert progress.done == {"fit-1": 1, "rec-1": 91, "score-1": 91}
    assert _files(out) == _files(ref)
    pd.testing.assert_frame_equal(_scores(out), _scores(ref))
    # a retried task counts only what its last attempt wrote: the batches before the failure were kept
    assert flaky_result.all_complete and 0 < flaky_result.images_written < 91
    assert len(list((tmp_path / "flaky").glob("subj01/*.png"))) == 91
    assert len(list(flaky_dir.iterdir())) == 7  # one per batch: 2 in each 30-id shard, 1 in the last


def test_ingest_of_sharded_run_is_single_and_idempotent(ridge_run, tmp_path):
    from nsdbench.leaderboards.store import Store

    run_dir, _ = ridge_run
    db = tmp_path / "lb.duckdb"
    (first,) = ingest_run(run_dir, db)
    (second,) = ingest_run(run_dir, db)
    assert first.inserted and not second.inserted
    assert Store(db).counts()["runs"] == 1


def test_corrupted_png_is_detected_and_regenerated(ridge_run, tmp_path):
    ref, spec = ridge_run
    out = tmp_path / "run"
    shutil.copytree(ref, out)
    ids = RunSession(out, spec).shards()[0].nsd_ids
    truncated, altered, deleted = (png_path(out, SUBJECT, n, 0) for n in ids[:3])
    truncated.write_bytes(truncated.read_bytes()[:100])
    altered.write_bytes(encode_png(np.zeros((64, 64, 3), np.uint8)))  # a valid PNG, but not ours
    deleted.unlink()
    assert read_png(altered, 64) is not None
    scores_before = score_path(out, SUBJECT, FAST).stat().st_mtime_ns
    result = run_inprocess(out, spec, protocols=(FAST,))
    assert result.images_written == 16  # the three sit in the shard's first batch: regenerated whole
    assert _files(out) == _files(ref)
    # identical images -> the recorded scores still describe them and are kept
    assert score_path(out, SUBJECT, FAST).stat().st_mtime_ns == scores_before


def test_no_resume_regenerates_everything_identically(ridge_run, tmp_path):
    ref, spec = ridge_run
    out = tmp_path / "run"
    shutil.copytree(ref, out)
    result = run_inprocess(out, spec, force=True, protocols=(FAST,))
    assert result.images_written == 91 and result.all_complete
    assert _files(out) == _files(ref)
    pd.testing.assert_frame_equal(_scores(out), _scores(ref))


def test_corrupted_png_without_shard_record_is_regenerated(ridge_run, tmp_path):
    ref, spec = ridge_run
    out = tmp_path / "run"
    shutil.copytree(ref, out)
    shard = RunSession(out, spec).shards()[1]
    shard_record_path(out, shard).unlink()  # as if killed before the shard finished
    bad = png_path(out, SUBJECT, shard.nsd_ids[0], 0)
    bad.write_bytes(bad.read_bytes()[:-20])
    session = RunSession(out, spec)
    assert session.run_shard(shard) == SHARD_SIZE  # no record: every batch of the shard is redone
    assert _files(out) == _files(ref)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "nope"], "unknown method 'nope'"),
        (["--method", "shuffled", "--subjects", "1,3"], "subject 3 has no data"),
        (["--method", "shuffled", "--subjects", "x"], "expected comma-separated subject numbers"),
        (["--method", "shuffled", "--split", "nsd123"], "unknown split 'nsd123'"),
        (
            ["--method", "shuffled", "--protocol", "mindeye", "--split", "nsd982"],
            "conflicts with protocol mindeye, which scores on nsd1000 (not within nsd982)",
        ),
        (["--method", "shuffled", "--shard", "3/3"], "--shard 3/3"),
        (["--method", "shuffled", "--executor", "dask"], "--executor 'dask'"),
        (["--method", "shuffled", "--weights", "huge"], "unknown weights mode"),
        (["--method", "ridge-pixels", "--variant", "8px"], "no variant '8px'"),
        (["--method", "shuffled", "--samples", "0"], "--samples must be >= 1"),
        (["--method", "ridge-pixels", "--set", "size=big"], "setting size expects int, got 'big'"),
        (["--method", "ridge-pixels", "--set", "sise=8"], "has no setting 'sise' (settings: size, roi"),
        (["--method", "ridge-pixels", "--set", "size"], "--set 'size': expected key=value"),
        (["--method", "ridge-pixels", "--set", "per_target=maybe"], "setting per_target expects bool"),
        (["--method", "shuffled", "--batch-size", "0"], "--batch-size must be >= 1"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, message, synth_root, tmp_path, capsys):
    argv = ["run", *args, "--data", str(synth_root), "--out", str(tmp_path / "r")]
    if "--weights" not in args:
        argv += ["--weights", "tiny"]
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "order", [("second-sight-2023", "nsdbench-v1"), ("nsdbench-v1", "second-sight-2023")]
)
def test_without_split_a_run_takes_the_protocols_widest_split_in_any_order(order, synth_root) -> None:
    from nsdbench.commands.run import build_spec

    spec, _, protos = build_spec(
        "shuffled", "1", None, None, None, ",".join(order), str(synth_root), "tiny", "cpu", None, 8
    )
    assert spec.split == "nsd982" and list(protos) == list(order)


def test_split_not_available_for_the_dataset_exits_2(synth_root, tmp_path, capsys):
    # a copy of the synthetic NSD where subject 2 only completed its first session
    root = tmp_path / "nsd"
    for src in synth_root.rglob("*"):
        dst = root / src.relative_to(synth_root)
        if src.is_dir():
            dst.mkdir(parents=True, exist_ok=True)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(src)
    from nsdbench.nsd import layout

    resp = root / layout.responses(2)
    table = pd.read_csv(resp.resolve(), sep="\t")
    resp.unlink()
    table[table["SESSION"] == 1].to_csv(resp, sep="\t", index=False)
    rc = main(
        [
            "run",
            "--method",
            "shuffled",
            "--subjects",
            "1,2",
            "--data",
            str(root),
            "--weights",
            "tiny",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "subject 2" in err and len(err.splitlines()) == 1, err


def test_resume_into_folder_of_another_run_exits_2(ridge_run, synth_root, capsys):
    run_dir, _ = ridge_run
    rc = main(_argv("ridge-pixels", synth_root, run_dir, "--seed", "5"))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "holds a different run (seed: 0 there, 5 now)" in err


class NoiseMethod(baselines.GroundTruth):
    """A stochastic adapter for the seed tests: the image is noise drawn from the per-image seed."""

    name = "h5-test-noise"

    def reconstruct(self, test_items, fitted, ctx):
        size = ctx.data.image_size
        for it in test_items:
            assert it.seed == ctx.seed(it.nsd_id, it.sample)
            yield (
                it.nsd_id,
                it.sample,
                ctx.rng(it.nsd_id, it.sample).integers(0, 256, (size, size, 3), np.uint8),
            )


def test_per_image_seeds_do_not_depend_on_batch_order_or_shards(
    scoped_methods, hook_dir, synth_root, tmp_path, monkeypatch
):
    from nsdbench.methods import registry

    registry.list_methods()
    registry.register_method(NoiseMethod, source="test")

    outs = {}
    for shard_size in (7, 100):
        spec = _spec("h5-test-noise", synth_root, shard_size=shard_size, samples=2)
        out = tmp_path / f"s{shard_size}"
        prepare_run_dir(out, spec)
        session = RunSession(out, spec)
        for shard in reversed(session.shards()):  # order must not matter either
            session.run_shard(shard)
        outs[shard_size] = {p.name: p.read_bytes() for p in out.glob("subj01/*.png")}
    assert outs[7] == outs[100] and len(outs[7]) == 2 * 91

    ctx = session.context(SUBJECT)
    items = ctx.items(session.split(SUBJECT).test_ids[:10])
    method = NoiseMethod()
    batch = {(n, s): img for n, s, img in method.reconstruct(items, None, ctx)}
    one_by_one = {(n, s): img for it in reversed(items) for n, s, img in method.reconstruct([it], None, ctx)}
    assert batch.keys() == one_by_one.keys()
    assert all(np.array_equal(batch[k], one_by_one[k]) for k in batch)
    assert not np.array_equal(batch[items[0].nsd_id, 0], batch[items[0].nsd_id, 1])  # samples differ


def test_baselines_beat_shuffled_with_disjoint_bootstrap_cis(ridge_run, shuffled_run, synth_root, tmp_path):
    from nsdbench import config
    from nsdbench.metrics.bootstrap import bootstrap_ci

    library_dir = tmp_path / "library"
    shutil.rmtree(config.cache_dir("methods", "best-library-image"))  # the fit must run, not be read
    progress = Recorder()
    spec, result = _run("best-library-image", synth_root, library_dir, progress=progress)
    assert result.all_complete
    # every stage reports a total it reaches: the library scan has an ETA, not a spinner
    n_library = len(baselines.BestLibraryImage().library_ids(RunSession(library_dir, spec).subject_data(1)))
    assert progress.totals["fit-1"] == (n_library, "img") and progress.done["fit-1"] == n_library
    assert progress.totals["rec-1"] == (91, "img") and progress.done["rec-1"] == 91
    chance = _scores(shuffled_run).query("level == 'image'")
    for name, run_dir in (("ridge-pixels", ridge_run[0]), ("best-library-image", library_dir)):
        scores = _scores(run_dir).query("level == 'image'")
        for metric in ("pixcorr", "ssim", "bc_nsdgeneral"):
            _, lo, _ = bootstrap_ci(scores.query("metric == @metric")["value"].to_numpy())
            _, _, hi = bootstrap_ci(chance.query("metric == @metric")["value"].to_numpy())
            assert lo > hi, f"{name} {metric}: CI low {lo:.3f} <= shuffled CI high {hi:.3f}"


def test_slurm_array_then_ingest(shuffled_run, synth_root, tmp_path, monkeypatch, capsys):
    out, db = tmp_path / "run", tmp_path / "lb.duckdb"
    argv = _argv("shuffled", synth_root, out, "--db", str(db))
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    for task in (3, 1, 2):  # array tasks finish in any order
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(task))
        assert main(argv) == 0
        assert f"worker {task - 1}/3 (slurm)" in capsys.readouterr().err
    assert not db.exists()  # workers never write the leaderboard
    for p in (out / "scores" / FAST).glob("subj01.*"):  # as if the scoring worker had died: ingest scores it
        p.unlink()
    assert main(["ingest", str(out), "--db", str(db), "--json"]) == 0
    assert '"inserted": true' in capsys.readouterr().out
    assert _files(out) == _files(shuffled_run)
    pd.testing.assert_frame_equal(_scores(out), _scores(shuffled_run))


def test_ingest_refuses_an_incomplete_run(ridge_run, tmp_path, capsys):
    ref, spec = ridge_run
    out = tmp_path / "run"
    shutil.copytree(ref, out)
    shard_record_path(out, RunSession(out, spec).shards()[2]).unlink()
    assert main(["ingest", str(out), "--db", str(tmp_path / "lb.duckdb")]) == 1
    err = capsys.readouterr().err.strip()
    assert "1 of 4 shards are incomplete (subj01-0002)" in err and len(err.splitlines()) == 1


def test_pretrained_weights_missing_fail_before_any_work(synth_root, tmp_path, capsys):
    rc = main(["run", "--method", "ridge-pixels", "--subjects", "1", "--data", str(synth_root),
               "--out", str(tmp_path / "r")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "nsdbench weights fetch" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_fit_only_fits_this_workers_subjects_and_writes_no_images(hook_dir, synth_root, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", "--method", "shuffled", "--subjects", "1,2", "--data", str(synth_root), "--weights", "tiny",
            "--protocol", FAST, "--out", str(out), "--fit-only", "--json"]  # fmt: skip
    assert main([*argv, "--shard", "1/2"]) == 0
    assert '"fitted_subjects": [2]' in capsys.readouterr().out
    log = (out / "run.log").read_text()
    assert "fit subj02" in log and "fit subj01" not in log
    assert not list(out.glob("subj*/*.png")) and not (out / "shards").exists()
