"""HTML for `nsdbench report`: one self-contained page (inline CSS, images as base64 data URIs, no scripts).

Every <img> is either a thumbnail (class "thumb gt" or "thumb rec") or the distribution plot (class
"plot"); a reconstruction or ground truth that cannot be read becomes a "missing" tile instead.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

import nsdbench
from nsdbench.report.data import (
    ReportData,
    ReportOptions,
    extremes,
    higher_is_better,
    metric_label,
)

GRID_COLUMNS = 10  # images per grid row block
GT_CHUNK = 64  # ground-truth images read at once
# Size of one base64 JPEG (quality 85) thumbnail of edge p: about THUMB_BYTES_FIXED + THUMB_BYTES_PER_PIXEL * p^2,
# fitted (rounded up) on natural 425-px images (scikit-image astronaut, coffee, chelsea, rocket, hubble) at
# 48-128 px, where it is 1.6-6.8 kB. Used to keep a page within its byte budget.
THUMB_BYTES_FIXED = 800
THUMB_BYTES_PER_PIXEL = 0.40
CAPTION_PREFERENCE = (("clip_2way", "inception", "alexnet5", "alexnet2", "clip_cos"), ("ssim", "pixcorr"))
PROVENANCE_FIRST = (
    "protocol",
    "protocol_name",
    "protocol_version",
    "protocol_hash",
    "split",
    "method",
    "variant",
    "submission",
    "weights_mode",
    "weights",
    "seed",
    "seeds",
    "device",
    "versions",
    "nsdbench_version",
    "torch_version",
    "python_version",
    "created",
    "created_at",
    "command",
)

# `nsdbench compare` defaults, so the report's run-vs-run numbers are the ones it prints.
COMPARE_RESAMPLES = 2000
COMPARE_SEED = 0

CSS = """
:root { --thumb: %(thumb)dpx; --small: %(small)dpx; --ink: #1d2430; --muted: #6b7480; --line: #dde2e8;
  --accent: #2f5d8a; --bad: #a33a2c; --bg: #ffffff; --panel: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 -apple-system, "Segoe UI", "Helvetica Neue", Arial, sans-serif;
  color: var(--ink); background: var(--bg); }
header { padding: 22px 32px 14px; border-bottom: 1px solid var(--line); background: var(--panel); }
header h1 { margin: 0 0 4px; font-size: 22px; font-weight: 600; }
header .sub { color: var(--muted); }
nav { padding: 8px 32px; border-bottom: 1px solid var(--line); font-size: 13px; }
nav a { color: var(--accent); text-decoration: none; margin-right: 16px; }
main { padding: 8px 32px 40px; max-width: 1800px; min-width: 0; }
.scroll { overflow-x: auto; max-width: 100%%; margin-bottom: 6px; }
section { margin-top: 26px; }
h2 { font-size: 18px; font-weight: 600; border-bottom: 2px solid var(--ink); padding-bottom: 3px; margin: 0 0 10px; }
h3 { font-size: 15px; font-weight: 600; margin: 18px 0 6px; }
p.lead { color: var(--muted); margin: 0 0 10px; max-width: 70em; }
.notes { border-left: 4px solid var(--bad); background: #fbefed; padding: 8px 14px; margin-top: 18px; }
.notes li { margin: 2px 0; }
table.scores { border-collapse: collapse; font-variant-numeric: tabular-nums; font-size: 13px; }
table.scores th, table.scores td { padding: 4px 8px; border-bottom: 1px solid var(--line); text-align: right;
  vertical-align: top; white-space: nowrap; }
table.scores th { font-weight: 600; background: var(--panel); }
table.scores th.name, table.scores td.name { text-align: left; }
table.scores td.best { font-weight: 700; }
table.scores tbody.reported td { color: var(--muted); font-style: italic; }
table.scores tbody.reported tr:first-child td { border-top: 2px solid var(--line); }
table.scores small { display: block; font-weight: 400; color: var(--muted); font-size: 11px; }
.badge { display: inline-block; font-size: 10px; font-style: normal; padding: 0 5px; border-radius: 3px;
  margin-left: 4px; background: #e6edf5; color: var(--accent); vertical-align: 1px; }
.badge.smoke { background: #fbefe0; color: #8a5a12; }
.rid { color: var(--muted); font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 11px; }
.grid { display: grid; gap: 6px 4px; align-items: start; margin-bottom: 18px; padding-bottom: 10px;
  border-bottom: 1px dashed var(--line); }
.rowlabel { font-size: 12px; font-weight: 600; align-self: center; padding-right: 6px; overflow-wrap: anywhere; }
figure { margin: 0; }
.tile { width: 100%%; min-width: 0; }
.tile img, .tile .ph { width: 100%%; aspect-ratio: 1 / 1; height: auto; display: block; object-fit: cover;
  border-radius: 2px; background: #eee; }
.tile figcaption, .pair figcaption { font-size: 11px; color: var(--muted); line-height: 1.25; margin-top: 2px;
  white-space: nowrap; overflow: hidden; text-overflow: ellipsis; font-variant-numeric: tabular-nums; }
.missing .ph, .pair .ph { display: flex; align-items: center; justify-content: center; color: var(--bad);
  font-size: 11px; font-weight: 600; text-transform: uppercase; letter-spacing: .05em;
  background: repeating-linear-gradient(45deg, #f7f7f7, #f7f7f7 6px, #efefef 6px, #efefef 12px);
  border: 1px dashed #c9a19b; }
table.extremes { border-collapse: collapse; }
table.extremes th, table.extremes td { border-bottom: 1px solid var(--line); padding: 6px 10px 6px 0;
  vertical-align: top; text-align: left; }
table.extremes th.metric { font-size: 12px; white-space: nowrap; }
table.extremes td.same { color: var(--muted); font-size: 12px; }
.strip { display: flex; gap: 8px; }
.pair { width: calc(2 * var(--small) + 2px); }
.pair .imgs { display: flex; gap: 2px; }
.pair img, .pair .ph { width: var(--small); height: var(--small); display: block; border-radius: 2px; }
img.plot { max-width: 100%%; height: auto; border: 1px solid var(--line); }
.prov { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(460px, 100%%), 1fr)); gap: 14px; }
.card { border: 1px solid var(--line); border-radius: 4px; padding: 8px 12px; background: var(--panel); }
.card h3 { margin-top: 2px; }
.card details table { margin-top: 4px; }
.card table { border-collapse: collapse; font-size: 12px; width: 100%%; }
.card td { padding: 2px 6px 2px 0; vertical-align: top; border-bottom: 1px solid var(--line); }
.card td.k { color: var(--muted); white-space: nowrap; width: 1%%; }
.card td.v { font-family: ui-monospace, Menlo, Consolas, monospace; overflow-wrap: anywhere; }
details summary { cursor: pointer; color: var(--accent); margin: 8px 0; }
footer { color: var(--muted); font-size: 12px; padding: 14px 32px; border-top: 1px solid var(--line); }
footer code { font-size: 11px; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    try:
        f = float(value)
    except (TypeError, ValueError):
        return esc(value)
    return "–" if math.isnan(f) else f"{f:.{digits}f}"


def thumbnail_uri(image: np.ndarray, size: int) -> str:
    """A JPEG data URI no larger than size×size (never upscaled: the browser scales small images)."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.dtype != np.uint8:
        raise ValueError(f"thumbnail expects uint8 images, got {arr.dtype}")
    img = Image.fromarray(arr[..., :3])
    if max(img.size) > size:
        img.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def count_thumbnails(data: ReportData, grid_ids: Mapping[int, Sequence[int]], k: int) -> int:
    """How many thumbnails the page embeds (grids plus best/worst pairs), missing ones included."""
    grid = sum(len(ids) * (1 + sum(s in r.subjects for r in data.runs)) for s, ids in grid_ids.items())
    rows = data.image_scores.dropna(subset=["value"]).groupby(["run", "metric"])["value"]
    ranked = rows.size()[rows.nunique() > 1]  # constant metrics show no images
    return grid + int(sum(2 * 2 * min(k, int(n)) for n in ranked))


def thumbnail_pixels(n_thumbs: int, wanted: int, max_bytes: int) -> int:
    """The thumbnail edge: `wanted`, or smaller (not below 48 px) so n_thumbs fit in max_bytes."""
    if n_thumbs == 0:
        return wanted
    per_thumb = max_bytes / n_thumbs - THUMB_BYTES_FIXED
    fit = int((per_thumb / THUMB_BYTES_PER_PIXEL) ** 0.5) if per_thumb > 0 else 0
    return max(48, min(wanted, fit))


class _Page:
    """Builds the page; caches thumbnails so an image shown twice is encoded once."""

    def __init__(self, data: ReportData, grid_ids: Mapping[int, Sequence[int]], options: ReportOptions):
        self.data = data
        self.advance: Callable[[], None] = lambda: None
        self.grid_ids = grid_ids
        self.opt = options
        self.n_thumbs = count_thumbnails(data, grid_ids, options.k_extremes)
        self.pixels = thumbnail_pixels(self.n_thumbs, options.thumb, options.max_bytes)
        self.metrics = data.metrics()
        self._gt: dict[int, str | None] = {}
        self._rec: dict[tuple[str, int, int], str | None] = {}
        self.missing: dict[tuple[str, int], int] = {}  # (run or "ground truth", subject) -> count
        scores = data.image_scores
        self._per_image = {
            key: dict(zip(g["metric"], g["value"], strict=True))
            for key, g in scores.groupby(["run", "subject", "nsd_id"], sort=False)
        }

    # -- images -------------------------------------------------------------------------------
    def prefetch_gt(self, ids: Iterable[int]) -> None:
        """Read and encode ground truth in chunks, so full-size NSD images never pile up in memory."""
        todo = sorted({int(i) for i in ids} - set(self._gt))
        for start in range(0, len(todo), GT_CHUNK):
            chunk = todo[start : start + GT_CHUNK]
            got = self.data.gt(chunk)
            for i in chunk:
                img = got.get(i)
                self._gt[i] = None if img is None else thumbnail_uri(img, self.pixels)
                self.advance()

    def gt_uri(self, nsd_id: int) -> str | None:
        self.prefetch_gt([nsd_id])
        return self._gt[nsd_id]

    def rec_uri(self, run_id: str, subject: int, nsd_id: int) -> str | None:
        key = (run_id, subject, nsd_id)
        if key not in self._rec:
            img = self.data.recon(run_id, subject, nsd_id)
            self._rec[key] = None if img is None else thumbnail_uri(img, self.pixels)
            self.advance()
        return self._rec[key]

    def tile(
        self, uri: str | None, cls: str, alt: str, caption: str, title: str, who: tuple[str, int]
    ) -> str:
        if uri is None:
            self.missing[who] = self.missing.get(who, 0) + 1
            return (
                f'<figure class="tile missing" title="{esc(title)}"><div class="ph">missing</div>'
                f"<figcaption>{caption}</figcaption></figure>"
            )
        return (
            f'<figure class="tile"><img class="thumb {cls}" src="{uri}" alt="{esc(alt)}" '
            f'title="{esc(title)}"><figcaption>{caption}</figcaption></figure>'
        )

    def scores_of(self, run_id: str, subject: int, nsd_id: int) -> dict[str, float]:
        return self._per_image.get((run_id, subject, nsd_id), {})

    # -- sections -----------------------------------------------------------------------------
    def header(self) -> str:
        runs = ", ".join(esc(r.label) for r in self.data.runs)
        title = self.opt.title or f"Reconstruction report: {', '.join(r.label for r in self.data.runs)}"
        subjects = ", ".join(str(s) for s in self.data.subjects)
        protocols = ", ".join(sorted({r.protocol for r in self.data.runs if r.protocol})) or "–"
        when = _generated_at()
        return (
            f'<header><h1>{esc(title)}</h1><div class="sub">{len(self.data.runs)} run(s): {runs} · '
            f"subjects {esc(subjects)} · protocol {esc(protocols)} · nsdbench {esc(nsdbench.__version__)}"
            f" · {esc(when)}</div></header>"
        )

    def nav(self) -> str:
        links = [("leaderboard", "Leaderboard")]
        links += [(f"subj{s:02d}", f"Subject {s}") for s in self.data.subjects]
        if len(self.data.runs) > 1:
            links.append(("run-vs-run", "Run vs run"))
        if self.metrics and not self.data.image_scores.empty:
            links += [("extremes", "Best &amp; worst"), ("distributions", "Distributions")]
        links.append(("provenance", "Provenance"))
        return "<nav>" + "".join(f'<a href="#{a}">{t}</a>' for a, t in links) + "</nav>"

    def notes(self, extra: list[str]) -> str:
        items = list(self.data.notes) + extra
        if not items:
            return ""
        lis = "".join(f"<li>{esc(t)}</li>" for t in items)
        return f'<div class="notes" id="notes"><strong>Incomplete inputs</strong><ul>{lis}</ul></div>'

    def leaderboard(self) -> str:
        agg = self.data.aggregates
        metrics = [m for m in self.metrics if m in set(agg["metric"])]
        parts = ['<section id="leaderboard"><h2>Leaderboard</h2>']
        if not metrics:
            parts.append('<p class="lead">No scores recorded for these runs.</p></section>')
            return "".join(parts)
        parts.append(
            '<p class="lead">Mean over test images (then over subjects), with the 95% bootstrap interval '
            "below each value. ↑ higher is better, ↓ lower is better; the best run per column is bold. "
            "Reported rows are copied from the papers and were computed with their own code.</p>"
        )
        rows = []
        for r in self.data.runs:
            sub = agg[agg["run"] == r.run_id]
            key = (
                "mean"
                if (sub["subject"] == "mean").any()
                else (str(r.subjects[0]) if len(r.subjects) == 1 else None)
            )
            if key is None:
                continue
            rows.append((r, key, sub[sub["subject"] == key]))
        parts.append(self._score_table(metrics, rows, published=True, table_id="leaderboard-table"))
        per_subject = []
        for r in self.data.runs:
            sub = agg[agg["run"] == r.run_id]
            for s in sorted({x for x in sub["subject"] if x != "mean"}, key=lambda x: int(x)):
                per_subject.append((r, s, sub[sub["subject"] == s]))
        if per_subject:
            parts.append("<details open><summary>Per subject</summary>")
            parts.append(
                self._score_table(
                    metrics, per_subject, published=False, table_id="subject-table", subject_column=True
                )
            )
            parts.append("</details>")
        parts.append("</section>")
        return "".join(parts)

    def run_vs_run(self) -> str:
        """Each later run against the first: paired bootstrap of A − B per metric on the images both scored,
        the numbers `nsdbench compare A B` prints (2000 resamples, seed 0)."""
        from nsdbench.leaderboards.views import paired_differences

        runs = self.data.runs
        if len(runs) < 2:
            return ""
        scores = self.data.image_scores
        a = runs[0]
        parts = [
            (
                '<section id="run-vs-run"><h2>Run vs run</h2>'
                f'<p class="lead">A = {esc(a.label)} <span class="rid">{esc(a.run_id)}</span>. Per metric, the mean '
                "difference A − B over the images both runs scored, with its 95% paired-bootstrap interval "
                f"({COMPARE_RESAMPLES} resamples, seed {COMPARE_SEED}) and p-value, as <code>nsdbench compare</code>. "
                "<em>better</em> names the run that is better when the interval excludes 0.</p>"
            )
        ]
        for b in runs[1:]:
            parts.append(
                f'<h3>{esc(a.label)} − {esc(b.label)} <span class="rid">{esc(a.run_id)} − '
                f"{esc(b.run_id)}</span></h3>"
            )
            if a.protocol != b.protocol:
                parts.append(
                    f'<p class="lead">Not compared: scored under different protocols ({esc(a.protocol)} '
                    f"vs {esc(b.protocol)}), whose metrics are different quantities.</p>"
                )
                continue
            rows = paired_differences(
                scores[scores["run"] == a.run_id],
                scores[scores["run"] == b.run_id],
                n_resamples=COMPARE_RESAMPLES,
                seed=COMPARE_SEED,
            )
            if not rows:
                parts.append('<p class="lead">No images scored by both runs.</p>')
                continue
            body = []
            for r in rows:
                sig = r["ci_lo"] > 0 or r["ci_hi"] < 0
                better = ("A" if (r["diff"] > 0) == r["higher_is_better"] else "B") if sig else "–"
                arrow = "↑" if r["higher_is_better"] else "↓"
                body.append(
                    f'<tr data-metric="{esc(r["metric"])}" data-diff="{r["diff"]!r}" data-lo="{r["ci_lo"]!r}" '
                    f'data-hi="{r["ci_hi"]!r}"><td class="name">{esc(metric_label(r["metric"]))} {arrow}</td>'
                    f"<td>{r['n']}</td><td>{fmt(r['mean_a'], 4)}</td><td>{fmt(r['mean_b'], 4)}</td>"
                    f"<td>{r['diff']:+.4f} [{r['ci_lo']:+.4f}, {r['ci_hi']:+.4f}]</td><td>{r['p_value']:.4f}</td>"
                    f"<td>{better}</td></tr>"
                )
            parts.append(
                '<div class="scroll"><table class="scores compare"><thead><tr><th class="name">metric</th>'
                "<th>n</th><th>A</th><th>B</th><th>A − B [95% CI]</th><th>p</th><th>better</th></tr>"
                f"</thead><tbody>{''.join(body)}</tbody></table></div>"
            )
        parts.append("</section>")
        return "".join(parts)

    def _score_table(
        self, metrics: list[str], rows: list, published: bool, table_id: str, subject_column: bool = False
    ) -> str:
        head = ['<th class="name">Run</th>']
        if subject_column:
            head.append("<th>Subject</th>")
        head += [
            f'<th title="{esc(m)}">{esc(metric_label(m))} {"↑" if higher_is_better(m) else "↓"}</th>'
            for m in metrics
        ]
        best: set[tuple[str, str]] = set()
        groups: dict[str, list[tuple[str, float]]] = {}
        for r, key, sub in rows:
            for m, v in zip(sub["metric"], sub["mean"], strict=True):
                if v is not None and not (isinstance(v, float) and math.isnan(v)):
                    groups.setdefault(f"{key if subject_column else ''}|{m}", []).append((r.run_id, float(v)))
        for gkey, vals in groups.items():
            m = gkey.split("|", 1)[1]
            if len(vals) > 1:
                top = (max if higher_is_better(m) else min)(v for _, v in vals)
                for run_id, v in vals:
                    if round(v, 3) == round(top, 3):  # ties as displayed are all bold
                        best.add((gkey, run_id))
        body = []
        for r, key, sub in rows:
            by_metric = {m: row for m, row in zip(sub["metric"], sub.itertuples(index=False), strict=True)}
            badges = f'<span class="badge">{esc(r.kind)}</span>'
            if r.smoke:
                badges += '<span class="badge smoke">smoke</span>'
            cells = [
                f'<td class="name">{esc(r.label)}{badges}<br><span class="rid">{esc(r.run_id)}</span></td>'
            ]
            if subject_column:
                cells.append(f"<td>{esc(key)}</td>")
            for m in metrics:
                row = by_metric.get(m)
                if row is None:
                    cells.append("<td>–</td>")
                    continue
                gkey = f"{key if subject_column else ''}|{m}"
                cls = ' class="best"' if (gkey, r.run_id) in best else ""
                ci = ""
                if row.ci_lo is not None and not _isnan(row.ci_lo):
                    ci = f"<small>{fmt(row.ci_lo)}–{fmt(row.ci_hi)}</small>"
                n = "" if row.n is None or _isnan(row.n) else f", n={int(row.n)}"
                title = f"{metric_label(m)}: {float(row.mean):.6f}  95% CI [{fmt(row.ci_lo, 4)}, {fmt(row.ci_hi, 4)}]{n}"
                cells.append(
                    f'<td{cls} data-run="{esc(r.run_id)}" data-subject="{esc(key)}" data-metric="{esc(m)}" '
                    f'data-value="{float(row.mean)!r}" title="{esc(title)}">{fmt(row.mean)}{ci}</td>'
                )
            body.append("<tr>" + "".join(cells) + "</tr>")
        html_rows = "".join(body)
        reported = self._published_rows(metrics, subject_column) if published else ""
        return (
            f'<div class="scroll"><table class="scores" id="{table_id}"><thead><tr>{"".join(head)}</tr>'
            f"</thead><tbody>{html_rows}</tbody>{reported}</table></div>"
        )

    def _published_rows(self, metrics: list[str], subject_column: bool) -> str:
        pub = self.data.published
        if pub is None or pub.empty:
            return ""
        rows = []
        for rec in pub.to_dict("records"):
            label = f"{rec.get('method', '')}"
            subjects = str(rec.get("subjects", "")).replace("|", ",")
            src = f"reported: {rec.get('source', '')}, table {rec.get('table', '')}; subjects {subjects}"
            cells = [f'<td class="name">{esc(label)}<br><span class="rid">{esc(src)}</span></td>']
            if subject_column:
                cells.append("<td></td>")
            for m in metrics:
                cells.append(f"<td>{fmt(rec.get(m))}</td>")
            note = rec.get("note")
            title = f' title="{esc(note)}"' if isinstance(note, str) and note else ""
            rows.append(f"<tr{title}>" + "".join(cells) + "</tr>")
        return f'<tbody class="reported">{"".join(rows)}</tbody>'

    def caption_metrics(self) -> list[str]:
        present = set(self.data.image_scores["metric"])
        out = []
        for prefs in CAPTION_PREFERENCE:
            pick = next((m for m in prefs if m in present), None)
            if pick:
                out.append(pick)
        if not out:
            out = [m for m in self.metrics if m in present][:2]
        return out

    def grids(self) -> str:
        parts = []
        cap_metrics = self.caption_metrics()
        all_ids = {i for ids in self.grid_ids.values() for i in ids}
        self.prefetch_gt(all_ids)
        for s in self.data.subjects:
            ids = list(self.grid_ids.get(s, []))
            runs = [r for r in self.data.runs if s in r.subjects]
            scored = set(self.data.image_scores.loc[self.data.image_scores["subject"] == s, "nsd_id"])
            n_cand = len(scored | set(self.data.unscored_ids.get(s, ())))
            caps = " and ".join(esc(metric_label(m)) for m in cap_metrics)
            parts.append(f'<section id="subj{s:02d}"><h2>Subject {s}</h2>')
            if not ids:
                parts.append('<p class="lead">No reconstructions or scores for this subject.</p></section>')
                continue
            how = (
                "pinned with --ids"
                if self.opt.ids is not None
                else f"a seeded sample (seed {self.opt.seed}) of the {n_cand} test images with results"
            )
            parts.append(
                f'<p class="lead">{len(ids)} images, {how}. '
                f"Top row: the stimulus; below it each run's reconstruction (first sample)"
                f"{', captioned with its ' + caps if caps else ''}. Hover a tile for all its scores.</p>"
            )
            for start in range(0, len(ids), GRID_COLUMNS):
                block = ids[start : start + GRID_COLUMNS]
                cols = len(block)
                parts.append(
                    f'<div class="grid" style="grid-template-columns: 8.5rem repeat({cols}, minmax(40px, var(--thumb)))">'
                )
                parts.append('<div class="rowlabel">ground truth</div>')
                for i in block:
                    parts.append(
                        self.tile(
                            self.gt_uri(i),
                            "gt",
                            f"ground truth nsd {i}",
                            f"nsd {i}",
                            f"NSD id {i} (0-based)",
                            ("ground truth", s),
                        )
                    )
                for r in runs:
                    parts.append(f'<div class="rowlabel">{esc(r.label)}</div>')
                    for i in block:
                        sc = self.scores_of(r.run_id, s, i)
                        caption = (
                            "<br>".join(f"{esc(metric_label(m))} {fmt(sc.get(m), 2)}" for m in cap_metrics)
                            or f"nsd {i}"
                        )
                        title = f"{r.label} · subject {s} · nsd {i}\n" + "\n".join(
                            f"{metric_label(m)}: {fmt(sc[m], 4)}" for m in self.metrics if m in sc
                        )
                        parts.append(
                            self.tile(
                                self.rec_uri(r.run_id, s, i),
                                "rec",
                                f"{r.label} nsd {i}",
                                caption,
                                title,
                                (r.run_id, s),
                            )
                        )
                parts.append("</div>")
            parts.append("</section>")
        return "".join(parts)

    def extremes_section(self) -> str:
        if self.data.image_scores.empty:
            return ""
        k = self.opt.k_extremes
        intro = (
            '<section id="extremes"><h2>Best and worst images per metric</h2>'
            f'<p class="lead">For each run and metric, the {k} best and {k} worst reconstructions over all '
            "subjects (ground truth left, reconstruction right; caption: subject · NSD id · value). "
            "Ties are broken by subject, then NSD id.</p>"
        )
        parts = [intro]
        for r in self.data.runs:
            parts.append(f'<h3>{esc(r.label)} <span class="rid">{esc(r.run_id)}</span></h3>')
            parts.append(
                '<div class="scroll"><table class="extremes"><thead><tr><th></th><th>best</th><th>worst</th>'
                "</tr></thead><tbody>"
            )
            any_row = False
            for m in self.metrics:
                best, worst = extremes(self.data, r.run_id, m, k)
                if best.empty:
                    continue
                any_row = True
                arrow = "↑" if higher_is_better(m) else "↓"
                head = f'<tr><th class="metric">{esc(metric_label(m))} {arrow}</th>'
                if (
                    best["value"].iloc[0] == worst["value"].iloc[0]
                ):  # one value for every image: nothing to rank
                    parts.append(
                        f'{head}<td colspan="2" class="same">every image scores {fmt(best["value"].iloc[0])}'
                        "</td></tr>"
                    )
                    continue
                self.prefetch_gt(list(best["nsd_id"]) + list(worst["nsd_id"]))
                parts.append(
                    f"{head}<td>{self._strip(r, m, best)}</td><td>{self._strip(r, m, worst)}</td></tr>"
                )
            parts.append("</tbody></table></div>")
            if not any_row:
                parts.append('<p class="lead">No per-image scores for this run.</p>')
        parts.append("</section>")
        return "".join(parts)

    def _strip(self, run, metric: str, rows) -> str:
        out = ['<div class="strip">']
        for s, i, v in zip(rows["subject"], rows["nsd_id"], rows["value"], strict=True):
            s, i = int(s), int(i)
            imgs = []
            for uri, cls, who in (
                (self.gt_uri(i), "gt", ("ground truth", s)),
                (self.rec_uri(run.run_id, s, i), "rec", (run.run_id, s)),
            ):
                if uri is None:
                    self.missing[who] = self.missing.get(who, 0) + 1
                    imgs.append('<div class="ph">missing</div>')
                else:
                    imgs.append(f'<img class="thumb {cls}" src="{uri}" alt="{cls} subject {s} nsd {i}">')
            out.append(
                f'<figure class="pair" title="{esc(metric_label(metric))} = {float(v):.4f}">'
                f'<div class="imgs">{"".join(imgs)}</div>'
                f"<figcaption>S{s} · {i} · {fmt(v)}</figcaption></figure>"
            )
        out.append("</div>")
        return "".join(out)

    def distributions(self) -> str:
        from nsdbench.report.plots import distribution_png

        png = distribution_png(self.data)
        if png is None:
            return ""
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        return (
            '<section id="distributions"><h2>Per-image score distributions</h2>'
            '<p class="lead">One panel per metric: the distribution of per-image scores of each run over all '
            "its subjects (box: quartiles; whiskers: 5th–95th percentile; diamond: mean).</p>"
            f'<img class="plot" src="{uri}" alt="per-metric distributions of per-image scores"></section>'
        )

    def provenance(self) -> str:
        intro = (
            '<section id="provenance"><h2>Provenance</h2>'
            '<p class="lead">What each run was made and scored with. The key facts first; every recorded '
            'field under “all recorded fields”.</p><div class="prov">'
        )
        parts = [intro]
        for r in self.data.runs:
            flat = _flatten_ordered(r.provenance)
            rows = (
                [
                    ("run id", r.run_id),
                    ("kind", r.kind),
                    ("subjects", ", ".join(str(s) for s in r.subjects)),
                    ("split", r.split),
                ]
                + _key_facts(r.protocol, flat)
                + [("source", r.source)]
            )
            trs = "".join(
                f'<tr><td class="k">{esc(k)}</td><td class="v">{esc(v)}</td></tr>'
                for k, v in rows
                if v not in ("", None)
            )
            all_trs = "".join(
                f'<tr><td class="k">{esc(k)}</td><td class="v">{esc(v)}</td></tr>'
                for k, v in flat
                if v not in ("", None)
            )
            smoke = '<span class="badge smoke">smoke</span>' if r.smoke else ""
            parts.append(
                f'<div class="card"><h3>{esc(r.label)}{smoke}</h3><table>{trs}</table>'
                f"<details><summary>all recorded fields ({len(flat)})</summary><table>{all_trs}</table>"
                "</details></div>"
            )
        parts.append("</div></section>")
        return "".join(parts)

    def missing_notes(self) -> list[str]:
        notes = []
        for (who, s), count in sorted(self.missing.items(), key=lambda t: (str(t[0][0]), t[0][1])):
            noun = ("ground-truth image" if who == "ground truth" else "reconstruction") + (
                "s" if count > 1 else ""
            )
            of = "" if who == "ground truth" else f" of run {who}"
            notes.append(f"subject {s}: {count} {noun}{of} missing (shown as 'missing' tiles)")
        return notes


def _isnan(v: Any) -> bool:
    try:
        return math.isnan(float(v))
    except (TypeError, ValueError):
        return False


def _generated_at() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    now = (
        _dt.datetime.fromtimestamp(int(epoch), _dt.UTC)
        if epoch and epoch.isdigit()
        else _dt.datetime.now(_dt.UTC)
    )
    return now.strftime("%Y-%m-%d %H:%M UTC")


# (shown name, flattened provenance keys that may hold it, first found wins)
KEY_FACTS = (
    ("method", ("method", "config.method")),
    ("protocol version", ("protocol_version", "scoring.protocol_version")),
    ("protocol hash", ("protocol_hash", "scoring.protocol_hash")),
    ("weights mode", ("weights_mode", "weights", "scoring.weights_mode")),
    ("seed", ("seed", "seeds.base_seed", "config.seed")),
    ("samples per image", ("samples", "seeds.samples", "config.samples")),
    ("device", ("scoring.device", "device", "scoring.device_name")),
    ("nsdbench", ("nsdbench_version", "scoring.nsdbench_version")),
    ("git", ("git_sha",)),
    ("torch", ("torch_version", "scoring.torch")),
    ("NSD data", ("data",)),
    ("created", ("created", "created_at")),
)
NETWORK_SHA = re.compile(r"^(?:weights_sha256\.(?P<a>[^.]+)|(?:.*\.)?networks\.(?P<b>[^.]+)\.sha256)$")


def _key_facts(protocol: str, flat: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The few provenance facts a reader looks for, found among the flattened fields."""
    table = dict(flat)
    out = [("protocol", protocol)]
    for name, keys in KEY_FACTS:
        value = next((table[k] for k in keys if table.get(k) not in (None, "")), "")
        out.append((name, value))
    nets = {}
    for k, v in flat:
        m = NETWORK_SHA.match(k)
        if m and v:
            nets.setdefault((m.group("a") or m.group("b")).split(":")[0], v)
    if nets:
        out.append(("network weights (sha256)", "; ".join(f"{n} {v[:12]}" for n, v in sorted(nets.items()))))
    return out


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(value, Mapping):
        out: list[tuple[str, str]] = []
        for k, v in value.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(value, (list, tuple)) and all(not isinstance(v, (Mapping, list, tuple)) for v in value):
        return [(prefix, ", ".join(str(v) for v in value))]
    if isinstance(value, (list, tuple)):
        return [(prefix, json.dumps(value, default=str))]
    return [(prefix, "" if value is None else str(value))]


def _flatten_ordered(prov: Mapping[str, Any]) -> list[tuple[str, str]]:
    first = [k for k in PROVENANCE_FIRST if k in prov]
    rest = sorted(k for k in prov if k not in first)
    out: list[tuple[str, str]] = []
    for k in first + rest:
        out += _flatten(prov[k], k)
    return out


def render(
    data: ReportData,
    grid_ids: Mapping[int, Sequence[int]],
    options: ReportOptions,
    progress: Callable[[int], Callable[[], None]] | None = None,
) -> tuple[str, list[str]]:
    """(page, notes): header, notes, leaderboard, per-subject grids, extremes, distributions, provenance.

    progress(total) returns a function called once per image read and encoded (total is an upper bound).
    """
    page = _Page(data, grid_ids, options)
    if progress is not None:
        page.advance = progress(page.n_thumbs)  # known only once the page has counted its thumbnails
    body = [
        page.leaderboard(),
        page.grids(),
        page.run_vs_run(),
        page.extremes_section(),
        page.distributions(),
        page.provenance(),
    ]
    summary = {
        "runs": [r.run_id for r in data.runs],
        "subjects": data.subjects,
        "seed": options.seed,
        "n": options.n,
        "grid_ids": {str(s): list(map(int, ids)) for s, ids in grid_ids.items()},
        "missing": {f"{who}|{s}": c for (who, s), c in page.missing.items()},
    }
    small = max(48, int(options.thumb * 0.64))
    css = CSS % {"thumb": options.thumb, "small": small}
    footer = (
        f"<footer>Generated by nsdbench {esc(nsdbench.__version__)}"
        + (f" with <code>{esc(options.command)}</code>" if options.command else "")
        + f". Image choice: seed {options.seed}; pin it with <code>--ids</code>. "
        f"Thumbnails are JPEG-compressed, at most {page.pixels} px; scores were computed on the "
        "full-resolution images."
        "</footer>"
    )
    notes = list(data.notes) + page.missing_notes()
    if page.pixels < options.thumb:
        notes.append(
            f"{page.n_thumbs} thumbnails: encoded at {page.pixels} px instead of {options.thumb} px to keep "
            f"the page near {options.max_bytes / 1e6:.0f} MB (show fewer with --n)"
        )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(options.title or 'nsdbench report')}</title><style>{css}</style></head><body>"
        + page.header()
        + page.nav()
        + "<main>"
        + page.notes(page.missing_notes())
        + "".join(body)
        + "</main>"
        + footer
        + f'<script type="application/json" id="nsdbench-report">{_json_for_html(summary)}</script>'
        + "</body></html>\n"
    ), notes


def _json_for_html(obj: Any) -> str:
    return (
        json.dumps(obj, sort_keys=True)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )
