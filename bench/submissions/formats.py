"""Readers for every submission format. Each turns untrusted files into entries and raw images safely.

No reader unpickles (np.load(allow_pickle=False), torch.load(weights_only=True)), image decoding is
bounded (file size and pixel count are checked before decoding), and no manifest path, folder entry
or tar member may point outside the submission. Readers never raise on bad content: they record a
`Problem` and go on, so `nsdbench validate` can list every problem at once.
"""

from __future__ import annotations

import io
import math
import os
import re
import tarfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from nsdbench import config
from nsdbench.errors import UsageError
from nsdbench.submissions.npy_headers import map_npy, npz_members, read_npy_header
from nsdbench.submissions.untrusted import (
    PNG_SIGNATURE,
    Refused,
    check_png,
    check_regular,
    os_reason,
    parse_id,
    read_regular,
)

IMAGE_EXTS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
MAX_IMAGE_BYTES = 64 * 1024 * 1024
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
MIN_SIDE = 8
# ids are ASCII digits only: `\d` would also take Arabic-Indic or full-width digits.
SUBJECT_DIR = re.compile(r"^subj0*([0-9]{1,3})$", re.IGNORECASE | re.ASCII)
CONVENTION_FILE = re.compile(r"^([0-9]{1,18})(?:_([0-9]{1,9}))?\.(png|jpe?g)$", re.IGNORECASE | re.ASCII)
UNICODE_ID_FILE = re.compile(r"^\d+(?:_\d+)?\.(png|jpe?g)$", re.IGNORECASE)
SUBJECT_IN_NAME = re.compile(r"subj0*([0-9]{1,3})", re.IGNORECASE | re.ASCII)
ARRAY_DTYPES = ("uint8", "float16", "bfloat16", "float32", "float64")
IMAGE_KEYS = ("images", "recons", "reconstructions", "imgs", "arr_0")
ID_KEYS = ("nsd_ids", "ids", "nsd_id")


def max_image_pixels() -> int:
    """Decompression-bomb limit for one decoded image (NSDBENCH_MAX_IMAGE_PIXELS, default 4096²)."""
    return int(config.get("max_image_pixels") or 4096 * 4096)


def max_inflate_bytes() -> int:
    """Largest compressed npz member that is inflated into memory (NSDBENCH_MAX_INFLATE_BYTES, 8 GiB)."""
    return int(config.get("max_inflate_bytes") or 8 * 1024**3)


def max_array_bytes() -> int:
    """Largest array a container may declare before it is refused (NSDBENCH_MAX_ARRAY_BYTES, 64 GiB)."""
    return int(config.get("max_array_bytes") or 64 * 1024**3)


@dataclass(frozen=True)
class Problem:
    """One validation finding: what is wrong, where, expected vs actual."""

    code: str
    message: str
    subject: int | None = None
    nsd_id: int | None = None
    sample: int | None = None
    expected: str = ""
    actual: str = ""
    severity: str = "error"  # "error" fails validation, "warning" does not
    source: str = ""

    def line(self) -> str:
        where = []
        if self.subject is not None:
            where.append(f"subject {self.subject}")
        if self.nsd_id is not None:
            where.append(f"nsd_id {self.nsd_id}")
        if self.sample is not None:
            where.append(f"sample {self.sample}")
        head = self.code
        if where and where[0].split()[0] == self.code:  # "subject 2", not "subject [subject 2]"
            head = where.pop(0) + ":"
        loc = f" [{', '.join(where)}]" if where else ""
        src = f" ({self.source})" if self.source else ""
        got = f", got {self.actual}" if self.actual else ""
        exp = (
            f": expected {self.expected}{got}"
            if self.expected
            else (f": got {self.actual}" if self.actual else "")
        )
        return f"{self.severity}: {head}{loc}{src} {self.message}{exp}"

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class Entry:
    """One reconstruction: its key and where a reader finds it (`ref` is reader-specific)."""

    subject: int
    nsd_id: int
    sample: int
    ref: Any
    source: str


ImageError = Refused  # a file or member that cannot become an image; carries the problem code


# -- image decoding ---------------------------------------------------------------------------------
def decode_image(data: bytes, name: str) -> tuple[np.ndarray, str]:
    """PNG/JPEG bytes → uint8 (H, W, 3) and the detected format. Raises ImageError, never anything else.

    PNGs must be 8 bits per channel RGB (or a palette without transparency) with intact chunk CRCs;
    16-bit, grayscale and alpha PNGs are refused, never converted."""
    from PIL import Image

    if len(data) > MAX_IMAGE_BYTES:
        raise ImageError(
            "size", "file is too large for an image", f"<= {MAX_IMAGE_BYTES} bytes", f"{len(data)}"
        )
    if data.startswith(PNG_SIGNATURE):
        check_png(data)
    limit = max_image_pixels()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            fmt = im.format or "?"
            if fmt not in ("PNG", "JPEG"):
                raise ImageError("format", "unsupported image format", "PNG or JPEG", fmt)
            w, h = im.size
            if w * h > limit:
                raise ImageError(
                    "size",
                    "image has too many pixels (decompression-bomb limit)",
                    f"<= {limit} pixels",
                    f"{w}x{h}",
                )
            im.load()
            if im.mode == "P" and "transparency" not in im.info:
                im = im.convert("RGB")
            if im.mode != "RGB":
                raise ImageError("channels", "image is not 8-bit RGB", "mode RGB", f"mode {im.mode}")
            arr = np.asarray(im, dtype=np.uint8)
    except ImageError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageError("unreadable", "file is not a PNG or JPEG image", "PNG or JPEG bytes") from None
    # Hostile bytes make decoders raise almost anything, with text that may hold memory addresses:
    # each becomes one problem in nsdbench's own words.
    except Exception as exc:  # noqa: BLE001
        truncated = isinstance(exc, EOFError) or "truncated" in str(exc).lower()
        if truncated:
            raise ImageError(
                "truncated", "image data ends early (truncated file)", "a complete image"
            ) from None
        raise ImageError(
            "unreadable", "image data is corrupt and cannot be decoded", "a decodable PNG or JPEG"
        ) from None
    return arr, fmt


def read_image_file(path: Path) -> tuple[np.ndarray, str]:
    """A regular image file (symlinks followed), read with a size bound: FIFOs and devices are refused."""
    return decode_image(read_regular(path, MAX_IMAGE_BYTES, "image file"), str(path))


def contained(root: Path, rel: str) -> Path | None:
    """root/rel resolved (symlinks followed) if it stays inside root, else None.

    A symlink loop cannot be resolved; its unresolved path (lexically inside root) is returned and
    reading it fails with a one-line problem."""
    if not rel or "\x00" in rel:
        return None
    p = PurePosixPath(rel.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or re.match(r"^[A-Za-z]:", rel):
        return None
    lexical = root / Path(*p.parts)
    try:
        target = lexical.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop (Python < 3.13)
        return lexical
    try:
        target.relative_to(root.resolve())
    except ValueError:
        return None
    return target


# -- array layouts ------------------------------------------------------------------------------------
@dataclass
class ArrayBlock:
    """One image array in a container: (N, [S,] H, W, 3) or (N, [S,] 3, H, W)."""

    key: str
    shape: tuple[int, ...]
    dtype: str
    subject: int | None
    ids: list[int] | None
    layout: str = ""  # "NHWC", "NCHW", "NSHWC", "NSCHW"
    n: int = 0
    samples: int = 1


def infer_layout(shape: tuple[int, ...]) -> tuple[str, int, int] | str:
    """(layout, N, samples) for a supported shape, else a one-line description of what is wrong."""
    if len(shape) == 4:
        last, first = shape[-1] == 3, shape[1] == 3
        if last and not first:
            return "NHWC", shape[0], 1
        if first and not last:
            return "NCHW", shape[0], 1
        if first and last:
            return "NHWC", shape[0], 1  # (N, 3, W, 3) images are not plausible; channels-last wins
        return f"no axis of size 3 for RGB channels in shape {shape}"
    if len(shape) == 5:
        if shape[-1] == 3:
            return "NSHWC", shape[0], shape[1]
        if shape[2] == 3:
            return "NSCHW", shape[0], shape[1]
        return f"no axis of size 3 for RGB channels in shape {shape}"
    return f"{len(shape)}-d array of shape {shape}"


def take_image(arr: Any, layout: str, index: int, sample: int) -> np.ndarray:
    """One image from an array-like (numpy, memmap, h5py dataset, torch tensor) as (H, W, C) numpy."""
    if layout in ("NHWC", "NCHW"):
        img = arr[index]
    else:
        img = arr[index, sample]
    if hasattr(img, "detach"):  # torch tensor
        import torch

        if img.dtype in (torch.float16, torch.bfloat16):
            img = img.float()
        img = img.detach().cpu().numpy()
    img = np.asarray(img)
    if layout in ("NCHW", "NSCHW"):
        img = np.moveaxis(img, 0, -1)
    return img


# -- readers ------------------------------------------------------------------------------------------
@dataclass
class Reader:
    """Base reader: `entries` (known keys), `blocks` (arrays still needing ids), `problems`, `read(entry)`."""

    path: Path
    fmt: str
    entries: list[Entry] = field(default_factory=list)
    blocks: list[ArrayBlock] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def problem(self, code: str, message: str, **kw: Any) -> None:
        kw.setdefault("source", str(self.path))
        self.problems.append(Problem(code, message, **kw))

    def read(self, entry: Entry) -> tuple[np.ndarray, str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def block_array(self, block: ArrayBlock) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def files(self) -> list[Path]:
        """Files whose bytes define the submission (for its sha256)."""
        return [self.path]

    def close(self) -> None:
        pass


class ImageFolderReader(Reader):
    def read(self, entry: Entry) -> tuple[np.ndarray, str]:
        return read_image_file(entry.ref)

    def files(self) -> list[Path]:
        extra = [self.manifest] if getattr(self, "manifest", None) else []
        return extra + sorted({e.ref for e in self.entries})


def _listing(r: Reader, folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError as exc:
        r.problem("unreadable", f"cannot list folder: {os_reason(exc)}", source=str(folder))
        return []


def read_convention_folder(root: Path) -> ImageFolderReader:
    """subjXX/<nsd_id>_<sample>.png|jpg (or <nsd_id>.png for sample 0)."""
    r = ImageFolderReader(root, "folder")
    listing = _listing(r, root)
    if not any(SUBJECT_DIR.match(p.name) for p in listing) and not r.problems:
        others = [p.name for p in listing if not p.name.startswith(".")]
        r.problem(
            "format",
            "submission folder holds no subjXX/ folders and no manifest.csv or manifest.parquet",
            expected="subjXX/<nsd_id>_<sample>.png files or a manifest",
            actual=f"{len(others)} other entries" if others else "an empty folder",
        )
        return r
    for sub in listing:
        m = SUBJECT_DIR.match(sub.name)
        if not m:
            if not sub.name.startswith("."):
                r.problem("extra-file", "ignored: not a subjXX folder", severity="warning", source=str(sub))
            continue
        if sub.is_symlink() or not sub.is_dir():
            r.problem("path-escape", "subject folder is a symlink or not a folder", source=str(sub))
            continue
        subject = int(m.group(1))
        for f in _listing(r, sub):
            fm = CONVENTION_FILE.match(f.name)
            if not fm:
                if UNICODE_ID_FILE.match(f.name):
                    r.problem(
                        "ids",
                        "file name has non-ASCII digits; NSD ids are written with ASCII digits 0-9"
                        if not f.name.isascii()
                        else "file name's id or sample number has too many digits",
                        subject=subject,
                        source=str(f),
                        expected="<nsd_id>_<sample>.png in ASCII digits",
                        actual=ascii(f.name),
                    )
                elif not f.name.startswith("."):
                    r.problem(
                        "extra-file",
                        "ignored: name is not <nsd_id>_<sample>.png|jpg",
                        severity="warning",
                        source=str(f),
                        subject=subject,
                    )
                continue
            target = contained(root, f"{sub.name}/{f.name}")
            nsd_id, sample = int(fm.group(1)), int(fm.group(2) or 0)
            if target is None:
                r.problem(
                    "path-escape",
                    "file resolves outside the submission folder",
                    subject=subject,
                    nsd_id=nsd_id,
                    sample=sample,
                    source=str(f),
                )
                continue
            r.entries.append(Entry(subject, nsd_id, sample, target, str(f)))
    return r


MANIFEST_COLUMNS = ("subject", "nsd_id", "sample", "path")


def read_manifest(manifest: Path) -> ImageFolderReader:
    """A CSV or Parquet manifest (subject, nsd_id, sample, path); paths relative to its folder."""
    import pandas as pd

    root = manifest.parent
    r = ImageFolderReader(manifest, "manifest")
    r.manifest = manifest  # type: ignore[attr-defined]
    parquet = manifest.suffix.lower() == ".parquet"
    try:
        data = read_regular(manifest, MAX_MANIFEST_BYTES, "manifest")
    except Refused as exc:
        r.problem(exc.code, exc.message, expected=exc.expected, actual=exc.actual)
        return r
    try:
        if parquet:
            df = pd.read_parquet(io.BytesIO(data)).astype(str)
        else:
            df = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, skipinitialspace=True)
    # pandas/pyarrow raise many exception types on malformed files; each is one problem in our words.
    except Exception:  # noqa: BLE001
        r.problem(
            "manifest",
            "cannot parse the manifest",
            expected="a Parquet file"
            if parquet
            else "UTF-8 CSV with a header row subject,nsd_id,sample,path",
            actual="unparsable bytes",
        )
        return r
    df.columns = [str(c).strip().lower() for c in df.columns]
    missing = [c for c in ("subject", "nsd_id", "path") if c not in df.columns]
    if missing:
        r.problem(
            "manifest",
            "manifest lacks required columns",
            expected="columns subject, nsd_id, sample, path",
            actual="columns " + ", ".join(map(str, df.columns)),
        )
        return r
    if "sample" not in df.columns:
        df["sample"] = "0"
    resolved: dict[str, Path | None] = {}  # a path repeated on many rows is resolved once
    for i, row in enumerate(df.itertuples(index=False), start=2):
        src = f"{manifest}:{i}"
        key = [parse_id(getattr(row, c)) for c in ("subject", "nsd_id", "sample")]
        if None in key:
            r.problem(
                "manifest",
                "row has a subject/nsd_id/sample that is not a non-negative integer in ASCII digits",
                source=src,
                expected="non-negative integers",
                actual=ascii((row.subject, row.nsd_id, row.sample))[1:-1],
            )
            continue
        subject, nsd_id, sample = key
        rel = str(row.path).strip()
        if rel not in resolved:
            resolved[rel] = contained(root, rel)
        target = resolved[rel]
        if target is None:
            r.problem(
                "path-escape" if rel else "manifest",
                "manifest path is absolute or leaves the submission folder"
                if rel
                else "row has an empty path",
                subject=subject,
                nsd_id=nsd_id,
                sample=sample,
                source=src,
                expected="a relative path inside " + str(root),
                actual=repr(rel),
            )
            continue
        if target.suffix.lower() not in IMAGE_EXTS:
            r.problem(
                "format",
                "manifest path is not a PNG or JPEG file",
                subject=subject,
                nsd_id=nsd_id,
                sample=sample,
                source=src,
                expected=".png/.jpg/.jpeg",
                actual=repr(rel),
            )
            continue
        r.entries.append(Entry(subject, nsd_id, sample, target, f"{manifest.name}:{i} {rel}"))
    return r


class TarReader(Reader):
    def __init__(self, path: Path) -> None:
        super().__init__(path, "tar")
        self._tar: tarfile.TarFile | None = None

    def read(self, entry: Entry) -> tuple[np.ndarray, str]:
        info: tarfile.TarInfo = entry.ref
        if info.size > MAX_IMAGE_BYTES:
            raise ImageError(
                "size", "member is too large for an image", f"<= {MAX_IMAGE_BYTES} bytes", f"{info.size}"
            )
        try:
            if self._tar is None:
                self._tar = tarfile.open(self.path, "r:*")  # noqa: SIM115 - closed by close()
            fh = self._tar.extractfile(info)
            data = fh.read(info.size) if fh is not None else b""
        # tarfile and the gzip/bz2/lzma streams below it raise many types on damaged bytes.
        except Exception:  # noqa: BLE001
            raise ImageError(
                "truncated", "cannot read tar member: the archive is damaged or truncated"
            ) from None
        if len(data) != info.size:
            raise ImageError(
                "truncated",
                "tar member is shorter than its header declares",
                f"{info.size} bytes",
                f"{len(data)} bytes",
            )
        return decode_image(data, entry.source)

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None


def _safe_member_name(name: str) -> bool:
    p = PurePosixPath(name)
    return (
        bool(name) and not p.is_absolute() and ".." not in p.parts and "\\" not in name and "\x00" not in name
    )


def read_tar(path: Path) -> TarReader:
    """A webdataset tar: `<key>.png|jpg` with optional `<key>.json` {subject, nsd_id, sample}, or keys
    named by convention (`subjXX/<nsd_id>_<sample>` or `subjXX_<nsd_id>_<sample>`). Nothing is extracted."""
    import json

    r = TarReader(path)
    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    try:
        with tarfile.open(path, "r:*") as tf:
            for info in tf:
                if not _safe_member_name(info.name):
                    r.problem(
                        "path-escape",
                        "tar member name is absolute or leaves the archive",
                        actual=repr(info.name),
                    )
                    continue
                if info.isdir():
                    continue
                if not info.isreg():
                    r.problem(
                        "unsafe-member",
                        "tar member is a link or device, not a regular file",
                        actual=repr(info.name),
                    )
                    continue
                d, _, base = info.name.rpartition("/")
                stem, dot, ext = base.partition(".")
                key = f"{d}/{stem}" if d else stem
                members = groups.setdefault(key, {})
                kind = ext.lower() if dot else ""
                if kind in members:
                    r.problem(
                        "duplicate",
                        "tar member appears more than once (only the last is used)",
                        actual=repr(info.name),
                    )
                members[kind] = info
            metas: dict[str, dict] = {}
            for key, members in groups.items():
                if "json" in members and members["json"].size <= 1 << 20:
                    fh = tf.extractfile(members["json"])
                    try:
                        metas[key] = json.loads(fh.read(1 << 20)) if fh else {}
                    except (ValueError, UnicodeDecodeError, RecursionError):
                        r.problem(
                            "manifest", "tar member is not valid JSON", actual=repr(members["json"].name)
                        )
                        metas[key] = {}
    # tarfile (and gzip/bz2/lzma under it) raise many types on damaged archives; one problem, our words.
    except Exception:  # noqa: BLE001
        r.problem(
            "unreadable",
            "cannot read the tar archive: it is damaged, truncated or not a tar file",
            expected="a tar archive (optionally gzip-compressed)",
        )
        return r
    for key in sorted(groups):
        members = groups[key]
        img_ext = [e for e in members if f".{e}" in IMAGE_EXTS]
        if not img_ext:
            if set(members) - {"json"}:
                r.problem(
                    "extra-file",
                    "ignored: tar key has no .png/.jpg member",
                    severity="warning",
                    actual=repr(key),
                )
            continue
        info = members[img_ext[0]]
        meta = metas.get(key)
        parsed = _key_from_meta(meta) if meta else _key_from_name(key)
        if parsed is None:
            if meta:
                r.problem(
                    "manifest",
                    f"sidecar {key}.json does not hold a usable subject, nsd_id and sample",
                    expected='{"subject": int, "nsd_id": int, "sample": int} (non-negative integers)',
                    actual=ascii({k: meta[k] for k in list(meta)[:5]} if isinstance(meta, dict) else meta)[
                        :200
                    ],
                )
                continue
            r.problem(
                "manifest",
                "cannot tell subject/nsd_id/sample of tar key (add <key>.json or name it "
                "subjXX/<nsd_id>_<sample>)",
                actual=repr(key),
            )
            continue
        subject, nsd_id, sample = parsed
        r.entries.append(Entry(subject, nsd_id, sample, info, f"{path.name}:{info.name}"))
    return r


def _key_from_meta(meta: Any) -> tuple[int, int, int] | None:
    """(subject, nsd_id, sample) from a sidecar: JSON integers or ASCII-digit strings only."""
    if not isinstance(meta, dict) or "subject" not in meta or "nsd_id" not in meta:
        return None
    vals = (parse_id(meta["subject"]), parse_id(meta["nsd_id"]), parse_id(meta.get("sample", 0)))
    return None if None in vals else vals  # type: ignore[return-value]


def _key_from_name(key: str) -> tuple[int, int, int] | None:
    m = re.match(r"^subj0*([0-9]{1,3})[/_]([0-9]{1,18})(?:_([0-9]{1,9}))?$", key, re.IGNORECASE | re.ASCII)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


MAX_ROWS = 73_000  # more images in one array than NSD has stimuli can only be duplicates or bad ids


class ArrayReader(Reader):
    """npy / npz / pt / hdf5 containers; the arrays are kept lazily (memmap, h5py, mmap'd tensors, npz
    members inflated on first use)."""

    def __init__(self, path: Path, fmt: str) -> None:
        super().__init__(path, fmt)
        self.arrays: dict[str, Any] = {}
        self._h5 = None

    def block_array(self, block: ArrayBlock) -> Any:
        return self.arrays[block.key]

    def read(self, entry: Entry) -> tuple[np.ndarray, str]:
        key, index, sample, layout = entry.ref
        try:
            img = take_image(self.arrays[key], layout, index, sample)
        except Refused:
            raise
        # memmaps, h5py filters and torch storages raise many types on damaged data; one problem each.
        except Exception:  # noqa: BLE001
            raise ImageError(
                "unreadable",
                f"cannot read image {index} of array {key!r}: the file's data is damaged or truncated",
            ) from None
        return img, "array"

    def refuse(self, exc: Refused, **kw: Any) -> None:
        self.problem(exc.code, exc.message, expected=exc.expected, actual=exc.actual, **kw)

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
        self._h5 = None
        self.arrays.clear()

    def add_block(self, key: str, arr: Any, ids: Any = None, subject: int | None = None) -> None:
        """Check an image array from its shape and dtype alone (nothing is read) and keep it lazily."""
        kind = _tensor_kind(arr)
        if kind:
            self.problem(
                "dtype",
                f"array {key!r} is a {kind} tensor",
                expected="a dense tensor (torch.strided) of uint8 or float",
                actual=kind,
                subject=subject,
            )
            return
        shape = tuple(int(s) for s in arr.shape)
        dtype = str(getattr(arr, "dtype", "?")).replace("torch.", "")
        if dtype not in ARRAY_DTYPES:
            self.problem(
                "dtype",
                f"array {key!r} has an unsupported dtype",
                expected="uint8, or float in [0, 1]",
                actual=dtype,
                subject=subject,
            )
            return
        nbytes = math.prod(shape) * (getattr(getattr(arr, "dtype", None), "itemsize", None) or 4)
        if nbytes > max_array_bytes():
            self.problem(
                "size",
                f"array {key!r} is larger than the limit (NSDBENCH_MAX_ARRAY_BYTES)",
                expected=f"<= {max_array_bytes()} bytes",
                actual=f"{nbytes} bytes",
            )
            return
        lay = infer_layout(shape)
        if isinstance(lay, str):
            self.problem(
                "shape",
                f"array {key!r} has an unsupported shape ({lay})",
                expected="(N, H, W, 3), (N, 3, H, W), (N, S, H, W, 3) or (N, S, 3, H, W)",
                actual=str(shape),
                subject=subject,
            )
            return
        layout, n, samples = lay
        h, w = _image_hw(shape, layout)
        if h * w > max_image_pixels() or n > MAX_ROWS:
            self.problem(
                "size",
                f"array {key!r} has too many images or too many pixels per image",
                expected=f"<= {MAX_ROWS} images of <= {max_image_pixels()} pixels",
                actual=f"{n} images of {h}x{w}",
                subject=subject,
            )
            return
        id_list = None
        if ids is not None:
            id_shape = tuple(int(s) for s in getattr(ids, "shape", (len(ids),)))
            if len(id_shape) == 1 and id_shape[0] != n:
                self.problem(
                    "count",
                    f"id list length differs from the number of images in {key!r}",
                    expected=str(n),
                    actual=str(id_shape[0]),
                    subject=subject,
                )
                return
            id_list, bad = _id_list(ids)
            if bad:
                self.problem(
                    "ids",
                    f"id list for {key!r} is not a 1-d list of non-negative integers",
                    actual=bad,
                    subject=subject,
                )
                return
        self.arrays[key] = arr
        self.blocks.append(ArrayBlock(key, shape, dtype, subject, id_list, layout, n, samples))


def _tensor_kind(arr: Any) -> str:
    """'sparse_coo', 'quantized', 'nested', ... for a torch tensor that is not plain dense data; '' else."""
    if not hasattr(arr, "is_quantized"):
        return ""
    import torch

    if arr.is_nested:
        return "nested"
    if arr.layout != torch.strided:
        return str(arr.layout).replace("torch.", "")
    if arr.is_quantized:
        return "quantized"
    return ""


def _image_hw(shape: tuple[int, ...], layout: str) -> tuple[int, int]:
    hw = {"NHWC": (1, 2), "NCHW": (2, 3), "NSHWC": (2, 3), "NSCHW": (3, 4)}[layout]
    return shape[hw[0]], shape[hw[1]]


def _id_list(ids: Any) -> tuple[list[int], str]:
    try:
        if _tensor_kind(ids):
            return [], f"a {_tensor_kind(ids)} tensor"
        if hasattr(ids, "detach"):
            ids = ids.detach().cpu().numpy()
        arr = np.asarray(ids)
    # a ragged list, a torch dtype numpy lacks (bfloat16, float8), a damaged dataset: not an id list
    except Exception:  # noqa: BLE001
        return [], "not a numeric array"
    if arr.ndim != 1 or arr.dtype.kind not in "iu" or (arr.size and arr.min() < 0):
        return [], f"shape {arr.shape} dtype {arr.dtype}"
    return [int(i) for i in arr], ""


def _subject_from_key(key: str) -> int | None:
    m = re.fullmatch(r"subj0*([0-9]{1,3})", key, re.IGNORECASE | re.ASCII)
    return int(m.group(1)) if m else None


def _add_mapping(r: ArrayReader, mapping: dict[str, Any], get: Any) -> None:
    """Shared layout of npz / pt dicts / hdf5 roots: one images key (+ ids) or subjXX keys (+ subjXX_nsd_ids)."""
    keys = list(mapping)
    subj_keys = [k for k in keys if _subject_from_key(k) is not None]
    if subj_keys:
        for k in subj_keys:
            ids_key = next((f"{k}_{i}" for i in ID_KEYS if f"{k}_{i}" in mapping), None)
            r.add_block(k, get(k), get(ids_key) if ids_key else None, _subject_from_key(k))
        return
    img_key = next((k for k in IMAGE_KEYS if k in mapping), None)
    if img_key is None:
        candidates = [k for k in keys if k not in ID_KEYS]
        img_key = candidates[0] if len(candidates) == 1 else None
    if img_key is None:
        r.problem(
            "format",
            "cannot find the image array",
            expected=f"a key in {IMAGE_KEYS} or subjXX keys",
            actual="keys " + ", ".join(ascii(k) for k in keys[:20]),
        )
        return
    ids_key = next((k for k in ID_KEYS if k in mapping), None)
    r.add_block(img_key, get(img_key), get(ids_key) if ids_key else None)


def read_npy(path: Path) -> ArrayReader:
    """An .npy array: header checked (no pickles, size matches the file), then memory-mapped."""
    r = ArrayReader(path, "npy")
    try:
        r.add_block("array", map_npy(path, read_npy_header(path)))
    except Refused as exc:
        r.refuse(exc)
    return r


def read_npz(path: Path) -> ArrayReader:
    """An .npz archive: every member's header is checked before anything is inflated."""
    r = ArrayReader(path, "npz")
    try:
        members = npz_members(path, max_inflate_bytes())
        _add_mapping(r, members, members.__getitem__)
    except Refused as exc:
        r.refuse(exc)
    return r


def read_pt(path: Path) -> ArrayReader:
    """A tensor or a dict of tensors from torch.save, loaded with weights_only=True (never unpickled)."""
    import pickle

    import torch

    r = ArrayReader(path, "pt")
    try:
        if _compressed_zip_members(path):
            r.problem(
                "size",
                "the .pt archive has compressed members (torch.save stores them uncompressed); nsdbench "
                "does not inflate them",
                expected="a .pt file written by torch.save",
                actual="deflated members",
            )
            return r
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # the zip format is memory-mapped; the legacy format holds raw storages: neither inflates
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    # Corrupt bytes raise anything; torch's own text may advise weights_only=False, so it is never shown.
    except Exception as exc:  # noqa: BLE001
        if isinstance(exc, pickle.UnpicklingError) and "weights_only" in str(exc):
            r.problem(
                "unreadable",
                "the .pt file holds Python objects other than tensors; nsdbench loads .pt files with "
                "weights_only=True and never unpickles other objects",
                expected="a tensor or a dict of tensors",
            )
        else:
            r.problem(
                "unreadable",
                "the .pt file is not a readable torch.save archive (damaged or truncated)",
                expected="a tensor or a dict of tensors saved by torch.save",
            )
        return r
    try:
        if isinstance(obj, torch.Tensor):
            r.add_block("tensor", obj)
        elif isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
            tensors = {k: v for k, v in obj.items() if isinstance(v, (torch.Tensor, list, tuple))}
            _add_mapping(
                r,
                tensors,
                lambda k: tensors[k] if isinstance(tensors[k], torch.Tensor) else _as_array(tensors[k]),
            )
        else:
            r.problem(
                "format",
                "unsupported .pt content",
                expected="a tensor or a dict of tensors",
                actual=type(obj).__name__,
            )
    except Refused as exc:
        r.refuse(exc)
    return r


def _compressed_zip_members(path: Path) -> bool:
    """True for a zip archive with any member that is not stored (such a member would be inflated)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(i.compress_type != zipfile.ZIP_STORED for i in zf.infolist())


def _as_array(values: Any) -> np.ndarray:
    try:
        return np.asarray(values)
    except Exception:  # noqa: BLE001 - ragged or mixed lists
        raise Refused("format", "a list in the .pt file is not a rectangular array of numbers") from None


def read_hdf5(path: Path) -> ArrayReader:
    """An HDF5 file, read only from inside itself: external links, virtual datasets and external raw
    storage are refused before any dataset is touched."""
    import h5py

    r = ArrayReader(path, "hdf5")
    try:
        f = h5py.File(path, "r")  # kept open for lazy reads; closed by ArrayReader.close
    # h5py raises OSError with HDF5's error stack text; one problem in our words.
    except Exception:  # noqa: BLE001
        r.problem(
            "unreadable",
            "not a readable HDF5 file (damaged, truncated or another format)",
            expected="an HDF5 file",
        )
        return r
    r._h5 = f
    try:
        _check_hdf5_inside(f)
        flat: dict[str, Any] = {}
        for k in f:
            obj = f[k]
            if isinstance(obj, h5py.Group) and _subject_from_key(k) is not None:
                img_key = next((x for x in IMAGE_KEYS if x in obj), None)
                if img_key is not None:
                    flat[k] = obj[img_key]
                ids_key = next((x for x in ID_KEYS if x in obj), None)
                if ids_key is not None:
                    flat[f"{k}_{ids_key}"] = obj[ids_key]
            elif isinstance(obj, h5py.Dataset):
                flat[k] = obj
        for key, ds in flat.items():
            if not isinstance(ds, h5py.Dataset) or ds.dtype.kind not in "uif":
                r.problem(
                    "dtype",
                    f"dataset {key!r} is not numeric",
                    expected="uint8 or float",
                    actual=str(ds.dtype) if isinstance(ds, h5py.Dataset) else "a group",
                )
                return r
        _add_mapping(r, flat, lambda k: flat[k])
    except Refused as exc:
        r.refuse(exc)
    # HDF5 error stacks are long and name C functions: one problem in our words.
    except Exception:  # noqa: BLE001
        r.problem("unreadable", "cannot read the HDF5 file's structure (damaged or truncated)")
    return r


INSIDE = "; nsdbench reads only what is inside the submission file"


def _check_hdf5_inside(f: Any) -> None:
    """Refuse an HDF5 file that points anywhere outside itself (checked on every link and dataset)."""
    import h5py

    # h5py's visitors stop at the first non-None return; an exception raised inside them is mangled.
    def link(name: str, lnk: Any) -> Refused | None:
        if isinstance(lnk, h5py.ExternalLink):
            return Refused(
                "path-escape",
                f"HDF5 object {name!r} is an external link to another file{INSIDE}",
                expected="datasets stored in the file",
                actual=f"external link to {lnk.filename!a}",
            )
        if not isinstance(lnk, (h5py.HardLink, h5py.SoftLink)):
            return Refused(
                "path-escape", f"HDF5 object {name!r} is a user-defined link{INSIDE}", "hard or soft links"
            )
        return None

    def dataset(name: str, obj: Any) -> Refused | None:
        if not isinstance(obj, h5py.Dataset):
            return None
        if obj.is_virtual:
            return Refused(
                "path-escape",
                f"HDF5 dataset {name!r} is a virtual dataset (its data lives in other files or datasets){INSIDE}",
                expected="datasets stored in the file",
                actual="a virtual dataset",
            )
        if obj.external:
            return Refused(
                "path-escape",
                f"HDF5 dataset {name!r} keeps its raw data in external files{INSIDE}",
                expected="datasets stored in the file",
                actual=f"external storage in {obj.external[0][0]!a}",
            )
        return None

    refusal = f.visititems_links(link)  # H5Lvisit: follows no soft or external link
    # every dataset, reached through hard links (with no external link left, soft links stay inside)
    refusal = refusal or f.visititems(dataset)
    if refusal is not None:
        raise refusal


def read_ids_file(path: Path) -> list[int]:
    """An id list: .npy (1-d ints), or text/CSV with one 0-based NSD id per line (a header is allowed)."""

    def refuse(why: str) -> UsageError:
        return UsageError(
            f"{path}: cannot read the id list ({why}); expected one 0-based NSD id per line or a 1-d "
            "integer .npy"
        )

    try:
        data = read_regular(path, MAX_MANIFEST_BYTES, "id list")
    except Refused as exc:
        raise refuse(exc.message + (f": {exc.actual}" if exc.actual else "")) from None
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        except Exception:  # noqa: BLE001 - numpy raises many types on damaged bytes
            raise refuse("not a valid .npy array without pickles") from None
        ids, bad = _id_list(arr)
        if bad:
            raise refuse(f"array of {bad}")
        return ids
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise refuse("not UTF-8 text") from None
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        tok = line.split(",")[0].strip()
        if not tok or (n == 1 and parse_id(tok) is None and not tok.startswith("-")):
            continue  # a header row
        val = parse_id(tok)
        if val is None:
            raise refuse(f"line {n}: {tok[:40]!a} is not a non-negative integer in ASCII digits")
        out.append(val)
    return out


def detect_format(path: Path) -> str:
    name = path.name.lower()
    if path.is_dir():  # a folder without subjXX/ folders is read as one, and refused with exit 3
        return "manifest" if _manifest_in(path) else "folder"
    for ext, fmt in (
        (".npy", "npy"),
        (".npz", "npz"),
        (".pt", "pt"),
        (".pth", "pt"),
        (".hdf5", "hdf5"),
        (".h5", "hdf5"),
        (".tar", "tar"),
        (".tar.gz", "tar"),
        (".tgz", "tar"),
        (".csv", "manifest"),
        (".parquet", "manifest"),
    ):
        if name.endswith(ext):
            return fmt
    raise UsageError(f"{path}: unknown submission format; use --format folder|manifest|npy|npz|pt|hdf5|tar")


FORMATS = ("folder", "manifest", "npy", "npz", "pt", "hdf5", "tar")


def _manifest_in(folder: Path) -> Path | None:
    """manifest.parquet or manifest.csv in a folder, whatever kind of file it is (checked when read)."""
    return next(
        (p for p in (folder / "manifest.parquet", folder / "manifest.csv") if os.path.lexists(p)), None
    )


def open_reader(path: Path, fmt: str) -> Reader:
    """The reader for `fmt`. A submission file must be a regular file within the size limit, checked
    before any library opens it (a FIFO would block the reader, a device would never end)."""
    if fmt == "folder":
        return read_convention_folder(path)
    if fmt == "manifest":
        if path.is_dir():
            path = _manifest_in(path) or path / "manifest.csv"
        return read_manifest(path)
    try:
        check_regular(path, max_array_bytes() + MAX_MANIFEST_BYTES, "submission file")
    except Refused as exc:
        r = Reader(path, fmt)
        r.problem(exc.code, exc.message, expected=exc.expected, actual=exc.actual)
        return r
    return {"npy": read_npy, "npz": read_npz, "pt": read_pt, "hdf5": read_hdf5, "tar": read_tar}[fmt](path)


def subject_from_filename(path: Path) -> int | None:
    m = SUBJECT_IN_NAME.search(path.name)
    return int(m.group(1)) if m else None


__all__ = ["FORMATS", "Entry", "ImageError", "Problem", "detect_format", "open_reader"]
