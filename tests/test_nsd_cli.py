"""`nsdbench data synth`, `data info --json`, `splits show` and the importer commands."""

from __future__ import annotations

import json
from pathlib import Path

from nsdbench.cli import main
from nsdbench.nsd import layout
from nsdbench.nsd.splits import get_split


def test_data_synth_writes_a_readable_dataset(tmp_path: Path, capsys) -> None:
    out = tmp_path / "nsd"
    rc = main(
        ["data", "synth", "--out", str(out), "--seed", "2", "--sessions", "2", "--image-size", "16", "--json"]
    )
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["root"] == str(out.resolve()) and doc["seed"] == 2
    meta = json.loads((out / layout.SYNTH_META).read_text())
    assert meta["seed"] == 2 and meta["sessions"] == 2 and meta["legacy_sessions"] == 1
    rc = main(["data", "info", "--data", str(out), "--json"])
    info = json.loads(capsys.readouterr().out)
    assert rc == 0 and info["image_size"] == 16 and set(info["subjects"]) == {"1", "2", "5", "7"}
    # a second run keeps it; a different seed needs --force
    assert (
        main(["data", "synth", "--out", str(out), "--seed", "2", "--sessions", "2", "--image-size", "16"])
        == 0
    )
    assert main(["data", "synth", "--out", str(out), "--seed", "5"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["data", "synth", "--out", str(tmp_path / "x"), "--seed", "-1"]) == 2
    assert "--seed must be >= 0" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["data", "synth", "--out", str(tmp_path / "file" / "nsd")]) == 2  # parent is a file
    err = capsys.readouterr().err
    assert "cannot create folder" in err and len(err.strip().splitlines()) == 1


def test_data_info_json(nsd, synth_root: Path, capsys) -> None:
    assert main(["data", "info", "--data", str(synth_root), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (
        doc["synthetic"] and doc["n_images"] == nsd.n_images and doc["legacy_sessions"] == nsd.legacy_sessions
    )
    s1 = doc["subjects"]["1"]
    assert s1["sessions"] == len(nsd.sessions(1)) and s1["trials"] == len(nsd.trials(1))
    assert s1["voxels"]["nsdgeneral"] == int((nsd.roi(1, "nsdgeneral") > 0).sum())
    sp = get_split(nsd, "nsd982", 1)
    assert s1["splits"]["nsd982"] == {
        "test_images": len(sp.test_ids), "test_trials": sp.n_test_trials, "train_images": len(sp.train_ids),
        "sessions": [1, nsd.legacy_sessions],
    }  # fmt: skip
    assert main(["data", "info", "--data", str(synth_root)]) == 0
    assert "nsd982" in capsys.readouterr().out


def test_splits_show(nsd, synth_root: Path, capsys) -> None:
    rc = main(["splits", "show", "nsd897", "--subject", "5", "--data", str(synth_root), "--json",
               "--order", "first-presentation"])  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    sp = get_split(nsd, "nsd897", 5)
    assert rc == 0 and doc["test_ids"] == list(sp.first_presentation) and doc["n_train"] == len(sp.train_ids)
    trials = dict(zip(sp.test_ids, sp.test_trials))
    assert doc["test_trials"] == [list(trials[i]) for i in sp.first_presentation]
    assert main(["splits", "show", "nsd1000", "-s", "2", "--data", str(synth_root)]) == 0
    assert "nsd1000 subject 2" in capsys.readouterr().out
    assert main(["splits", "show", "nsd1000", "-s", "3", "--data", str(synth_root)]) == 2
    assert main(["splits", "show", "bogus", "-s", "1", "--data", str(synth_root)]) == 2


def test_import_commands(synth_root: Path, capsys) -> None:
    rc = main(["data", "import-brain-diffuser", str(synth_root / layout.BD_PROCESSED), "-s", "1",
               "--data", str(synth_root), "--json"])  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["agreement"]["checked"] and doc["agreement"]["test_max_abs_diff"] < 1e-5
    rc = main(["data", "import-mindeye2", str(synth_root / layout.me2_betas(1)), "-s", "1", "--data", str(synth_root),
               "--json"])  # fmt: skip
    assert rc == 0 and json.loads(capsys.readouterr().out)["shape"][0] == 2250


def test_data_cache(synth_root: Path, capsys) -> None:
    assert main(["data", "cache", "--data", str(synth_root), "--subjects", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["subject"] == 2 and rows[0]["shape"][0] == 2250 and Path(rows[0]["file"]).is_file()
