"""Safe access to untrusted submission files: regular files only, bounded reads, ASCII ids, intact PNGs.

Every refusal is a `Refused` carrying a problem code and a message in nsdbench's own words (never a
library's text, which can hold memory addresses or unsafe advice).
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat
import struct
from pathlib import Path
from typing import Any

ASCII_ID = re.compile(r"[0-9]{1,18}\Z")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_COLOUR_TYPES = {0: "grayscale", 2: "RGB", 3: "palette", 4: "grayscale with alpha", 6: "RGB with alpha"}


class Refused(Exception):
    """An untrusted file or value that nsdbench will not use; carries the problem code."""

    def __init__(
        self, code: str, message: str, expected: str = "", actual: str = "", whole_file: bool = False
    ) -> None:
        super().__init__(message)
        self.code, self.message, self.expected, self.actual = code, message, expected, actual
        self.whole_file = whole_file  # the same for every image read from the file: reported once


def file_kind(mode: int) -> str:
    """What a stat mode describes, in words ('a FIFO', 'a character device', ...)."""
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "a special file"


def os_reason(exc: OSError) -> str:
    """An OSError in plain words: the operating system's standard text for its errno, nothing else."""
    if exc.errno == errno.ELOOP:
        return "it is a symlink loop"
    if exc.errno == errno.ENOENT:
        return "it does not exist (or is a dangling symlink)"
    return os.strerror(exc.errno) if exc.errno else "the operating system refused to open it"


def _check_stat(st: os.stat_result, limit: int, what: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise Refused("not-a-file", f"{what} is not a regular file", "a regular file", file_kind(st.st_mode))
    if st.st_size > limit:
        raise Refused("size", f"{what} is too large", f"<= {limit} bytes", f"{st.st_size} bytes")


def check_regular(path: Path, limit: int, what: str = "file") -> int:
    """Size of `path` (symlinks followed) if it is a regular file of at most `limit` bytes; else Refused.

    Checked before a library opens the path, so a FIFO or a device never blocks or floods a reader."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise Refused("unreadable", f"cannot open {what}: {os_reason(exc)}") from None
    _check_stat(st, limit, what)
    return st.st_size


def read_regular(path: Path, limit: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most `limit` bytes. Opened non-blocking and checked with fstat
    on the open descriptor, so swapping the path for a FIFO after a check cannot make it hang."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise Refused("unreadable", f"cannot open {what}: {os_reason(exc)}") from None
    try:
        _check_stat(os.fstat(fd), limit, what)
        chunks, total = [], 0
        while total <= limit:
            block = os.read(fd, min(1 << 20, limit + 1 - total))
            if not block:
                break
            chunks.append(block)
            total += len(block)
    except OSError as exc:
        raise Refused("unreadable", f"cannot read {what}: {os_reason(exc)}") from None
    finally:
        os.close(fd)
    if total > limit:
        raise Refused("size", f"{what} is too large", f"<= {limit} bytes", f"more than {limit} bytes")
    return b"".join(chunks)


def parse_id(value: Any) -> int | None:
    """A non-negative integer from an int or a string of ASCII digits; None for anything else
    (floats, booleans, Unicode digits, signs, underscores, infinities)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if hasattr(value, "dtype") and getattr(value, "ndim", 1) == 0 and value.dtype.kind in "iu":
        return parse_id(int(value))
    if isinstance(value, str):
        s = value.strip(" \t")
        return int(s) if ASCII_ID.match(s) else None
    return None


def check_png(data: bytes) -> None:
    """Refuse a PNG that is not 8 bits per channel RGB (or palette), or whose chunks are damaged.

    The chunk CRCs and the IEND chunk are checked with PIL's verify(), as the run-folder reader does:
    decoding alone tolerates flipped bytes that change pixels."""
    from PIL import Image

    if len(data) < 33 or data[12:16] != b"IHDR":
        raise Refused(
            "truncated", "PNG file ends before its IHDR header", "a complete PNG", f"{len(data)} bytes"
        )
    _w, _h, depth, colour = struct.unpack(">IIBB", data[16:26])
    if colour in (0, 4, 6) or colour not in PNG_COLOUR_TYPES:
        raise Refused(
            "channels",
            "PNG is not RGB",
            "RGB, 8 bits per channel",
            PNG_COLOUR_TYPES.get(colour, f"colour type {colour}"),
        )
    if depth != 8 and colour == 2:
        raise Refused(
            "bit-depth",
            "PNG has more or fewer than 8 bits per channel (nsdbench does not convert bit depths)",
            "8 bits per channel",
            f"{depth} bits per channel",
        )
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
    # PIL raises SyntaxError, OSError, struct.error, ... on damaged chunks; each means the same here.
    except Exception:  # noqa: BLE001
        if b"IEND" not in data[-32:]:
            raise Refused("truncated", "PNG is truncated (it does not end with an IEND chunk)") from None
        raise Refused(
            "corrupt", "PNG is corrupt: a chunk checksum (CRC) does not match its data", "intact chunks"
        ) from None
