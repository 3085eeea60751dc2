"""Writing the report page: options, the rendered page and the atomic write."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nsdbench.files import atomic_write_text
from nsdbench.report.data import ReportData, ReportOptions, choose_ids
from nsdbench.report.html import render


@dataclass(frozen=True)
class ReportResult:
    path: Path
    bytes: int
    grid_ids: dict[int, list[int]]
    notes: list[str]  # input problems and missing images, as shown at the top of the page


DEFAULT_OPTIONS = ReportOptions()
Progress = Callable[[int], Callable[[], None]]  # progress(total) -> advance()


def render_report(
    data: ReportData, options: ReportOptions = DEFAULT_OPTIONS, progress: Progress | None = None
) -> tuple[str, dict[int, list[int]], list[str]]:
    """(page, grid ids per subject, notes): the whole page as one self-contained HTML string."""
    grid_ids = choose_ids(data, options.n, options.seed, options.ids)
    page, notes = render(data, grid_ids, options, progress)
    return page, grid_ids, notes


def write_report(
    data: ReportData,
    out: str | Path,
    options: ReportOptions = DEFAULT_OPTIONS,
    progress: Progress | None = None,
) -> ReportResult:
    """Render and write atomically (temp file + rename), so a crash never leaves half a page."""
    out = Path(out)
    page, grid_ids, notes = render_report(data, options, progress)
    atomic_write_text(out, page)
    return ReportResult(out, out.stat().st_size, grid_ids, notes)
