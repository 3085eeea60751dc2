"""Readers for every submission format. Each turns untrusted files into entries and raw images safely.

No reader unpickles (np.load(allow_pickle=False), torch.load(weights_only=True)), image decoding is
bounded (file size and pixel count are checked before decoding), and no manifest path, folder entry
or tar member may point outside the submission. Readers never raise on bad content: they record a
`Problem` and go on, so `nsdbench validate` can list every problem at once.
"""

from __future__ import annotations

import io
import math
import re
import tarfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from nsdbench import config

IMAGE_EXTS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
MAX_IMAGE_BYTES = 64 * 1024 * 1024
MIN_SIDE = 8
SUBJECT_DIR = re.compile(r"^subj0*(\d+)$", re.IGNORECASE)
CONVENTION_FILE = re.compile(r"^(\d+)(?:_(\d+))?\.(png|jpe?g)$", re.IGNORECASE)
SUBJECT_IN_NAME = re.compile(r"subj0*(\d+)", re.IGNORECASE)
IMAGE_KEYS = ("images", "recons", "reconstructions", "imgs", "arr_0")
ID_KEYS = ("nsd_ids", "ids", "nsd_id")


def max_image_pixels() -> int:
    """Decompression-bomb limit for one decoded image (NSDBENCH_MAX_IMAGE_PIXELS, default 4096²)."""
    return int(config.get("max_image_pixels") or 4096 * 4096)


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
        exp = f": expected {self.expected}, got {self.actual}" if self.expected or self.actual else ""
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


class ImageError(Exception):
    """A file or member that cannot become an image; carries the problem code."""

    def __init__(self, code: str, message: str, expected: str = "", actual: str = "") -> None:
        super().__init__(message)
        self.code, self.message, self.expected, self.actual = code, message, expected, actual


# -- image decoding ---------------------------------------------------------------------------------
def decode_image(data: bytes, name: str) -> tuple[np.ndarray, str]:
    """PNG/JPEG bytes → uint8 (H, W, 3) and the detected format. Raises ImageError, never anything else."""
    from PIL import Image

    if len(data) > MAX_IMAGE_BYTES:
        raise ImageError(
            "size", "file is too large for an image", f"<= {MAX_IMAGE_BYTES} bytes", f"{len(data)}"
        )
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
    # Hostile bytes can make any decoder raise almost anything; each becomes one "unreadable" problem.
    except Exception as exc:  # noqa: BLE001
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        code = "truncated" if "truncated" in msg.lower() else "unreadable"
        raise ImageError(code, f"cannot decode image ({msg})") from None
    return arr, fmt


def read_image_file(path: Path) -> tuple[np.ndarray, str]:
    try:
        size = path.stat().st_size
        if size > MAX_IMAGE_BYTES:
            raise ImageError(
                "size", "file is too large for an image", f"<= {MAX_IMAGE_BYTES} bytes", f"{size}"
            )
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError("unreadable", f"cannot read file ({exc.strerror or exc})") from None
    return decode_image(data, str(path))


def contained(root: Path, rel: str) -> Path | None:
    """root/rel resolved (symlinks followed) if it stays inside root, else None."""
    if not rel or "\x00" in rel:
        return None
    p = PurePosixPath(rel.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or re.match(r"^[A-Za-z]:", rel):
        return None
    target = (root / Path(*p.parts)).resolve()
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


def read_convention_folder(root: Path) -> ImageFolderReader:
    """subjXX/<nsd_id>_<sample>.png|jpg (or <nsd_id>.png for sample 0)."""
    r = ImageFolderReader(root, "folder")
    for sub in sorted(root.iterdir()):
        m = SUBJECT_DIR.match(sub.name)
        if not m:
            if not sub.name.startswith("."):
                r.problem("extra-file", "ignored: not a subjXX folder", severity="warning", source=str(sub))
            continue
        if sub.is_symlink() or not sub.is_dir():
            r.problem("path-escape", "subject folder is a symlink or not a folder", source=str(sub))
            continue
        subject = int(m.group(1))
        for f in sorted(sub.iterdir()):
            fm = CONVENTION_FILE.match(f.name)
            if not fm:
                if not f.name.startswith("."):
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
    try:
        if manifest.suffix.lower() == ".parquet":
            df = pd.read_parquet(manifest).astype(str)
        else:
            df = pd.read_csv(manifest, dtype=str, keep_default_na=False, skipinitialspace=True)
    # pandas/pyarrow raise many exception types on malformed files; each is one problem.
    except Exception as exc:  # noqa: BLE001
        r.problem(
            "manifest",
            f"cannot read manifest ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
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
    for i, row in enumerate(df.itertuples(index=False), start=2):
        src = f"{manifest}:{i}"
        try:
            subject, nsd_id, sample = (
                int(str(getattr(row, c)).strip()) for c in ("subject", "nsd_id", "sample")
            )
            if min(subject, nsd_id, sample) < 0:
                raise ValueError
        except (TypeError, ValueError):
            r.problem(
                "manifest",
                "row has a non-integer or negative subject/nsd_id/sample",
                source=src,
                expected="non-negative integers",
                actual=f"{row.subject!r}, {row.nsd_id!r}, {row.sample!r}",
            )
            continue
        rel = str(row.path).strip()
        target = contained(root, rel)
        if target is None:
            r.problem(
                "path-escape",
                "manifest path is absolute or leaves the submission folder",
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
            data = fh.read() if fh is not None else b""
        except (OSError, tarfile.TarError, EOFError) as exc:
            raise ImageError("truncated", f"cannot read tar member ({exc})") from None
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
                        metas[key] = json.loads(fh.read()) if fh else {}
                    except (ValueError, UnicodeDecodeError):
                        r.problem(
                            "manifest", "tar member is not valid JSON", actual=repr(members["json"].name)
                        )
                        metas[key] = {}
    except (OSError, tarfile.TarError, EOFError) as exc:
        r.problem("unreadable", f"cannot read tar archive ({exc})")
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
    try:
        vals = (int(meta["subject"]), int(meta["nsd_id"]), int(meta.get("sample", 0)))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return vals if min(vals) >= 0 else None


def _key_from_name(key: str) -> tuple[int, int, int] | None:
    m = re.match(r"^subj0*(\d+)[/_](\d+)(?:_(\d+))?$", key, re.IGNORECASE)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


class ArrayReader(Reader):
    """npy / npz / pt / hdf5 containers; the arrays are kept lazily (memmap, h5py, mmap'd tensors)."""

    def __init__(self, path: Path, fmt: str) -> None:
        super().__init__(path, fmt)
        self.arrays: dict[str, Any] = {}
        self._h5 = None
        self._npz = None

    def block_array(self, block: ArrayBlock) -> Any:
        return self.arrays[block.key]

    def read(self, entry: Entry) -> tuple[np.ndarray, str]:
        key, index, sample, layout = entry.ref
        try:
            img = take_image(self.arrays[key], layout, index, sample)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ImageError("unreadable", f"cannot read array element ({exc})") from None
        return img, "array"

    def close(self) -> None:
        for handle in (self._h5, self._npz):
            if handle is not None:
                handle.close()
        self._h5 = self._npz = None
        self.arrays.clear()

    def add_block(self, key: str, arr: Any, ids: Any = None, subject: int | None = None) -> None:
        shape = tuple(int(s) for s in arr.shape)
        dtype = str(getattr(arr, "dtype", "?")).replace("torch.", "")
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
        id_list = None
        if ids is not None:
            id_list, bad = _id_list(ids)
            if bad:
                self.problem(
                    "ids",
                    f"id list for {key!r} is not a 1-d list of non-negative integers",
                    actual=bad,
                    subject=subject,
                )
                return
            if len(id_list) != n:
                self.problem(
                    "count",
                    f"id list length differs from the number of images in {key!r}",
                    expected=str(n),
                    actual=str(len(id_list)),
                    subject=subject,
                )
                return
        self.arrays[key] = arr
        self.blocks.append(ArrayBlock(key, shape, dtype, subject, id_list, layout, n, samples))


def _id_list(ids: Any) -> tuple[list[int], str]:
    if hasattr(ids, "detach"):
        ids = ids.detach().cpu().numpy()
    arr = np.asarray(ids)
    if arr.ndim != 1 or arr.dtype.kind not in "iu" or (arr.size and arr.min() < 0):
        return [], f"shape {arr.shape} dtype {arr.dtype}"
    return [int(i) for i in arr], ""


def _subject_from_key(key: str) -> int | None:
    m = re.fullmatch(r"subj0*(\d+)", key, re.IGNORECASE)
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
            actual="keys " + ", ".join(map(str, keys[:20])),
        )
        return
    ids_key = next((k for k in ID_KEYS if k in mapping), None)
    r.add_block(img_key, get(img_key), get(ids_key) if ids_key else None)


def read_npy(path: Path) -> ArrayReader:
    r = ArrayReader(path, "npy")
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            _, _, dtype = read_header(fh)
        if dtype.hasobject:
            r.problem(
                "unreadable",
                "the .npy array holds Python objects (a pickle); nsdbench never unpickles",
                expected="a numeric array",
                actual=f"dtype {dtype}",
            )
            return r
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        if not isinstance(arr, np.ndarray):
            raise TypeError("not a single .npy array")
    # np.load on hostile bytes raises ValueError, OSError, EOFError, SyntaxError, ...; one problem each.
    except Exception as exc:  # noqa: BLE001
        r.problem("unreadable", f"cannot read .npy array ({_first_line(exc)})")
        return r
    r.add_block("array", arr)
    return r


def read_npz(path: Path) -> ArrayReader:
    import zipfile

    r = ArrayReader(path, "npz")
    try:
        with zipfile.ZipFile(path) as zf:
            declared = sum(i.file_size for i in zf.infolist())
        if declared > max_array_bytes():
            r.problem(
                "size",
                "npz declares more uncompressed bytes than the limit",
                expected=f"<= {max_array_bytes()}",
                actual=str(declared),
            )
            return r
        z = np.load(path, allow_pickle=False)
        if not hasattr(z, "files"):
            raise TypeError("not an .npz archive")
        r._npz = z
        loaded: dict[str, np.ndarray] = {}

        def get(key: str) -> np.ndarray:
            if key not in loaded:
                loaded[key] = z[key]
            return loaded[key]

        _add_mapping(r, {k: None for k in z.files}, get)
    except Exception as exc:  # noqa: BLE001 - see read_npy
        r.problem("unreadable", f"cannot read .npz archive ({_first_line(exc)})")
    return r


def read_pt(path: Path) -> ArrayReader:
    import torch

    r = ArrayReader(path, "pt")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) serialization cannot be memory-mapped
            obj = torch.load(path, map_location="cpu", weights_only=True)
    # weights_only refuses any pickled object that is not plain data; that and corrupt bytes → one problem.
    except Exception as exc:  # noqa: BLE001
        r.problem("unreadable", f"cannot read .pt file with weights_only=True ({_first_line(exc)})")
        return r
    if isinstance(obj, torch.Tensor):
        r.add_block("tensor", obj)
    elif isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
        tensors = {k: v for k, v in obj.items() if isinstance(v, (torch.Tensor, list, tuple))}
        _add_mapping(
            r,
            tensors,
            lambda k: tensors[k] if isinstance(tensors[k], torch.Tensor) else np.asarray(tensors[k]),
        )
    else:
        r.problem(
            "format",
            "unsupported .pt content",
            expected="a tensor or a dict of tensors",
            actual=type(obj).__name__,
        )
    return r


def read_hdf5(path: Path) -> ArrayReader:
    import h5py

    r = ArrayReader(path, "hdf5")
    try:
        f = h5py.File(path, "r")  # kept open for lazy reads; closed by ArrayReader.close
    except Exception as exc:  # noqa: BLE001 - see read_npy
        r.problem("unreadable", f"cannot open HDF5 file ({_first_line(exc)})")
        return r
    r._h5 = f
    try:
        flat: dict[str, Any] = {}
        for k in f:
            obj = f[k]
            if isinstance(obj, h5py.Group) and _subject_from_key(k) is not None:
                img_key = next((x for x in IMAGE_KEYS if x in obj), None)
                if img_key is not None:
                    flat[k] = obj[img_key]
                ids_key = next((x for x in ID_KEYS if x in obj), None)
                if ids_key is not None:
                    flat[f"{k}_{ids_key}"] = obj[ids_key][()]
            elif isinstance(obj, h5py.Dataset):
                flat[k] = (
                    obj if k not in ID_KEYS and not k.endswith(tuple(f"_{i}" for i in ID_KEYS)) else obj[()]
                )
        for key, ds in flat.items():
            if isinstance(ds, h5py.Dataset) and ds.dtype.kind not in "uif":
                r.problem(
                    "dtype",
                    f"dataset {key!r} is not numeric",
                    expected="uint8 or float",
                    actual=str(ds.dtype),
                )
                return r
        _add_mapping(r, flat, lambda k: flat[k])
    except Exception as exc:  # noqa: BLE001 - see read_npy
        r.problem("unreadable", f"cannot read HDF5 file ({_first_line(exc)})")
    return r


def read_ids_file(path: Path) -> list[int]:
    """An id list: .npy (1-d ints), or text/CSV with one 0-based NSD id per line (a header is allowed)."""
    from nsdbench.errors import UsageError

    try:
        if path.suffix.lower() == ".npy":
            ids, bad = _id_list(np.load(path, allow_pickle=False))
            if bad:
                raise ValueError(bad)
            return ids
        out = []
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            tok = line.split(",")[0].strip()
            if not tok or (n == 1 and not tok.lstrip("-").isdigit()):
                continue
            val = int(tok)
            if val < 0:
                raise ValueError(f"line {n}: negative id {val}")
            out.append(val)
        return out
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"{path}: cannot read the id list ({_first_line(exc)}); expected one 0-based NSD id "
            f"per line or a 1-d integer .npy"
        ) from None


def _first_line(exc: BaseException) -> str:
    s = str(exc)
    return s.splitlines()[0][:200] if s else type(exc).__name__


def detect_format(path: Path) -> str:
    from nsdbench.errors import UsageError

    name = path.name.lower()
    if path.is_dir():
        if (path / "manifest.csv").is_file() or (path / "manifest.parquet").is_file():
            return "manifest"
        if any(SUBJECT_DIR.match(p.name) for p in path.iterdir()):
            return "folder"
        raise UsageError(
            f"{path}: cannot tell the submission format; expected manifest.csv / manifest.parquet "
            f"or subjXX/ folders inside"
        )
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


def open_reader(path: Path, fmt: str) -> Reader:
    if fmt == "folder":
        return read_convention_folder(path)
    if fmt == "manifest":
        if path.is_dir():
            path = next(p for p in (path / "manifest.parquet", path / "manifest.csv") if p.is_file())
        return read_manifest(path)
    return {"npy": read_npy, "npz": read_npz, "pt": read_pt, "hdf5": read_hdf5, "tar": read_tar}[fmt](path)


def subject_from_filename(path: Path) -> int | None:
    m = SUBJECT_IN_NAME.search(path.name)
    return int(m.group(1)) if m else None


__all__ = ["FORMATS", "Entry", "ImageError", "Problem", "detect_format", "open_reader"]
