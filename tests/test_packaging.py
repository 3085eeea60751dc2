"""Packaging guard: the built wheel (not the editable install) holds every module and package-data file.

Builds the wheel (pip wheel --no-deps --no-build-isolation) from a copy of the tracked sources with a fresh
venv that sees the system site-packages (dependencies, pip, setuptools), installs it there with --no-deps,
and from a temporary working folder runs
`nsdbench --help`, imports every module the sources define and checks every non-Python file under the
package folders. A sub-folder left out of pyproject's package lists, or a data glob that misses a file, fails.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CHECK = r"""
import importlib, json, sys
from pathlib import Path
spec = json.loads(sys.argv[1])
import nsdbench
out = {"nsdbench": nsdbench.__file__, "import_errors": {}, "missing_data": []}
for name in spec["modules"]:
    try:
        importlib.import_module(name)
    except Exception as exc:
        out["import_errors"][name] = f"{type(exc).__name__}: {exc}"
for package, rel in spec["data"]:
    try:
        base = Path(importlib.import_module(package).__file__).parent
    except Exception:
        out["missing_data"].append(f"{package}:{rel}")
        continue
    if not (base / rel).is_file():
        out["missing_data"].append(f"{package}:{rel}")
print(json.dumps(out))
"""


def source_files(repo: Path) -> list[str]:
    """Tracked and untracked-but-not-ignored files (what a clean clone plus new work holds)."""
    if (repo / ".git").exists():
        out = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard"],
            cwd=repo,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split("\n")
        return sorted(f for f in out if f and (repo / f).is_file())
    return sorted(
        str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )


def expected_contents(
    files: list[str], package_dir: dict[str, str]
) -> tuple[list[str], list[tuple[str, str]]]:
    """Pure: (module names, (package, relative path) of data files) the wheel must hold, from the source files
    under pyproject's package-dir folders (longest folder prefix wins)."""
    roots = sorted(package_dir.items(), key=lambda kv: -len(kv[1]))
    modules: list[str] = []
    data: list[tuple[str, str]] = []
    for f in files:
        parts = Path(f).parts
        if "__pycache__" in parts or f.endswith(".pyc"):
            continue
        hit = next(((pkg, d) for pkg, d in roots if parts[: len(Path(d).parts)] == Path(d).parts), None)
        if hit is None:
            continue
        pkg, d = hit
        rest = parts[len(Path(d).parts) :]
        if f.endswith(".py"):
            dotted = [*pkg.split("."), *rest[:-1]]
            stem = rest[-1][:-3]
            modules.append(".".join(dotted if stem == "__init__" else [*dotted, stem]))
        else:
            data.append((pkg, str(Path(*rest))))
    return sorted(set(modules)), sorted(set(data))


def test_expected_contents_maps_sub_folders_and_data() -> None:
    files = [
        "bench/cli.py",
        "bench/nsd/__init__.py",
        "methods/new/x.py",
        "methods/components/configs/a/b.json",
    ]
    mods, data = expected_contents(
        files,
        {
            "nsdbench": "bench",
            "nsdbench.methods": "methods",
            "nsdbench.methods.components": "methods/components",
        },
    )
    assert mods == ["nsdbench.cli", "nsdbench.methods.new.x", "nsdbench.nsd"]
    assert data == [("nsdbench.methods.components", "configs/a/b.json")]


@pytest.mark.slow
@pytest.mark.ci
def test_wheel_installs_and_holds_every_module_and_data_file(tmp_path: Path) -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    package_dir = pyproject["tool"]["setuptools"]["package-dir"]
    files = source_files(REPO)
    modules, data = expected_contents(files, package_dir)
    assert "nsdbench.cli" in modules and len(data) >= 3

    # a fresh venv without its own pip/setuptools: it uses the system's (pip, setuptools with bdist_wheel)
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        check=True,
        timeout=300,
    )
    py = venv / "bin" / "python"
    if subprocess.run([str(py), "-m", "pip", "--version"], check=False, capture_output=True).returncode != 0:
        pytest.skip("the base interpreter has no pip to build and install a wheel with")

    src = tmp_path / "src"  # build from a copy: setuptools writes build/ and *.egg-info beside the sources
    for f in files:
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, src / f)
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [str(py), "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(wheels),
         str(src)],
        check=False, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("nsdbench-*.whl")
    install = subprocess.run(  # --ignore-installed: a system-wide (editable) nsdbench must not satisfy it
        [str(py), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q", str(wheel)],
        check=False, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]

    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "NSDBENCH_HOME": str(tmp_path / "home"),
    }
    helped = subprocess.run(
        [str(venv / "bin" / "nsdbench"), "--help"], cwd=cwd, env=env, check=False, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert helped.returncode == 0 and "weights" in helped.stdout, helped.stderr[-3000:]
    spec = json.dumps({"modules": modules, "data": [list(d) for d in data]})
    checked = subprocess.run(
        [str(py), "-c", CHECK, spec],
        cwd=cwd,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert checked.returncode == 0, checked.stderr[-3000:]
    result = json.loads(checked.stdout.strip().splitlines()[-1])
    assert Path(result["nsdbench"]).resolve().is_relative_to(venv.resolve()), result["nsdbench"]
    assert (result["import_errors"], result["missing_data"]) == ({}, [])
