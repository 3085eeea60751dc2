"""Wall-clock timing of one call on a torch device, for the benchmark scripts: CUDA work is synchronized
before and after, and the peak GPU memory of the call is reported (0 on the CPU)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work (a no-op elsewhere)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float, int]:
    """(result, seconds, peak GPU bytes) of one call of `fn`."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return out, time.perf_counter() - start, peak
