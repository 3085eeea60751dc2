"""Shared fixtures: an isolated NSDBENCH_HOME and one synthetic NSD per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def nsdbench_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test runs against a private NSDBENCH_HOME; nothing touches ~/.cache."""
    home = tmp_path_factory.mktemp("nsdbench-home")
    old = {k: os.environ.get(k) for k in ("NSDBENCH_HOME", "NSDBENCH_DATA", "NSDBENCH_CONFIG")}
    os.environ["NSDBENCH_HOME"] = str(home)
    os.environ.pop("NSDBENCH_DATA", None)
    os.environ["NSDBENCH_CONFIG"] = str(home / "no-config.toml")
    yield home
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def synth_root(nsdbench_home: Path) -> Path:
    """The default synthetic NSD (seed 0), generated once per test session where `--data synthetic`
    looks for it, so the CLI and the fixtures share one copy. Treat it as read-only."""
    from nsdbench.nsd.synth import synthesize

    return synthesize(nsdbench_home / "synthetic-nsd", seed=0)


@pytest.fixture(scope="session")
def nsd(synth_root: Path):
    """The synthetic NSD opened with the real loader."""
    from nsdbench.nsd import open_nsd

    return open_nsd(synth_root)
