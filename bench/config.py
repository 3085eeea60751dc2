"""Configuration: flag > NSDBENCH_* environment variable > nsdbench.toml > defaults."""

from __future__ import annotations

import os
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any

DEFAULTS: dict[str, Any] = {
    "home": "~/.cache/nsdbench",
    "data": None,  # an NSD root, or "synthetic"
    "device": "auto",
    "weights": "pretrained",
    "protocol": "nsdbench-v1",
    "split": "nsd982",
    "db": None,  # default: <home>/leaderboard.duckdb
    "seed": 0,
}


def config_file() -> Path | None:
    """The nsdbench.toml in effect: $NSDBENCH_CONFIG, else ./nsdbench.toml if present."""
    explicit = os.environ.get("NSDBENCH_CONFIG")
    if explicit:
        return Path(explicit)
    local = Path.cwd() / "nsdbench.toml"
    return local if local.is_file() else None


@lru_cache(maxsize=8)
def _read_toml(path: str, mtime: float) -> dict[str, Any]:
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    return data.get("nsdbench", data)


def file_settings() -> dict[str, Any]:
    path = config_file()
    if path is None or not path.is_file():
        return {}
    return dict(_read_toml(str(path), path.stat().st_mtime))


def get(key: str, flag: Any = None) -> Any:
    """Resolve one setting with the documented precedence."""
    if flag is not None:
        return flag
    env = os.environ.get(f"NSDBENCH_{key.upper()}")
    if env is not None and env != "":
        return env
    fs = file_settings()
    if key in fs:
        return fs[key]
    return DEFAULTS.get(key)


def home() -> Path:
    """NSDBENCH_HOME: caches, weights, synthetic data and the default leaderboard."""
    path = Path(os.path.expanduser(str(get("home")))).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir(*parts: str) -> Path:
    path = home().joinpath("cache", *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_db(flag: str | Path | None = None) -> Path:
    value = get("db", flag)
    return Path(value).expanduser() if value else home() / "leaderboard.duckdb"
