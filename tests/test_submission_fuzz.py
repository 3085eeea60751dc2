"""A seeded fuzz of hostile submissions in 14 families, through `nsdbench score` in-process (and a few
through a subprocess): exit 0 or 3 only, no traceback or memory address or unsafe advice, no case runs
past a time bound, the leaderboard file is byte-identical after every refusal, no pickle runs, nothing is
written outside the case folder, and a valid control still scores afterwards."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import random
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import time
import zipfile
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from test_score_fixtures import small_root_fixture  # noqa: F401

from nsdbench.cli import main
from nsdbench.nsd import open_nsd
from nsdbench.submissions.writers import demo_images, write_submission

SEED = 20261202
CASES_PER_FAMILY = 14
CASE_SECONDS = 20  # a case past this is a hang
MARKER = "pickle-ran.txt"
ARRAY_EXTS = (".npy", ".npz", ".pt", ".h5", ".hdf5")


class CaseHung(BaseException):
    """Raised by the alarm in the case that ran past CASE_SECONDS (a BaseException: nothing catches it)."""


class Payload:
    """Unpickling this creates the marker file: proof that a pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ------------------------------------------------------------------------------------------- bases


class Bases:
    """Valid submissions in every format (8 images of subject 1), written once and copied per case."""

    def __init__(self, images: dict, root: Path, outside: Path) -> None:
        self.images, self.root, self.outside = images, root, outside
        self.keys = sorted(images)
        self.ids = [k[1] for k in self.keys]
        self.stack = np.stack([images[k] for k in self.keys])
        self.paths = {
            "folder": write_submission(images, root / "folder", "folder"),
            "manifest": write_submission(images, root / "manifest", "manifest"),
            "tar": write_submission(images, root / "w.tar", "tar"),
            "npz": write_submission(images, root / "subj01_s.npz", "npz"),
            "pt": write_submission(images, root / "subj01_t.pt", "pt"),
            "hdf5": write_submission(images, root / "subj01_h.h5", "hdf5"),
        }
        self.paths["npzc"] = root / "subj01_c.npz"
        np.savez_compressed(self.paths["npzc"], subj01=self.stack, subj01_nsd_ids=np.asarray(self.ids))
        self.gt = outside / "nsd_stimuli.hdf5"
        import h5py

        with h5py.File(self.gt, "w") as f:
            f.create_dataset("imgBrick", data=self.stack)

    def copy(self, fmt: str, d: Path) -> Path:
        src = self.paths[fmt]
        dst = d / src.name
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy(src, dst)
        return dst

    def png(self, i: int = 0) -> bytes:
        return (self.paths["folder"] / "subj01" / f"{self.ids[i]}_0.png").read_bytes()


def _array_args(path: Path) -> list[str]:
    return ["--order", "nsd-ascending"] if path.suffix in ARRAY_EXTS else []


def _flip(data: bytes, rng: random.Random, lo: int = 0, hi: int | None = None, n: int | None = None) -> bytes:
    b = bytearray(data)
    hi = len(b) if hi is None else hi
    for _ in range(n or rng.randint(1, 8)):
        b[rng.randrange(lo, hi)] ^= rng.randint(1, 255)
    return bytes(b)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _raw_png(w: int, h: int, depth: int, colour: int, idat: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _folder_with(b: Bases, d: Path, name: str, data: bytes | None = None) -> Path:
    """The base folder with image 0 replaced by `name` holding `data` (None: only removed)."""
    root = b.copy("folder", d)
    (root / "subj01" / f"{b.ids[0]}_0.png").unlink()
    if data is not None:
        (root / "subj01" / name).write_bytes(data)
    return root


def _tar(d: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], name: str = "subj01.tar") -> Path:
    path = d / name
    with tarfile.open(path, "w") as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def _valid_members(b: Bases, skip: int = -1) -> list[tuple[tarfile.TarInfo, bytes]]:
    out = []
    for n, key in enumerate(b.keys):
        if n != skip:
            out.append((_member(f"k{n}.png"), b.png(n)))
            out.append((_member(f"k{n}.json"), json.dumps({"subject": 1, "nsd_id": key[1]}).encode()))
    return out


# ------------------------------------------------------------------------------------------ families
# Each builder writes one hostile submission into its own folder `d` and returns (path, extra CLI args).


def random_bytes(rng: random.Random, b: Bases, d: Path):
    ext = rng.choice([".npy", ".npz", ".pt", ".h5", ".tar", ".csv", ".parquet", ".png"])
    magic = {
        ".npy": b"\x93NUMPY",
        ".npz": b"PK\x03\x04",
        ".h5": b"\x89HDF\r\n\x1a\n",
        ".png": b"\x89PNG\r\n\x1a\n",
    }
    data = (magic.get(ext, b"") if rng.random() < 0.5 else b"") + rng.randbytes(rng.randint(0, 3000))
    if ext == ".png":
        return _folder_with(b, d, f"{b.ids[0]}_0.png", data), []
    path = d / f"subj01_r{ext}"
    path.write_bytes(data)
    return path, _array_args(path)


def truncation(rng: random.Random, b: Bases, d: Path):
    fmt = rng.choice(["folder", "manifest", "tar", "npz", "npzc", "pt", "hdf5"])
    path = b.copy(fmt, d)
    target = {
        "folder": path / "subj01" / f"{b.ids[rng.randrange(8)]}_0.png",
        "manifest": path / rng.choice(["manifest.csv", f"images/s1_{b.ids[rng.randrange(8)]}_0.png"]),
    }.get(fmt, path)
    data = target.read_bytes()
    target.write_bytes(data[: rng.randrange(len(data))])
    return path, _array_args(path)


def mutation(rng: random.Random, b: Bases, d: Path):
    """Flipped bytes in the payload of formats with checksums (PNG chunks, tar members, zip members)."""
    fmt = rng.choice(["folder", "manifest", "tar", "npz", "npzc"])
    path = b.copy(fmt, d)
    if fmt in ("folder", "manifest"):
        target = path / "subj01" / f"{b.ids[rng.randrange(8)]}_0.png"
        if fmt == "manifest":
            target = path / "images" / f"s1_{b.ids[rng.randrange(8)]}_0.png"
        data = target.read_bytes()
        target.write_bytes(_flip(data, rng, 8))  # the signature is another family's business
        return path, []
    if fmt == "tar":
        with tarfile.open(path) as tf:
            m = rng.choice([m for m in tf.getmembers() if m.name.endswith(".png")])
        lo = m.offset_data
    else:
        with zipfile.ZipFile(path) as zf:
            m = rng.choice(zf.infolist())
        lo = m.header_offset + 30 + len(m.filename) + len(m.extra)
    hi = lo + (m.size if fmt == "tar" else m.compress_size)
    path.write_bytes(_flip(path.read_bytes(), rng, lo, hi))
    return path, _array_args(path)


def bombs(rng: random.Random, b: Bases, d: Path):
    kind = rng.choice(
        ["png_pixels", "npz_zeros", "npz_lie", "npy_header", "hdf5_fill", "tar_gz", "pt_deflated"]
    )
    if kind == "png_pixels":
        side = rng.choice([5000, 30000, 65535])
        data = _raw_png(side, side, 8, 2, zlib.compress(b"\0" * 100_000, 9))
        return _folder_with(b, d, f"{b.ids[0]}_0.png", data), []
    if kind == "npz_zeros":
        path = d / "subj01_bomb.npz"
        np.savez_compressed(path, images=np.zeros((rng.randint(9, 1500), 64, 64, 3), np.uint8))
        return path, _array_args(path)
    if kind == "npz_lie":
        path = d / "subj01_lie.npz"
        buf = io.BytesIO()
        np.save(buf, b.stack)
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("images.npy", buf.getvalue() + b"\0" * rng.randint(1, 5_000_000))
        return path, _array_args(path)
    if kind == "npy_header":
        path = d / "subj01_big.npy"
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            buf, {"descr": "|u1", "fortran_order": False, "shape": (8, rng.choice([4096, 10**6]), 4096, 3)}
        )
        path.write_bytes(buf.getvalue() + b"\0" * 1000)
        return path, _array_args(path)
    if kind == "pt_deflated":  # torch.load would inflate a deflated storage in memory
        path = d / "subj01_z.pt"
        with zipfile.ZipFile(b.paths["pt"]) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
            for info in src.infolist():
                dst.writestr(info.filename, src.read(info))
        return path, []
    if kind == "hdf5_fill":
        import h5py

        path = d / "subj01_fill.h5"
        side = rng.choice([5000, 20000])
        with h5py.File(path, "w") as f:
            f.create_dataset(
                "images",
                shape=(8, side, side, 3),
                dtype=np.uint8,
                chunks=(1, 256, 256, 3),
                compression="gzip",
            )
        return path, _array_args(path)
    path = d / "subj01.tar.gz"
    png = _raw_png(30000, 30000, 8, 2, zlib.compress(b"\0" * 100_000, 9))
    with tarfile.open(path, "w:gz") as tf:
        for info, data in _valid_members(b, skip=0) + [
            (_member("k0.png"), png),
            (_member("k0.json"), json.dumps({"subject": 1, "nsd_id": b.ids[0]}).encode()),
        ]:
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path, []


DTYPES = [
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
    "complex64",
    "complex128",
    "datetime64[s]",
    "timedelta64[s]",
    "U4",
    "S4",
    "uint8",
]


def dtypes(rng: random.Random, b: Bases, d: Path):
    dtype = rng.choice(DTYPES)
    fmt = rng.choice([".npy", ".npz", ".h5"] if dtype[0] not in "USdtc" else [".npy", ".npz"])
    arr = b.stack.astype(np.float64) / 255.0
    if dtype.startswith(
        ("float", "uint8")
    ):  # allowed dtypes get invalid content: out of range, NaN, constant
        arr = rng.choice([arr * 3.0, np.where(arr > 0.5, np.nan, arr), np.zeros_like(arr), -arr])
    with np.errstate(invalid="ignore", over="ignore"):
        arr = (arr * 100).astype(dtype) if dtype[0] not in "dt" else arr.astype("int64").astype(dtype)
    path = d / f"subj01_d{fmt}"
    if fmt == ".npy":
        np.save(path, arr)
    elif fmt == ".npz":
        np.savez(path, images=arr)
    else:
        import h5py

        with h5py.File(path, "w") as f:
            f.create_dataset("images", data=arr)
    return path, _array_args(path)


def shapes(rng: random.Random, b: Bases, d: Path):
    ndim = rng.randint(0, 6)
    shape = tuple(rng.choice([0, 1, 2, 3, 3, 5, 7, 8, 9]) for _ in range(ndim))
    arr = np.random.default_rng(rng.randrange(1 << 30)).integers(0, 256, shape, dtype=np.uint8)
    fmt = rng.choice([".npy", ".npz", ".pt", ".h5"])
    path = d / f"subj01_s{fmt}"
    if fmt == ".npy":
        np.save(path, arr)
    elif fmt == ".npz":
        np.savez(path, images=arr)
    elif fmt == ".pt":
        import torch

        torch.save(torch.from_numpy(arr.copy()), path)
    else:
        import h5py

        with h5py.File(path, "w") as f:
            f.create_dataset("images", data=arr)
    return path, _array_args(path)


def pickles(rng: random.Random, b: Bases, d: Path):
    payload = Payload(d.parent / MARKER)
    kind = rng.choice(["npy_object", "raw_pt", "pt_dict", "npz_object", "raw_npy", "pt_legacy"])
    if kind == "npy_object":
        path = d / "subj01_o.npy"
        np.save(path, np.array([payload, 1], dtype=object), allow_pickle=True)
    elif kind == "raw_pt":
        path = d / "subj01_o.pt"
        path.write_bytes(pickle.dumps({"images": payload}))
    elif kind in ("pt_dict", "pt_legacy"):
        import torch

        path = d / "subj01_o.pt"
        torch.save(
            {"images": torch.from_numpy(b.stack), "x": payload},
            path,
            _use_new_zipfile_serialization=kind == "pt_dict",
        )
    elif kind == "npz_object":
        path = d / "subj01_o.npz"
        np.savez(path, images=b.stack, extra=np.array([payload], dtype=object))
    else:
        path = d / "subj01_o.npy"
        path.write_bytes(pickle.dumps(payload))
    return path, _array_args(path)


def tar_traversal(rng: random.Random, b: Bases, d: Path):
    evil = rng.choice(
        ["../evil.png", "/tmp/evil.png", "a/../../evil.png", "subj01/../../evil.png", "..\\evil.png"]
    )
    png = b.png(0)
    hostile = rng.choice(
        [
            [(_member(evil), png)],
            [(_member("k0.png", tarfile.SYMTYPE, "/etc/passwd"), None)],
            [(_member("k0.png", tarfile.SYMTYPE, "../" * 5 + "etc/passwd"), None)],
            [(_member("k0.png", tarfile.LNKTYPE, "k1.png"), None)],
            [(_member("k0.png", tarfile.CHRTYPE), None)],
            [(_member("k0.png", tarfile.FIFOTYPE), None)],
            [(_member("k0.png"), png), (_member("k0.png"), b.png(1))],
            [(_member("x" * 300 + ".png"), png)],
        ]
    )
    meta = (_member("k0.json"), json.dumps({"subject": 1, "nsd_id": b.ids[0]}).encode())
    return _tar(d, _valid_members(b, skip=0) + hostile + [meta]), []


def manifest_tricks(rng: random.Random, b: Bases, d: Path):
    root = b.copy("manifest", d)
    lines = (root / "manifest.csv").read_text().splitlines()
    header, rows = lines[0], lines[1:]
    s, i, k, p = rows[0].split(",")
    tricks = {
        "duplicates": lambda: rows + [rows[0]] * rng.randint(1, 3000),
        "out_of_split": lambda: rows + [f"{s},70000,{k},{p}"] * rng.randint(1, 500),
        "unicode": lambda: [f"{s},{''.join(chr(0x0660 + int(c)) for c in i)},{k},{p}"] + rows[1:],
        "fullwidth": lambda: [f"{s},{''.join(chr(0xFF10 + int(c)) for c in i)},{k},{p}"] + rows[1:],
        "numbers": lambda: (
            [f"{s},{rng.choice(['1e3', '+5', '-1', '7.0', '1_0', '99999999999999999999999', 'nan'])},{k},{p}"]
            + rows[1:]
        ),
        "escape": lambda: (
            [f"{s},{i},{k},{rng.choice(['../x.png', '/etc/passwd', 'C:/x.png', 'images/../../x.png', ''])}"]
            + rows[1:]
        ),
        "self": lambda: [f"{s},{i},{k},manifest.csv"] + rows[1:],
        "folder": lambda: [f"{s},{i},{k},images"] + rows[1:],
        "nul": lambda: [f"{s},{i},{k},{p}\0.png"] + rows[1:],
        "subject": lambda: [f"{rng.choice(['0', '99', 'x', ''])},{i},{k},{p}"] + rows[1:],
    }
    name = rng.choice(sorted(tricks))
    body = tricks[name]()
    head = rng.choice([header, header, "\ufeff" + header, "subject,nsd_id,path", "a,b,c,d"])
    text = "\n".join([head, *body]) + "\n"
    if rng.random() < 0.1:
        text = rng.choice(["", header + "\n", "\0" * 100])
    (root / "manifest.csv").write_bytes(text.encode("utf-8", "surrogatepass"))
    return root, []


def special_files(rng: random.Random, b: Bases, d: Path):
    kind = rng.choice(
        [
            "fifo_image",
            "fifo_manifest_image",
            "fifo_file",
            "dev_zero",
            "dev_null",
            "loop_image",
            "loop_file",
            "dangling",
            "dir_image",
            "dir_file",
            "fifo_manifest",
            "dev_node",
        ]
    )
    if kind == "fifo_image":
        root = _folder_with(b, d, "")
        os.mkfifo(root / "subj01" / f"{b.ids[0]}_0.png")
        return root, []
    if kind in ("fifo_manifest_image", "fifo_manifest"):
        root = b.copy("manifest", d)
        target = root / ("manifest.csv" if kind == "fifo_manifest" else f"images/s1_{b.ids[0]}_0.png")
        target.unlink()
        os.mkfifo(target)
        return root, []
    if kind == "fifo_file":
        path = d / f"subj01{rng.choice(['.npy', '.npz', '.pt', '.hdf5', '.tar', '.csv', '.parquet'])}"
        os.mkfifo(path)
        return path, _array_args(path)
    if kind in ("dev_zero", "dev_null"):
        path = d / f"subj01{rng.choice(['.npy', '.npz', '.pt', '.h5', '.tar', '.csv'])}"
        path.symlink_to("/dev/zero" if kind == "dev_zero" else "/dev/null")
        return path, _array_args(path)
    if kind == "loop_image":
        root = _folder_with(b, d, "")
        img = root / "subj01" / f"{b.ids[0]}_0.png"
        img.symlink_to(img)
        return root, []
    if kind in ("loop_file", "dangling"):
        path = d / f"subj01{rng.choice(['.npy', '.npz', '.pt', '.h5', '.tar'])}"
        path.symlink_to(path if kind == "loop_file" else d / "nowhere")
        return path, _array_args(path)
    if kind == "dev_node":
        root = _folder_with(b, d, "")
        img = root / "subj01" / f"{b.ids[0]}_0.png"
        try:
            os.mknod(img, 0o20644, os.makedev(1, 5))  # a character device with /dev/zero's numbers
        except PermissionError:
            os.mkfifo(img)
        return root, []
    if kind == "dir_image":
        root = _folder_with(b, d, "")
        (root / "subj01" / f"{b.ids[0]}_0.png").mkdir()
        return root, []
    path = d / "subj01.npy"
    path.mkdir()
    return path, ["--format", "npy", "--order", "nsd-ascending"]


def hdf5_links(rng: random.Random, b: Bases, d: Path):
    import h5py

    path = d / "subj01_l.h5"
    kind = rng.choice(["virtual", "external_link", "soft_to_external", "external_storage", "nested_external"])
    shape = b.stack.shape
    with h5py.File(path, "w") as f:
        if kind == "virtual":
            layout = h5py.VirtualLayout(shape=shape, dtype=np.uint8)
            layout[:] = h5py.VirtualSource(str(b.gt), "imgBrick", shape=shape)
            f.create_virtual_dataset("images", layout)
        elif kind == "external_link":
            f["images"] = h5py.ExternalLink(str(b.gt), "imgBrick")
        elif kind == "soft_to_external":
            f["via"] = h5py.ExternalLink(str(b.gt), "imgBrick")
            f["images"] = h5py.SoftLink("/via")
        elif kind == "nested_external":
            g = f.create_group("subj01")
            g["images"] = h5py.ExternalLink(str(b.gt), "imgBrick")
            g["nsd_ids"] = np.asarray(b.ids)
        else:
            raw = d / "raw.bin"
            raw.write_bytes(b.stack.tobytes())
            f.create_dataset(
                "images", shape=shape, dtype=np.uint8, external=[(str(raw), 0, raw.stat().st_size)]
            )
    return path, _array_args(path)


def tensors(rng: random.Random, b: Bases, d: Path):
    import torch

    t = torch.from_numpy(b.stack.copy()).float() / 255
    kind = rng.choice(
        [
            "sparse_coo",
            "sparse_csr",
            "quantized",
            "float8_e4m3fn",
            "float8_e5m2",
            "complex64",
            "bool",
            "int32",
            "ragged",
            "int_keys",
            "bfloat16_nan",
            "ids_sparse",
        ]
    )
    obj = {
        "sparse_coo": lambda: t.to_sparse(),
        "sparse_csr": lambda: torch.eye(8).to_sparse_csr(),
        "quantized": lambda: torch.quantize_per_tensor(t, 0.01, 0, torch.quint8),
        "float8_e4m3fn": lambda: t.to(torch.float8_e4m3fn),
        "float8_e5m2": lambda: t.to(torch.float8_e5m2),
        "complex64": lambda: t.to(torch.complex64),
        "bool": lambda: t > 0.5,
        "int32": lambda: (t * 255).to(torch.int32),
        "ragged": lambda: {"images": [[1, 2], [3]]},
        "int_keys": lambda: {1: t},
        "bfloat16_nan": lambda: (t * float("nan")).to(torch.bfloat16),
        "ids_sparse": lambda: {"images": t, "nsd_ids": torch.tensor(b.ids).to_sparse()},
    }[kind]()
    path = d / "subj01_t.pt"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(obj, path)
    return path, _array_args(path)


def sidecars(rng: random.Random, b: Bases, d: Path):
    value = rng.choice(
        [
            "1e400",
            "-1",
            "true",
            '"\\u0663\\u0665"',
            '"1_0"',
            "null",
            "NaN",
            "Infinity",
            "[1]",
            '{"a": 1}',
            '"' + "9" * 5000 + '"',
            "1.5",
            "[" * 5000 + "]" * 5000,
        ]
    )
    key = rng.choice(["nsd_id", "subject", "sample"])
    meta = json.dumps({"subject": 1, "nsd_id": b.ids[0], "sample": 0}).replace(
        f'"{key}": ', f'"{key}": {value}, "_": ', 1
    )
    if rng.random() < 0.2:
        meta = rng.choice(["[]", "1", "", "{", '"x"'])
    members = _valid_members(b, skip=0) + [(_member("k0.png"), b.png(0)), (_member("k0.json"), meta.encode())]
    return _tar(d, members), []


def folder_names(rng: random.Random, b: Bases, d: Path):
    kind = rng.choice(
        [
            "arabic",
            "fullwidth",
            "subj_unicode",
            "subj_file",
            "empty",
            "hidden_only",
            "nested",
            "png_folder",
            "spaces",
            "no_subject",
        ]
    )
    if kind in ("empty", "hidden_only", "no_subject"):
        root = d / "sub"
        root.mkdir()
        if kind == "hidden_only":
            (root / ".DS_Store").write_bytes(b"x")
        if kind == "no_subject":
            shutil.copytree(b.paths["folder"] / "subj01", root / "images")
        return root, []
    root = b.copy("folder", d)
    first = root / "subj01" / f"{b.ids[0]}_0.png"
    digits = {"arabic": 0x0660, "fullwidth": 0xFF10}
    if kind in digits:
        first.rename(first.with_name("".join(chr(digits[kind] + int(c)) for c in str(b.ids[0])) + "_0.png"))
    elif kind == "subj_unicode":
        (root / "subj01").rename(root / "subj\u0660\u0661")
    elif kind == "subj_file":
        shutil.rmtree(root / "subj01")
        (root / "subj01").write_bytes(b.png(0))
    elif kind == "nested":
        (root / "subj01" / "deeper").mkdir()
        first.rename(root / "subj01" / "deeper" / first.name)
    elif kind == "png_folder":
        first.unlink()
        first.mkdir()
    else:
        first.rename(first.with_name(f" {b.ids[0]}_0.png"))
    return root, []


FAMILIES: dict[str, Callable] = {
    f.__name__: f
    for f in (
        random_bytes,
        truncation,
        mutation,
        bombs,
        dtypes,
        shapes,
        pickles,
        tar_traversal,
        manifest_tricks,
        special_files,
        hdf5_links,
        tensors,
        sidecars,
        folder_names,
    )
}


# ------------------------------------------------------------------------------------------ the run


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def _alarm(signum, frame):
    raise CaseHung(f"case ran past {CASE_SECONDS} s")


def _clean(text: str) -> list[str]:
    bad = [s for s in ("Traceback", " at 0x", "weights_only=False", "pop from empty list") if s in text]
    if any(line.rstrip().endswith(":") for line in text.splitlines()):
        bad.append("a line ending at a colon")
    return bad


@pytest.fixture(scope="module")
def fuzz_home(tmp_path_factory):
    """A fresh NSDBENCH_HOME for this module, holding a leaderboard with one run already recorded."""
    from test_leaderboard_store import record, write_fake_run

    from nsdbench.leaderboards.store import Store

    home = tmp_path_factory.mktemp("fuzz-home")
    old = os.environ.get("NSDBENCH_HOME")
    os.environ["NSDBENCH_HOME"] = str(home)
    store = Store(home / "leaderboard.duckdb")
    store.ingest(
        record(store, "kept"), write_fake_run(tmp_path_factory.mktemp("fake"), "kept"), n_resamples=50
    )
    yield home
    os.environ["NSDBENCH_HOME"] = old or ""


def test_hostile_submissions_fuzz(small_root, fuzz_home, tmp_path, capsys):
    nsd = open_nsd(small_root)
    outside = tmp_path / "outside"
    outside.mkdir()
    bases = Bases(demo_images(nsd, "nsd982", [1], "blur", radius=2), tmp_path / "bases", outside)
    cases_dir = tmp_path / "cases"
    cases_dir.mkdir()
    db = fuzz_home / "leaderboard.duckdb"
    common = [
        "--data",
        str(small_root),
        "--weights",
        "tiny",
        "--no-brain",
        "--bootstrap",
        "10",
        "--device",
        "cpu",
        "--subjects",
        "1",
    ]
    rng = random.Random(SEED)
    outcomes: dict[str, Counter] = defaultdict(Counter)
    failures: list[str] = []
    slowest = (0.0, "")
    started = time.perf_counter()
    old_handler = signal.signal(signal.SIGALRM, _alarm)
    try:
        for n in range(CASES_PER_FAMILY):
            for family, build in FAMILIES.items():
                d = cases_dir / f"{n:02d}-{family}"
                d.mkdir()
                path, extra = build(rng, bases, d)
                before = _digest(db)
                t0 = time.perf_counter()
                signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
                try:
                    rc = main(["score", str(path), *common, *extra])
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                elapsed = time.perf_counter() - t0
                slowest = max(slowest, (elapsed, d.name))
                cap = capsys.readouterr()
                text = cap.out + cap.err
                outcomes[family][rc] += 1
                where = f"{d.name} rc={rc}: {text[-400:]!r}"
                if rc not in (0, 3) or _clean(text):
                    failures.append(f"{where} {_clean(text)}")
                if rc == 3 and (
                    _digest(db) != before or not cap.err.strip().splitlines()[-1].startswith("error:")
                ):
                    failures.append(f"{where} leaderboard changed or no closing error line")
    finally:
        signal.signal(signal.SIGALRM, old_handler)
    fuzz_seconds = time.perf_counter() - started
    table = {f: dict(c) for f, c in outcomes.items()}
    print(
        f"\nfuzz: {sum(map(sum, (c.values() for c in outcomes.values())))} cases in {fuzz_seconds:.1f} s, "
        f"slowest {slowest[1]} {slowest[0]:.2f} s; exit codes per family: {json.dumps(table)}",
        file=sys.__stderr__,
    )
    assert not failures, "\n".join(failures[:20])
    assert not (cases_dir / MARKER).exists(), "a pickle payload ran"
    leaked = [p for p in tmp_path.rglob("evil.png")] + [p for p in Path("/tmp").glob("evil.png")]
    assert not leaked, leaked
    assert {p.name for p in tmp_path.iterdir()} == {"outside", "bases", "cases"}
    assert sorted(p.name for p in outside.iterdir()) == ["nsd_stimuli.hdf5"]
    assert all(set(c) <= {0, 3} for c in outcomes.values()) and len(outcomes) == 14

    # a valid control still scores after the barrage, and is recorded
    before = _digest(db)
    rc = main(["score", str(bases.paths["folder"]), *common, "--method-name", "control"])
    cap = capsys.readouterr()
    assert rc == 0 and "recorded" in cap.out + cap.err, cap.err[-2000:]
    assert _digest(db) != before


SUBPROCESS_CASES = [
    ("fifo .npy", lambda d: (os.mkfifo(d / "subj01.npy"), d / "subj01.npy")[1]),
    (
        "random bytes .h5",
        lambda d: ((d / "subj01.h5").write_bytes(random.Random(1).randbytes(2000)), d / "subj01.h5")[1],
    ),
]


@pytest.mark.parametrize("name,build", SUBPROCESS_CASES, ids=[c[0] for c in SUBPROCESS_CASES])
def test_hostile_submissions_in_a_subprocess(name, build, small_root, tmp_path):
    path = build(tmp_path)
    env = {**os.environ, "NSDBENCH_HOME": str(tmp_path / "home")}
    cmd = [
        sys.executable,
        "-m",
        "nsdbench.cli",
        "validate",
        str(path),
        "--data",
        str(small_root),
        "--subjects",
        "1",
        "--order",
        "nsd-ascending",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, check=False)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert not _clean(proc.stdout + proc.stderr)
    assert proc.stderr.strip().splitlines()[-1].startswith("error:")
