"""Render a Leaderboard as a rich table, Markdown, CSV, JSON, LaTeX (booktabs) or HTML.

Cells are `mean [lo, hi]` (95% bootstrap CI over images); reported rows carry only the published
value and are marked with their source. Arrows give each metric's direction.
"""

from __future__ import annotations

import csv
import html
import io
import json
from typing import TYPE_CHECKING, Any

from nsdbench.leaderboards.views import Cell, Leaderboard, Row, Table
from nsdbench.metrics.names import HIGHER_IS_BETTER, LABELS
from nsdbench.terminal import table_width

if TYPE_CHECKING:
    from rich.table import Table as RichTable

FORMATS = ("table", "md", "csv", "json", "latex", "html")


def _meta(metric: str) -> tuple[str, bool]:
    return LABELS.get(metric, metric), HIGHER_IS_BETTER.get(metric, True)


def fmt_value(x: float | None, digits: int = 3) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def fmt_cell(cell: Cell | None, digits: int = 3) -> str:
    if cell is None:
        return "–"
    mark = " ‡" if cell.circular else ""  # circular brain correlation (see the leaderboard's notes)
    if cell.lo is None or cell.hi is None:
        return fmt_value(cell.mean, digits) + mark
    return f"{cell.mean:.{digits}f} [{cell.lo:.{digits}f}, {cell.hi:.{digits}f}]{mark}"


OTHER_MARK = "§"  # a reported row on a test set nsdbench cannot reproduce (see other_test_set_notes)


def _other(row: Row) -> str:
    return f" {OTHER_MARK}" if row.test_set else ""


def row_label(row: Row) -> str:
    if row.origin == "reported":
        return f"{row.method} (reported: {row.source}){_other(row)}"
    return f"{row.method}{' (smoke)' if row.smoke else ''}"


def other_test_set_notes(lb: Leaderboard) -> list[str]:
    """One footnote per paper test set that no nsdbench split reproduces, for the rows marked §."""
    seen: dict[tuple[str, str], None] = {}
    for t in lb.tables:
        for r in t.rows:
            if r.origin == "reported" and r.test_set:
                seen.setdefault((r.source, r.test_set), None)
    return [
        f"{OTHER_MARK} {src}: measured on {test_set}, not on {lb.split}; shown for reference, "
        "not comparable with the other rows and never ranked"
        for src, test_set in seen
    ]


def header(metric: str, up: str = "↑", down: str = "↓") -> str:
    label, hib = _meta(metric)
    return f"{label} {up if hib else down}"


def _best(table: Table) -> dict[str, float]:
    """Best reproduced mean per column (bolded in md/latex/html/table)."""
    best: dict[str, float] = {}
    for m in table.metrics:
        vals = [r.cells[m].mean for r in table.rows if r.origin == "reproduced" and m in r.cells]
        if len(vals) > 1:
            best[m] = max(vals) if HIGHER_IS_BETTER.get(m, True) else min(vals)
    return best


def to_markdown(lb: Leaderboard, digits: int = 3) -> str:
    out: list[str] = []
    for t in lb.tables:
        best = _best(t)
        out.append(f"### {t.title}\n")
        out.append("| Method | Subjects | " + " | ".join(header(m) for m in t.metrics) + " |")
        out.append("|---|---|" + "---:|" * len(t.metrics))
        for r in t.rows:
            cells = []
            for m in t.metrics:
                c = fmt_cell(r.cells.get(m), digits)
                if r.origin == "reproduced" and m in best and r.cells[m].mean == best[m]:
                    c = f"**{c}**"
                cells.append(c)
            label = (
                row_label(r)
                if r.origin == "reproduced"
                else f"{r.method} *(reported: {r.source})*{_other(r)}"
            )
            out.append(f"| {_md_escape(label)} | {r.subjects} | " + " | ".join(cells) + " |")
        out.append("")
    out.extend(f"_{n}_" for n in other_test_set_notes(lb) + lb.notes)
    return "\n".join(out).rstrip() + "\n"


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


_LATEX_SPECIAL = {
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "\\": r"\textbackslash{}",
}


def latex_escape(s: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in s)


def to_latex(lb: Leaderboard, digits: int = 3) -> str:
    out: list[str] = []
    for t in lb.tables:
        best = _best(t)
        out.append(f"% {latex_escape(t.title)}")
        out.append(r"\begin{tabular}{ll" + "r" * len(t.metrics) + "}")
        out.append(r"\toprule")
        out.append(
            "Method & Subjects & "
            + " & ".join(header(m, r"$\uparrow$", r"$\downarrow$").replace("_", r"\_") for m in t.metrics)
            + r" \\"
        )
        out.append(r"\midrule")
        for r in t.rows:
            cells = []
            for m in t.metrics:
                c = r.cells.get(m)
                if c is None:
                    cells.append("--")
                    continue
                val = fmt_value(c.mean, digits)
                if r.origin == "reproduced" and m in best and c.mean == best[m]:
                    val = rf"\textbf{{{val}}}"
                if c.lo is not None and c.hi is not None:
                    val += rf" {{\scriptsize [{c.lo:.{digits}f}, {c.hi:.{digits}f}]}}"
                if c.circular:
                    val += r"$^\ddagger$"
                cells.append(val)
            if r.origin == "reported":
                label = rf"\textit{{{latex_escape(r.method)}}}$^\dagger$" + (r"\S" if r.test_set else "")
            else:
                label = latex_escape(r.method + (" (smoke)" if r.smoke else ""))
            out.append(f"{label} & {r.subjects.replace(',', ', ')} & " + " & ".join(cells) + r" \\")
        out.append(r"\bottomrule")
        out.append(r"\end{tabular}")
        if any(r.origin == "reported" for r in t.rows):
            out.append(r"% $^\dagger$ reported in the cited paper, not reproduced")
        out.extend(
            "% " + latex_escape(n).replace(OTHER_MARK, r"\S", 1)
            for n in other_test_set_notes(Leaderboard(lb.split, lb.protocol, lb.subjects, [t]))
        )
        if any(c.circular for r in t.rows for c in r.cells.values()):
            out.append(
                r"% $^\ddagger$ brain correlation of a run guided by the metric's own encoder (circular)"
            )
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def to_html(lb: Leaderboard, digits: int = 3) -> str:
    e = html.escape
    out: list[str] = []
    for t in lb.tables:
        best = _best(t)
        out.append(f"<h3>{e(t.title)}</h3>")
        out.append('<table class="nsdbench-leaderboard">')
        out.append(
            "<thead><tr><th>Method</th><th>Subjects</th>"
            + "".join(f"<th>{e(header(m))}</th>" for m in t.metrics)
            + "</tr></thead>"
        )
        out.append("<tbody>")
        for r in t.rows:
            cls = ' class="reported"' if r.origin == "reported" else ""
            tds = []
            for m in t.metrics:
                c = fmt_cell(r.cells.get(m), digits)
                bold = r.origin == "reproduced" and m in best and r.cells[m].mean == best[m]
                tds.append(f"<td><b>{e(c)}</b></td>" if bold else f"<td>{e(c)}</td>")
            out.append(f"<tr{cls}><td>{e(row_label(r))}</td><td>{e(r.subjects)}</td>{''.join(tds)}</tr>")
        out.append("</tbody></table>")
    out.extend(f"<p><em>{e(n)}</em></p>" for n in other_test_set_notes(lb) + lb.notes)
    return "\n".join(out) + "\n"


CSV_COLUMNS = [
    "table",
    "method",
    "origin",
    "run_id",
    "subjects",
    "source",
    "metric",
    "label",
    "higher_is_better",
    "mean",
    "ci_lo",
    "ci_hi",
    "n",
    "circular",
    "test_set",
]


def to_csv(lb: Leaderboard) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for t in lb.tables:
        for r in t.rows:
            for m in t.metrics:
                c = r.cells.get(m)
                if c is None:
                    continue
                label, hib = _meta(m)
                w.writerow(
                    {
                        "table": t.scope,
                        "method": r.method,
                        "origin": r.origin,
                        "run_id": r.run_id,
                        "subjects": r.subjects,
                        "source": r.source,
                        "metric": m,
                        "label": label,
                        "higher_is_better": hib,
                        "mean": repr(c.mean),
                        "ci_lo": "" if c.lo is None else repr(c.lo),
                        "ci_hi": "" if c.hi is None else repr(c.hi),
                        "n": "" if c.n is None else c.n,
                        "circular": c.circular,
                        "test_set": r.test_set,
                    }
                )
    return buf.getvalue()


def to_json(lb: Leaderboard) -> str:
    return json.dumps(lb.to_dict(), indent=2, default=str) + "\n"


def reported_marks(lb: Leaderboard) -> dict[str, int]:
    """Footnote number per reported source, in order of first appearance."""
    marks: dict[str, int] = {}
    for t in lb.tables:
        for r in t.rows:
            if r.origin == "reported":
                marks.setdefault(r.source, len(marks) + 1)
    return marks


def terminal_tables(
    lb: Leaderboard, digits: int = 3, width: int | None = None, ci: bool = False
) -> tuple[list[tuple[RichTable, int]], list[str]]:
    """Rich tables for a terminal `width` columns wide (None: no limit) and their footnotes.

    Metrics are split into groups that fit, each group repeating Method and Subjects; cells never wrap,
    so a number is never cut. Reported rows carry `[n]`, a footnote naming the paper and table.
    Returns (table, the width it needs) pairs and the footnote lines.
    """
    from rich.table import Table as RichTable
    from rich.text import Text

    marks = reported_marks(lb)

    def label(r: Row) -> str:
        if r.origin == "reported":
            return f"{r.method} [{marks[r.source]}]{_other(r)}"
        return f"{r.method}{' (smoke)' if r.smoke else ''}"

    def text(c: Cell | None) -> str:
        if c is None:
            return "–"
        return fmt_cell(c, digits) if ci else fmt_value(c.mean, digits)

    out: list[tuple[Any, int]] = []
    for t in lb.tables:
        best = _best(t)
        labels = [label(r) for r in t.rows]
        cells = {m: [text(r.cells.get(m)) for r in t.rows] for m in t.metrics}
        fixed = [
            max([len("Method"), *map(len, labels)]),
            max([len("Subjects"), *(len(r.subjects) for r in t.rows)]),
        ]
        mw = {m: max([len(header(m)), *map(len, cells[m])]) for m in t.metrics}
        groups: list[list[str]] = [[]]
        for m in t.metrics:
            if groups[-1] and width and table_width(fixed + [mw[x] for x in groups[-1]] + [mw[m]]) > width:
                groups.append([])
            groups[-1].append(m)
        for i, group in enumerate(groups):
            part = f" · metrics {i + 1}/{len(groups)}" if len(groups) > 1 else ""
            rt = RichTable(title=t.title + part, title_justify="left")
            rt.add_column("Method", no_wrap=True, overflow="ignore")
            rt.add_column("Subjects", no_wrap=True, overflow="ignore")
            for m in group:
                rt.add_column(header(m), justify="right", no_wrap=True, overflow="ignore")
            for j, r in enumerate(t.rows):
                row = [Text(labels[j]), Text(r.subjects)]
                for m in group:
                    bold = r.origin == "reproduced" and m in best and r.cells[m].mean == best[m]
                    row.append(Text(cells[m][j], style="bold" if bold else ""))
                rt.add_row(*row, style="dim italic" if r.origin == "reported" else None)
            out.append((rt, table_width(fixed + [mw[m] for m in group])))
    notes = [f"[{n}] reported in {src} (the paper's value, not reproduced)" for src, n in marks.items()]
    return out, notes + other_test_set_notes(lb)


def rich_tables(lb: Leaderboard, digits: int = 3) -> list[RichTable]:
    """Every table whole, with CIs (for files and wide consoles)."""
    return [t for t, _ in terminal_tables(lb, digits, width=None, ci=True)[0]]


def render(lb: Leaderboard, fmt: str, digits: int = 3, width: int | None = None) -> str:
    """The leaderboard as text in `fmt` (for `table`, rich's rendering without colour)."""
    if fmt == "md":
        return to_markdown(lb, digits)
    if fmt == "latex":
        return to_latex(lb, digits)
    if fmt == "html":
        return to_html(lb, digits)
    if fmt == "csv":
        return to_csv(lb)
    if fmt == "json":
        return to_json(lb)
    if fmt == "table":
        from rich.console import Console

        tables, footnotes = terminal_tables(lb, digits, width=width, ci=True)
        need = max([width or 0, *(w for _, w in tables)])
        console = Console(file=io.StringIO(), width=need, color_system=None, force_terminal=False)
        for rt, _ in tables:
            console.print(rt)
        for n in [*footnotes, *lb.notes]:
            console.print(n, markup=False)
        return console.file.getvalue()
    raise ValueError(f"unknown format {fmt!r}")


def run_summary_table(lb: Leaderboard, digits: int = 3) -> RichTable:
    """One run as a rich table with metrics as rows and (subject mean, each subject) as columns."""
    from rich.table import Table as RichTable

    tables = [t for t in lb.tables if t.rows]
    first = tables[0].rows[0] if tables else None
    title = f"{first.method} · {first.run_id} · {lb.split} · {lb.protocol}" if first else "no scores"
    rt = RichTable(title=title, title_justify="left")
    rt.add_column("metric")
    for t in tables:
        rt.add_column("subject mean" if t.scope == "mean" else f"subject {t.scope}", justify="right")
    metrics = tables[0].metrics if tables else []
    for m in metrics:
        rt.add_row(
            header(m), *[fmt_cell(t.rows[0].cells.get(m), digits).replace(" [", "\n[") for t in tables]
        )
    return rt
