"""Terminal tables at 80 and 120 columns and piped: every value and identifier shown whole, never cut.

The tables are read back cell by cell and compared with the `--json` document of the same command."""

from __future__ import annotations

import json
import re

import pytest
from test_cli_usage import cli
from test_leaderboard_store import record, write_fake_run

from nsdbench.leaderboards.exports import header
from nsdbench.leaderboards.store import Store

WIDTHS = [80, 120, None]  # None: piped without COLUMNS
_JSON: dict[tuple[str, ...], object] = {}


def json_of(*args: str, home) -> object:
    """The --json document of a command (run once per module: the console script starts in seconds)."""
    if args not in _JSON:
        rc, out, err = cli(*args, "--json", home=home)
        assert rc == 0, err
        _JSON[args] = json.loads(out)
    return _JSON[args]


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tables")
    store = Store(tmp / "lb.duckdb")
    for rid, method, subjects in (
        ("run-a", "a rather long method name (variant x)", (1, 2, 5, 7)),
        ("run-b", "b", (1, 2)),
    ):
        store.ingest(
            record(store, rid, method, subjects), write_fake_run(tmp, rid, subjects), n_resamples=100
        )
    return tmp / "lb.duckdb"


def read_tables(text: str) -> dict[str, dict]:
    """Rich tables in the output: base title -> {'headers': [...], 'groups': [[row cells], ...]}."""
    tables: dict[str, dict] = {}
    cur = None
    for line in text.splitlines():
        if line.startswith("│"):
            tables[cur]["groups"][-1].append([c.strip() for c in line.strip()[1:-1].split("│")])
        elif line.startswith("┃"):
            tables[cur]["headers"].append([c.strip() for c in line.strip()[1:-1].split("┃")])
        elif " · " in line and not line.startswith(("┏", "┡", "└")):
            cur = re.sub(r" · metrics \d+/\d+$", "", line.strip())
            tables.setdefault(cur, {"headers": [], "groups": []})["groups"].append([])
    return tables


def check_board(text: str, doc: dict, ci: bool, width: int | None) -> None:
    assert "…" not in text
    if width:
        assert max(len(line) for line in text.splitlines()) <= width
    shown = read_tables(text)
    assert list(shown) == [t["title"] for t in doc["tables"]]
    for t in doc["tables"]:
        got = shown[t["title"]]
        if width is None:
            assert len(got["groups"]) == 1  # piped without COLUMNS: one whole table per scope
        heads = [h for group in got["headers"] for h in group[2:]]
        assert heads == [header(m) for m in t["metrics"]]
        for j, row in enumerate(t["rows"]):
            cells = [c for group in got["groups"] for c in group[j][2:]]
            label, subjects = got["groups"][0][j][:2]
            assert label.startswith(row["method"]) and subjects == row["subjects"]
            want = []
            for m in t["metrics"]:
                c = row["cells"].get(m)
                if c is None:
                    want.append("–")
                elif ci and c["lo"] is not None:
                    want.append(f"{c['mean']:.3f} [{c['lo']:.3f}, {c['hi']:.3f}]")
                else:
                    want.append(f"{c['mean']:.3f}")
            assert cells == want, (t["title"], row["method"])


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize(
    "args",
    [
        ("--protocol", "second-sight-2023"),  # 16 metrics, 20 reported rows
        ("--protocol", "nsdbench-v1", "--ci"),  # reproduced rows with CIs, per-subject tables
    ],
    ids=["reported", "reproduced-ci"],
)
def test_leaderboard_shows_every_value_at_any_width(args, width, db, tmp_path):
    env = {} if width is None else {"COLUMNS": width}
    rc, text, err = cli("leaderboard", "--db", str(db), *args, home=tmp_path, **env)
    assert rc == 0, err
    doc = json_of("leaderboard", "--db", str(db), *[a for a in args if a != "--ci"], home=tmp_path)
    check_board(text, doc, "--ci" in args, width)
    if any(r["origin"] == "reported" for t in doc["tables"] for r in t["rows"]):
        assert re.search(
            r"^\[1\] reported in \S+, Table \S+", text, re.MULTILINE
        )  # the footnote names the source


@pytest.mark.parametrize("width", WIDTHS)
def test_protocols_list_never_splits_names_or_hashes(width, tmp_path):
    env = {} if width is None else {"COLUMNS": width}
    rc, text, err = cli("protocols", "list", home=tmp_path, **env)
    assert rc == 0, err
    doc = json_of("protocols", "list", home=tmp_path)
    assert "…" not in text
    rows = {cells[0]: cells for cells in read_rows(text) if len(cells) == 5}
    for p in doc["protocols"]:
        assert rows[p["name"]] == [p["name"], p["version"], p["hash"], p["split"], str(len(p["metrics"]))]
    names = [p["name"] for p in doc["protocols"]]
    for d in doc["differences"]:  # every differing value shown whole, on its protocol's line or cell
        for n in names:
            value = str(d.get(n, ""))
            assert value in text, (d["metric"], d["field"], n)


@pytest.mark.parametrize("width", WIDTHS)
def test_weights_list_never_cuts_names_or_sources(width, tmp_path):
    env = {} if width is None else {"COLUMNS": width}
    rc, text, err = cli("weights", "list", home=tmp_path, **env)
    assert rc == 0, err
    assert "…" not in text
    for a in json_of("weights", "list", home=tmp_path):
        assert re.search(rf"(^|[│\s]){re.escape(a['name'])}([│\s]|$)", text, re.MULTILINE), a["name"]
        assert re.search(rf"(^|[│\s]){re.escape(a['source'])}([│\s]|$)", text, re.MULTILINE), a["source"]


def read_rows(text: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip()[1:-1].split("│")]
        for line in text.splitlines()
        if line.startswith("│")
    ]
