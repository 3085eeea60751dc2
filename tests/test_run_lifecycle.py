"""The run architecture for generative methods, on the synthetic NSD with test-only methods:
fixed batches and resume identity after kills (SIGKILL and injected errors, 1 vs 3 shards), named
extras with digests, mid-image checkpoints, the method lifecycle, ground-truth access, rescoring under
more protocols, and cleanup of dead writers' temp files.

Generation-only runs pass no protocol (nothing is scored); the rescore tests use one-metric protocols.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from test_score_fixtures import small_root_fixture  # noqa: F401

from nsdbench.cli import main
from nsdbench.commands.run import build_spec
from nsdbench.errors import NSDBenchError
from nsdbench.runs.executors import Worker, run_inprocess
from nsdbench.runs.folder import score_path, score_record_path
from nsdbench.runs.scores import row_id
from nsdbench.runs.session import RunSession
from nsdbench.runs.shards import shard_record_path
from nsdbench.runs.spec import prepare_run_dir

SUBJECT = 1
SHARD_SIZE = 30  # 91 synthetic test images -> shards of 30, 30, 30, 1
BATCH = 8  # -> batches of 8, 8, 8, 6 per full shard
MODULE = "nsdbench_run_lifecycle_methods"
SOURCE = textwrap.dedent(
    '''
    """Test-only methods and protocols, imported by the tests and by their subprocess workers."""
    import json
    import os
    import signal
    from dataclasses import dataclass
    from pathlib import Path

    import numpy as np
    import torch

    from nsdbench.methods import registry
    from nsdbench.methods.adapter import Method, Output
    from nsdbench.metrics import protocols as P

    PIX = P.Protocol(name="lifecycle-pixcorr", version="1", description="tests: PixCorr only",
                     split="nsd982", published_order="nsd-ascending",
                     metrics=(P.PixelMetric("pixcorr", (), (), "rgb", "pearson"),))
    SSIM = P.Protocol(name="lifecycle-ssim", version="1", description="tests: SSIM only",
                      split="nsd982", published_order="nsd-ascending",
                      metrics=(P.PixelMetric("ssim", (), (), "gray", "ssim-2d"),))
    BRAIN = P.Protocol(name="lifecycle-brain", version="1", description="tests: brain correlation only",
                       split="nsd982", published_order="nsd-ascending", metrics=P.brain_metrics(("bc_nsdgeneral",)))
    NESTED = P.Protocol(name="lifecycle-897", version="1", description="tests: a split nested in nsd982",
                        split="nsd897", published_order="nsd-ascending",
                        metrics=(P.PixelMetric("pixcorr", (), (), "rgb", "pearson"),))
    OTHER_SPLIT = P.Protocol(name="lifecycle-1000", version="1", description="tests: a split not in nsd982",
                             split="nsd1000", published_order="nsd-ascending",
                             metrics=(P.PixelMetric("pixcorr", (), (), "rgb", "pearson"),))


    def _kill_point():
        """SIGKILL this process after LIFECYCLE_KILL_AFTER items (counted in LIFECYCLE_COUNT_FILE)."""
        after = os.environ.get("LIFECYCLE_KILL_AFTER")
        if not after:
            return
        counter = Path(os.environ["LIFECYCLE_COUNT_FILE"])
        n = int(counter.read_text()) if counter.exists() else 0
        if n >= int(after):
            os.kill(os.getpid(), signal.SIGKILL)
        counter.write_text(str(n + 1))


    @dataclass(frozen=True)
    class BatchNormSettings:
        size: int = 32
        gain: float = 40.0


    class BatchNorm(Method):
        """Output depends on batch composition: each item's CPU-generator noise is normalized by the
        batch's mean (as a batched sampler's shared statistics would). Emits extras of every kind."""

        name = "lifecycle-batchnorm"
        description = "test only: batch-dependent noise"
        Settings = BatchNormSettings
        default_batch_size = 8
        setups = 0
        closes = 0

        def setup(self, ctx):
            type(self).setups += 1

        def close(self):
            type(self).closes += 1

        def reconstruct(self, items, fitted, ctx):
            s = self.settings.size
            noise = torch.stack([torch.randn((s, s, 3), generator=ctx.generator(it.nsd_id, it.sample))
                                 for it in items])
            normed = noise - noise.mean(dim=0, keepdim=True)
            for it, z, x in zip(items, noise, normed):
                _kill_point()
                img = np.clip(128 + self.settings.gain * x.numpy(), 0, 255).astype(np.uint8)
                stage1 = np.clip(128 + self.settings.gain * z.numpy(), 0, 255).astype(np.uint8)
                trace = {"batch": [i.nsd_id for i in items], "mean": float(noise.mean())}
                yield Output(it.nsd_id, it.sample, img,
                             {"latent.npy": z.numpy(), "stage1.png": stage1, "trace.json": trace})


    class Stepper(Method):
        """A long per-image loop (5 steps) that saves its state after every step through ctx.checkpoint;
        LIFECYCLE_FAIL_AT='nsd_id:step' raises once there. Steps run are logged to LIFECYCLE_STEPS."""

        name = "lifecycle-stepper"
        description = "test only: checkpointed per-image loop"
        default_batch_size = 4

        def reconstruct(self, items, fitted, ctx):
            fail = os.environ.get("LIFECYCLE_FAIL_AT", "")
            log = Path(os.environ["LIFECYCLE_STEPS"])
            for it in items:
                ck = ctx.checkpoint(it)
                state = ck.load() or {"step": np.array(0), "x": np.zeros((16, 16, 3))}
                step, x = int(state["step"]), state["x"]
                rng = np.random.default_rng(ctx.seed(it.nsd_id, it.sample))
                draws = rng.random((5, 16, 16, 3))  # all steps' draws: step k uses draws[k]
                while step < 5:
                    if fail == f"{it.nsd_id}:{step}":
                        os.environ["LIFECYCLE_FAIL_AT"] = ""
                        raise RuntimeError("simulated crash mid-image")
                    x = x + draws[step]
                    step += 1
                    with log.open("a") as fh:
                        fh.write(f"{it.nsd_id}:{step}\\n")
                    ck.save({"step": np.array(step), "x": x})
                yield it.nsd_id, it.sample, (x / 5 * 255).astype(np.uint8)


    class Peeker(Method):
        """Tries to read the test stimuli without declaring reads_ground_truth."""

        name = "lifecycle-peeker"
        description = "test only: must be refused"

        def reconstruct(self, items, fitted, ctx):
            images = ctx.ground_truth.images([it.nsd_id for it in items])
            for it, img in zip(items, images):
                yield it.nsd_id, it.sample, img


    def setup():
        for proto in (PIX, SSIM, BRAIN, NESTED, OTHER_SPLIT):
            P.PROTOCOLS.setdefault(proto.name, proto)
        registry.list_methods()
        for cls in (BatchNorm, Stepper, Peeker):
            registry.register_method(cls, source="test", replace=True)
    '''
)
DRIVER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    import {module} as m
    m.setup()
    from nsdbench.commands.run import build_spec
    from nsdbench.runs.executors import run_inprocess
    from nsdbench.runs.spec import prepare_run_dir
    spec, _, _ = build_spec("lifecycle-batchnorm", "1", None, None, None, "lifecycle-pixcorr", sys.argv[2],
                            "tiny", "cpu", None, {shard}, None, {batch})
    prepare_run_dir(sys.argv[3], spec)
    run_inprocess(sys.argv[3], spec)
    """
).format(module=MODULE, shard=SHARD_SIZE, batch=BATCH)


@pytest.fixture(scope="module")
def methods(tmp_path_factory):
    from nsdbench.methods import registry
    from nsdbench.metrics import protocols

    path = tmp_path_factory.mktemp("lifecycle-methods")
    (path / f"{MODULE}.py").write_text(SOURCE)
    sys.path.insert(0, str(path))
    mod = __import__(MODULE)
    mod.setup()
    yield path, mod
    sys.path.remove(str(path))
    for name in ("lifecycle-batchnorm", "lifecycle-stepper", "lifecycle-peeker"):
        registry.unregister_method(name)
    for name in ("lifecycle-pixcorr", "lifecycle-ssim", "lifecycle-brain", "lifecycle-897", "lifecycle-1000"):
        protocols.PROTOCOLS.pop(name, None)


def _spec(method: str, data: Path, batch: int | None = BATCH, **kw):
    spec, _, _ = build_spec(method, str(SUBJECT), None, None, None, "lifecycle-pixcorr", str(data), "tiny", "cpu",
                            None, SHARD_SIZE, kw.pop("overrides", None), batch)  # fmt: skip
    return spec


def _generate(spec, out: Path, worker: Worker | None = None):
    prepare_run_dir(out, spec)
    return run_inprocess(out, spec, worker or Worker())  # no protocols: generation only


def _files(run_dir: Path) -> dict[str, bytes]:
    """Every image, extra and shard record of a run folder (relative path -> bytes)."""
    paths = [p for p in run_dir.glob("subj*/*") if not p.name.startswith(".")]
    paths += list(run_dir.glob("shards/*.json"))
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(paths)}


@pytest.fixture(scope="module")
def reference(methods, synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("batchnorm") / "ref"
    result = _generate(_spec("lifecycle-batchnorm", synth_root), out)
    assert result.images_written == 91
    return out


def test_the_test_method_really_depends_on_batch_composition(reference, synth_root, tmp_path):
    other = tmp_path / "b5"
    _generate(_spec("lifecycle-batchnorm", synth_root, batch=5), other)
    a, b = _files(reference), _files(other)
    pngs = [k for k in a if k.endswith("_0.png")]
    assert len(pngs) == 91 and sum(a[k] != b[k] for k in pngs) > 80  # so the identity tests can fail
    latents = [k for k in a if k.endswith(".latent.npy")]
    assert all(a[k] == b[k] for k in latents)  # the per-item CPU-generator noise does not depend on it


def test_resume_after_sigkill_at_random_points_is_byte_identical(reference, methods, synth_root, tmp_path):
    hook_dir, _ = methods
    out = tmp_path / "killed"
    rng = np.random.default_rng(13)
    kills = [int(k) for k in rng.choice(np.arange(1, 40), size=2, replace=False)]  # each < the work left
    env = {**os.environ, "LIFECYCLE_COUNT_FILE": str(tmp_path / "count")}
    for after in kills:  # each attempt is killed `after` items into its own work
        (tmp_path / "count").unlink(missing_ok=True)
        proc = subprocess.run(
            [sys.executable, "-c", DRIVER, str(hook_dir), str(synth_root), str(out)],
            env={**env, "LIFECYCLE_KILL_AFTER": str(after)},
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert 0 < len(list(out.glob("subj01/*_0.png"))) < 91
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(hook_dir), str(synth_root), str(out)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _files(out) == _files(reference)
    assert not [p for p in out.rglob(".*") if p.is_file()]  # no temp file of the killed writers is left


def test_injected_failures_then_three_shards_are_byte_identical(
    reference, methods, synth_root, tmp_path, monkeypatch
):
    _, mod = methods
    spec = _spec("lifecycle-batchnorm", synth_root)
    out = tmp_path / "three"
    original = mod.BatchNorm.reconstruct
    rng = np.random.default_rng(5)
    budget = {"left": 0}

    def failing(self, items, fitted, ctx):
        for x in original(self, items, fitted, ctx):
            if budget["left"] == 0:
                raise RuntimeError("injected failure")
            budget["left"] -= 1
            yield x

    monkeypatch.setattr(mod.BatchNorm, "reconstruct", failing)
    for k in range(3):  # worker k of 3 fails at a random point, then finishes
        budget["left"] = int(rng.integers(1, 20))
        with pytest.raises(RuntimeError, match="injected failure"):
            _generate(spec, out, Worker(k, 3, "--shard"))
    monkeypatch.setattr(mod.BatchNorm, "reconstruct", original)
    for k in (2, 0, 1):
        _generate(spec, out, Worker(k, 3, "--shard"))
    assert _files(out) == _files(reference)


def test_extras_are_written_with_digests_and_a_corrupt_extra_regenerates_its_batch(
    reference, synth_root, tmp_path
):
    import hashlib
    import shutil

    spec = _spec("lifecycle-batchnorm", synth_root)
    session = RunSession(reference, spec)
    shard = session.shards()[0]
    record = json.loads(shard_record_path(reference, shard).read_text())
    assert record["batch_size"] == BATCH and sorted(record["batches"]) == ["0", "1", "2", "3"]
    first = shard.nsd_ids[0]
    files = record["batches"]["0"]["files"]
    for name in (f"{first}_0.png", f"{first}_0.latent.npy", f"{first}_0.stage1.png", f"{first}_0.trace.json"):
        data = (reference / "subj01" / name).read_bytes()
        assert files[name] == hashlib.sha256(data).hexdigest()
    latent = np.load(reference / "subj01" / f"{first}_0.latent.npy", allow_pickle=False)
    assert latent.shape == (32, 32, 3) and latent.dtype == np.float32
    trace = json.loads((reference / "subj01" / f"{first}_0.trace.json").read_text())
    assert trace["batch"] == list(shard.nsd_ids[:BATCH])

    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    victim = out / "subj01" / f"{shard.nsd_ids[BATCH]}_0.latent.npy"  # a member of batch 1
    victim.write_bytes(victim.read_bytes()[:-8])
    assert RunSession(out, spec).run_shard(shard) == BATCH  # exactly that batch, whole
    assert _files(out) == _files(reference)


def test_checkpoint_resumes_mid_image(methods, synth_root, tmp_path, monkeypatch):
    steps = tmp_path / "steps.log"
    monkeypatch.setenv("LIFECYCLE_STEPS", str(steps))
    spec = _spec("lifecycle-stepper", synth_root, batch=None)
    ref = tmp_path / "ref"
    prepare_run_dir(ref, spec)
    session = RunSession(ref, spec)
    shard = session.shards()[3]  # the one-image shard
    session.run_shard(shard)
    assert steps.read_text().split() == [f"{shard.nsd_ids[0]}:{k}" for k in range(1, 6)]

    steps.unlink()
    out = tmp_path / "crashed"
    prepare_run_dir(out, spec)
    target = shard.nsd_ids[0]
    monkeypatch.setenv("LIFECYCLE_FAIL_AT", f"{target}:3")
    with pytest.raises(RuntimeError, match="mid-image"):
        RunSession(out, spec).run_shard(shard)
    assert (out / "checkpoints" / "subj01" / f"{target}_0.npz").is_file()
    RunSession(out, spec).run_shard(shard)
    # steps 1-3 ran before the crash; the resumed image continued at step 4, it did not start over
    assert steps.read_text().split() == [f"{target}:{k}" for k in (1, 2, 3, 4, 5)]
    assert (out / "subj01" / f"{target}_0.png").read_bytes() == (
        ref / "subj01" / f"{target}_0.png"
    ).read_bytes()
    assert not (out / "checkpoints" / "subj01" / f"{target}_0.npz").exists()  # removed once written


def test_lifecycle_setup_once_close_at_end_and_settings_reach_the_instance(methods, synth_root, tmp_path):
    _, mod = methods
    mod.BatchNorm.setups = mod.BatchNorm.closes = 0
    spec = _spec("lifecycle-batchnorm", synth_root, overrides={"size": "16", "gain": "10"})
    assert spec.settings == {"gain": 10.0, "size": 16} and spec.batch_size == BATCH
    out = tmp_path / "run"
    _generate(spec, out)
    assert (mod.BatchNorm.setups, mod.BatchNorm.closes) == (1, 1)  # one instance for every shard
    first = next(iter(sorted(out.glob("subj01/*.latent.npy"))))
    assert np.load(first).shape == (16, 16, 3)


def test_ground_truth_is_refused_to_undeclared_methods(methods, synth_root, tmp_path):
    with pytest.raises(NSDBenchError, match="lifecycle-peeker: ctx.ground_truth.images refused"):
        _generate(_spec("lifecycle-peeker", synth_root), tmp_path / "peek")


def test_ground_truth_stimuli_only_cover_the_test_split(nsd):
    from nsdbench.nsd.ground_truth import GroundTruthStimuli
    from nsdbench.nsd.splits import get_split

    split = get_split(nsd, "nsd982", 1)
    gt = GroundTruthStimuli(nsd, 1, split)
    ids = list(split.test_ids[:3])
    np.testing.assert_array_equal(gt.images(ids), nsd.images(ids))
    assert gt.captions(ids) == list(nsd.captions(ids))
    with pytest.raises(NSDBenchError, match=f"NSD id {split.train_ids[0]} is not a test image"):
        gt.images([split.train_ids[0]])


def test_run_under_two_protocols_then_rescore_a_third(methods, synth_root, tmp_path, capsys):
    from nsdbench.leaderboards.store import Store

    out, db = tmp_path / "gt", tmp_path / "lb.duckdb"
    argv = ["run", "--method", "ground-truth", "--subjects", "1", "--data", str(synth_root), "--weights", "tiny",
            "--device", "cpu", "--out", str(out), "--db", str(db), "--shard-size", "50", "--json"]  # fmt: skip
    assert main([*argv, "--protocol", "lifecycle-pixcorr"]) == 0
    doc = json.loads(capsys.readouterr().out)
    run_id = doc["run_id"]
    assert doc["leaderboard_ids"] == [row_id(run_id, "lifecycle-pixcorr")]
    pngs = {p: p.stat().st_mtime_ns for p in out.glob("subj01/*.png")}
    assert len(pngs) == 91

    assert main(["rescore", str(out), "--protocol", "lifecycle-ssim,lifecycle-pixcorr", "--db", str(db),
                 "--json", "--timings", str(tmp_path / "t.json")]) == 0  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    timings = json.loads((tmp_path / "t.json").read_text())
    assert timings["images"] == 91 and timings["protocols"] == ["lifecycle-ssim", "lifecycle-pixcorr"]
    assert {"decode", "pixel", "store"} <= set(timings["stages"]) and timings["wall_s"] > 0
    inserted = {r["run_id"]: r["inserted"] for r in doc["rows"]}
    assert inserted == {row_id(run_id, "lifecycle-ssim"): True, row_id(run_id, "lifecycle-pixcorr"): False}
    assert {p: p.stat().st_mtime_ns for p in out.glob("subj01/*.png")} == pngs  # nothing generated
    assert (
        score_path(out, 1, "lifecycle-ssim").is_file() and score_path(out, 1, "lifecycle-pixcorr").is_file()
    )
    runs = Store(db).runs(include_smoke=True).set_index("id")
    assert set(runs["run"]) == {run_id} and set(runs["protocol"]) == {"lifecycle-pixcorr", "lifecycle-ssim"}
    # the ground truth scores PixCorr 1 and SSIM 1 under either protocol
    for proto, metric in (("lifecycle-pixcorr", "pixcorr"), ("lifecycle-ssim", "ssim")):
        agg = Store(db).aggregates(row_id(run_id, proto)).set_index(["subject", "metric"])
        assert agg.loc[("mean", metric), "mean"] == pytest.approx(1.0, abs=1e-6)

    # a protocol on a nested split scores the run's images within its split, recorded with that split
    assert main(["rescore", str(out), "--protocol", "lifecycle-897", "--db", str(db), "--json"]) == 0
    nested = row_id(run_id, "lifecycle-897")
    assert [r["run_id"] for r in json.loads(capsys.readouterr().out)["rows"]] == [nested]
    ids_897 = RunSession(out, _spec("ground-truth", synth_root)).split(1, "nsd897").test_ids
    assert Store(db).run(nested)["split"] == "nsd897" and len(ids_897) == 83
    assert sorted(set(Store(db).image_scores(nested)["nsd_id"])) == list(ids_897)
    record = json.loads(score_record_path(out, 1, "lifecycle-897").read_text())
    assert record["split"] == "nsd897" and record["n_images"] == 83

    # a protocol on a split that is not within the run's cannot score these images: usage error, one line
    assert main(["rescore", str(out), "--protocol", "lifecycle-1000", "--db", str(db)]) == 2
    err = capsys.readouterr().err.strip()
    assert "scores on nsd1000, but this run generated images for nsd982 (nsd1000 is not within nsd982)" in err
    assert len(err.splitlines()) == 1


def test_rescore_refuses_an_unfinished_run(methods, synth_root, tmp_path, capsys):
    spec = _spec("lifecycle-batchnorm", synth_root)
    out = tmp_path / "partial"
    prepare_run_dir(out, spec)
    RunSession(out, spec).run_shard(RunSession(out, spec).shards()[0])
    assert main(["rescore", str(out), "--protocol", "lifecycle-pixcorr", "--db", str(tmp_path / "lb")]) == 1
    err = capsys.readouterr().err.strip()
    assert "3 of 4 shards are incomplete" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "lb").exists()


def test_rescore_all_names_the_protocols_it_leaves_out_on_stderr(methods, synth_root, tmp_path, capsys):
    """`rescore --protocol all` on an nsd982 run: mindeye (nsd1000, not within nsd982) is left out with a
    note on stderr, second-sight-2023 (nsd897, nested) is kept (here before the unfinished run is refused)."""
    spec = _spec("lifecycle-batchnorm", synth_root)
    out = tmp_path / "partial"
    prepare_run_dir(out, spec)
    RunSession(out, spec).run_shard(RunSession(out, spec).shards()[0])
    assert main(["rescore", str(out), "--protocol", "all", "--db", str(tmp_path / "lb")]) == 1
    err = capsys.readouterr().err
    assert "mindeye scores on nsd1000, not on this run's split nsd982: not scored" in err
    assert "second-sight-2023 scores on" not in err
    assert "shards are incomplete" in err


def test_rescore_all_scores_a_nested_protocol_on_its_split_as_score_does(
    methods, small_root, tmp_path, capsys
):
    """`rescore --protocol all` on an nsd982 run scores second-sight-2023 on its nsd897 ids in the same pass
    as the others, with the values `nsdbench score` gives the same PNGs, and records it with split nsd897;
    mindeye is left out with its note; a second rescore changes nothing."""
    import shutil

    import pandas as pd

    from nsdbench.leaderboards.store import Store
    from nsdbench.report.sources import from_folder

    spec = _spec("shuffled", small_root)
    out, db = tmp_path / "run", tmp_path / "lb.duckdb"
    _generate(spec, out)
    session = RunSession(out, spec)
    ids_982, ids_897 = session.split(1).test_ids, session.split(1, "nsd897").test_ids
    assert set(ids_897) < set(ids_982)  # small NSD: 7 of 8

    assert main(["rescore", str(out), "--protocol", "all", "--db", str(db), "--json"]) == 0
    cap = capsys.readouterr()
    assert "mindeye scores on nsd1000, not on this run's split nsd982: not scored" in cap.err
    assert "second-sight-2023 scores on" not in cap.err
    names = ("nsdbench-v1", "brain-diffuser-2023", "second-sight-2023", "mindeye1")  # the shipped ones
    rows = {r["run_id"]: r["inserted"] for r in json.loads(cap.out)["rows"]}
    assert {row_id(spec.run_id, n): True for n in names}.items() <= rows.items()
    assert row_id(spec.run_id, "mindeye") not in rows
    (scored,) = [ln for ln in (out / "run.log").read_text().splitlines() if "scored subj01" in ln]
    assert all(n in scored for n in names) and f" {len(ids_982)} images" in scored  # one engine pass
    store = Store(db)
    splits = {n: store.run(row_id(spec.run_id, n))["split"] for n in names}
    assert splits == {n: "nsd897" if n == "second-sight-2023" else "nsd982" for n in names}
    ss_row = row_id(spec.run_id, "second-sight-2023")
    assert sorted(set(store.image_scores(ss_row)["nsd_id"])) == list(ids_897)
    record = json.loads(score_record_path(out, 1, "second-sight-2023").read_text())
    assert record["split"] == "nsd897" and record["n_images"] == len(ids_897)
    info, *_ = from_folder(out, [], None, "second-sight-2023")  # `nsdbench report RUN_DIR@PROTOCOL`
    assert info.split == "nsd897"

    # the same PNGs (the nsd897 ones) scored as a submission: bit-identical values at every level
    sub = tmp_path / "sub" / "subj01"
    sub.mkdir(parents=True)
    for nsd_id in ids_897:
        shutil.copy(out / "subj01" / f"{nsd_id}_0.png", sub / f"{nsd_id}_0.png")
    argv = ["score", str(sub.parent), "--protocol", "second-sight-2023", "--weights", "tiny", "--device", "cpu",
            "--data", str(small_root), "--subjects", "1", "--db", str(tmp_path / "lb2.duckdb"),
            "--work-dir", str(tmp_path / "work"), "--json"]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    cols = ["level", "subject", "nsd_id", "sample", "metric", "value"]
    keys = ["level", "metric", "nsd_id", "sample"]
    mine = pd.read_parquet(score_path(out, 1, "second-sight-2023"), columns=cols).sort_values(keys)
    theirs = pd.read_parquet(tmp_path / "work" / "subj01.parquet", columns=cols).sort_values(keys)
    assert len(mine) > len(ids_897) and set(mine["metric"]) == set(theirs["metric"])
    pd.testing.assert_frame_equal(
        mine.reset_index(drop=True), theirs.reset_index(drop=True), check_exact=True
    )

    # nothing left to do: a second rescore scores and records nothing
    before = {p: p.stat().st_mtime_ns for p in (out / "scores").rglob("*")}
    assert main(["rescore", str(out), "--protocol", "all", "--db", str(db), "--json"]) == 0
    assert not json.loads(capsys.readouterr().out)["inserted"]
    assert {p: p.stat().st_mtime_ns for p in (out / "scores").rglob("*")} == before
    assert (out / "run.log").read_text().count("scored subj01") == 1


def test_run_scores_protocols_on_nested_splits_directly(methods, small_root, tmp_path, capsys):
    """`run --protocol A,B` with B on a split nested in A's: one pass, one row each with its own split."""
    from nsdbench.leaderboards.store import Store

    db = tmp_path / "lb.duckdb"
    argv = ["run", "--method", "ground-truth", "--subjects", "1", "--data", str(small_root), "--weights", "tiny",
            "--device", "cpu", "--out", str(tmp_path / "gt"), "--db", str(db), "--json",
            "--protocol", "lifecycle-pixcorr,lifecycle-897"]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = {p: Store(db).run(row_id(doc["run_id"], p)) for p in ("lifecycle-pixcorr", "lifecycle-897")}
    assert {p: r["split"] for p, r in rows.items()} == {
        "lifecycle-pixcorr": "nsd982",
        "lifecycle-897": "nsd897",
    }
    counts = {p: Store(db).image_scores(row_id(doc["run_id"], p))["nsd_id"].nunique() for p in rows}
    assert counts == {"lifecycle-pixcorr": 8, "lifecycle-897": 7}


def test_sharded_scoring_is_not_skipped_after_a_killed_scorer(methods, synth_root, tmp_path):
    """Issue 11 item 8: a lock file left by a killed worker does not stop the rerun from scoring."""
    from nsdbench.runs.scores import check_protocols, score_run_subject

    spec = _spec("ground-truth", synth_root)
    out = tmp_path / "run"
    _generate(spec, out)
    lock = score_path(out, 1, "lifecycle-pixcorr").with_suffix(".lock")
    lock.parent.mkdir(parents=True)
    lock.write_text("deadhost:12345\n")  # what a SIGKILLed worker leaves behind
    session = RunSession(out, spec)
    (proto,) = check_protocols(["lifecycle-pixcorr"], spec.split)
    assert score_run_subject(session, 1, proto, lock=True)
    assert score_path(out, 1, "lifecycle-pixcorr").is_file() and not lock.exists()


def test_a_score_file_with_other_forward_batches_is_not_complete(methods, synth_root, tmp_path):
    """A subject scored with other chunk sizes (recorded in the provenance) is rescored, not reused."""
    import pandas as pd

    from nsdbench.runs.folder import file_digest, score_record_path
    from nsdbench.runs.scores import check_protocols, score_is_complete, score_run_subject
    from nsdbench.score_files import read_parquet_meta, write_score_file

    spec = _spec("ground-truth", synth_root)
    out = tmp_path / "run"
    _generate(spec, out)
    session = RunSession(out, spec)
    (proto,) = check_protocols(["lifecycle-pixcorr"], spec.split)
    assert score_run_subject(session, 1, proto)
    assert score_is_complete(session, 1, proto)
    path = score_path(out, 1, proto.name)
    meta = read_parquet_meta(path)
    assert meta["provenance"]["brain_forward_batch"] == 8
    meta["provenance"]["brain_forward_batch"] = 64  # as if scored on CUDA
    write_score_file(pd.read_parquet(path), path, meta)
    record = json.loads(score_record_path(out, 1, proto.name).read_text())
    record["parquet_sha256"] = file_digest(path)  # the record matches the file: only the batches differ
    score_record_path(out, 1, proto.name).write_text(json.dumps(record))
    assert not score_is_complete(session, 1, proto)


def test_guidance_encoder_identity_is_recorded(methods, synth_root, tmp_path, nsd):
    from nsdbench.runs.session import guiding_encoders

    spec = _spec("ground-truth", synth_root)
    out = tmp_path / "run"
    prepare_run_dir(out, spec)
    ctx = RunSession(out, spec).context(1)
    enc = ctx.encoder("gnet8")
    assert ctx.encoder("gnet8") is enc  # loaded once
    assert guiding_encoders(out) == [str(enc.identity)]


def test_circular_guidance_matches_the_metric_encoder_by_name_key_or_hash():
    from nsdbench.runs.scores import circular_guidance

    info = {"encoder": "gnet8", "encoder_key": "ab12cd34", "accuracy": {"v1": 0.3}, "subject": 1}
    assert circular_guidance(["gnet8:ab12cd34"], [info])
    assert circular_guidance(["ab12cd34"], [info])
    assert not circular_guidance(["clip-vit-l14:0000"], [info])
    assert not circular_guidance([], [info])  # an unguided run is never circular
    assert not circular_guidance(["gnet8:ab12cd34"], [{}])  # scored without brain correlation


@pytest.mark.slow  # fits the tiny encoding model (about a minute on 2 busy cores)
def test_leaderboard_marks_brain_cells_of_runs_guided_by_the_metric_encoder(
    methods, synth_root, tmp_path, capsys
):
    import pandas as pd

    from nsdbench.runs.session import record_guiding_encoder
    from nsdbench.score_files import read_parquet_meta

    out, db = tmp_path / "run", tmp_path / "lb.duckdb"
    _generate(_spec("ground-truth", synth_root), out)
    assert main(["rescore", str(out), "--protocol", "lifecycle-brain", "--no-ingest"]) == 0
    brain = read_parquet_meta(score_path(out, 1, "lifecycle-brain"))["brain_encoder"]
    assert brain.get("encoder_key")
    record_guiding_encoder(
        out, f"{brain['encoder']}:{brain['encoder_key']}"
    )  # guided by the metric's encoder
    assert main(["ingest", str(out), "--db", str(db), "--protocol", "lifecycle-brain"]) == 0
    capsys.readouterr()
    base = [
        "leaderboard",
        "--protocol",
        "lifecycle-brain",
        "--include-smoke",
        "--no-reported",
        "--db",
        str(db),
    ]
    assert main([*base, "--format", "md"]) == 0
    md = capsys.readouterr().out
    assert md.count(" ‡") == 2 and "circular" in md  # the mean table and subject 1's, plus the note
    assert main([*base, "--format", "csv"]) == 0
    import io

    rows = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert rows["circular"].all() and set(rows["metric"]) == {"bc_nsdgeneral"}
    assert main([*base, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert all(c["circular"] for t in doc["tables"] for r in t["rows"] for c in r["cells"].values())
    assert main([*base, "--format", "latex"]) == 0
    assert r"$^\ddagger$" in capsys.readouterr().out


def test_readme_worked_example_runs_end_to_end(scoped_methods, methods, synth_root, tmp_path, monkeypatch):
    """The README's "Writing a method" module, as printed, registers and runs through the runner."""
    from nsdbench.methods import registry

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Writing a method", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "readme_mean_image.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.list_methods()
    __import__("readme_mean_image")
    spec = _spec("mean-image", synth_root, batch=None, overrides={"n_train": "20"})
    assert spec.batch_size == 8 and spec.settings == {"n_train": 20, "noise": 20.0}
    out = tmp_path / "run"
    assert _generate(spec, out).images_written == 91
    first = min(out.glob("subj01/*_0.png"))
    assert first.with_name(first.name.replace(".png", ".stage1.png")).is_file()
    clean = _spec("mean-image", synth_root, batch=None, overrides={"n_train": "20", "noise": "0"})
    _generate(clean, tmp_path / "clean")
    img = (tmp_path / "clean" / "subj01" / first.name).read_bytes()
    assert img == (tmp_path / "clean" / "subj01" / first.name.replace(".png", ".stage1.png")).read_bytes()


def test_format_1_folder_is_refused_then_upgraded_in_place(methods, synth_root, tmp_path, capsys):
    """A run folder of the old layout (protocol in the spec, one file list per shard) is refused by `run`
    with a one-line hint, and `rescore --upgrade` converts it keeping every image."""
    import tomli_w

    from nsdbench.runs.shards import shard_is_complete

    new = _spec("ground-truth", synth_root, batch=SHARD_SIZE)
    out = tmp_path / "old"
    _generate(new, out)
    session = RunSession(out, new)
    for shard in session.shards():  # rewrite the records and the spec as format 1 wrote them
        rec = json.loads(shard_record_path(out, shard).read_text())
        files = {k: v for b in rec["batches"].values() for k, v in b["files"].items()}
        old = {
            "shard": shard.name,
            "spec_hash": "0" * 64,
            "subject": 1,
            "nsd_ids": rec["nsd_ids"],
            "files": files,
        }
        shard_record_path(out, shard).write_text(json.dumps(old))
    raw = {k: v for k, v in new.identity().items() if k not in ("batch_size", "dtype", "weights_sha256")}
    (out / "spec.toml").write_text(
        tomli_w.dumps({"format": 1, "spec": {**raw, "protocol": "lifecycle-pixcorr"}})
    )
    (out / "scores").mkdir()
    (out / "scores" / "subj01.parquet").write_bytes(b"old scores")
    pngs = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("subj01/*.png")}

    argv = ["run", "--method", "ground-truth", "--subjects", "1", "--data", str(synth_root), "--weights", "tiny",
            "--device", "cpu", "--out", str(out), "--protocol", "lifecycle-pixcorr", "--no-ingest"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "format 1" in err and f"nsdbench rescore {out} --upgrade" in err and len(err.splitlines()) == 1

    assert main(["rescore", str(out), "--upgrade", "--no-ingest"]) == 0  # scored under its old protocol
    from nsdbench.runs.spec import read_spec

    assert read_spec(out)[0] == new  # the spec a current run with batch size = shard size has
    assert all(shard_is_complete(out, new, s) for s in RunSession(out, new).shards())
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("subj01/*.png")} == pngs
    assert score_path(out, 1, "lifecycle-pixcorr").is_file()
    assert (out / "scores-format1" / "subj01.parquet").read_bytes() == b"old scores"
