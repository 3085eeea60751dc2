"""Per-id feature store: computes only missing ids in fixed batches, survives a kill, shared by users."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from nsdbench.errors import DataError
from nsdbench.feature_store import FeatureStore, default_root

SHAPE = (3, 4)


def features(ids: list[int]) -> np.ndarray:
    """An independent per-id function: row k depends only on ids[k]."""
    ids_a = np.asarray(ids, np.float64)[:, None, None]
    grid = np.arange(np.prod(SHAPE), dtype=np.float64).reshape(SHAPE)
    return np.sin(ids_a * 0.37 + grid).astype(np.float16)


def test_only_missing_ids_are_computed_in_fixed_batches(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path, "toy/extractor v1", SHAPE, np.float16)
    calls: list[list[int]] = []

    def compute(ids: list[int]) -> np.ndarray:
        calls.append(list(ids))
        return features(ids)

    first = store.get_or_compute([9, 2, 5], compute, batch_size=2)
    assert calls == [[2, 5], [9]]
    np.testing.assert_array_equal(first, features([9, 2, 5]))
    calls.clear()
    ids = [5, 11, 2, 7, 5, 3, 9]
    out = store.get_or_compute(ids, compute, batch_size=2)
    assert calls == [[3, 7], [11]]  # ascending missing ids, cut into batches of 2
    assert out.dtype == np.float16 and out.shape == (len(ids), *SHAPE)
    np.testing.assert_array_equal(out, features(ids))
    assert len(store) == 6 and 11 in store and 4 not in store
    assert store.get_or_compute(ids, compute, batch_size=2).shape == out.shape and calls == [[3, 7], [11]]


def test_shared_across_instances_and_keyed_by_extractor(tmp_path: Path) -> None:
    a = FeatureStore(tmp_path, "toy/extractor v1", SHAPE, np.float16)
    a.get_or_compute([1, 2], features, batch_size=8)
    b = FeatureStore(tmp_path, "toy/extractor v1", SHAPE, np.float16)
    np.testing.assert_array_equal(b.get([2, 1]), features([2, 1]))
    other = FeatureStore(tmp_path, "toy/extractor v2", SHAPE, np.float16)
    assert len(other) == 0 and other.path != a.path
    wide = FeatureStore(tmp_path, "toy/extractor v1", SHAPE, np.float32)
    assert wide.path != a.path
    with pytest.raises(DataError, match="NSD id 3 has no stored features"):
        a.get([3])
    assert default_root().name == "features-per-id"


def test_wrong_shape_from_compute_is_refused(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path, "toy", SHAPE, np.float32)
    with pytest.raises(DataError, match="computed shape"):
        store.get_or_compute([1, 2], lambda ids: np.zeros((len(ids), 4, 3)), batch_size=4)
    assert len(store) == 0


def test_rows_of_an_uncommitted_write_are_discarded(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path, "toy", SHAPE, np.float16)
    store.get_or_compute([4, 8], features, batch_size=1)
    with open(store.path / "rows.bin", "ab") as fh:  # a writer died after appending, before its commit
        fh.write(b"\x7f" * 37)
    out = store.get_or_compute([8, 4, 6], features, batch_size=1)
    np.testing.assert_array_equal(out, features([8, 4, 6]))
    assert (store.path / "rows.bin").stat().st_size == 3 * np.prod(SHAPE) * 2


def test_a_killed_computation_keeps_its_committed_batches(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        import numpy as np
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_feature_store import features, SHAPE
        from nsdbench.feature_store import FeatureStore

        store = FeatureStore({str(tmp_path)!r}, "toy", SHAPE, np.float16)
        n = 0
        def compute(ids):
            global n
            n += 1
            if n == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return features(ids)
        store.get_or_compute(list(range(20)), compute, batch_size=4)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == -9, proc.stderr
    store = FeatureStore(tmp_path, "toy", SHAPE, np.float16)
    assert store.missing(range(20)) == list(range(8, 20))
    calls: list[list[int]] = []
    out = store.get_or_compute(list(range(20)), lambda ids: calls.append(ids) or features(ids), batch_size=4)
    assert calls == [[8, 9, 10, 11], [12, 13, 14, 15], [16, 17, 18, 19]]
    np.testing.assert_array_equal(out, features(list(range(20))))


def test_a_different_store_in_the_same_folder_is_an_error(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path, "toy", SHAPE, np.float16)
    (store.path / "meta.json").write_text('{"format": 1, "extractor_id": "else"}')
    with pytest.raises(DataError, match="delete"):
        FeatureStore(tmp_path, "toy", SHAPE, np.float16)


def test_put_keeps_the_first_row_of_a_repeated_id(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path, "toy", SHAPE, np.float16)
    rows = features([3, 3, 5])
    rows[1] = 0
    store.put([3, 3, 5], rows)
    store.put([5], np.ones((1, *SHAPE)))  # already stored: skipped, never overwritten
    assert len(store) == 2
    np.testing.assert_array_equal(store.get([5, 3]), features([5, 3]))
