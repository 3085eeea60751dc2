"""File helpers shared by every area: atomic writes (temp file + rename) and content hashes."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask is a set-and-return)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def umask_mode(folder: bool = False) -> int:
    """The mode open()/mkdir() would give a new file (0666) or folder (0777) under the current umask."""
    return (0o777 if folder else 0o666) & ~current_umask()


def follow_umask(path: Path | str) -> Path:
    """Give a file or folder made private by mkstemp/mkdtemp (0600/0700) the mode the umask asks for,
    so lab-mates on a shared file system can read what nsdbench writes."""
    path = Path(path)
    os.chmod(path, umask_mode(folder=path.is_dir()))
    return path


@contextmanager
def atomic_path(path: Path | str, temp: Path | None = None) -> Iterator[Path]:
    """Yield a temp file beside `path` to write by name (memmaps, downloads; not np.save, which appends
    .npy to a name); on success it replaces `path` whole, on failure it is removed. `temp` names the
    temp file when the caller needs to own it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if temp is None:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        os.close(fd)
        temp = Path(name)
    try:
        yield temp
        follow_umask(temp)
        with open(temp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path | str, data: bytes, temp: Path | None = None) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one, never a part."""
    with atomic_path(path, temp) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


@contextmanager
def atomic_folder(path: Path | str, replace: bool = False) -> Iterator[Path]:
    """Yield a temp folder beside `path` to fill; on success it is renamed to `path`. When `path` already
    exists (a concurrent writer finished first) theirs is kept, unless `replace` swaps the new one in."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = follow_umask(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        try:
            os.replace(tmp, path)  # succeeds when `path` is absent or an empty folder
        except OSError:
            if not replace or not path.exists():
                return
            trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, trash / "old")
            try:
                os.replace(tmp, path)
            except OSError:
                os.replace(trash / "old", path)
                raise
            shutil.rmtree(trash, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: Path, text: str, encoding: str = "utf-8") -> None:
    atomic_write_bytes(path, text.encode(encoding))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file, read in chunks (weights files are GBs)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
