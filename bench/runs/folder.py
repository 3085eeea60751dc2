"""Files of a run folder: paths, PNG and extra encoding, the event log, owned temp files, score locks."""

from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import re
import secrets
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from nsdbench.errors import NSDBenchError, UsageError
from nsdbench.files import atomic_write_bytes, sha256_file

LOG_FILE = "run.log"
PROTOCOL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
EXTRA_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*\.(npy|png|json)$")
# temp files of this module: .<target name>.<host>.<pid>.<random>.part
OWNED_PART = re.compile(r"^\.(?P<target>.+)\.(?P<host>[^.]+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.part$")
LEGACY_PART = re.compile(r"^\..+\.part$|^\..+\.\d+\.[0-9a-f]{8}\.tmp$")


# ---------------------------------------------------------------------------------------------- paths


def subject_dir(run_dir: Path, subject: int) -> Path:
    return Path(run_dir) / f"subj{subject:02d}"


def png_path(run_dir: Path, subject: int, nsd_id: int, sample: int) -> Path:
    return subject_dir(run_dir, subject) / f"{nsd_id}_{sample}.png"


def extra_path(run_dir: Path, subject: int, nsd_id: int, sample: int, name: str) -> Path:
    return subject_dir(run_dir, subject) / f"{nsd_id}_{sample}.{name}"


def check_protocol_name(name: str) -> str:
    if not PROTOCOL_NAME.match(name):
        raise UsageError(f"protocol name {name!r} cannot name a folder (letters, digits, '.', '_', '-')")
    return name


def score_dir(run_dir: Path, protocol: str) -> Path:
    return Path(run_dir) / "scores" / check_protocol_name(protocol)


def score_path(run_dir: Path, subject: int, protocol: str) -> Path:
    return score_dir(run_dir, protocol) / f"subj{subject:02d}.parquet"


def score_record_path(run_dir: Path, subject: int, protocol: str) -> Path:
    return score_dir(run_dir, protocol) / f"subj{subject:02d}.json"


def checkpoint_dir(run_dir: Path, subject: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"subj{subject:02d}"


def scored_protocols(run_dir: Path) -> list[str]:
    """Protocols the run folder has a scores/<protocol>/ folder for (requested by a run or rescore)."""
    root = Path(run_dir) / "scores"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and PROTOCOL_NAME.match(p.name))


# ---------------------------------------------------------------------------------------------- files


def write_owned(path: Path, data: bytes) -> None:
    """Atomic write whose temp file names this host and process, so a later run can tell a dead
    writer's leftover (removed by `clean_leftovers`) from a live worker's file in progress."""
    atomic_write_bytes(path, data, temp=owned_temp(path))


def owned_temp(path: Path) -> Path:
    """A temp-file name next to `path` that names this host and process (see clean_leftovers)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{host_label()}.{os.getpid()}.{secrets.token_hex(4)}.part")


def host_label() -> str:
    """This host's name as it appears in owned temp-file names (see clean_leftovers)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True


def clean_leftovers(run_dir: Path, stale_after_s: float = 24 * 3600.0) -> int:
    """Remove temp files of writers that died: this host's whose process is gone, and any (other hosts',
    older formats') untouched for `stale_after_s`. Returns how many were removed."""
    import time

    removed = 0
    now = time.time()
    for path in Path(run_dir).rglob(".*"):
        if not path.is_file():
            continue
        m = OWNED_PART.match(path.name)
        try:
            if m and m["host"] == host_label():
                dead = int(m["pid"]) != os.getpid() and not _pid_alive(int(m["pid"]))
            elif m or LEGACY_PART.match(path.name):
                dead = now - path.stat().st_mtime > stale_after_s
            else:
                continue
            if dead:
                path.unlink()
                removed += 1
        except OSError:
            continue
    return removed


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 HxWx3 image (no metadata: equal pixels give equal bytes)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image, mode=None).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def read_png(path: Path, size: int | None = None) -> np.ndarray | None:
    """The image in a PNG file, or None when it is missing, truncated, undecodable or the wrong shape."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.format != "PNG" or im.mode != "RGB":
                return None
            im.verify()  # chunk CRCs and the IEND chunk: catches truncation that decoding tolerates
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except (OSError, ValueError, SyntaxError, EOFError):
        return None
    if size is not None and arr.shape != (size, size, 3):
        return None
    return arr


def encode_extra(method: str, nsd_id: int, sample: int, name: str, value: object) -> bytes:
    """The bytes of a named extra, by the format its name ends in, or a one-line error naming the item."""
    where = f"method {method}: extra {name!r} of NSD id {nsd_id} sample {sample}"
    if not EXTRA_NAME.match(name):
        raise NSDBenchError(f"{where}: expected a name like 'latent.npy', 'stage1.png' or 'trace.json'")
    kind = name.rsplit(".", 1)[1]
    if kind == "json":
        try:
            return json.dumps(value, sort_keys=True, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise NSDBenchError(f"{where}: not JSON-serializable ({exc})") from None
    arr = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
    if kind == "png":
        return encode_png(as_reconstruction_array(arr, method, nsd_id, sample, what=f"extra {name!r}"))
    if arr.dtype == object:
        raise NSDBenchError(f"{where}: object arrays are not stored (numeric arrays only)")
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def as_reconstruction_array(
    image: npt.ArrayLike, method: str, nsd_id: int, sample: int, what: str = "image"
) -> np.ndarray:
    """A method's output as a contiguous uint8 (H, W, 3) array, or a one-line error naming the image.

    Images are stored at the size the method produces (e.g. 512 px for diffusion methods): each protocol
    resizes reconstructions its own way, so resizing here would change the scores.
    """
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 8:
        raise NSDBenchError(
            f"method {method}: {what} for NSD id {nsd_id} sample {sample} is {arr.dtype} {arr.shape}, "
            f"expected uint8 (H, W, 3) with H, W >= 8"
        )
    return np.ascontiguousarray(arr)


def file_digest(path: Path) -> str | None:
    """sha256 of a file, or None when it is missing or unreadable."""
    try:
        return sha256_file(path)
    except OSError:
        return None


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def log_event(run_dir: Path, message: str) -> None:
    """Append one line to run.log (one write call, so concurrent workers do not interleave lines)."""
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    line = f"{stamp} {socket.gethostname()}:{os.getpid()} {message}\n".encode()
    fd = os.open(Path(run_dir) / LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------- locks


class FileLock:
    """A non-blocking OS lock (fcntl.lockf) on a lock file: it dies with its process, so a killed
    worker never leaves a lock behind. The file records the owner (host:pid) for people reading it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.fd: int | None = None

    def acquire(self) -> bool:
        """True when this process now holds the lock; False when a live process does."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
            try:  # the holder before us may have removed the file after we opened it: lock the new one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{socket.gethostname()}:{os.getpid()}\n".encode())
                self.fd = fd
                return True
            os.close(fd)

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # while still locked: nobody can hold the removed inode
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
