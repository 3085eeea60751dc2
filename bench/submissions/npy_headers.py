"""Arrays in .npy files and .npz members, known from their headers before any data is read or inflated.

A stored (uncompressed) member or an .npy file is memory-mapped; a compressed member is inflated only
when an image is first taken from it, and never past the bytes its header declares, so a small file
cannot demand more memory than the array the split needs.
"""

from __future__ import annotations

import math
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nsdbench.submissions.untrusted import Refused

MAX_HEADER_BYTES = 1 << 16


@dataclass(frozen=True)
class NpyHeader:
    """Shape, dtype and memory order of an .npy array, and where its data starts."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool
    data_offset: int  # from the start of the .npy bytes

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def parse_header(fh: Any, what: str) -> NpyHeader:
    """The header of the .npy stream `fh` (positioned at its start); Refused when it is not one."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, fortran, dtype = reader(fh, max_header_size=MAX_HEADER_BYTES)
        offset = fh.tell()
    # numpy raises ValueError/SyntaxError/EOFError/... on a damaged header: all mean "not an .npy header".
    except Exception:  # noqa: BLE001
        raise Refused(
            "unreadable", f"{what} does not start with a valid .npy header", "an array saved by numpy.save"
        ) from None
    if dtype.hasobject:
        raise Refused(
            "unreadable",
            f"{what} holds Python objects (a pickle); nsdbench never unpickles",
            "a numeric array",
            f"dtype {dtype}",
        )
    if dtype.names is not None or dtype.subdtype is not None:
        raise Refused("dtype", f"{what} has a structured dtype", "uint8 or float", str(dtype))
    return NpyHeader(tuple(int(s) for s in shape), dtype, bool(fortran), offset)


def read_npy_header(path: Path) -> NpyHeader:
    """Header of an .npy file, checked against the file's size (a short file is truncated)."""
    with open(path, "rb") as fh:
        head = parse_header(fh, "the .npy file")
        fh.seek(0, 2)
        size = fh.tell()
    if size < head.data_offset + head.nbytes:
        raise Refused(
            "truncated",
            "the .npy file is shorter than its header declares",
            f"{head.data_offset + head.nbytes} bytes",
            f"{size} bytes",
        )
    return head


def map_npy(path: Path, head: NpyHeader) -> np.ndarray:
    """The array of an .npy file, memory-mapped read-only (nothing is read until an image is taken)."""
    if head.nbytes == 0:
        return np.empty(head.shape, head.dtype)
    order = "F" if head.fortran else "C"
    return np.memmap(path, head.dtype, "r", head.data_offset, head.shape, order)


class NpzMember:
    """One array of an .npz archive: shape and dtype from its header; data mapped or inflated on first use."""

    def __init__(self, path: Path, info: zipfile.ZipInfo, head: NpyHeader) -> None:
        self.path, self.info, self.head = path, info, head
        self.shape, self.dtype = head.shape, head.dtype
        self._data: np.ndarray | None = None
        self._refused: Refused | None = None

    def _array(self) -> np.ndarray:
        if self._refused is not None:
            raise self._refused
        if self._data is None:
            try:
                self._data = self._load()
            except Refused as exc:
                self._refused = exc
                raise
        return self._data

    def _crc_refused(self) -> Refused:
        return Refused(
            "corrupt",
            f"npz member {self.info.filename!r} fails its zip CRC check (damaged bytes)",
            "intact member data",
            whole_file=True,
        )

    def _load(self) -> np.ndarray:
        head, info = self.head, self.info
        order = "F" if head.fortran else "C"
        if info.compress_type == zipfile.ZIP_STORED:
            with open(self.path, "rb") as fh:
                fh.seek(info.header_offset)
                local = fh.read(30)
                name_len, extra_len = struct.unpack("<HH", local[26:30])
                start = info.header_offset + 30 + name_len + extra_len
                fh.seek(start)
                crc, left = 0, info.file_size
                while left > 0 and (block := fh.read(min(left, 1 << 22))):
                    crc, left = zlib.crc32(block, crc), left - len(block)
            if left or crc != info.CRC:
                raise self._crc_refused()
            if head.nbytes == 0:
                return np.empty(head.shape, head.dtype)
            return np.memmap(self.path, head.dtype, "r", start + head.data_offset, head.shape, order)
        try:
            with zipfile.ZipFile(self.path) as zf, zf.open(info) as fh:
                fh.read(head.data_offset)
                data = fh.read(head.nbytes)  # bounded by the header: never inflates past the array
                fh.read(1)  # reaching the end makes zipfile check the member's CRC
        except zipfile.BadZipFile:
            raise self._crc_refused() from None
        # zlib.error, EOFError, OSError: a damaged deflate stream
        except Exception:  # noqa: BLE001
            raise Refused(
                "unreadable",
                f"npz member {info.filename!r} cannot be inflated (damaged data)",
                whole_file=True,
            ) from None
        if len(data) != head.nbytes:
            raise Refused(
                "truncated",
                f"npz member {info.filename!r} is shorter than its header declares",
                whole_file=True,
            )
        return np.frombuffer(data, head.dtype).reshape(head.shape, order=order)

    def __getitem__(self, index: Any) -> np.ndarray:
        return self._array()[index]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = np.asarray(self._array())
        return arr if dtype is None else arr.astype(dtype)

    def __len__(self) -> int:
        return self.shape[0] if self.shape else 0


def npz_members(path: Path, max_inflate: int) -> dict[str, NpzMember]:
    """Every array of an .npz archive, from headers only; Refused for a member that is not a plain array,
    whose zip entry size disagrees with its header (a mismatch hides what would be inflated), or that is
    compressed and would inflate past `max_inflate` bytes (stored members are memory-mapped instead)."""
    out: dict[str, NpzMember] = {}
    try:
        zf = zipfile.ZipFile(path)
    # zipfile raises BadZipFile, OSError, ValueError, struct.error, ... on damaged archives.
    except Exception:  # noqa: BLE001
        raise Refused(
            "unreadable", "the .npz file is not a valid zip archive", "an archive saved by numpy.savez"
        ) from None
    with zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            if not info.filename.endswith(".npy"):
                raise Refused(
                    "format",
                    "the .npz archive holds a member that is not an .npy array",
                    "*.npy members",
                    repr(info.filename),
                )
            what = f"npz member {info.filename!r}"
            if info.flag_bits & 0x1:
                raise Refused("unreadable", f"{what} is encrypted", "a plain member")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise Refused("unreadable", f"{what} uses an unsupported compression", "stored or deflated")
            try:
                with zf.open(info) as fh:
                    head = parse_header(fh, what)
            except Refused:
                raise
            except Exception:  # noqa: BLE001 - a damaged local header or deflate stream
                raise Refused("unreadable", f"{what} cannot be read (damaged zip entry)") from None
            declared = head.data_offset + head.nbytes
            if info.file_size != declared:
                raise Refused(
                    "size",
                    f"{what}: the zip entry's size disagrees with the array its header declares",
                    f"{declared} bytes",
                    f"{info.file_size} bytes",
                )
            if info.compress_type != zipfile.ZIP_STORED and head.nbytes > max_inflate:
                raise Refused(
                    "size",
                    f"{what} is compressed and would inflate past the limit (NSDBENCH_MAX_INFLATE_BYTES); "
                    "numpy.savez (uncompressed) is read without inflating",
                    f"<= {max_inflate} bytes",
                    f"{head.nbytes} bytes",
                )
            out[info.filename[: -len(".npy")]] = NpzMember(path, info, head)
    return out
