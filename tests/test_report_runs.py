"""`nsdbench report` on real synthetic runs, opened in a real headless Chromium.

Two runs (the ground-truth and shuffled baselines, tiny weights, subjects 1 and 2) are made with
`nsdbench run` and recorded in a private leaderboard; the page is rendered by Chromium, which must
draw a non-blank page whose DOM holds the expected images and the stored aggregates.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nsdbench.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SUBJECTS = "1,2"
K = 2  # best/worst images per metric in these pages


def chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=True)


class DomParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[dict[str, str]] = []
        self.cells: list[dict[str, str]] = []
        self._cell: dict[str, str] | None = None
        self.summary = ""
        self._in_summary = False

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.imgs.append(a)
        if tag == "td" and "data-metric" in a:
            self._cell = dict(a, text="")
            self.cells.append(self._cell)
        if tag == "small":
            self._cell = None  # the CI line is not the value
        if tag == "script" and a.get("id") == "nsdbench-report":
            self._in_summary = True

    def handle_endtag(self, tag):
        if tag == "td":
            self._cell = None
        if tag == "script":
            self._in_summary = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data
        if self._in_summary:
            self.summary += data


def make_run(base: Path, nsd, data: str, db: Path, method: str, pick, n_ids: int = 4) -> tuple[str, Path]:
    """A small real run: the runner's folder layout, PNGs, the real scoring path (tiny networks) and
    the leaderboard ingest, on the first n_ids test images of each subject (a full synthetic run
    scores 91 images per subject, minutes on 2 CPU cores)."""
    from nsdbench.files import atomic_write_bytes
    from nsdbench.leaderboards.store import Store
    from nsdbench.metrics.engine import ScoreOptions
    from nsdbench.metrics.protocols import get_protocol
    from nsdbench.nsd.splits import get_split
    from nsdbench.runs.folder import encode_png, png_path, score_path
    from nsdbench.runs.scores import row_id
    from nsdbench.runs.spec import RunSpec, prepare_run_dir
    from nsdbench.scoring import subject_scopes, write_subject_scores

    subjects = tuple(int(s) for s in SUBJECTS.split(","))
    spec = RunSpec(method=method, subjects=subjects, split="nsd982", data=data, weights="tiny", device="cpu")
    rid = row_id(spec.run_id, "nsdbench-v1")
    run_dir = prepare_run_dir(base / method, spec)
    for s in subjects:
        split = get_split(nsd, "nsd982", s)
        ids = list(split.test_ids[:n_ids])
        gt = nsd.images(ids)
        images = {(i, 0): gt[pick(k, len(ids))] for k, i in enumerate(ids)}
        for (i, sample), img in images.items():
            atomic_write_bytes(png_path(run_dir, s, i, sample), encode_png(img))
        write_subject_scores(
            nsd,
            s,
            subject_scopes(nsd, s, [("nsdbench-v1", split)]),
            images,
            ScoreOptions("tiny", "cpu"),
            {"nsdbench-v1": score_path(run_dir, s, "nsdbench-v1")},
            {"nsdbench-v1": rid},
        )
    store = Store(db)
    record = store.new_run_record(
        kind="run",
        method=method,
        subjects=subjects,
        split="nsd982",
        protocol=get_protocol("nsdbench-v1"),
        weights_mode="tiny",
        run_id=rid,
        run=spec.run_id,
        seeds={"base_seed": 0, "samples": 1},
        data=data,
        config={"run_dir": str(run_dir), **spec.identity()},
    )
    store.ingest(record, [score_path(run_dir, s, "nsdbench-v1") for s in subjects], n_resamples=200)
    return rid, run_dir


def make_score_run(base: Path, nsd, data: str, db: Path, n_ids: int = 4) -> tuple[str, Path]:
    """A small real `score` run of subject 1 only: a blurred npz submission written by `nsdbench
    submission demo`, scored by the real scoring path and recorded as `nsdbench score` records it."""
    from nsdbench.leaderboards.store import Store
    from nsdbench.metrics.protocols import get_protocol
    from nsdbench.submissions.validation import load_submission

    subjects = (1,)
    path = base / "blur.npz"
    assert (
        main(
            [
                "submission",
                "demo",
                str(path),
                "--data",
                data,
                "--subjects",
                "1",
                "--limit",
                str(n_ids),
                "--format",
                "npz",
            ]
        )
        == 0
    )
    from nsdbench.metrics.engine import ScoreOptions
    from nsdbench.scoring import subject_scopes, write_subject_scores

    run_id = "blur-demo-0001"
    sub = load_submission(path, subjects=subjects)
    sub.resolve(nsd, "nsd982")
    files = []
    for s in subjects:
        images = {(e.nsd_id, e.sample): sub.image(e) for e in sub.entries_for(s)}
        files.append(
            write_subject_scores(
                nsd,
                s,
                subject_scopes(nsd, s, [("nsdbench-v1", "nsd982")]),
                images,
                ScoreOptions("tiny", "cpu"),
                {"nsdbench-v1": base / f"blur-subj{s:02d}.parquet"},
                {"nsdbench-v1": run_id},
            )["nsdbench-v1"]
        )
    store = Store(db)
    record = store.new_run_record(
        kind="score",
        method="blur (demo)",
        subjects=subjects,
        split="nsd982",
        protocol=get_protocol("nsdbench-v1"),
        weights_mode="tiny",
        run_id=run_id,
        device="cpu",
        submission_sha256=sub.sha256(),
        data=data,
        config={"submission": str(path), "format": sub.fmt, "order": None, "ids": None},
    )
    store.ingest(record, files, n_resamples=200)
    return run_id, path


@pytest.fixture(scope="module")
def runs(synth_root: Path, nsd, tmp_path_factory: pytest.TempPathFactory):
    """Three runs in a private leaderboard: the ground truth itself, a shuffled baseline (both `run`
    runs with a run folder, subjects 1 and 2) and a blurred submission (a `score` run, subject 1)."""
    base = tmp_path_factory.mktemp("report-runs")
    db = base / "lb.duckdb"
    made = {
        "ground-truth": make_run(base, nsd, str(synth_root), db, "ground-truth", lambda k, n: k),
        "shuffled": make_run(base, nsd, str(synth_root), db, "shuffled", lambda k, n: (k + 1) % n),
        "blur": make_score_run(base, nsd, str(synth_root), db),
    }
    return db, made


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_renders_in_chromium(runs, tmp_path: Path, capsys):
    from nsdbench.leaderboards.store import Store

    db, made = runs
    ids = [made["ground-truth"][0], made["shuffled"][0], made["blur"][0]]
    page = tmp_path / "report.html"
    capsys.readouterr()
    rc = main(["report", *ids, "--db", str(db), "--out", str(page), "--n", "4", "--k", str(K), "--json"])
    assert rc == 0
    info = json.loads(capsys.readouterr().out)
    assert info["out"] == str(page) and info["notes"] == []
    assert page.stat().st_size < 5_000_000

    shot = tmp_path / "shot.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,1600", page.as_uri())
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (1600, 1280)
    assert pixels.std() > 20  # not a blank page
    assert (pixels < 200).mean() > 0.05  # text, tables and images were drawn

    dom = chromium(tmp_path, "--dump-dom", page.as_uri()).stdout
    p = DomParser()
    p.feed(dom)
    summary = json.loads(p.summary)
    store = Store(db)
    # metrics whose per-image values differ get K best + K worst pairs; a constant one (the ground-truth
    # run scores 1.0 everywhere) is one line of text
    distinct = {r: store.image_scores(r).groupby("metric")["value"].nunique() for r in ids}
    ranked = {r: int((d > 1).sum()) for r, d in distinct.items()}
    assert ranked[ids[0]] < len(distinct[ids[0]]) and ranked[ids[1]] == len(distinct[ids[1]])
    grid = {int(k): v for k, v in summary["grid_ids"].items()}
    assert grid.keys() == {1, 2} and all(len(v) == 4 for v in grid.values())
    n_grid = sum(len(v) for v in grid.values())
    n_grid_rec = sum(len(v) * sum(s in store.run(r)["subjects"] for r in ids) for s, v in grid.items())
    assert n_grid_rec == 4 * 3 + 4 * 2  # the score run has subject 1 only
    classes = [i.get("class") for i in p.imgs]
    pairs = sum(ranked[r] * 2 * K for r in ids)
    assert classes.count("thumb gt") == n_grid + pairs
    assert classes.count("thumb rec") == n_grid_rec + pairs
    assert classes.count("plot") == 1
    assert len(p.imgs) == n_grid + n_grid_rec + 2 * pairs + 1
    assert all(i["src"].startswith("data:image/") for i in p.imgs)
    assert dom.count("every image scores") == sum(int((d == 1).sum()) for d in distinct.values())

    # the tables show exactly the stored aggregates (mean row + one row per subject, every metric)
    stored = {}
    for r in ids:
        for row in store.aggregates(r).itertuples():
            stored[(r, str(row.subject), row.metric)] = float(row.mean)
    shown = {(c["data-run"], c["data-subject"], c["data-metric"]): c for c in p.cells}
    assert shown.keys() == stored.keys()
    for key, cell in shown.items():
        assert float(cell["data-value"]) == stored[key]
        assert cell["text"].strip() == f"{stored[key]:.3f}"


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_from_run_folder_marks_missing_images(runs, tmp_path: Path):
    _, made = runs
    _, run_dir = made["shuffled"]
    folder = tmp_path / "copy"
    shutil.copytree(run_dir, folder)
    gone = sorted((folder / "subj01").glob("*_0.png"))[:2]
    gone_ids = [int(p.name.split("_")[0]) for p in gone]
    gone[0].unlink()  # deleted
    gone[1].write_bytes(gone[1].read_bytes()[:40])  # truncated: unreadable
    keep = int(sorted((folder / "subj01").glob("*_0.png"))[2].name.split("_")[0])
    page = tmp_path / "folder.html"
    rc = main(
        [
            "report",
            str(folder),
            "--out",
            str(page),
            "--ids",
            ",".join(map(str, [*gone_ids, keep])),
            "--subjects",
            "1",
            "--k",
            "0",
        ]
    )
    assert rc == 0
    dom = chromium(tmp_path, "--dump-dom", page.as_uri()).stdout
    p = DomParser()
    p.feed(dom)
    assert [i.get("class") for i in p.imgs].count("thumb rec") == 1
    assert [i.get("class") for i in p.imgs].count("thumb gt") == 3
    assert dom.count('class="tile missing"') == 2
    assert "subject 1: 2 reconstructions of run" in dom
    assert f"cannot read {gone[1]}" in dom


def test_report_of_a_deleted_run_is_one_line_error(runs, tmp_path: Path, capsys):
    from nsdbench.leaderboards.store import Store

    db, made = runs
    copy = tmp_path / "lb.duckdb"
    shutil.copyfile(db, copy)
    run_id = made["shuffled"][0]
    Store(copy).delete(run_id)
    capsys.readouterr()
    rc = main(["report", run_id, "--db", str(copy), "--out", str(tmp_path / "x.html")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and f"run {run_id!r} not found" in err and str(copy) in err
    assert not (tmp_path / "x.html").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no-such-run"], "not found"),
        (["{file}"], "not a file"),
        (["{tmp}"], "not a run folder"),
        (["{gt}", "--subjects", "5"], "none of --subjects"),
        (["{gt}", "--ids", "3,x"], "--ids: 'x' is not an integer"),
        (["{gt}", "--n", "0"], "--n must be positive"),
    ],
)
def test_bad_arguments_are_one_line_usage_errors(runs, tmp_path: Path, capsys, args, message):
    db, made = runs
    (tmp_path / "f.txt").write_text("x")
    subst = {"{file}": str(tmp_path / "f.txt"), "{tmp}": str(tmp_path), "{gt}": str(made["ground-truth"][1])}
    argv = ["report", *[subst.get(a, a) for a in args], "--db", str(db), "--out", str(tmp_path / "x.html")]
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert message in err and len(err.splitlines()) == 1


def test_leaderboard_run_whose_folder_is_gone_gives_a_marked_page(runs, tmp_path: Path, capsys):
    """The scores survive in the leaderboard; the page says the images are gone and shows placeholders."""
    db, made = runs
    run_id, run_dir = made["shuffled"]
    moved = tmp_path / "moved"
    shutil.move(run_dir, moved)
    try:
        page = tmp_path / "gone.html"
        capsys.readouterr()
        rc = main(["report", run_id, "--db", str(db), "--out", str(page), "--n", "3", "--k", "1", "--json"])
        assert rc == 0
        info = json.loads(capsys.readouterr().out)
    finally:
        shutil.move(moved, run_dir)
    html = page.read_text()
    assert any("no longer exist" in n for n in info["notes"])
    assert html.count('class="thumb rec"') == 0
    assert html.count('class="tile missing"') == 2 * 3  # 2 subjects x 3 grid images
    assert html.count('class="thumb gt"') >= 6  # ground truth still shown
    assert 'data-metric="ssim"' in html  # and the stored scores


def test_subject_filter_drops_the_cross_subject_mean(runs, tmp_path: Path):
    db, made = runs
    run_id = made["shuffled"][0]
    page = tmp_path / "s1.html"
    assert (
        main(
            ["report", run_id, "--db", str(db), "--out", str(page), "--subjects", "1", "--n", "2", "--k", "0"]
        )
        == 0
    )
    html = page.read_text()
    assert 'data-subject="1"' in html
    assert 'data-subject="2"' not in html and 'data-subject="mean"' not in html
    assert 'id="subj01"' in html and 'id="subj02"' not in html


def test_run_folder_not_scored_yet_shows_its_images(runs, tmp_path: Path, capsys):
    _, made = runs
    folder = tmp_path / "unscored"
    shutil.copytree(made["shuffled"][1], folder)
    shutil.rmtree(folder / "scores")
    page = tmp_path / "u.html"
    capsys.readouterr()
    assert main(["report", str(folder), "--out", str(page), "--n", "3", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert sum("has no scores" in n for n in info["notes"]) == 2
    html = page.read_text()
    assert "No scores recorded for these runs." in html
    assert html.count('class="thumb rec"') == 6 and html.count('class="thumb gt"') == 6
    assert 'class="plot"' not in html


def test_stage1_extras_are_shown_beside_the_final_images(runs, tmp_path: Path, capsys):
    """A run folder's image extras (`<id>_<sample>.stage1.png`) become a column next to the run's own."""
    from nsdbench.runs.folder import encode_png
    from nsdbench.runs.scores import row_id

    _, made = runs
    folder = tmp_path / "staged"
    shutil.copytree(made["shuffled"][1], folder)
    finals = sorted((folder / "subj01").glob("*_0.png"))
    for f in finals:
        (folder / "subj01" / f.name.replace(".png", ".stage1.png")).write_bytes(
            encode_png(np.full((32, 32, 3), 7, np.uint8))
        )
    ids = [int(f.name.split("_")[0]) for f in finals]
    page = tmp_path / "staged.html"
    capsys.readouterr()
    assert main(["report", str(folder), "--out", str(page), "--ids", ",".join(map(str, ids)), "--subjects", "1",
                 "--k", "0", "--json"]) == 0  # fmt: skip
    info = json.loads(capsys.readouterr().out)
    own = next(r for r in info["runs"] if not r.endswith(":stage1"))
    assert own.endswith("@nsdbench-v1") and info["runs"] == [own, f"{own}:stage1"]
    html = page.read_text()
    assert "shuffled · stage1" in html
    assert html.count('class="thumb rec"') == 2 * len(ids)  # final and stage-1 image of every id
    # the scores are the final images', unchanged by the extras
    assert row_id(own.split("@")[0], "nsdbench-v1") == own
