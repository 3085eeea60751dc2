"""Unit tests of the run machinery that need no data: shards, worker resolution, spec files, atomic PNGs."""

from __future__ import annotations

import numpy as np
import pytest

from nsdbench.errors import DataError, UsageError
from nsdbench.files import atomic_write_bytes
from nsdbench.runs.executors import Worker, parse_shard, resolve_worker
from nsdbench.runs.folder import encode_png, read_png
from nsdbench.runs.shards import assign, make_shards
from nsdbench.runs.spec import RunSpec, prepare_run_dir, read_spec


def _spec(**kw) -> RunSpec:
    base = {
        "method": "ground-truth",
        "subjects": (1, 2),
        "split": "nsd982",
        "data": "synthetic",
        "weights": "tiny",
        "settings": {"size": 16, "alphas": [1.0, 2.0]},
    }
    base.update(kw)
    return RunSpec(**base)


def test_make_shards_is_subject_major_and_independent_of_input_order():
    shards = make_shards({2: [9, 3, 5], 1: [4, 1, 2, 8, 7]}, shard_size=2)
    assert [(s.subject, s.index, s.nsd_ids) for s in shards] == [
        (1, 0, (1, 2)),
        (1, 1, (4, 7)),
        (1, 2, (8,)),
        (2, 0, (3, 5)),
        (2, 1, (9,)),
    ]
    assert shards[0].name == "subj01-0000"
    assert shards[0].items(2) == [(1, 0), (1, 1), (2, 0), (2, 1)]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 20])
def test_assign_partitions_every_shard_exactly_once(n):
    shards = make_shards({1: range(50), 5: range(100, 133)}, shard_size=4)
    taken = [s for k in range(n) for s in assign(shards, k, n)]
    assert sorted(taken, key=lambda s: (s.subject, s.index)) == shards


def test_assign_rejects_bad_k():
    with pytest.raises(UsageError):
        assign([], 3, 3)


def test_parse_shard():
    assert parse_shard("2/5") == (2, 5)
    for bad in ("5/5", "-1/2", "a/b", "3", "1/0"):
        with pytest.raises(UsageError, match="--shard"):
            parse_shard(bad)


def test_resolve_worker_precedence_and_slurm_offset():
    env = {
        "SLURM_ARRAY_TASK_ID": "4",
        "SLURM_ARRAY_TASK_COUNT": "4",
        "SLURM_ARRAY_TASK_MIN": "1",
        "RANK": "0",
        "WORLD_SIZE": "2",
    }
    assert resolve_worker("1/3", env) == Worker(1, 3, "--shard")
    assert resolve_worker(None, env) == Worker(3, 4, "slurm")
    assert resolve_worker(None, {"RANK": "1", "WORLD_SIZE": "2"}) == Worker(1, 2, "rank")
    assert resolve_worker(None, {}) == Worker(0, 1, "single")
    with pytest.raises(UsageError, match="Slurm array task"):
        resolve_worker(None, {"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "4"})
    with pytest.raises(UsageError, match="RANK"):
        resolve_worker(None, {"RANK": "2", "WORLD_SIZE": "2"})


def test_spec_roundtrip_and_mismatch(tmp_path):
    spec = _spec()
    prepare_run_dir(tmp_path / "run", spec)
    back, doc = read_spec(tmp_path / "run")
    assert back == spec and back.hash == spec.hash and doc["run_id"] == spec.run_id
    prepare_run_dir(tmp_path / "run", spec)  # same spec: fine
    with pytest.raises(UsageError, match=r"different run \(seed: 0 there, 3 now\)"):
        prepare_run_dir(tmp_path / "run", _spec(seed=3))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(UsageError, match="not a run folder"):
        prepare_run_dir(tmp_path / "other", spec)


def test_spec_edited_by_hand_is_detected(tmp_path):
    prepare_run_dir(tmp_path, _spec())
    path = tmp_path / "spec.toml"
    path.write_text(path.read_text().replace('method = "ground-truth"', 'method = "shuffled"'))
    with pytest.raises(DataError, match="spec_hash"):
        read_spec(tmp_path)


def test_run_id_is_deterministic_and_spec_sensitive():
    assert _spec().run_id == _spec().run_id
    assert _spec().run_id.startswith("ground-truth-")
    assert _spec(samples=2).run_id != _spec().run_id
    # how the work is cut is not what it produces: same run id, but a folder keeps one shard size
    assert _spec(shard_size=7).run_id == _spec().run_id and _spec(shard_size=7).hash != _spec().hash
    assert _spec(variant="16px").run_id.startswith("ground-truth-16px-")
    # what determines the images is the identity: batch size, dtype, device type, weights hashes
    for change in (
        {"batch_size": 4},
        {"dtype": "float16"},
        {"device": "cuda"},
        {"weights_sha256": {"a": "0"}},
    ):
        assert _spec(**change).run_id != _spec().run_id, change


def test_format_1_run_folder_is_refused_with_a_conversion_hint(tmp_path):
    import tomli_w

    raw = {**_spec().identity(), "protocol": "nsdbench-v1"}
    del raw["batch_size"], raw["dtype"], raw["weights_sha256"]
    (tmp_path / "spec.toml").write_text(tomli_w.dumps({"format": 1, "run_id": "x", "spec": raw}))
    with pytest.raises(DataError, match=r"format 1 .*`nsdbench rescore .* --upgrade`") as info:
        read_spec(tmp_path)
    assert len(str(info.value).splitlines()) == 1


def test_png_roundtrip_bytes_deterministic_and_corruption_detected(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    data = encode_png(img)
    assert encode_png(img.copy()) == data
    path = tmp_path / "a.png"
    atomic_write_bytes(path, data)
    np.testing.assert_array_equal(read_png(path, 16), img)
    assert read_png(path, 32) is None  # wrong size
    path.write_bytes(data[: len(data) // 2])  # truncated
    assert read_png(path, 16) is None
    path.write_bytes(data[:-20])  # IEND chunk lost: decodes, but verify() rejects it
    assert read_png(path, 16) is None
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF  # CRC mismatch inside the image data
    path.write_bytes(bytes(flipped))
    assert read_png(path, 16) is None
    path.write_bytes(b"not a png")
    assert read_png(path) is None
    assert read_png(tmp_path / "missing.png") is None
    assert not list(tmp_path.glob(".*part"))  # no temp files left behind


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    import os

    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_resolve_device_uses_local_rank_for_cuda(monkeypatch):
    from nsdbench.devices import resolve_device

    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("cuda", require_available=False) == "cuda:3"
    assert resolve_device("cuda:1", require_available=False) == "cuda:1"
    assert resolve_device("cpu") == "cpu"
    monkeypatch.delenv("LOCAL_RANK")
    assert resolve_device("cuda", require_available=False) == "cuda"


def test_prepare_run_dir_tolerates_a_concurrent_workers_temp_file(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".spec.toml.abc.part").write_text("half written by another array task")
    prepare_run_dir(run, _spec())
    assert read_spec(run)[0] == _spec()


def test_reconstruction_array_keeps_the_method_size_and_rejects_bad_arrays():
    from nsdbench.errors import NSDBenchError
    from nsdbench.runs.folder import as_reconstruction_array

    img = np.zeros((512, 512, 3), np.uint8)
    assert as_reconstruction_array(img, "m", 5, 0).shape == (512, 512, 3)  # stored as produced, never resized
    for bad in (
        np.zeros((64, 64, 3), np.float32),
        np.zeros((64, 64), np.uint8),
        np.zeros((4, 4, 3), np.uint8),
    ):
        with pytest.raises(NSDBenchError, match="method m: image for NSD id 5 sample 0"):
            as_reconstruction_array(bad, "m", 5, 0)


def test_rich_progress_bar_takes_its_total_and_unit_later(capsys):
    from nsdbench.progress import RichProgress

    with RichProgress() as progress:
        progress.start("fit-1", "subj01 fit", None, unit="step")  # a fit announces its size once it knows it
        progress.set_total("fit-1", 10, "img")
        progress.advance("fit-1", 4)
        (task,) = progress.bars.tasks
        assert (task.total, task.completed, task.fields["unit"]) == (10, 4, "img")
        progress.finish("fit-1")
        assert task.completed == 10
    assert "subj01 fit" in capsys.readouterr().err


def test_scaled_progress_maps_engine_units_onto_the_score_bar():
    from nsdbench.progress import scaled_progress

    steps: list[int] = []
    report = scaled_progress(steps.append, 7)  # a bar of 7 reconstructions; the engine counts 21 units
    for done in (0, 4, 7, 10, 14, 14, 20, 21):
        report(done, 21)
    assert steps == [1, 1, 1, 1, 2, 1] and sum(steps) == 7  # floor(done * 7 / 21), as increments
    report(1, 1)  # the runner's closing call adds nothing once the bar is full
    assert sum(steps) == 7


def test_a_run_folder_keeps_its_shard_size(tmp_path):
    from nsdbench.runs.spec import adopt_execution

    prepare_run_dir(tmp_path / "run", _spec(shard_size=100))
    resumed = adopt_execution(tmp_path / "run", _spec(shard_size=7))  # same run, another --shard-size
    assert resumed == _spec(shard_size=100)
    prepare_run_dir(tmp_path / "run", resumed)
    assert adopt_execution(tmp_path / "run", _spec(seed=3, shard_size=7)).shard_size == 7  # another run
    assert adopt_execution(tmp_path / "new", _spec(shard_size=7)).shard_size == 7  # no folder yet


LOCK_HOLDER = """
import sys, time
from nsdbench.runs.folder import FileLock
lock = FileLock(sys.argv[1])
assert lock.acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_score_lock_dies_with_a_killed_worker(tmp_path):
    """Issue 11 item 8: a SIGKILLed worker's scoring lock does not outlive it."""
    import signal
    import subprocess
    import sys

    from nsdbench.runs.folder import FileLock

    path = tmp_path / "scores" / "p" / "subj01.lock"
    proc = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        assert not FileLock(path).acquire()  # a live holder keeps it
        assert path.read_text().strip().endswith(f":{proc.pid}")  # the owner is named in the file
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert path.exists()  # the killed worker's file is still there, but its lock is not
    lock = FileLock(path)
    assert lock.acquire()
    lock.release()
    assert not path.exists()


def test_clean_leftovers_removes_dead_writers_temp_files_only(tmp_path):
    import os
    import subprocess
    import sys
    import time

    from nsdbench.runs.folder import clean_leftovers, host_label, owned_temp, write_owned

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=False
    )
    dead_pid = int(dead.stdout)
    (tmp_path / "subj01").mkdir()
    killed = tmp_path / "subj01" / f".5_0.png.{host_label()}.{dead_pid}.0badc0de.part"
    killed.write_bytes(b"half")
    mine = owned_temp(tmp_path / "subj01" / "6_0.png")  # this live process, mid-write
    mine.write_bytes(b"writing")
    other_host = tmp_path / "subj01" / ".7_0.png.elsewhere.1.0badc0de.part"
    other_host.write_bytes(b"?")
    old_style = tmp_path / ".spec.toml.abc123.part"
    old_style.write_bytes(b"old")
    os.utime(old_style, (time.time() - 2 * 86400,) * 2)
    write_owned(tmp_path / "subj01" / "8_0.png", b"done")
    assert clean_leftovers(tmp_path) == 2
    assert not killed.exists() and not old_style.exists()
    assert mine.exists() and other_host.exists()  # live, or someone else's and recent
    assert (tmp_path / "subj01" / "8_0.png").read_bytes() == b"done"
