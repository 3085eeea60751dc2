"""Shared generative model components (diffusers, transformers, open_clip, VDVAE), loaded once per process
in one of three weight modes: pretrained, random (published configuration) or tiny (reduced, CPU-fast)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_LOADED: dict[tuple, Any] = {}


def load_once(key: tuple, build: Callable[[], Any]) -> Any:
    """Build a component the first time `key` (family, mode, device, dtype, ...) is asked for; reuse it after."""
    if key not in _LOADED:
        _LOADED[key] = build()
    return _LOADED[key]


def release(key: tuple) -> None:
    """Forget one loaded component (absent is fine), so the next load_once of `key` builds it again."""
    _LOADED.pop(key, None)


def release_all() -> None:
    """Forget every loaded component (a method's close(), or tests that need a clean process state)."""
    _LOADED.clear()
