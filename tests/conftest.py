"""Shared fixtures: an isolated NSDBENCH_HOME and one synthetic NSD per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_SIDE_EFFECTS: dict[str, str] = {}

# Tiny networks are latency-bound: one intra-op thread is fastest, and with two threads per process two test
# processes competing for two cores ran 10-20x slower. Subprocesses (the console-script tests) inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


def pytest_configure(config: pytest.Config) -> None:
    """Keep side effects out of the checkout and the system temp dir: Hypothesis's database and Ray's
    session folders go to one private temp folder (short path: Ray's socket names), removed at the end."""
    import tempfile

    scratch = tempfile.mkdtemp(prefix="nsdb-t-")
    _SIDE_EFFECTS["scratch"] = scratch
    _SIDE_EFFECTS["RAY_TMPDIR"] = os.environ.get("RAY_TMPDIR", "")
    os.environ["RAY_TMPDIR"] = scratch
    try:
        from hypothesis.configuration import set_hypothesis_home_dir

        set_hypothesis_home_dir(Path(scratch) / "hypothesis")
    except ImportError:
        pass


def pytest_unconfigure(config: pytest.Config) -> None:
    import shutil

    if "scratch" in _SIDE_EFFECTS:
        shutil.rmtree(_SIDE_EFFECTS.pop("scratch"), ignore_errors=True)
        old = _SIDE_EFFECTS.pop("RAY_TMPDIR")
        if old:
            os.environ["RAY_TMPDIR"] = old
        else:
            os.environ.pop("RAY_TMPDIR", None)


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


@pytest.fixture(scope="session")
def small_subject(nsd):
    """small_subject(n_train, n_test): subject 1's SubjectData cut to its first training and test images."""
    import dataclasses

    from nsdbench.nsd.splits import get_split
    from nsdbench.nsd.subject import SubjectData

    def cut(n_train: int, n_test: int) -> SubjectData:
        sp = get_split(nsd, "nsd982", 1)
        return SubjectData(
            nsd,
            1,
            dataclasses.replace(
                sp,
                train_ids=sp.train_ids[:n_train],
                train_first_presentation=sp.train_first_presentation[:n_train],
                train_trials=sp.train_trials[:n_train],
                test_ids=sp.test_ids[:n_test],
                first_presentation=sp.first_presentation[:n_test],
                test_trials=sp.test_trials[:n_test],
            ),
        )

    return cut


@pytest.fixture
def scoped_methods():
    """The method registry, with every registration the test makes undone afterwards."""
    from nsdbench.methods import registry

    with registry.scoped_registry():
        yield registry
