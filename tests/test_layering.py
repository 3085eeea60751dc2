"""The dependency direction of the package, read from the source with ast (no import is executed):
commands -> runs/submissions/report -> metrics/methods -> nsd -> core, and the leaderboard store and
views never reach the scoring engine. Function-local imports count like top-level ones."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"bench": "nsdbench", "methods": "nsdbench.methods", "metrics": "nsdbench.metrics",
            "leaderboards": "nsdbench.leaderboards"}  # fmt: skip

CORE = {"nsdbench", "nsdbench.errors", "nsdbench.config", "nsdbench.files", "nsdbench.caches",
        "nsdbench.devices", "nsdbench.progress", "nsdbench.score_files", "nsdbench.ridge",
        "nsdbench.ridge_backend", "nsdbench.stage_times", "nsdbench.terminal", "nsdbench.feature_store"}  # fmt: skip
RANKS = (  # (prefix, rank): a module may import modules of its own rank or lower
    ("nsdbench.nsd", 1),
    ("nsdbench.metrics", 2),
    ("nsdbench.methods", 2),
    ("nsdbench.weights", 2),
    ("nsdbench.leaderboards", 3),
    ("nsdbench.scoring", 3),
    ("nsdbench.runs", 3),
    ("nsdbench.submissions", 3),
    ("nsdbench.report", 3),
    ("nsdbench.commands", 4),
    ("nsdbench.cli", 4),
)
STORE_SIDE = ("nsdbench.leaderboards.store", "nsdbench.leaderboards.views", "nsdbench.leaderboards.aggregate",
              "nsdbench.leaderboards.exports", "nsdbench.leaderboards.published")  # fmt: skip
ABOVE_THE_STORE = ("nsdbench.metrics.engine", "nsdbench.scoring", "nsdbench.runs", "nsdbench.submissions",
                   "nsdbench.report", "nsdbench.commands")  # fmt: skip
# Imports that still point upward, each with the reason it has not been turned around yet. The test
# fails when one disappears, so this list only shrinks.
KNOWN_UPWARD: dict[tuple[str, str], str] = {}


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def rank(module: str) -> int:
    if module in CORE:
        return 0
    for prefix, r in RANKS:
        if _under(module, prefix):
            return r
    raise AssertionError(f"{module}: no layer assigned; add it to CORE or RANKS in this test")


def modules() -> dict[str, Path]:
    out = {}
    for folder, package in PACKAGES.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((package, *parts))] = path
    return out


def imports(path: Path, known: set[str]) -> set[str]:
    """nsdbench modules imported anywhere in the file (`from nsdbench import x` resolved to nsdbench.x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("nsdbench"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nsdbench"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in known else node.module)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(path, set(mods)) for name, path in mods.items()}


def test_every_module_has_a_layer(graph):
    for name in graph:
        rank(name)


def test_imports_point_down_the_layers(graph):
    upward = {
        (name, target)
        for name, targets in graph.items()
        for target in targets
        if target in graph and rank(target) > rank(name)
    }
    assert upward - set(KNOWN_UPWARD) == set(), "imports that point up the layers"
    assert set(KNOWN_UPWARD) - upward == set(), "fixed: remove these from KNOWN_UPWARD"


def test_core_imports_only_core(graph):
    for name in CORE:
        assert {t for t in graph[name] if t not in CORE} == set(), name


def test_leaderboard_store_and_views_never_reach_the_engine(graph):
    for name, targets in graph.items():
        if name.startswith(STORE_SIDE):
            bad = {t for t in targets for above in ABOVE_THE_STORE if _under(t, above)}
            assert bad == set(), f"{name} imports {sorted(bad)}"


def test_the_check_sees_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from nsdbench.metrics.engine import score_reconstructions\n")
    found = imports(bad, {"nsdbench.metrics.engine"})
    assert found == {"nsdbench.metrics.engine"} and rank("nsdbench.files") < rank("nsdbench.metrics.engine")
