"""Wall-clock timing, one module for the package: per-stage seconds of one scoring command (`--timings PATH`),
so that a user and the benchmarks see where the time goes (start-up, ground truth, decoding, resizing, each
network pass, statistics, store), and one synchronized call on a torch device for the GPU scripts."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

Timings = dict[str, float]  # stage -> seconds, summed over every occurrence of the stage
_LOCK = threading.Lock()  # prefetch threads add their stages while the main thread adds its own


def process_age() -> tuple[float, str]:
    """(seconds since this process started, note); from /proc on Linux, else (0.0, why)."""
    try:
        with open("/proc/self/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 (starttime) counted after "pid (comm)"
        with open("/proc/uptime", "rb") as fh:
            uptime = float(fh.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK")), ""
    except (OSError, ValueError, IndexError):
        return 0.0, "startup not measured: /proc/self/stat is not readable on this system"


def add(timings: Timings | None, stage: str, seconds: float) -> None:
    """Add `seconds` to `stage` (nothing when timings is None)."""
    if timings is not None:
        with _LOCK:
            timings[stage] = timings.get(stage, 0.0) + seconds


def forward_seconds(timings: Timings) -> float:
    """Seconds in network forward passes: the sum of every "forward:<network>" stage."""
    return sum(v for k, v in timings.items() if k.startswith("forward:"))


@contextlib.contextmanager
def stage(timings: Timings | None, name: str) -> Iterator[None]:
    """Time the body as `name`; a no-op when timings is None."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        add(timings, name, time.perf_counter() - t0)


class CommandClock:
    """The clock of one command: start-up measured on creation, stages added as they run, one JSON
    document written at the end."""

    def __init__(self) -> None:
        self.startup, self.note = process_age()
        self._t0 = time.perf_counter()
        self.stages: Timings = {"startup": self.startup} if not self.note else {}

    def document(self, images: int, protocols: Sequence[str]) -> dict:
        doc = {
            "wall_s": self.startup + time.perf_counter() - self._t0,
            "stages": dict(self.stages),
            "images": int(images),
            "protocols": list(protocols),
        }
        if self.note:
            doc["note"] = self.note
        return doc

    def write(self, path: Path, images: int, protocols: Sequence[str]) -> Path:
        from nsdbench.files import atomic_write_text

        path = Path(path).expanduser()
        atomic_write_text(path, json.dumps(self.document(images, protocols), indent=1) + "\n")
        return path


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work (a no-op elsewhere)."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float, int]:
    """(result, seconds, peak GPU bytes) of one call of `fn`; CUDA work is synchronized before and after
    (peak 0 on the CPU)."""
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return out, time.perf_counter() - start, peak
