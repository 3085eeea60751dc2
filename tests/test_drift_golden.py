"""`nsdbench drift`: a golden file made with one command rescores within tolerance; a moved value, a changed
protocol definition or changed reconstructions exit 4 and are each listed; --update rewrites the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_score_fixtures import small_root_fixture  # noqa: F401

from nsdbench.cli import main
from nsdbench.nsd import open_nsd
from nsdbench.submissions.writers import demo_images, write_submission


def _drift(capsys, *args: str) -> tuple[int, dict]:
    rc = main(["drift", "--json", *args])
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err
    return rc, json.loads(cap.out)


def _create(capsys, golden: Path, root: Path, subject: int, *extra: str) -> tuple[int, dict]:
    """`drift --create` with tiny weights on the first 5 test images of one subject."""
    args = ["--golden", str(golden), "--data", str(root), "--weights", "tiny", "--max-images", "5"]
    return _drift(capsys, "--create", *args, "--subjects", str(subject), *extra)


def test_golden_roundtrip_tamper_and_update(small_root, tmp_path, capsys):
    golden = tmp_path / "golden.json"
    rc, doc = _create(capsys, golden, small_root, 1, "--radius", "6")
    assert rc == 0 and doc["updated"] and doc["deviations"] == []
    spec = json.loads(golden.read_text())
    expected = dict(spec["expected"]["nsdbench-v1"]["1"])
    per_image = spec["expected_per_image"]["nsdbench-v1"]["1"]
    assert set(expected) == {
        "pixcorr",
        "ssim",
        "alexnet2",
        "alexnet5",
        "alexnet7",
        "inception",
        "clip_2way",
        "clip_cos",
        "effnet_b",
        "swav",
    }
    assert spec["ids"]["1"] == sorted(spec["ids"]["1"]) and len(spec["ids"]["1"]) == 5
    assert spec["reconstructions"]["kind"] == "blur" and spec["data"] == str(small_root.resolve())

    spec["expected"]["nsdbench-v1"]["1"]["pixcorr"] += 1e-5  # beyond the 1e-6 float64 tolerance
    spec["expected"]["nsdbench-v1"]["1"]["ssim"] += 5e-7  # within it
    spec["expected"]["nsdbench-v1"]["1"]["effnet_b"] += 5e-5  # within the 1e-4 network tolerance
    spec["expected"]["nsdbench-v1"]["1"]["swav"] += 2e-4  # beyond it
    spec["expected"]["nsdbench-v1"]["1"]["alexnet7"] += 5e-4  # beyond it too, but within its override:
    spec["tolerance"]["overrides"] = {"alexnet7": 1e-3}
    spec["protocols"]["nsdbench-v1"]["hash"] = "0000"
    golden.write_text(json.dumps(spec))
    rc, doc = _drift(capsys, "--golden", str(golden))
    assert rc == 4
    moved = {(d["subject"], d["metric"]) for d in doc["deviations"]}
    assert moved == {("1", "pixcorr"), ("1", "swav"), ("*", "definition")}
    pix = next(d for d in doc["deviations"] if d["metric"] == "pixcorr")
    assert pix["tolerance"] == 1e-6 and abs(pix["expected"] - pix["actual"] - 1e-5) < 1e-9
    assert len(doc["checked"]) == 10
    assert next(c for c in doc["checked"] if c["metric"] == "alexnet7")["tolerance"] == 1e-3

    rc = main(["drift", "--golden", str(golden)])  # the human-readable form lists each one
    cap = capsys.readouterr()
    err = cap.err
    assert rc == 4 and "nsdbench-v1 subject 1 pixcorr: expected" in err and "definition changed" in err
    assert "3 value(s) beyond tolerance" in err
    # the table shows the moved set scores only, and counts the others
    table_rows = [line for line in cap.out.splitlines() if line.startswith("│")]
    assert len(table_rows) == 2 and all("DRIFT" in r for r in table_rows)
    assert "8 of 10 set scores ok (--verbose lists them)" in err

    rc, doc = _drift(capsys, "--golden", str(golden), "--update")
    assert rc == 0 and doc["updated"]
    # rescoring is deterministic: the rewritten values are exactly the ones first recorded, so a check passes
    updated = json.loads(golden.read_text())
    assert updated["expected"]["nsdbench-v1"]["1"] == expected
    assert updated["expected_per_image"]["nsdbench-v1"]["1"] == per_image
    assert updated["protocols"]["nsdbench-v1"]["hash"] != "0000"


def test_per_image_values_recorded_and_each_moved_id_named(small_root, tmp_path, capsys):
    golden = tmp_path / "golden.json"
    rc, _ = _create(capsys, golden, small_root, 1, "--radius", "6")
    spec = json.loads(golden.read_text())
    ids = spec["ids"]["1"]
    per_image = spec["expected_per_image"]["nsdbench-v1"]["1"]
    assert rc == 0 and set(per_image) == set(spec["expected"]["nsdbench-v1"]["1"])
    for metric, values in per_image.items():  # the set score is the mean of the per-image values
        assert list(values) == [str(i) for i in ids]
        assert np.mean(list(values.values())) == pytest.approx(
            spec["expected"]["nsdbench-v1"]["1"][metric], abs=1e-12
        )
    rc, doc = _drift(capsys, "--golden", str(golden))
    assert rc == 0 and doc["checked_per_image"] == len(ids) * len(per_image)

    tampered = json.loads(golden.read_text())
    pi = tampered["expected_per_image"]["nsdbench-v1"]["1"]
    pi["pixcorr"][str(ids[2])] += 1e-5  # beyond the 1e-6 float64 tolerance; its set score is untouched
    pi["ssim"][str(ids[0])] += 5e-7  # within it
    for i in ids[:4]:  # four ids of one network metric, beyond the 1e-4 tolerance
        pi["swav"][str(i)] -= 3e-4
    golden.write_text(json.dumps(tampered))
    rc, doc = _drift(capsys, "--golden", str(golden))
    assert rc == 4
    devs = {d["metric"]: d for d in doc["deviations"]}
    assert set(devs) == {"pixcorr", "swav"} and {d["level"] for d in devs.values()} == {"image"}
    assert [m["nsd_id"] for m in devs["pixcorr"]["images"]] == [ids[2]]
    assert [m["nsd_id"] for m in devs["swav"]["images"]] == ids[:4]
    assert (
        f"nsd_id {ids[2]}" in devs["pixcorr"]["message"] and "1 of 5 per-image" in devs["pixcorr"]["message"]
    )

    rc = main(["drift", "--golden", str(golden)])
    err = capsys.readouterr().err
    assert rc == 4 and "nsdbench-v1 subject 1 pixcorr: 1 of 5 per-image values" in err
    assert (
        "swav: 4 of 5 per-image values beyond tolerance 0.0001" in err and ", ".join(map(str, ids[:4])) in err
    )


def test_golden_without_per_image_values_still_checks(small_root, tmp_path, capsys):
    golden = tmp_path / "golden.json"
    rc, _ = _create(capsys, golden, small_root, 1, "--radius", "6")
    spec = json.loads(golden.read_text())
    del spec["expected_per_image"]  # a golden file written before per-image values were recorded
    golden.write_text(json.dumps(spec))
    rc, doc = _drift(capsys, "--golden", str(golden))
    assert rc == 0 and doc["deviations"] == [] and doc["checked_per_image"] == 0 and len(doc["checked"]) == 10
    spec["expected"]["nsdbench-v1"]["1"]["pixcorr"] += 1e-5
    golden.write_text(json.dumps(spec))
    rc, doc = _drift(capsys, "--golden", str(golden))
    assert rc == 4 and [d["metric"] for d in doc["deviations"]] == ["pixcorr"]
    rc, doc = _drift(capsys, "--golden", str(golden), "--update")  # --update adds them
    assert rc == 0 and "expected_per_image" in json.loads(golden.read_text())


def test_golden_from_a_submission_detects_changed_reconstructions(small_root, tmp_path, capsys):
    nsd = open_nsd(small_root)
    images = demo_images(nsd, "nsd982", [2], "blur", radius=4, limit=None)
    sub = write_submission(images, tmp_path / "recons.npz", "npz")
    golden = tmp_path / "mine.json"
    rc, doc = _create(
        capsys, golden, small_root, 2, "--submission", str(sub), "--protocols", "brain-diffuser-2023"
    )
    assert rc == 0
    spec = json.loads(golden.read_text())
    assert spec["reconstructions"] == {"kind": "file", "path": "mine.npz"}
    with np.load(tmp_path / "mine.npz") as z:
        arr, ids = z["subj02"], z["subj02_nsd_ids"]
    assert arr.shape == (5, 1, 64, 64, 3) and list(ids) == spec["ids"]["2"]
    assert np.array_equal(arr[0, 0], images[(2, int(ids[0]), 0)])
    arr = arr.copy()
    arr[0, 0] = 255 - arr[0, 0]  # someone changed a frozen reconstruction
    np.savez_compressed(tmp_path / "mine.npz", subj02=arr, subj02_nsd_ids=ids)
    rc, doc = _drift(capsys, "--golden", str(golden))
    assert rc == 4
    assert any(d["metric"] == "rec_sha256" for d in doc["deviations"])
    assert any(d["metric"] == "pixcorr" for d in doc["deviations"])


def test_drift_usage_errors(tmp_path, capsys):
    assert main(["drift", "--create"]) == 2
    (tmp_path / "x.json").write_text("{}")
    assert main(["drift", "--golden", str(tmp_path / "x.json")]) == 2
    assert "not a golden file" in capsys.readouterr().err


def test_shipped_golden_is_consistent():
    """The shipped file is the one `nsdbench drift` checks in CI (rescored in .ci/run, not here)."""
    from nsdbench.leaderboards.drift import load_golden, shipped_golden
    from nsdbench.metrics.protocols import PROTOCOLS

    spec = load_golden(shipped_golden())
    assert spec["data"] == "synthetic" and spec["weights_mode"] == "tiny"
    assert set(spec["protocols"]) == set(PROTOCOLS)
    for name, rec in spec["protocols"].items():
        assert rec["hash"] == PROTOCOLS[name].hash, f"{name} changed: run `nsdbench drift --update`"
        names = set(PROTOCOLS[name].metric_names)
        if not spec["brain"]:
            names = {m for m in names if not m.startswith("bc_")}
        assert set(spec["expected"][name]["1"]) == names
        per_image = spec["expected_per_image"][name]["1"]
        assert set(per_image) == names
        for metric, values in per_image.items():
            assert list(values) == [str(i) for i in spec["ids"]["1"]]
            mean = np.mean(list(values.values()))
            assert mean == pytest.approx(spec["expected"][name]["1"][metric], abs=1e-12), (name, metric)


def test_golden_with_a_per_image_block_removed_is_refused(tmp_path, capsys):
    from nsdbench.leaderboards.drift import missing_per_image_blocks, shipped_golden

    spec = json.loads(shipped_golden().read_text())
    assert missing_per_image_blocks(spec) == []
    del spec["expected_per_image"]["nsdbench-v1"]["1"]["ssim"]
    assert missing_per_image_blocks(spec) == ["nsdbench-v1/1/ssim"]
    golden = tmp_path / "golden.json"
    golden.write_text(json.dumps(spec))
    rc = main(["drift", "--golden", str(golden)])
    err = capsys.readouterr().err
    assert rc == 2 and "nsdbench-v1/1/ssim" in err and "Traceback" not in err
