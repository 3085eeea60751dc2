"""The shipped published results: each paper's table internally consistent, every row on a board of its
own protocol, and through the installed `nsdbench` command MindEye2's rows under `mindeye` and rows on a
test set nsdbench cannot reproduce (MindDiffuser's subset) beside the runs they belong with, marked §."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
from test_cli_usage import cli
from test_leaderboard_store import record, write_fake_run

from nsdbench.leaderboards.published import (
    OTHER_TEST_SETS,
    PAPER_METHODS,
    is_papers_protocol,
    published_wide,
    reported_rows,
)
from nsdbench.leaderboards.store import Store
from nsdbench.metrics.protocols import PROTOCOLS, get_protocol
from nsdbench.nsd.splits import SPLITS

BRAIN = ["bc_nsdgeneral", "bc_v1", "bc_v2", "bc_v3", "bc_v4", "bc_higher_vis"]
IMAGE = ["pixcorr", "ssim", "alexnet2", "alexnet5", "inception", "clip_2way", "effnet_b", "swav"]


def _me2(table: str, method: str) -> dict[str, dict[str, float]]:
    """MindEye2 rows of one table and method: subjects -> {metric: value}."""
    rep = reported_rows()
    sel = rep[(rep["source"] == "mindeye2-2024") & (rep["table"] == table) & (rep["method"] == method)]
    out: dict[str, dict[str, float]] = {}
    for r in sel.to_dict("records"):
        out.setdefault(r["subjects"], {})[r["metric"]] = float(r["value"])
    return out


@pytest.mark.parametrize(
    ("mean_method", "table"), [("MindEye2 (40 sessions)", "7"), ("MindEye2 (1 session)", "8")]
)
def test_mindeye2_means_are_the_mean_of_its_single_subject_tables(mean_method, table):
    # Table 1 (image metrics) and Table 3 (brain correlation) print 4-subject means that Tables 7 and 8
    # print per subject: a transcription slip in any of the 28 numbers breaks the equality.
    mean = _me2("1+3", mean_method)["1,2,5,7"]
    per = _me2(table, mean_method)
    assert sorted(per) == ["1", "2", "5", "7"]
    assert sorted(mean) == sorted(IMAGE + BRAIN) and all(sorted(v) == sorted(mean) for v in per.values())
    for m, v in mean.items():
        # both sides printed rounded: 3 decimals, or percentages with 1 (Table 1) and 2 (Tables 7/8)
        assert sum(p[m] for p in per.values()) / 4 == pytest.approx(v, abs=1e-3), m


def test_percentages_are_stored_as_fractions_with_every_printed_digit():
    wide = published_wide()
    me2 = wide[(wide["source"] == "mindeye2-2024") & (wide["table"] == "7") & (wide["subjects"] == "1")]
    row = me2.iloc[0]
    assert (row["alexnet2"], row["alexnet5"], row["inception"], row["clip_2way"]) == (
        0.9782,
        0.991,
        0.9615,
        0.9356,
    )
    for m in IMAGE + BRAIN + ["alexnet7", "clip_cos"]:
        vals = wide[m].dropna()
        assert ((vals >= 0) & (vals <= 1)).all(), m


def test_every_row_belongs_to_a_board_whose_protocol_has_its_metrics():
    wide = published_wide()
    metric_cols = [
        c
        for c in wide.columns
        if c not in ("source", "table", "method", "subjects", "split", "protocol", "note")
    ]
    for r in wide.to_dict("records"):
        shown = {m for m in metric_cols if r[m] == r[m]}
        assert shown, r["method"]
        if r["split"] not in SPLITS:
            assert (r["source"], r["split"]) in OTHER_TEST_SETS, (r["source"], r["split"])
        if r["protocol"]:
            p = get_protocol(r["protocol"])
            assert is_papers_protocol(p.name)
            assert r["split"] == p.split or r["split"] not in SPLITS, (r["source"], r["method"])
            assert shown <= set(p.metric_names), (r["source"], r["method"], shown - set(p.metric_names))
    assert set(wide.loc[wide["source"] == "mindeye2-2024", "protocol"]) == {"mindeye"}
    assert set(wide.loc[wide["split"] == "nsd982", "protocol"]) == {"brain-diffuser-2023"}
    assert set(wide.loc[wide["split"] == "nsd897", "protocol"]) == {"second-sight-2023"}
    assert all(
        m in {"minddiffuser", "takagi2023", "stochastic-search", "clip-decoding-only", "best-library-image"}
        for ms in PAPER_METHODS.values()
        for m in ms
    )
    assert "nsdbench-v1" in PROTOCOLS and not is_papers_protocol("nsdbench-v1")


def _board(*args: str, home) -> dict:
    rc, out, err = cli("leaderboard", *args, "--json", home=home)
    assert rc == 0, err
    return json.loads(out)


def _reported(doc: dict) -> list[dict]:
    return [r for t in doc["tables"] for r in t["rows"] if r["origin"] == "reported"]


def test_mindeye_board_shows_mindeye2_tables_and_nothing_else(tmp_path):
    doc = _board("--protocol", "mindeye", home=tmp_path)
    rows = _reported(doc)
    assert {r["protocol"] for r in rows} == {"mindeye"} and not any(r["test_set"] for r in rows)
    by = {(r["method"], r["subjects"], r["source"]): r["cells"] for r in rows}
    me2 = by[("MindEye2 (40 sessions)", "1,2,5,7", "mindeye2-2024, Table 1+3")]
    assert {m: c["mean"] for m, c in me2.items()} == {
        "pixcorr": 0.322,
        "ssim": 0.431,
        "alexnet2": 0.961,
        "alexnet5": 0.986,
        "inception": 0.954,
        "clip_2way": 0.930,
        "effnet_b": 0.619,
        "swav": 0.344,
        "bc_v1": 0.364,
        "bc_v2": 0.352,
        "bc_v3": 0.342,
        "bc_v4": 0.327,
        "bc_higher_vis": 0.368,
        "bc_nsdgeneral": 0.373,
    }
    assert by[("MindEye2 (1 session)", "7", "mindeye2-2024, Table 8")]["swav"]["mean"] == 0.504
    assert ("Takagi & Nishimoto (2023)", "1,2,5,7", "mindeye2-2024, Table 1+3") in by
    assert ("MindEye1", "1,2,5,7", "mindeye2-2024, Table 1") in by
    # MindEye1's own paper (on nsd982) is not in the shipped table: its board says so, borrows nothing
    doc = _board("--protocol", "mindeye1", home=tmp_path)
    assert _reported(doc) == []
    assert "no published rows under protocol mindeye1 on nsd982 in the shipped table" in doc["notes"]
    # Takagi's rows: brain-diffuser's Table 1 (982) on its protocol's board, MindEye2's only on mindeye's
    rows = _reported(_board("--protocol", "brain-diffuser-2023", home=tmp_path))
    assert {r["source"].split(",")[0] for r in rows} == {"brain-diffuser-2023"}
    assert "Takagi et al." in {r["method"] for r in rows}


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """Runs under nsdbench-v1 on nsd982, subject 1, PixCorr below 0.1: minddiffuser and alpha, and a board
    with alpha alone."""
    tmp = tmp_path_factory.mktemp("published")
    for name, runs in (("lb", ("minddiffuser", "alpha")), ("alpha", ("alpha",))):
        store = Store(tmp / f"{name}.duckdb")
        for seed, method in enumerate(runs):
            rid = f"{name}-{method}"
            paths = write_fake_run(tmp, rid, (1,), seed=seed, shift=-0.95)
            store.ingest(record(store, rid, method, (1,)), paths, n_resamples=50)
    return tmp / "lb.duckdb"


SUBSET = "MindDiffuser's subset: subject 1 test images with decoding accuracy >= 0.3"


def test_other_test_set_rows_come_beside_their_methods_run_marked_and_never_ranked(db, tmp_path):
    rc, text, err = cli("leaderboard", "--db", str(db), "--no-per-subject", home=tmp_path, COLUMNS=80)
    assert rc == 0, err
    assert re.search(r"^│ MindDiffuser \[\d\] § +│ 1 ", text, re.MULTILINE)
    assert re.search(r"^│ Takagi et al\. \[\d\] § +│ 1 ", text, re.MULTILINE)  # MindDiffuser's Table 2
    footnote = f"§ minddiffuser-2023, Table 2: measured on {SUBSET}, not on nsd982;"
    assert footnote in " ".join(text.split())  # the footnote names the subset (wrapped at 80 columns)
    doc = json.loads(cli("leaderboard", "--db", str(db), "--no-per-subject", "--json", home=tmp_path)[1])
    rows = {r["method"]: r for r in doc["tables"][0]["rows"]}
    assert (
        rows["MindDiffuser"]["test_set"] == SUBSET
        and rows["MindDiffuser"]["cells"]["pixcorr"]["mean"] == 0.278
    )
    assert rows["minddiffuser"]["test_set"] == "" and rows["minddiffuser"]["origin"] == "reproduced"
    # never ranked: the best reproduced PixCorr is bold although the subset's 0.278 is higher
    md = cli("leaderboard", "--db", str(db), "--no-per-subject", "--format", "md", home=tmp_path)[1]
    assert "| MindDiffuser *(reported: minddiffuser-2023, Table 2)* § | 1 | 0.278 | 0.354 |" in md
    assert md.count("**") == 2 * 3 and "**0.278" not in md  # one bold cell per metric, all reproduced
    assert f"_{footnote}" in md
    out = cli("leaderboard", "--db", str(db), "--no-per-subject", "--format", "csv", home=tmp_path)[1]
    recs = list(csv.DictReader(io.StringIO(out)))
    assert {r["test_set"] for r in recs if r["method"] == "MindDiffuser"} == {SUBSET}
    assert {r["test_set"] for r in recs if r["origin"] == "reproduced"} == {""}
    tex = cli("leaderboard", "--db", str(db), "--no-per-subject", "--format", "latex", home=tmp_path)[1]
    assert r"\textit{MindDiffuser}$^\dagger$\S" in tex and r"% \S minddiffuser-2023, Table 2" in tex


def test_other_test_sets_only_beside_their_method_or_on_request(db, tmp_path):
    alone = db.with_name("alpha.duckdb")
    rows = _reported(_board("--db", str(alone), "--no-per-subject", home=tmp_path))
    assert rows and not any(r["test_set"] for r in rows)  # brain-diffuser's nsd982 rows only
    asked = _reported(_board("--db", str(alone), "--no-per-subject", "--other-test-sets", home=tmp_path))
    # Lin et al.'s custom split reports Inception only, which the board (PixCorr, SSIM, EffNet-B) lacks
    want = {
        OTHER_TEST_SETS[k] for k in [("minddiffuser-2023", "subset"), ("stochastic-search-ccn2023", "test")]
    }
    assert {r["test_set"] for r in asked if r["test_set"]} == want
    empty = tmp_path / "empty.duckdb"
    asked = _reported(_board("--db", str(empty), "--no-per-subject", "--other-test-sets", home=tmp_path))
    assert {r["test_set"] for r in asked if r["test_set"]} == set(OTHER_TEST_SETS.values())
    # on a paper's own protocol the other test sets keep to rows of no nsdbench protocol
    me = _reported(_board("--db", str(empty), "--protocol", "mindeye", "--other-test-sets", home=tmp_path))
    assert {r["protocol"] for r in me if r["test_set"]} == {""} and any(r["test_set"] for r in me)
