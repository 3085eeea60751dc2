"""Leaderboard views and exports: cells equal the stored aggregates, one row per method, smoke runs hidden,
reported rows beside reproduced ones, md/latex text exactly as expected, compare = paired bootstrap."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from test_leaderboard_store import record, write_fake_run

from nsdbench.cli import main
from nsdbench.leaderboards.exports import render
from nsdbench.leaderboards.store import Store
from nsdbench.leaderboards.views import build_leaderboard
from nsdbench.metrics.bootstrap import bootstrap_ci, paired_bootstrap


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("views")
    store = Store(tmp / "lb.duckdb")
    runs = [
        ("a-old", "alpha", (1, 2), "pretrained", 0, 0.0, "2026-01-01T00:00:00"),
        ("a-new", "alpha", (1, 2), "pretrained", 1, 0.0, "2026-02-01T00:00:00"),
        ("b-1", "beta", (1, 2), "pretrained", 2, 0.5, "2026-01-15T00:00:00"),
        ("c-smoke", "gamma", (1, 2), "tiny", 3, 0.0, "2026-03-01T00:00:00"),
        ("d-mind", "delta", (1,), "pretrained", 4, 0.0, "2026-03-01T00:00:00"),
    ]
    for rid, method, subjects, weights, seed, shift, ts in runs:
        proto = "mindeye" if rid == "d-mind" else "nsdbench-v1"
        paths = write_fake_run(tmp, rid, subjects, seed=seed, protocol=proto, shift=shift)
        store.ingest(
            record(store, rid, method, subjects, weights, proto, created_at=ts), paths, n_resamples=300
        )
    return tmp / "lb.duckdb"


def _agg(store, rid, subject, metric):
    a = store.aggregates(rid)
    return a[(a["subject"] == subject) & (a["metric"] == metric)].iloc[0]


def test_one_row_per_method_cells_equal_stored_aggregates(db):
    store = Store(db)
    lb = build_leaderboard(store, protocol="nsdbench-v1", reported=False)
    mean = lb.tables[0]
    assert [r.method for r in mean.rows] == ["alpha", "beta"]  # smoke gamma hidden; delta is another protocol
    assert [r.run_id for r in mean.rows] == ["a-new", "b-1"]  # latest run per method
    assert mean.metrics == ["pixcorr", "ssim", "effnet_b"]  # the papers' column order
    for row in mean.rows:
        for m in mean.metrics:
            stored = _agg(store, row.run_id, "mean", m)
            c = row.cells[m]
            assert (c.mean, c.lo, c.hi, c.n) == (
                stored["mean"],
                stored["ci_lo"],
                stored["ci_hi"],
                stored["n"],
            )
    assert [t.scope for t in lb.tables] == ["mean", "1", "2"]
    assert lb.tables[1].rows[0].cells["ssim"].mean == _agg(store, "a-new", "1", "ssim")["mean"]
    assert any("smoke" in n for n in lb.notes)
    with_smoke = build_leaderboard(store, protocol="nsdbench-v1", include_smoke=True, reported=False)
    assert [r.method for r in with_smoke.tables[0].rows] == ["alpha", "beta", "gamma"]
    assert with_smoke.tables[0].rows[2].smoke


def test_best_by_pinned_run_and_subject_subset(db):
    store = Store(db)
    a_old, a_new = (_agg(store, r, "mean", "effnet_b")["mean"] for r in ("a-old", "a-new"))
    lb = build_leaderboard(
        store, protocol="nsdbench-v1", best_by="effnet_b", reported=False
    )  # lower is better
    assert lb.tables[0].rows[0].run_id == ("a-old" if a_old < a_new else "a-new")
    lb = build_leaderboard(store, protocol="nsdbench-v1", runs=["a-ol"], reported=False)
    assert lb.tables[0].rows[0].run_id == "a-old"
    lb = build_leaderboard(store, protocol="nsdbench-v1", subjects=(2,), reported=False)
    cell = lb.tables[0].rows[0].cells["pixcorr"]
    img = store.image_scores("a-new")
    vals = img[(img["subject"] == 2) & (img["metric"] == "pixcorr")].sort_values("nsd_id")["value"].to_numpy()
    assert (cell.mean, cell.lo, cell.hi) == pytest.approx(bootstrap_ci(vals, 2000, 0), abs=1e-12)
    assert lb.tables[0].rows[0].subjects == "2" and [t.scope for t in lb.tables] == ["mean", "2"]


def test_subject_mean_resamples_images_jointly(db):
    store = Store(db)
    img = store.image_scores("b-1")
    m = img[img["metric"] == "ssim"].pivot(index="nsd_id", columns="subject", values="value")
    stored = _agg(store, "b-1", "mean", "ssim")
    assert (stored["mean"], stored["ci_lo"], stored["ci_hi"]) == pytest.approx(
        bootstrap_ci(m.mean(axis=1).to_numpy(), 300, 0), abs=1e-12
    )


def test_reported_rows_appear_beside_reproduced(db, capsys):
    rc = main(["leaderboard", "--db", str(db), "--format", "md", "--no-per-subject", "--subjects", "1,2,5,7"])
    out = capsys.readouterr().out
    assert rc == 0
    # no reproduced run covers 1,2,5,7: the columns are the reported ones, in the papers' order
    assert (
        "| Brain-Diffuser *(reported: brain-diffuser-2023, Table 1)* | 1,2,5,7 | 0.254 | 0.356 | 0.942 | 0.962 |"
        " 0.872 | 0.915 | 0.775 | 0.423 |"
    ) in out
    assert "no run under nsdbench-v1 on nsd982 covers subjects 1,2,5,7" in out
    rc = main(["leaderboard", "--db", str(db), "--format", "md", "--no-per-subject"])
    out = capsys.readouterr().out
    assert "| alpha | 1,2 |" in out
    assert (
        "| Brain-Diffuser *(reported: brain-diffuser-2023, Table 1)* | 1,2,5,7 | 0.254 | 0.356 | 0.775 |"
        in out
    )
    assert "Takagi" not in out  # a reported row with none of the shown metrics is left out
    rc = main(
        [
            "leaderboard",
            "--db",
            str(db),
            "--format",
            "md",
            "--split",
            "nsd897",
            "--protocol",
            "second-sight-2023",
            "--no-per-subject",
            "--subjects",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert "| Second Sight *(reported: second-sight-2023, Table 1+2)* | 1 | 0.185 | 0.288 |" in out


def _fmt(c):
    return f"{c['mean']:.3f} [{c['ci_lo']:.3f}, {c['ci_hi']:.3f}]"


def test_markdown_and_latex_text(db):
    store = Store(db)
    lb = build_leaderboard(
        store, protocol="nsdbench-v1", metrics=["pixcorr", "effnet_b"], reported=False, per_subject=False
    )
    a = {m: _agg(store, "a-new", "mean", m) for m in ("pixcorr", "effnet_b")}
    b = {m: _agg(store, "b-1", "mean", m) for m in ("pixcorr", "effnet_b")}
    best_pix = "a" if a["pixcorr"]["mean"] > b["pixcorr"]["mean"] else "b"
    best_eff = "a" if a["effnet_b"]["mean"] < b["effnet_b"]["mean"] else "b"

    def md_cell(who, m, best):
        c = _fmt((a if who == "a" else b)[m])
        return f"**{c}**" if who == best else c

    want_md = (
        "### nsd982 · nsdbench-v1 · subject mean\n\n"
        "| Method | Subjects | PixCorr ↑ | EffNet-B ↓ |\n"
        "|---|---|---:|---:|\n"
        f"| alpha | 1,2 | {md_cell('a', 'pixcorr', best_pix)} | {md_cell('a', 'effnet_b', best_eff)} |\n"
        f"| beta | 1,2 | {md_cell('b', 'pixcorr', best_pix)} | {md_cell('b', 'effnet_b', best_eff)} |\n"
        "\n_1 smoke run(s) (random/tiny weights) hidden; --include-smoke shows them_\n"
    )
    assert render(lb, "md") == want_md

    def tex_cell(who, m, best):
        c = (a if who == "a" else b)[m]
        v = f"{c['mean']:.3f}"
        v = rf"\textbf{{{v}}}" if who == best else v
        return v + rf" {{\scriptsize [{c['ci_lo']:.3f}, {c['ci_hi']:.3f}]}}"

    want_tex = (
        "% nsd982 · nsdbench-v1 · subject mean\n"
        "\\begin{tabular}{llrr}\n\\toprule\n"
        "Method & Subjects & PixCorr $\\uparrow$ & EffNet-B $\\downarrow$ \\\\\n\\midrule\n"
        f"alpha & 1, 2 & {tex_cell('a', 'pixcorr', best_pix)} & {tex_cell('a', 'effnet_b', best_eff)} \\\\\n"
        f"beta & 1, 2 & {tex_cell('b', 'pixcorr', best_pix)} & {tex_cell('b', 'effnet_b', best_eff)} \\\\\n"
        "\\bottomrule\n\\end{tabular}\n"
    )
    assert render(lb, "latex") == want_tex


def test_reported_rows_in_latex_are_marked_and_escaped(db):
    lb = build_leaderboard(Store(db), protocol="nsdbench-v1", subjects=(1, 2, 5, 7), per_subject=False)
    tex = render(lb, "latex")
    assert r"\textit{Brain-Diffuser}$^\dagger$ & 1, 2, 5, 7 & 0.254 & 0.356 &" in tex
    assert r"% $^\dagger$ reported in the cited paper, not reproduced" in tex


def test_csv_json_html_and_table_formats(db, capsys):
    store = Store(db)
    for fmt in ("csv", "json", "html", "table"):
        rc = main(["leaderboard", "--db", str(db), "--format", fmt, "--no-reported"])
        out = capsys.readouterr().out
        assert rc == 0 and out
        if fmt == "csv":
            rows = list(csv.DictReader(io.StringIO(out)))
            r = next(r for r in rows if r["run_id"] == "b-1" and r["table"] == "2" and r["metric"] == "ssim")
            assert float(r["mean"]) == _agg(store, "b-1", "2", "ssim")["mean"]
        elif fmt == "json":
            doc = json.loads(out)
            assert doc["metrics"]["effnet_b"]["higher_is_better"] is False
            assert [r["method"] for r in doc["tables"][0]["rows"]] == ["alpha", "beta"]
        elif fmt == "html":
            assert "<th>EffNet-B ↓</th>" in out and "<td>alpha</td>" in out
        else:
            assert "alpha" in out and "PixCorr ↑" in out
    rc = main(["leaderboard", "--db", str(db), "--format", "nope"])
    assert rc == 2
    rc = main(["leaderboard", "--db", str(db), "--format", "md", "--output", f"{db}/x.md"])
    assert rc == 2 and "--output" in capsys.readouterr().err  # the database file is not a folder


def test_compare_is_a_paired_bootstrap_on_shared_images(db, capsys):
    store = Store(db)
    rc = main(["compare", "a-new", "b-1", "--db", str(db), "--json", "--bootstrap", "500"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and [r["metric"] for r in doc["rows"]] == ["pixcorr", "ssim", "effnet_b"]
    ia, ib = store.image_scores("a-new"), store.image_scores("b-1")
    for r in doc["rows"]:
        x = ia[ia["metric"] == r["metric"]].sort_values(["subject", "nsd_id"])["value"].to_numpy()
        y = ib[ib["metric"] == r["metric"]].sort_values(["subject", "nsd_id"])["value"].to_numpy()
        assert (r["diff"], r["ci_lo"], r["ci_hi"], r["p_value"]) == pytest.approx(
            paired_bootstrap(x, y, 500, 0), abs=1e-12
        )
        assert r["n"] == 24 and r["diff"] < 0  # beta was shifted up by 0.5
    rc = main(["compare", "a-new", "d-mind", "--db", str(db)])
    assert rc == 2 and "different protocols" in capsys.readouterr().err
    rc = main(["compare", "a-new", "b-1", "--db", str(db)])
    assert rc == 0 and "PixCorr" in capsys.readouterr().out
    rc = main(["compare", "a-new", "b-1", "--db", str(db), "--metric", "pixcor"])
    assert rc == 2 and "unknown metric 'pixcor'" in capsys.readouterr().err
    rc = main(["compare", "a-new", "b-1", "--db", str(db), "--metric", "clip_2way"])  # scored by neither
    assert rc == 2 and "share no scored" in capsys.readouterr().err


def test_runs_list_show_delete(db, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy.duckdb"
    shutil.copy(db, copy)
    rc = main(["runs", "list", "--db", str(copy), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and {r["id"] for r in doc} == {"a-old", "a-new", "b-1", "c-smoke", "d-mind"}
    rc = main(["runs", "show", "b-", "--db", str(copy), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["run"]["method"] == "beta" and len(doc["aggregates"]) == 9
    assert main(["runs", "show", "a-", "--db", str(copy)]) == 2  # ambiguous prefix
    assert main(["runs", "delete", "b-1", "--yes", "--db", str(copy)]) == 0
    assert "b-1" not in set(Store(copy).runs()["id"]) and Store(copy).counts()["runs"] == 4
    assert main(["runs", "delete", "zzz", "--yes", "--db", str(copy)]) == 2
    capsys.readouterr()
    assert np.isfinite(Store(db).aggregates("b-1")["mean"]).all()  # the original is untouched
