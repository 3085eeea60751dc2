"""Hostile submission files built for real: HDF5 files pointing outside themselves, FIFOs and devices in
every place, npz bombs, damaged PNGs, exotic tensors, non-ASCII ids. Each is refused with exit 3 and one
line in nsdbench's words; nothing hangs, nothing reads outside the submission."""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import tarfile
import threading
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_score_fixtures import small_root_fixture  # noqa: F401

from nsdbench.cli import main
from nsdbench.nsd import open_nsd
from nsdbench.submissions import formats as submission_formats
from nsdbench.submissions.validation import load_submission, validate
from nsdbench.submissions.writers import demo_images, encode_image_bytes, write_submission


@pytest.fixture(scope="module")
def nsd(small_root: Path):
    return open_nsd(small_root)


@pytest.fixture(scope="module")
def images(nsd) -> dict:
    return demo_images(nsd, "nsd982", [1], "blur", radius=2)


def _problems(path: Path, nsd, **kw) -> list:
    kw.setdefault("subjects", [1])
    with load_submission(path, **kw) as sub:
        return validate(sub, nsd, "nsd982", kw["subjects"])


def _cli(path: Path, root: Path, capsys, *extra: str) -> tuple[int, str]:
    rc = main(["validate", str(path), "--data", str(root), "--subjects", "1", *extra])
    cap = capsys.readouterr()
    text = cap.out + cap.err
    assert "Traceback" not in text and " at 0x" not in text and "weights_only=False" not in text
    return rc, text


@contextlib.contextmanager
def fifo_watchdog(fifos: list[Path], seconds: float = 10.0) -> Iterator[threading.Event]:
    """Unblock any reader stuck on `fifos` after `seconds` (by opening their write ends) and flag it, so a
    regression fails the test instead of hanging it."""
    fired, done = threading.Event(), threading.Event()

    def watch() -> None:
        while not done.wait(seconds):
            fired.set()
            for f in fifos:
                with contextlib.suppress(OSError):
                    os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        yield fired
    finally:
        done.set()
        t.join()


# ---------------------------------------------------------------------------------------------- HDF5


def _ground_truth_h5(tmp_path: Path, images: dict) -> Path:
    """A stand-in for nsd_stimuli.hdf5 outside the submission: the exact test images, ascending ids."""
    import h5py

    gt = tmp_path / "outside" / "nsd_stimuli.hdf5"
    gt.parent.mkdir()
    with h5py.File(gt, "w") as f:
        f.create_dataset("imgBrick", data=np.stack([images[k] for k in sorted(images)]))
    return gt


def _hdf5(path: Path, build) -> Path:
    import h5py

    with h5py.File(path, "w") as f:
        build(f)
    return path


def test_hdf5_pointing_outside_itself_is_refused(images, nsd, small_root, tmp_path, capsys):
    import h5py

    gt = _ground_truth_h5(tmp_path, images)
    shape = (len(images), *next(iter(images.values())).shape)
    sub = tmp_path / "sub"
    sub.mkdir()

    def virtual(f):
        layout = h5py.VirtualLayout(shape=shape, dtype=np.uint8)
        layout[:] = h5py.VirtualSource(str(gt), "imgBrick", shape=shape)
        f.create_virtual_dataset("images", layout)

    def external_link(f):
        f["images"] = h5py.ExternalLink(str(gt), "imgBrick")

    def soft_to_external(f):
        g = f.create_group("subj01")
        g["via"] = h5py.ExternalLink(str(gt), "imgBrick")
        g["images"] = h5py.SoftLink("/subj01/via")

    def external_storage(f):
        raw = tmp_path / "outside" / "raw.bin"
        raw.write_bytes(np.stack([images[k] for k in sorted(images)]).tobytes())
        f.create_dataset("images", shape=shape, dtype=np.uint8, external=[(str(raw), 0, raw.stat().st_size)])

    for name, build in [
        ("virtual", virtual),
        ("external_link", external_link),
        ("soft_to_external", soft_to_external),
        ("external_storage", external_storage),
    ]:
        path = _hdf5(sub / f"subj01_{name}.h5", build)
        assert path.stat().st_size < 64 * 1024  # the pixels are not in the file
        problems = _problems(path, nsd, order="nsd-ascending")
        assert [p.code for p in problems] == ["path-escape"], (name, problems)
        rc, text = _cli(path, small_root, capsys, "--order", "nsd-ascending")
        assert rc == 3 and "error: path-escape" in text and "only what is inside the submission file" in text


def test_hdf5_soft_link_inside_the_file_reads_its_target(images, nsd, tmp_path):
    import h5py

    stack = np.stack([images[k] for k in sorted(images)])

    def soft(f):
        f.create_dataset("data/stack", data=stack)
        f["images"] = h5py.SoftLink("/data/stack")

    path = _hdf5(tmp_path / "subj01_soft.h5", soft)
    with load_submission(path, order="nsd-ascending", subjects=[1]) as sub:
        assert validate(sub, nsd, "nsd982", [1]) == []
        got = np.stack([sub.image(e) for e in sub.entries_for(1)])
    assert np.array_equal(got, stack)


# ------------------------------------------------------------------------------- special files


def test_fifo_and_devices_never_block_or_flood(images, nsd, small_root, tmp_path, capsys):
    folder = write_submission(images, tmp_path / "folder", "folder")
    first = min(images)
    img = folder / "subj01" / f"{first[1]}_0.png"
    img.unlink()
    os.mkfifo(img)
    manifest = write_submission(images, tmp_path / "manifest", "manifest")
    m_img = manifest / "images" / f"s1_{first[1]}_0.png"
    m_img.unlink()
    os.mkfifo(m_img)
    dev = write_submission(images, tmp_path / "dev", "folder")
    d_img = dev / "subj01" / f"{first[1]}_0.png"
    d_img.unlink()
    d_img.symlink_to("/dev/zero")
    fifo_dir = tmp_path / "fifo_manifest"
    fifo_dir.mkdir()
    os.mkfifo(fifo_dir / "manifest.csv")
    subs = [tmp_path / f"subj01.{ext}" for ext in ("npy", "npz", "pt", "hdf5", "tar", "csv", "parquet")]
    for p in subs:
        os.mkfifo(p)
    zero = tmp_path / "subj01_zero.npy"
    zero.symlink_to("/dev/zero")
    fifos = [img, m_img, fifo_dir / "manifest.csv", *subs]
    with fifo_watchdog(fifos) as fired:
        cases = [(folder, "FIFO"), (manifest, "FIFO"), (fifo_dir, "FIFO")]
        cases += [(p, "FIFO") for p in subs] + [(zero, "character device")]
        for path, kind in cases:
            order = ("--order", "nsd-ascending") if path.suffix in (".npy", ".npz", ".pt", ".hdf5") else ()
            rc, text = _cli(path, small_root, capsys, *order)
            assert rc == 3 and "not a regular file" in text and kind in text, (path, text)
    assert not fired.is_set(), "a reader blocked on a FIFO"
    rc, text = _cli(dev, small_root, capsys)  # the link leaves the folder: refused before it is opened
    assert rc == 3 and "error: path-escape" in text and f"{first[1]}_0.png" in text
    with pytest.raises(submission_formats.ImageError, match="not a regular file"):
        submission_formats.read_image_file(Path("/dev/zero"))  # and a device is never read, wherever it is


def test_symlink_loops_are_one_line_each(images, small_root, tmp_path, capsys):
    folder = write_submission(images, tmp_path / "folder", "folder")
    img = folder / "subj01" / f"{min(images)[1]}_0.png"
    img.unlink()
    img.symlink_to(img)
    rc, text = _cli(folder, small_root, capsys)
    assert rc == 3 and "symlink loop" in text
    loop = tmp_path / "subj01_loop.npz"
    loop.symlink_to(loop)
    rc, text = _cli(loop, small_root, capsys)
    assert rc == 3 and "symlink loop" in text


def test_empty_folder_is_an_invalid_submission(small_root, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc, text = _cli(tmp_path / "empty", small_root, capsys)
    assert rc == 3 and "an empty folder" in text


# ------------------------------------------------------------------------------------ npy / npz


def test_npz_bomb_is_refused_from_its_header_without_inflating(nsd, tmp_path):
    path = tmp_path / "subj01_bomb.npz"
    np.savez_compressed(path, images=np.zeros((1500, 128, 128, 3), np.uint8))
    assert path.stat().st_size < 200_000
    tracemalloc.start()
    try:
        problems = _problems(path, nsd, order="nsd-ascending")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [(p.code, p.actual) for p in problems] == [("count", "1500 images")]
    assert peak < 8 * 1024**2  # the 70 MB array was never inflated


def test_npz_member_whose_size_disagrees_with_its_header_is_refused(nsd, tmp_path):
    buf = io.BytesIO()
    np.save(buf, np.zeros((8, 64, 64, 3), np.uint8))
    data = buf.getvalue()
    path = tmp_path / "subj01_lie.npz"
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("images.npy", data + b"\0" * 10_000_000)  # 10 MB more than the array: hidden inflation
    problems = _problems(path, nsd, order="nsd-ascending")
    assert [p.code for p in problems] == ["size"] and "disagrees" in problems[0].message


def test_compressed_and_stored_npz_read_the_exact_images(images, nsd, tmp_path):
    stack = np.stack([images[k] for k in sorted(images)])
    for save in (np.savez, np.savez_compressed):
        path = tmp_path / f"subj01_{save.__name__}.npz"
        save(path, images=stack)
        with load_submission(path, order="nsd-ascending", subjects=[1]) as sub:
            assert validate(sub, nsd, "nsd982", [1]) == []
            assert np.array_equal(np.stack([sub.image(e) for e in sub.entries_for(1)]), stack)


def test_truncated_npy_is_refused_before_mapping(images, nsd, tmp_path):
    path = tmp_path / "subj01.npy"
    np.save(path, np.stack([images[k] for k in sorted(images)]))
    path.write_bytes(path.read_bytes()[:-100])
    problems = _problems(path, nsd, order="nsd-ascending")
    assert [p.code for p in problems] == ["truncated"] and "shorter than its header" in problems[0].message


# -------------------------------------------------------------------------------------------- .pt


@pytest.mark.parametrize("kind", ["sparse_coo", "sparse_csr", "quantized", "float8"])
def test_exotic_tensors_are_refused_in_one_line(kind, small_root, tmp_path, capsys):
    import torch

    t = torch.rand(8, 3, 16, 16)
    t = {
        "sparse_coo": lambda: t.to_sparse(),
        "sparse_csr": lambda: torch.eye(8).to_sparse_csr(),
        "quantized": lambda: torch.quantize_per_tensor(t, 0.01, 0, torch.quint8),
        "float8": lambda: t.to(torch.float8_e4m3fn),
    }[kind]()
    path = tmp_path / "subj01_x.pt"
    torch.save(t, path)
    rc, text = _cli(path, small_root, capsys, "--order", "nsd-ascending")
    assert rc == 3 and "error: dtype" in text and kind.split("_")[0] in text


def test_pt_with_objects_names_the_rule_not_the_unsafe_workaround(small_root, tmp_path, capsys):
    import torch

    torch.save({"images": torch.zeros(8, 3, 16, 16), "note": Path("x")}, tmp_path / "subj01_obj.pt")
    rc, text = _cli(tmp_path / "subj01_obj.pt", small_root, capsys, "--order", "nsd-ascending")
    assert rc == 3 and "never unpickles" in text


# ------------------------------------------------------------------------------------- PNG content


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png16(arr: np.ndarray, colour: int) -> bytes:
    h, w = arr.shape[:2]
    rows = b"".join(b"\0" + arr[y].astype(">u2").tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(rows))
        + _chunk(b"IEND", b"")
    )


def test_png_crc_bit_depth_and_unicode_digit_rules(images, nsd, tmp_path):
    root = write_submission(images, tmp_path / "s", "folder")
    ids = sorted(k[1] for k in images)
    d = root / "subj01"
    damaged = bytearray((d / f"{ids[0]}_0.png").read_bytes())
    damaged[damaged.find(b"IDAT") + 40] ^= 0x01  # pixels change; the chunk CRC no longer matches
    (d / f"{ids[0]}_0.png").write_bytes(bytes(damaged))
    rng = np.random.default_rng(0)
    (d / f"{ids[1]}_0.png").write_bytes(_png16(rng.integers(0, 65535, (16, 16, 3)), colour=2))
    (d / f"{ids[2]}_0.png").write_bytes(_png16(rng.integers(0, 65535, (16, 16)), colour=0))
    (d / f"{ids[3]}_0.png").rename(d / f"{''.join(chr(0x0660 + int(c)) for c in str(ids[3]))}_0.png")
    (d / f"{ids[4]}_0.png").rename(d / f"{''.join(chr(0xFF10 + int(c)) for c in str(ids[4]))}_0.png")
    by = {}
    for p in validate(load_submission(root), nsd, "nsd982"):
        by.setdefault(p.nsd_id, []).append((p.code, p.actual))
    assert by[ids[0]] == [("corrupt", "")]
    assert by[ids[1]] == [("bit-depth", "16 bits per channel")]
    assert by[ids[2]] == [("channels", "grayscale")]
    assert by[ids[3]] == [("missing", "none")] and by[ids[4]] == [("missing", "none")]
    assert [c for c, _ in by[None]].count("ids") == 2  # the Unicode-digit names, refused


def test_webdataset_sidecar_with_a_huge_float_id(images, small_root, tmp_path, capsys):
    path = write_submission(images, tmp_path / "w.tar", "tar")
    with tarfile.open(path, "a") as tf:
        data = b'{"subject": 1, "nsd_id": 1e400, "sample": 0}'
        info = tarfile.TarInfo("zzz.json")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
        png = encode_image_bytes(next(iter(images.values())))
        info = tarfile.TarInfo("zzz.png")
        info.size = len(png)
        tf.addfile(info, io.BytesIO(png))
    rc, text = _cli(path, small_root, capsys)
    assert rc == 3 and "sidecar zzz.json" in text and "'nsd_id': inf" in text


# ------------------------------------------------------------------------------------- manifests


def test_manifest_duplicates_and_out_of_split_rows_are_never_decoded(images, nsd, tmp_path, monkeypatch):
    root = write_submission(images, tmp_path / "m", "manifest")
    lines = (root / "manifest.csv").read_text().splitlines()
    header, rows = lines[0], lines[1:]
    first = rows[0].split(",")
    outside = ",".join([first[0], "70000", *first[2:]])
    (root / "manifest.csv").write_text(
        "\n".join([header, *rows, *[rows[0]] * 20_000, *[outside] * 5_000]) + "\n"
    )
    decoded: list[int] = []
    real = submission_formats.decode_image

    def counting(data: bytes, name: str):
        decoded.append(1)
        return real(data, name)

    monkeypatch.setattr(submission_formats, "decode_image", counting)
    problems = validate(load_submission(root), nsd, "nsd982")
    assert len(decoded) == len(rows)  # each test image once: no duplicate, no out-of-split row
    dup = [p for p in problems if p.code == "duplicate"]
    assert [(p.nsd_id, p.actual) for p in dup] == [
        (int(first[1]), "20001 images"),
        (70000, "5000 images"),
    ]
    assert [p.nsd_id for p in problems if p.code == "extra"] == [70000]


def test_manifest_ids_must_be_ascii_digits(images, nsd, tmp_path):
    root = write_submission(images, tmp_path / "m", "manifest")
    lines = (root / "manifest.csv").read_text().splitlines()
    s, i, k, p = lines[1].split(",")
    lines[1] = ",".join([s, "".join(chr(0x0660 + int(c)) for c in i), k, p])
    lines[2] = ",".join([*lines[2].split(",")[:1], "1_0", *lines[2].split(",")[2:]])
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    every = validate(load_submission(root), nsd, "nsd982")
    problems = [p for p in every if p.code == "manifest"]
    assert len(problems) == 2 and all("ASCII digits" in p.message for p in problems)
    assert "\\u066" in problems[0].actual
    missing = next(p for p in every if p.code == "missing" and p.nsd_id == int(i))
    assert missing.expected == f"a row 1,{i},0,<path> in manifest.csv"


def test_ids_file_fifo_is_a_usage_error_not_a_hang(images, small_root, tmp_path, capsys):
    np.save(tmp_path / "subj01.npy", np.stack([images[k] for k in sorted(images)]))
    os.mkfifo(tmp_path / "ids.txt")
    with fifo_watchdog([tmp_path / "ids.txt"]) as fired:
        rc, text = _cli(tmp_path / "subj01.npy", small_root, capsys, "--ids", str(tmp_path / "ids.txt"))
    assert rc == 2 and "not a regular file" in text and not fired.is_set()
    json.dumps(text)  # one printable line


def test_npz_members_are_crc_checked_before_use(images, nsd, tmp_path):
    import zipfile

    stack = np.stack([images[k] for k in sorted(images)])
    for save in (np.savez, np.savez_compressed):
        path = tmp_path / f"subj01_{save.__name__}.npz"
        save(path, images=stack)
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo("images.npy")
        data = bytearray(path.read_bytes())
        start = info.header_offset + 30 + len(info.filename) + len(info.extra)
        data[start + info.compress_size // 2] ^= 0x20  # a flipped bit in the member's data
        path.write_bytes(bytes(data))
        problems = _problems(path, nsd, order="nsd-ascending")
        assert len(problems) == 1 and problems[0].code in ("corrupt", "unreadable"), problems  # once per file
        assert "npz member 'images.npy'" in problems[0].message and problems[0].nsd_id is None


def test_a_folder_that_cannot_be_listed_is_one_problem(tmp_path):
    r = submission_formats.read_convention_folder(tmp_path / "gone")
    assert [(p.code, p.message) for p in r.problems] == [
        ("unreadable", "cannot list folder: it does not exist (or is a dangling symlink)")
    ]


def test_compressed_npz_inflation_is_capped(images, nsd, tmp_path, monkeypatch):
    stack = np.stack([images[k] for k in sorted(images)])
    np.savez_compressed(tmp_path / "subj01_c.npz", images=stack)
    np.savez(tmp_path / "subj01_s.npz", images=stack)
    monkeypatch.setenv("NSDBENCH_MAX_INFLATE_BYTES", str(stack.nbytes - 1))
    problems = _problems(tmp_path / "subj01_c.npz", nsd, order="nsd-ascending")
    assert [(p.code, p.actual) for p in problems] == [("size", f"{stack.nbytes} bytes")]
    assert _problems(tmp_path / "subj01_s.npz", nsd, order="nsd-ascending") == []  # mapped, never inflated


def test_a_device_node_in_place_of_an_image_is_never_read(images, small_root, tmp_path, capsys):
    import stat

    folder = write_submission(images, tmp_path / "folder", "folder")
    img = folder / "subj01" / f"{min(images)[1]}_0.png"
    img.unlink()
    try:
        os.mknod(img, stat.S_IFCHR | 0o644, os.makedev(1, 5))  # /dev/zero's numbers, inside the folder
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD")
    rc, text = _cli(folder, small_root, capsys)
    assert rc == 3 and "not a regular file" in text and "got a character device" in text


def test_pt_with_deflated_members_is_not_inflated(images, small_root, tmp_path, capsys):
    import zipfile

    import torch

    torch.save(torch.zeros(8, 3, 64, 64), tmp_path / "plain.pt")
    with (
        zipfile.ZipFile(tmp_path / "plain.pt") as src,
        zipfile.ZipFile(tmp_path / "subj01_z.pt", "w", zipfile.ZIP_DEFLATED) as dst,
    ):
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    rc, text = _cli(tmp_path / "subj01_z.pt", small_root, capsys, "--order", "nsd-ascending")
    assert rc == 3 and "compressed members" in text
    legacy = tmp_path / "subj01_legacy.pt"
    torch.save(
        torch.from_numpy(np.stack([images[k] for k in sorted(images)])),
        legacy,
        _use_new_zipfile_serialization=False,
    )
    rc, text = _cli(legacy, small_root, capsys, "--order", "nsd-ascending")
    assert rc == 0, text  # the legacy format still reads
