"""Hypothesis-generated malformed submissions: `nsdbench score` never crashes with a traceback, exits 2 or 3,
and never creates or modifies the leaderboard database."""

from __future__ import annotations

import hashlib
import io
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_score_fixtures import small_root_fixture  # noqa: F401

from nsdbench.cli import main

NASTY_PATHS = [
    "../x.png",
    "/etc/passwd",
    "a/../../b.png",
    "ok.png",
    "",
    "C:\\x.png",
    "sub/../../../x.png",
    "images/1_0.png",
    "\u2603.png",
    "x.jpg",
    "manifest.csv",
]

ids = st.one_of(st.integers(-3, 80000), st.sampled_from(["1.5", "x", "", "nan", "1e3", " 7 "]))
manifest_rows = st.lists(
    st.tuples(ids, ids, ids, st.one_of(st.sampled_from(NASTY_PATHS), st.text(max_size=12))), max_size=6
)
dtypes = st.sampled_from(["uint8", "float32", "float64", "int16", "bool", "uint16"])
shapes = st.lists(st.integers(0, 5), min_size=1, max_size=5).map(tuple)

submissions = st.one_of(
    st.tuples(st.just("png"), st.lists(st.binary(max_size=300), min_size=1, max_size=3)),
    st.tuples(
        st.just("npy"), st.tuples(shapes, dtypes, st.sampled_from([0.0, 1.0, 2.0, float("nan"), -1.0]))
    ),
    st.tuples(st.just("manifest"), manifest_rows),
    st.tuples(
        st.just("tar"),
        st.lists(
            st.tuples(
                st.one_of(st.sampled_from(NASTY_PATHS), st.text(min_size=1, max_size=12)),
                st.binary(max_size=200),
            ),
            max_size=4,
        ),
    ),
    st.tuples(st.sampled_from(["rawtar", "npz", "pt", "h5", "npyraw"]), st.binary(max_size=400)),
)


def _write(kind: str, payload, root: Path) -> Path:
    if kind == "png":
        d = root / "sub" / "subj01"
        d.mkdir(parents=True)
        for i, data in enumerate(payload):
            (d / f"{i}_0.png").write_bytes(data)
        return root / "sub"
    if kind == "npy":
        shape, dtype, fill = payload
        with np.errstate(invalid="ignore"):
            arr = np.full(shape, fill).astype(dtype) if dtype != "bool" else np.zeros(shape, bool)
        np.save(root / "a.npy", arr)
        return root / "a.npy"
    if kind == "manifest":
        d = root / "m"
        d.mkdir()
        (d / "ok.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
        lines = ["subject,nsd_id,sample,path"] + [
            ",".join(str(x).replace(",", ";").replace("\n", " ") for x in row) for row in payload
        ]
        (d / "manifest.csv").write_text("\n".join(lines) + "\n")
        return d
    if kind == "tar":
        path = root / "w.tar"
        with tarfile.open(path, "w") as tf:
            for name, data in payload:
                info = tarfile.TarInfo(name.replace("\x00", "") or "x")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        return path
    suffix = {"rawtar": ".tar", "npz": ".npz", "pt": ".pt", "h5": ".h5", "npyraw": ".npy"}[kind]
    path = root / f"r{suffix}"
    path.write_bytes(payload)
    return path


@pytest.fixture(scope="module")
def populated_db(tmp_path_factory) -> Path:
    """A leaderboard that already holds a run: hostile submissions must leave its bytes unchanged."""
    from test_leaderboard_store import record, write_fake_run

    from nsdbench.leaderboards.store import Store

    tmp = tmp_path_factory.mktemp("hostile-db")
    store = Store(tmp / "lb.duckdb")
    store.ingest(record(store, "kept"), write_fake_run(tmp, "kept"), n_resamples=50)
    return store.path


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sub=submissions)
def test_malformed_submissions_fail_cleanly(sub, small_root, populated_db, capsys):
    kind, payload = sub
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = _write(kind, payload, root)
        db = populated_db
        before = _digest(db)
        rc = main(
            [
                "score",
                str(path),
                "--data",
                str(small_root),
                "--db",
                str(db),
                "--weights",
                "tiny",
                "--no-brain",
                "--subjects",
                "1",
                "--order",
                "nsd-ascending",
            ]
        )
        cap = capsys.readouterr()
        assert rc in (2, 3), (kind, rc, cap.err[-500:])
        assert "Traceback" not in cap.out + cap.err
        assert cap.err.strip().splitlines()[-1].startswith("error:")
        assert _digest(db) == before  # nothing recorded, the file untouched
        assert not any(p.name == "evil.png" for p in root.parent.iterdir())
