"""Submission readers and validation: every format reads back the exact images; every problem is reported
with its id and expected vs actual, and the CLI exits 3. No scoring here (see test_score_cli.py)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_score_fixtures import small_root_fixture  # noqa: F401

from nsdbench.cli import main
from nsdbench.nsd import open_nsd
from nsdbench.nsd.splits import get_split
from nsdbench.submissions.validation import errors, load_submission, validate
from nsdbench.submissions.writers import box_blur, demo_images, write_submission


@pytest.fixture(scope="module")
def nsd(small_root: Path):
    return open_nsd(small_root)


@pytest.fixture(scope="module")
def images(nsd) -> dict:
    return demo_images(nsd, "nsd982", [1, 2], "blur", radius=2, samples=2)


def _load_all(path: Path, nsd, **kw) -> tuple[dict, list]:
    sub = load_submission(path, **kw)
    problems = validate(sub, nsd, "nsd982", kw.get("subjects"))
    got = {(e.subject, e.nsd_id, e.sample): sub.image(e) for e in sub.entries}
    sub.close()
    return got, problems


@pytest.mark.parametrize(
    "fmt,suffix",
    [("folder", ""), ("manifest", ""), ("npz", ".npz"), ("pt", ".pt"), ("hdf5", ".h5"), ("tar", ".tar")],
)
def test_every_format_reads_back_the_exact_images(fmt, suffix, images, nsd, tmp_path):
    path = write_submission(images, tmp_path / f"sub{suffix}", fmt)
    got, problems = _load_all(path, nsd)
    assert problems == []
    assert set(got) == set(images)
    for key, img in images.items():
        assert got[key].dtype == np.uint8 and np.array_equal(got[key], img), key


def test_parquet_manifest_reads_like_the_csv_one(images, nsd, tmp_path):
    import pandas as pd

    root = write_submission(images, tmp_path / "m", "manifest")
    csv = root / "manifest.csv"
    pd.read_csv(csv).to_parquet(root / "manifest.parquet", index=False)
    csv.unlink()
    got, problems = _load_all(root, nsd)
    assert problems == [] and set(got) == set(images)
    assert all(np.array_equal(got[k], images[k]) for k in images)


def test_mindeye2_style_float_chw_tensor_in_ascending_order(images, nsd, tmp_path):
    one = {k: v for k, v in images.items() if k[0] == 1 and k[2] == 0}
    path = write_submission(
        one, tmp_path / "subj01_all_recons.pt", "pt", channels_first=True, as_float=True, with_ids=False
    )
    got, problems = _load_all(path, nsd, order="nsd-ascending")  # subject 1 from the file name
    assert errors(problems) == []
    assert set(got) == set(one) and all(np.array_equal(got[k], one[k]) for k in one)


def test_npy_with_id_file_and_first_presentation_order(images, nsd, tmp_path):
    one = {k: v for k, v in images.items() if k[0] == 2 and k[2] == 0}
    path = write_submission(one, tmp_path / "recons.npy", "npy")  # ascending ids in recons_ids.npy
    got, problems = _load_all(path, nsd, ids=tmp_path / "recons_ids.npy", subjects=[2])
    assert errors(problems) == [] and all(np.array_equal(got[k], one[k]) for k in one)
    # first-presentation order, as brain-diffuser stores its test set
    first = get_split(nsd, "nsd982", 2).first_presentation
    np.save(tmp_path / "bd.npy", np.stack([one[(2, i, 0)] for i in first]))
    got, problems = _load_all(tmp_path / "bd.npy", nsd, order="first-presentation", subjects=[2])
    assert errors(problems) == [] and all(np.array_equal(got[k], one[k]) for k in one)


def test_folder_named_by_position_with_order(images, nsd, small_root, tmp_path, capsys):
    """brain-diffuser writes <index>.png in first-presentation order; --order maps positions to NSD ids."""
    first = get_split(nsd, "nsd982", 1).first_presentation
    d = tmp_path / "bd" / "subj01"
    d.mkdir(parents=True)
    for pos, nsd_id in enumerate(first):
        Image.fromarray(images[(1, nsd_id, 0)]).save(d / f"{pos}.png")
    got, problems = _load_all(tmp_path / "bd", nsd, order="first-presentation")
    assert errors(problems) == [] and set(got) == {(1, i, 0) for i in first}
    assert all(np.array_equal(got[(1, i, 0)], images[(1, i, 0)]) for i in first)
    rc, text = _validate_cli(tmp_path / "bd", small_root, capsys)  # without --order: a hint, exit 3
    assert rc == 3 and "file names look like positions 0..7" in text


def test_box_blur_matches_a_literal_loop():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    r = 2
    pad = np.pad(img.astype(np.int64), ((r, r), (r, r), (0, 0)), mode="edge")
    want = np.empty_like(img)
    for y in range(9):
        for x in range(7):
            s = pad[y : y + 2 * r + 1, x : x + 2 * r + 1].sum(axis=(0, 1))
            want[y, x] = (s + 12) // 25
    assert np.array_equal(box_blur(img, r), want)


# ---------------------------------------------------------------------------------------- validation


def _folder(images: dict, root: Path, subjects=(1,)) -> Path:
    return write_submission({k: v for k, v in images.items() if k[0] in subjects}, root, "folder")


def _codes(problems) -> set[str]:
    return {p.code for p in problems}


def _validate_cli(path: Path, root: Path, capsys, *extra: str) -> tuple[int, str]:
    rc = main(["validate", str(path), "--data", str(root), *extra])
    cap = capsys.readouterr()
    assert "Traceback" not in cap.out + cap.err
    return rc, cap.out + cap.err


def test_missing_duplicate_extra_and_counts(images, nsd, small_root, tmp_path, capsys):
    root = _folder(images, tmp_path / "s")
    ids = sorted({k[1] for k in images if k[0] == 1})
    (root / "subj01" / f"{ids[0]}_0.png").unlink()
    (root / "subj01" / f"{ids[0]}_1.png").unlink()
    (root / "subj01" / "999_0.png").write_bytes((root / "subj01" / f"{ids[1]}_0.png").read_bytes())
    (root / "subj01" / "999_1.png").write_bytes((root / "subj01" / f"{ids[1]}_0.png").read_bytes())
    (root / "subj01" / f"{ids[2]}_2.png").write_bytes((root / "subj01" / f"{ids[1]}_0.png").read_bytes())
    sub = load_submission(root)
    problems = validate(sub, nsd, "nsd982")
    by = {(p.code, p.nsd_id) for p in problems}
    assert ("missing", ids[0]) in by and ("extra", 999) in by and ("sample-count", ids[2]) in by
    missing = next(p for p in problems if p.code == "missing")
    assert missing.expected == f"file subj01/{ids[0]}_0.png (and samples [1])"
    assert "count" not in _codes(problems)  # three problems explain the count; no summary repeats them
    rc, text = _validate_cli(root, small_root, capsys)
    assert rc == 3
    assert f"missing [subject 1, nsd_id {ids[0]}]" in text and "extra [subject 1, nsd_id 999]" in text
    assert "expected 2 samples, got 3" in text
    (root / "subj01" / f"{ids[3]}_1.png").rename(root / "subj01" / f"{ids[3]}_5.png")
    problems = validate(load_submission(root), nsd, "nsd982")
    p = next(p for p in problems if p.nsd_id == ids[3])
    assert (p.code, p.expected, p.actual) == ("sample-count", "samples [0, 1]", "samples [0, 5]")


def test_one_missing_png_is_one_problem_naming_its_file(images, nsd, tmp_path):
    root = _folder(images, tmp_path / "s")
    ids = sorted({k[1] for k in images if k[0] == 1})
    (root / "subj01" / f"{ids[3]}_1.png").unlink()
    problems = validate(load_submission(root), nsd, "nsd982")
    assert [(p.code, p.nsd_id, p.sample, p.expected) for p in problems] == [
        ("missing", ids[3], 1, f"file subj01/{ids[3]}_1.png")
    ]


def test_many_missing_images_get_a_count_summary(images, nsd, tmp_path):
    root = _folder(images, tmp_path / "s")
    ids = sorted({k[1] for k in images if k[0] == 1})
    for i in ids[:3]:
        (root / "subj01" / f"{i}_1.png").unlink()
    for n in range(8):
        (root / "subj01" / f"{70000 + n}_0.png").write_bytes(
            (root / "subj01" / f"{ids[7]}_0.png").read_bytes()
        )
    problems = validate(load_submission(root), nsd, "nsd982")
    assert [p.code for p in problems].count("missing") == 3
    count = next(p for p in problems if p.code == "count")
    assert count.expected == f"{len(ids) * 2} ({len(ids)} ids x 2 samples)"
    assert count.actual == str(len(ids) * 2 - 3 + 8)


def test_duplicate_rows_in_manifest(images, nsd, tmp_path):
    root = write_submission({k: v for k, v in images.items() if k[0] == 1}, tmp_path / "m", "manifest")
    lines = (root / "manifest.csv").read_text().splitlines()
    (root / "manifest.csv").write_text("\n".join(lines + [lines[1]]) + "\n")
    problems = validate(load_submission(root), nsd, "nsd982")
    dup = [p for p in problems if p.code == "duplicate"]
    assert len(dup) == 1 and dup[0].expected == "1 image" and dup[0].actual == "2 images"


def test_one_based_ids_get_a_hint(images, nsd, tmp_path):
    shifted = {(s, i + 1, k): v for (s, i, k), v in images.items() if s == 1}
    problems = validate(load_submission(write_submission(shifted, tmp_path / "s", "folder")), nsd, "nsd982")
    assert "ids look 1-based" in " ".join(p.message for p in problems)


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def test_image_content_problems(images, nsd, small_root, tmp_path, capsys):
    root = _folder(images, tmp_path / "s")
    ids = sorted({k[1] for k in images if k[0] == 1})
    d = root / "subj01"
    (d / f"{ids[0]}_0.png").write_bytes(_png(np.full((16, 16), 7, np.uint8)))  # grayscale
    (d / f"{ids[1]}_0.png").write_bytes(_png(np.full((16, 16, 3), 9, np.uint8)))  # constant
    (d / f"{ids[2]}_0.png").write_bytes((d / f"{ids[2]}_0.png").read_bytes()[:200])  # truncated
    (d / f"{ids[3]}_0.png").write_bytes(b"\x89PNG not really" * 10)  # garbage
    Image.fromarray(images[(1, ids[4], 0)]).save(d / f"{ids[4]}_0.jpg", quality=90)
    (d / f"{ids[4]}_0.png").unlink()
    problems = validate(load_submission(root), nsd, "nsd982")
    by = {p.nsd_id: p for p in problems if p.nsd_id is not None}
    assert by[ids[0]].code == "channels" and by[ids[0]].actual == "grayscale"
    assert by[ids[1]].code == "constant"
    assert by[ids[2]].code == "truncated"
    assert by[ids[3]].code == "unreadable"
    assert any(p.code == "jpeg" and p.severity == "warning" for p in problems)
    rc, text = _validate_cli(root, small_root, capsys)
    assert rc == 3 and "constant" in text and "expected RGB, 8 bits per channel, got grayscale" in text


def test_jpeg_alone_is_only_a_warning(images, small_root, tmp_path, capsys):
    one = {k: v for k, v in images.items() if k[0] == 1}
    root = write_submission(one, tmp_path / "j", "folder", image_format="jpg")
    rc, text = _validate_cli(root, small_root, capsys)
    assert rc == 0 and "warning: jpeg" in text and "valid" in text


def test_array_dtype_range_nan_shape_and_missing_ids(images, nsd, tmp_path):
    one = np.stack([v for k, v in sorted(images.items()) if k[0] == 1 and k[2] == 0])
    n = len(one)
    f = one.astype(np.float32) / 255
    f[0, 0, 0, 0] = 1.5
    f[1, 0, 0, 0] = np.nan
    np.save(tmp_path / "f.npy", f)
    problems = validate(
        load_submission(tmp_path / "f.npy", order="nsd-ascending", subjects=[1]), nsd, "nsd982"
    )
    codes = {p.code: p for p in problems}
    assert codes["range"].actual.startswith("min 0") and "max 1.5" in codes["range"].actual
    assert codes["nonfinite"].actual == "1 NaN, 0 inf"
    np.save(tmp_path / "i.npy", one.astype(np.int64))
    problems = validate(
        load_submission(tmp_path / "i.npy", order="nsd-ascending", subjects=[1]), nsd, "nsd982"
    )
    assert {p.code for p in problems} == {"dtype"} and all(p.actual == "int64" for p in problems)
    np.save(tmp_path / "g.npy", one[..., 0])  # (N, H, W): no channel axis
    problems = validate(
        load_submission(tmp_path / "g.npy", order="nsd-ascending", subjects=[1]), nsd, "nsd982"
    )
    assert _codes(problems) == {"shape"}
    np.save(tmp_path / "noids.npy", one)
    problems = validate(load_submission(tmp_path / "noids.npy", subjects=[1]), nsd, "nsd982")
    assert "no NSD id list" in problems[0].message
    np.save(tmp_path / "short.npy", one[: n - 1])
    problems = validate(
        load_submission(tmp_path / "short.npy", order="nsd-ascending", subjects=[1]), nsd, "nsd982"
    )
    assert problems[0].code == "count" and problems[0].actual == f"{n - 1} images"


def test_requested_subject_missing_and_split_unknown_subject(images, nsd, small_root, tmp_path, capsys):
    root = _folder(images, tmp_path / "s")
    problems = validate(load_submission(root), nsd, "nsd982", subjects=[1, 5])
    assert any(p.code == "subject" and p.subject == 5 and p.severity == "error" for p in problems)
    rc, text = _validate_cli(root, small_root, capsys, "--subjects", "1,5")
    assert rc == 3 and "no reconstructions for a requested subject" in text


def test_decompression_bomb_limit(images, nsd, tmp_path, monkeypatch):
    root = _folder(images, tmp_path / "s")
    monkeypatch.setenv("NSDBENCH_MAX_IMAGE_PIXELS", "1000")  # 64x64 images exceed it
    problems = validate(load_submission(root), nsd, "nsd982")
    assert problems and all(p.code == "size" for p in errors(problems))
    assert "decompression-bomb" in problems[0].message and problems[0].actual == "64x64"


# ---------------------------------------------------------------------------------------- hostile files


def test_manifest_paths_cannot_escape(images, nsd, tmp_path):
    root = write_submission({k: v for k, v in images.items() if k[0] == 1}, tmp_path / "m", "manifest")
    outside = tmp_path / "secret.png"
    outside.write_bytes(_png(images[next(iter(images))]))
    (root / "link.png").symlink_to(outside)
    lines = (root / "manifest.csv").read_text().splitlines()
    ids = sorted({k[1] for k in images if k[0] == 1})
    lines[1] = f"1,{ids[0]},0,../secret.png"
    lines[2] = f"1,{ids[0]},1,{outside}"
    lines[3] = f"1,{ids[1]},0,link.png"
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    problems = validate(load_submission(root), nsd, "nsd982")
    escapes = [p for p in problems if p.code == "path-escape"]
    assert len(escapes) == 3 and {p.actual for p in escapes} == {
        "'../secret.png'",
        repr(str(outside)),
        "'link.png'",
    }


def test_tar_members_cannot_escape_and_links_are_refused(images, nsd, tmp_path):
    path = tmp_path / "evil.tar"
    data = _png(images[next(iter(images))])
    with tarfile.open(path, "w") as tf:
        for name in ("../evil.png", "/abs/evil.png"):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("subj01/1_0.png")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tf.addfile(link)
    problems = validate(load_submission(path), nsd, "nsd982", subjects=[1])
    codes = [p.code for p in problems]
    assert codes.count("path-escape") == 2 and "unsafe-member" in codes
    assert not (tmp_path.parent / "evil.png").exists()


def test_pickles_are_never_loaded(nsd, tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    problems = validate(
        load_submission(tmp_path / "obj.npy", subjects=[1], order="nsd-ascending"), nsd, "nsd982"
    )
    assert problems[0].code == "unreadable" and "pickle" in problems[0].message.lower()
    import torch

    torch.save({"images": torch.zeros(2, 3, 8, 8), "payload": Path("x")}, tmp_path / "obj.pt")
    problems = validate(
        load_submission(tmp_path / "obj.pt", subjects=[1], order="nsd-ascending"), nsd, "nsd982"
    )
    assert problems[0].code == "unreadable" and "weights_only" in problems[0].message


def test_usage_errors_exit_2(small_root, tmp_path, capsys):
    rc = main(["validate", str(tmp_path / "nope"), "--data", str(small_root)])
    assert rc == 2
    (tmp_path / "x.bin").write_bytes(b"1")
    rc = main(["validate", str(tmp_path / "x.bin"), "--data", str(small_root)])
    assert rc == 2 and "unknown submission format" in capsys.readouterr().err
    rc = main(["validate", str(tmp_path / "x.bin"), "--data", str(small_root), "--split", "nsd555"])
    assert rc == 2 and "unknown split 'nsd555'" in capsys.readouterr().err
    rc = main(
        ["score", str(tmp_path / "x.bin"), "--data", str(small_root), "--weights", "tiny", "--device", "tpu"]
    )
    cap = capsys.readouterr()
    assert rc == 2 and "unknown device 'tpu'" in cap.err and "Traceback" not in cap.err
    rc = main(["submission", "demo", str(tmp_path), "--data", str(small_root)])  # holds x.bin: never mixed
    assert rc == 2 and "non-empty folder" in capsys.readouterr().err
    rc = main(["submission", "demo", str(tmp_path / "x.bin" / "sub"), "--data", str(small_root)])
    assert rc == 2 and "cannot create folder" in capsys.readouterr().err


def test_validate_json_lists_problems(images, small_root, tmp_path, capsys):
    root = _folder(images, tmp_path / "s")
    ids = sorted({k[1] for k in images if k[0] == 1})
    (root / "subj01" / f"{ids[0]}_0.png").unlink()
    rc = main(["validate", str(root), "--data", str(small_root), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 3 and doc["valid"] is False
    assert [(p["code"], p["subject"], p["nsd_id"], p["sample"], p["expected"]) for p in doc["problems"]] == [
        ("missing", 1, ids[0], 0, f"file subj01/{ids[0]}_0.png")
    ]
