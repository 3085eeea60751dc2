"""The neutral core: atomic files, content-addressed caches, progress reporting, device resolution and
the Parquet score format, each checked against what it promises."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from nsdbench.caches import ArrayCache, content_key
from nsdbench.devices import device_type, resolve_device
from nsdbench.errors import NSDBenchError, UsageError
from nsdbench.files import atomic_folder, atomic_path, atomic_write_bytes
from nsdbench.progress import labelled_bars, progress_bar
from nsdbench.score_files import PARQUET_FORMAT, read_parquet_meta, write_score_file


def test_atomic_path_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "a.npy"
    target.write_bytes(b"old")
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int64, shape=(3,))
        out[:] = np.arange(3)
        out.flush()
        del out
        assert target.read_bytes() == b"old"  # readers see the old file until the block ends
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy"]  # no temp file left behind


def test_atomic_write_uses_the_named_temp_and_follows_the_umask(tmp_path):
    named = tmp_path / ".f.bin.mine.part"
    atomic_write_bytes(tmp_path / "f.bin", b"data", temp=named)
    assert (tmp_path / "f.bin").read_bytes() == b"data" and not named.exists()
    mask = os.umask(0o022)
    os.umask(mask)
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o666 & ~mask


def test_atomic_folder_keeps_a_finished_entry_unless_asked_to_replace(tmp_path):
    final = tmp_path / "entry"
    with atomic_folder(final) as tmp:
        (tmp / "x").write_text("first")
    assert (final / "x").read_text() == "first"
    with atomic_folder(final) as tmp:  # a concurrent writer finished first: theirs is kept
        (tmp / "x").write_text("second")
    assert (final / "x").read_text() == "first"
    with atomic_folder(final, replace=True) as tmp:
        (tmp / "x").write_text("third")
    assert (final / "x").read_text() == "third"
    with pytest.raises(ValueError), atomic_folder(tmp_path / "never") as tmp:
        (tmp / "x").write_text("partial")
        raise ValueError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]


def test_content_key_sees_values_dtypes_shapes_and_order():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    k = content_key({"a": 1}, x)
    assert k == content_key({"a": 1}, x.copy()) and len(k) == 64
    assert k != content_key({"a": 1}, x.astype(np.float64))
    assert k != content_key({"a": 1}, x.reshape(3, 2))
    assert k != content_key({"a": 2}, x)
    assert k != content_key(x, {"a": 1})
    big = np.random.default_rng(0).standard_normal((3000, 3000)).astype(np.float32)  # hashed in blocks
    changed = big.copy()
    changed[-1, -1] += 1
    assert content_key(big) != content_key(changed)


def test_array_cache_roundtrip_memmap_and_damaged_entry(tmp_path):
    cache = ArrayCache(tmp_path)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    key = cache.key({"a": 1}, x)
    calls = []

    def compute():
        calls.append(1)
        return {"w": x * 2, "b.v": np.int64(3)}

    first = cache.get_or_compute(key, compute)
    again = cache.get_or_compute(key, compute)
    assert len(calls) == 1
    np.testing.assert_array_equal(first["w"], again["w"])
    assert again["b.v"] == 3  # a name with a dot keeps it
    entry = cache.read(key, mmap=True)
    assert isinstance(entry.arrays["w"], np.memmap) and not entry.arrays["w"].flags.writeable
    (cache.entry_dir(key) / "w.npy").write_bytes(b"garbage")  # a damaged entry is recomputed and replaced
    cache.get_or_compute(key, compute)
    assert len(calls) == 2
    cache.get_or_compute(key, compute)
    assert len(calls) == 2
    with cache.writing("streamed", {"kind": "test"}) as writer:
        m = writer.open_array("coef", (4, 2), "float64")
        m[:] = 1.5
        m.flush()
        del m
    streamed = cache.read("streamed")
    assert streamed.meta == {"kind": "test"} and float(streamed.arrays["coef"].sum()) == 12.0


def test_progress_bar_reports_to_a_callback_or_nothing():
    seen = []
    with progress_bar(lambda done, total: seen.append((done, total)), 5, "x") as advance:
        advance(2)
        advance()
        advance(2)
    assert seen == [(0, 5), (2, 5), (3, 5), (5, 5)]
    with progress_bar(False, 5, "x") as advance:
        assert advance(3) is None
    with labelled_bars(False) as bar_for:
        assert bar_for("drift") is False


def test_progress_bar_draws_rich_bars_on_stderr(capsys):
    with progress_bar(True, 3, "counting things") as advance:
        advance(3)
    assert "counting things" in capsys.readouterr().err


def test_resolve_device_auto_cpu_and_errors(monkeypatch):
    import torch

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == resolve_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    assert device_type("cuda:1") == "cuda" and device_type("cpu") == "cpu"
    with pytest.raises(UsageError, match="unknown device 'tpu7'"):
        resolve_device("tpu7")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_score_file_roundtrip_and_refusals(tmp_path):
    df = pd.DataFrame({"nsd_id": [1, 2], "metric": ["ssim", "ssim"], "value": [0.5, 0.25]})
    path = write_score_file(df, tmp_path / "scores" / "subj01.parquet", {"protocol": "p", "subject": 1})
    meta = read_parquet_meta(path)
    assert meta == {"format": PARQUET_FORMAT, "protocol": "p", "subject": 1}
    pd.testing.assert_frame_equal(pd.read_parquet(path), df)
    df.to_parquet(tmp_path / "plain.parquet")
    with pytest.raises(NSDBenchError, match="no nsdbench score metadata"):
        read_parquet_meta(tmp_path / "plain.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(NSDBenchError, match="not a readable Parquet score file"):
        read_parquet_meta(tmp_path / "junk.parquet")
