"""Terminal tables that never cut a number or an identifier: a table when it fits, else records or groups.

Width: the terminal's, or COLUMNS when set; piped output without COLUMNS has no width limit.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

# Per-column cost of rich's default box: one space of padding each side plus one border.
_COLUMN_OVERHEAD = 3


def stdout_width(console: Console | None = None) -> int | None:
    """Columns available on stdout; None when piped without COLUMNS (no limit)."""
    console = console or Console()
    if console.is_terminal or os.environ.get("COLUMNS", "").strip().isdigit():
        return console.width
    return None


def console_for(width_needed: int, limit: int | None) -> Console:
    """A stdout console at least `width_needed` wide, so rich never truncates a cell with '…'."""
    base = Console(highlight=False, soft_wrap=True)
    want = max(width_needed, limit or 0) or 1000  # prose without a limit: one long line each
    if base.is_terminal and base.width >= want:
        return base
    return Console(highlight=False, soft_wrap=True, width=want)


def table_width(widths: Sequence[int]) -> int:
    """Width of a rich table whose columns hold at most `widths` characters (default box, no wrap)."""
    return sum(w + _COLUMN_OVERHEAD for w in widths) + 1


def plain_table(
    title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[str] = ()
) -> Table:
    """A table whose cells never wrap or shrink: print it on a console from `console_for`."""
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, no_wrap=True, overflow="ignore", justify="right" if c in right else "left")
    for r in rows:
        t.add_row(*r)
    return t


def column_widths(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[int]:
    return [
        max([len(c), *(max(map(len, str(r[i]).split("\n"))) for r in rows)]) for i, c in enumerate(columns)
    ]


def print_table_or_records(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    right: Sequence[str] = (),
    limit: int | None = -1,
) -> None:
    """A table when it fits the width; else one block per row (first column as heading, `field  value`)."""
    if limit == -1:
        limit = stdout_width()
    widths = column_widths(columns, rows)
    need = table_width(widths)
    if limit is None or need <= limit:
        console_for(need, limit).print(plain_table(title, columns, rows, right))
        return
    console = console_for(0, limit)
    console.print(title, markup=False)
    key_w = max(len(c) for c in columns[1:]) if len(columns) > 1 else 0
    for r in rows:
        console.print(r[0], markup=False, style="bold")
        for c, v in zip(columns[1:], r[1:]):
            console.print(f"  {c:<{key_w}}  {v}", markup=False)


def print_whole(renderable) -> None:
    """Print a rich table at its natural width, even past the terminal's, so no cell is squeezed to '…'."""
    from rich.measure import Measurement

    probe = Console(width=10_000)
    need = Measurement.get(probe, probe.options, renderable).maximum
    console_for(need, stdout_width()).print(renderable)
