"""The report page from hand-built ReportData: image choice, extremes, tables, tiles, missing inputs."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nsdbench.errors import UsageError
from nsdbench.leaderboards.aggregate import aggregate_scores
from nsdbench.report.data import ReportData, ReportOptions, RunInfo, choose_ids, extremes
from nsdbench.report.page import render_report
from nsdbench.report.sources import published_rows

METRICS = ["pixcorr", "ssim", "clip_2way", "effnet_b"]


class PageParser(HTMLParser):
    """Collects <img> attributes, score cells, 'missing' tiles and the JSON summary of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[dict[str, str]] = []
        self.cells: list[dict[str, str]] = []
        self.missing = 0
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.imgs.append(a)
        if tag == "td" and "data-metric" in a:
            self.cells.append(a)
        if tag == "div" and a.get("class") == "ph":
            self.missing += 1
        for key in ("src", "href"):
            if a.get(key, "").startswith(("http:", "https:", "//")):
                self.external.append(a[key])
        if tag in ("link", "iframe") or (tag == "script" and "src" in a):
            self.external.append(tag)


def parse(page: str) -> PageParser:
    p = PageParser()
    p.feed(page)
    return p


def build(
    nsd,
    n_ids: int = 12,
    subjects=(1, 2),
    drop: set | None = None,
    runs=("good", "shuffled"),
    seed=0,
    metrics=METRICS,
):
    """Two runs over the synthetic NSD: 'good' = noisy ground truth, 'shuffled' = another test image."""
    from nsdbench.nsd.splits import get_split

    rng = np.random.default_rng(seed)
    ids = list(get_split(nsd, "nsd982", subjects[0]).test_ids[:n_ids])
    gt = dict(zip(ids, nsd.images(ids), strict=True))
    drop = drop or set()
    recs, rows = {}, []
    for r in runs:
        for s in subjects:
            for k, i in enumerate(ids):
                if r == "good":
                    noise = rng.integers(-40, 40, size=gt[i].shape)
                    img = np.clip(gt[i].astype(int) + noise, 0, 255).astype(np.uint8)
                else:
                    img = gt[ids[(k + 1) % len(ids)]]
                if (r, s, i) not in drop:
                    recs[(r, s, i)] = img
                for m in metrics:
                    rows.append((r, s, i, m, float(rng.random())))
    scores = pd.DataFrame(rows, columns=["run", "subject", "nsd_id", "metric", "value"])
    aggs = []
    for r in runs:
        a = aggregate_scores(scores[scores["run"] == r].drop(columns="run"), n_resamples=200)
        aggs.append(a.assign(run=r))
    infos = [
        RunInfo(
            r,
            f"{r} method",
            "run",
            "brain-diffuser-2023",
            tuple(subjects),
            "nsd982",
            True,
            "/tmp/x",
            {"seed": 0, "device": "cpu", "weights_sha256": {"alexnet": "ab" * 32}},
        )
        for r in runs
    ]
    return ReportData(
        runs=infos,
        aggregates=pd.concat(aggs, ignore_index=True),
        image_scores=scores,
        recon=lambda r, s, i: recs.get((r, s, i)),
        gt=lambda q: {i: gt[i] for i in q if i in gt},
    ), ids


def test_choose_ids_is_seeded_shared_and_pinnable(nsd):
    data, ids = build(nsd, n_ids=30)
    a = choose_ids(data, n=8, seed=3)
    assert a == choose_ids(data, n=8, seed=3)  # deterministic
    assert a[1] == a[2] and len(a[1]) == 8 and a[1] == sorted(a[1])  # same images for every subject
    assert set(a[1]) <= set(ids)
    assert choose_ids(data, n=8, seed=4) != a  # the seed matters (30 choose 8: a collision is ~1e-7)
    assert choose_ids(data, n=100, seed=3)[1] == sorted(ids)  # fewer candidates than n: all of them
    assert choose_ids(data, n=8, seed=3, ids=[ids[5], ids[2], ids[5]]) == {
        1: [ids[5], ids[2]],
        2: [ids[5], ids[2]],
    }
    with pytest.raises(UsageError):
        choose_ids(data, n=0, seed=0)
    outside = max(ids) + 1
    with pytest.raises(UsageError, match=f"NSD id {outside} is not an image of run"):
        choose_ids(data, n=8, seed=3, ids=[ids[0], outside])


def test_extremes_follow_metric_direction_with_stable_ties(nsd):
    data, _ = build(nsd)
    s = data.image_scores
    for metric, higher in (("ssim", True), ("effnet_b", False)):
        best, worst = extremes(data, "good", metric, 3)
        rows = s[(s["run"] == "good") & (s["metric"] == metric)]
        ranked = sorted(rows["value"], reverse=higher)
        assert list(best["value"]) == ranked[:3]
        assert list(worst["value"]) == ranked[::-1][:3]
    tied = data.image_scores.assign(value=0.5)
    data.image_scores = tied
    best, _ = extremes(data, "good", "ssim", 4)
    assert list(zip(best["subject"], best["nsd_id"], strict=True)) == sorted(
        zip(best["subject"], best["nsd_id"], strict=True)
    )


def test_page_content_matches_inputs(nsd):
    data, _ = build(nsd)
    opt = ReportOptions(n=6, seed=1, k_extremes=2, thumb=96)
    page, grid_ids, notes = render_report(data, opt)
    p = parse(page)
    assert not p.external, p.external  # self-contained
    assert notes == []
    n_sub, n_runs, n_metrics = 2, 2, len(METRICS)
    gt = [i for i in p.imgs if i.get("class") == "thumb gt"]
    rec = [i for i in p.imgs if i.get("class") == "thumb rec"]
    plots = [i for i in p.imgs if i.get("class") == "plot"]
    extremes_pairs = n_runs * n_metrics * 2 * opt.k_extremes
    assert len(gt) == n_sub * 6 + extremes_pairs
    assert len(rec) == n_sub * 6 * n_runs + extremes_pairs
    assert len(plots) == 1
    assert len(p.imgs) == len(gt) + len(rec) + len(plots)
    # every table cell is one stored aggregate, at full precision
    agg = data.aggregates.set_index(["run", "subject", "metric"])["mean"]
    assert len(p.cells) == n_runs * n_metrics * (1 + n_sub)  # mean table + per-subject table
    for c in p.cells:
        assert float(c["data-value"]) == agg[(c["data-run"], c["data-subject"], c["data-metric"])]
    # thumbnails are small JPEGs no larger than --thumb (64-px synthetic images are not upscaled)
    head, b64 = gt[0]["src"].split(",", 1)
    assert head == "data:image/jpeg;base64"
    assert max(Image.open(io.BytesIO(base64.b64decode(b64))).size) <= 96
    # captions carry NSD ids; the JSON summary records the choice
    for i in grid_ids[1]:
        assert f"nsd {i}</figcaption>" in page
    assert re.search(r'"grid_ids": \{"1": \[', page)


def test_missing_reconstructions_become_labelled_tiles(nsd):
    _, ids = build(nsd)
    drop = {("good", 1, ids[0]), ("good", 1, ids[1]), ("shuffled", 2, ids[0])}
    data, _ = build(nsd, drop=drop)
    page, _, notes = render_report(data, ReportOptions(ids=tuple(ids[:4]), k_extremes=0))
    p = parse(page)
    assert p.missing == 3
    assert page.count('<figure class="tile missing"') == 3
    assert "subject 1: 2 reconstructions of run good missing (shown as 'missing' tiles)" in notes
    assert "subject 2: 1 reconstruction of run shuffled missing (shown as 'missing' tiles)" in notes
    assert "Incomplete inputs" in page
    assert len([i for i in p.imgs if i.get("class") == "thumb rec"]) == 2 * 4 * 2 - 3


def test_report_is_deterministic_apart_from_its_date(nsd, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    data, _ = build(nsd)
    a, _, _ = render_report(data, ReportOptions(n=5, seed=2))
    b, _, _ = render_report(data, ReportOptions(n=5, seed=2))
    assert a == b


def test_published_rows_match_split_subjects_and_protocol():
    def run(protocol, split, subjects):
        return RunInfo("r", "r", "run", protocol, subjects, split)

    bd = published_rows([run("brain-diffuser-2023", "nsd982", (1, 2, 5, 7))])
    assert list(bd["method"]) == ["Takagi et al.", "Gu et al.", "Brain-Diffuser"]
    assert set(bd["source"]) == {"brain-diffuser-2023"}
    ss = published_rows([run("second-sight-2023", "nsd897", (1,))])
    assert "Second Sight" in set(ss["method"]) and set(ss["subjects"]) == {"1"}
    assert not ss["note"].str.contains("ablation|search iteration").any()
    # a protocol of nsdbench's own: every paper's rows on that split and subject set
    v1 = published_rows([run("nsdbench-v1", "nsd897", (1, 2, 5, 7))])
    assert set(v1["source"]) == {"second-sight-2023"} and len(v1) == 5
    assert published_rows([run("nsdbench-v1", "nsd982", (1, 2))]) is None
    # a paper's protocol is matched by the table's protocol column, not by a source name
    me = published_rows([run("mindeye", "nsd1000", (1, 2, 5, 7))])
    assert set(me["protocol"]) == {"mindeye"} and set(me["source"]) == {"mindeye2-2024"} and len(me) == 7
    assert published_rows([run("mindeye", "nsd982", (1, 2, 5, 7))]) is None  # no mindeye rows on nsd982


def test_empty_inputs_are_usage_errors():
    with pytest.raises(UsageError, match="at least one run"):
        ReportData([], None, None, lambda *a: None, lambda q: {})
    with pytest.raises(UsageError, match="lacks columns"):
        ReportData(
            [RunInfo("a", "a", "run", "p", (1,))],
            pd.DataFrame({"run": ["a"]}),
            None,
            lambda *a: None,
            lambda q: {},
        )


def test_thumbnail_budget_math():
    from nsdbench.report.html import thumbnail_pixels

    assert thumbnail_pixels(0, 112, 25_000_000) == 112
    assert thumbnail_pixels(600, 112, 25_000_000) == 112  # the default page: 4 subjects x 48 images x 3 rows
    # 4 subjects x 982 images, ground truth + 1 run, plus 17 metrics x 4 best/worst pairs
    px = thumbnail_pixels(4 * 982 * 2 + 17 * 16, 112, 25_000_000)
    assert 64 <= px < 112
    assert thumbnail_pixels(10**7, 112, 25_000_000) == 48  # never below 48 px


def test_page_of_natural_images_stays_within_its_byte_budget():
    """4 subjects x 150 images of natural 425-px images with a 3 MB budget: thumbnails shrink to fit."""
    from skimage import data as skdata

    bases = [
        np.asarray(Image.fromarray(f()).convert("RGB").resize((425, 425)))
        for f in (skdata.astronaut, skdata.coffee, skdata.chelsea, skdata.rocket)
    ]
    rng = np.random.default_rng(0)

    def image(i: int) -> np.ndarray:
        b = bases[i % len(bases)]
        return np.roll(b, shift=(int(rng.integers(0, 425)), int(rng.integers(0, 425))), axis=(0, 1))

    ids = list(range(150))
    gt = {i: image(i) for i in ids}
    subjects = (1, 2, 5, 7)
    scores = pd.DataFrame(
        [("r", s, i, "ssim", float(rng.random())) for s in subjects for i in ids],
        columns=["run", "subject", "nsd_id", "metric", "value"],
    )
    data = ReportData(
        runs=[RunInfo("r", "r", "score", "nsdbench-v1", subjects, "nsd982")],
        aggregates=aggregate_scores(scores.drop(columns="run"), n_resamples=50).assign(run="r"),
        image_scores=scores,
        recon=lambda r, s, i: gt[(i + 1) % 150],
        gt=lambda q: {i: gt[i] for i in q},
    )
    budget = 3_000_000
    page, _, notes = render_report(data, ReportOptions(n=150, k_extremes=4, max_bytes=budget))
    n_thumbs = 4 * 150 * 2 + 2 * 4 * 2
    assert any(f"{n_thumbs} thumbnails: encoded at" in n for n in notes)
    thumbs = [i for i in parse(page).imgs if i.get("class", "").startswith("thumb")]
    assert len(thumbs) == n_thumbs
    thumb_bytes = sum(len(i["src"]) for i in thumbs)
    assert 0.6 * budget < thumb_bytes < 1.1 * budget, thumb_bytes
    assert len(page.encode()) < 1.1 * budget + 500_000  # the rest of the page is small


def test_ground_truth_root_never_falls_back_silently(tmp_path):
    from nsdbench.errors import DataError
    from nsdbench.report.sources import ground_truth_root

    notes: list[str] = []
    assert ground_truth_root([("a", f"synthetic:{tmp_path}")], notes) == str(tmp_path)
    assert ground_truth_root([("a", "synthetic")], notes) == "synthetic"
    assert ground_truth_root([("a", "")], notes) is None and notes == []
    with pytest.raises(DataError, match="run a was scored against the NSD at /no/such/nsd.*--data"):
        ground_truth_root([("a", "/no/such/nsd")], notes)
    assert ground_truth_root([("a", str(tmp_path)), ("b", "synthetic")], notes) == str(tmp_path)
    assert len(notes) == 1 and "different NSD roots" in notes[0]


def test_two_runs_get_a_run_vs_run_section_equal_to_the_paired_bootstrap(nsd):
    from nsdbench.metrics.bootstrap import paired_bootstrap

    data, _ = build(nsd, n_ids=8)
    page, _, _ = render_report(data, ReportOptions(n=4, k_extremes=1, thumb=64))
    assert 'href="#run-vs-run"' in page and '<section id="run-vs-run">' in page
    rows = dict(
        re.findall(r'<tr data-metric="(\w+)" (data-diff="[^"]+" data-lo="[^"]+" data-hi="[^"]+")', page)
    )
    assert sorted(rows) == sorted(METRICS)
    s = data.image_scores.sort_values(["subject", "nsd_id"])
    for m, attrs in rows.items():
        a = s[(s["run"] == "good") & (s["metric"] == m)]["value"].to_numpy()
        b = s[(s["run"] == "shuffled") & (s["metric"] == m)]["value"].to_numpy()
        diff, lo, hi, _p = paired_bootstrap(a, b, n_resamples=2000, seed=0)  # `nsdbench compare` defaults
        got = [float(x) for x in re.findall(r'"([^"]+)"', attrs)]
        assert got == [float(diff), float(lo), float(hi)]
        assert abs(diff - (a.mean() - b.mean())) < 1e-12
    one, _ = build(nsd, n_ids=8, runs=("good",))
    assert "run-vs-run" not in render_report(one, ReportOptions(n=4, k_extremes=1, thumb=64))[0]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WIDTH_PROBE = (
    "<script>var d=document.documentElement, t=document.getElementById('leaderboard-table').parentElement;"
    "document.body.setAttribute('data-probe', [d.scrollWidth, window.innerWidth, t.scrollWidth, t.clientWidth,"
    "getComputedStyle(t).overflowX].join(','));</script></body>"
)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_wide_tables_scroll_in_their_own_box_not_the_page(nsd, tmp_path):
    """A leaderboard with every metric is wider than a 1400 px window: the table scrolls, the page does not."""
    from nsdbench.metrics.names import METRIC_ORDER

    data, _ = build(nsd, n_ids=6, metrics=list(METRIC_ORDER))
    page, _, _ = render_report(data, ReportOptions(n=4, k_extremes=1, thumb=64))
    path = tmp_path / "report.html"
    path.write_text(page.replace("</body>", WIDTH_PROBE, 1))
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--hide-scrollbars",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1400,900",
        "--dump-dom",
        path.as_uri(),
    ]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=True).stdout
    probe = re.search(r'data-probe="([^"]+)"', dom)
    assert probe, dom[:500]
    page_w, window_w, table_w, box_w, overflow = probe.group(1).split(",")
    assert int(page_w) <= int(window_w)  # no sideways scrolling of the page
    assert int(table_w) > int(box_w)  # the table is wider than its box ...
    assert overflow == "auto"  # ... and scrolls inside it
