"""Progress reporting, one mechanism for the whole package: a long loop reports `advance(n)` to a rich bar
on stderr, to a caller's (done, total) callback, or to nothing; a method run reports per-stage events to a
`Progress` (no output) or a `RichProgress` (one bar per subject and stage)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.progress import Progress as RichBars

ProgressArg = bool | None | Callable[[int, int], None]
"""True: a rich bar on stderr; None: a bar only when stderr is a terminal; False: nothing;
a callable: called with (done, total) after every step."""


def rich_bars(transient: bool = False) -> RichBars:
    """The package's rich bar style (description, bar, done/total, elapsed) on stderr."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as RichBars

    return RichBars(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=transient,
    )


@contextmanager
def progress_bar(
    progress: ProgressArg, total: int | None, description: str, transient: bool = False
) -> Iterator[Callable[[int], None]]:
    """Yield `advance(n=1)` for one loop of `total` steps, reporting as `progress` asks."""
    if callable(progress):
        done = 0

        def report(n: int = 1) -> None:
            nonlocal done
            done += n
            progress(done, total or 0)

        progress(0, total or 0)
        yield report
        return
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        yield lambda n=1: None
        return
    with rich_bars(transient) as bars:
        task = bars.add_task(description, total=total)
        yield lambda n=1: bars.advance(task, n)


@contextmanager
def labelled_bars(
    enabled: bool, transient: bool = True
) -> Iterator[Callable[[str], Callable[[int, int], None] | bool]]:
    """Yield a factory: label -> a (done, total) callback drawing its own bar, or False when bars are off
    (the value the metrics engine takes for `progress`)."""
    if not enabled:
        yield lambda label: False
        return
    with rich_bars(transient) as bars:

        def bar_for(label: str) -> Callable[[int, int], None]:
            task = bars.add_task(label, total=None)
            return lambda done, total: bars.update(task, completed=done, total=total)

        yield bar_for


class Progress:
    """Stage progress callbacks; the CLI plugs in rich bars, library callers get no output."""

    def start(self, key: str, description: str, total: int | None, unit: str = "img") -> None: ...

    def advance(self, key: str, n: int = 1) -> None: ...

    def set_total(self, key: str, total: int | None, unit: str = "img") -> None: ...

    def finish(self, key: str) -> None: ...

    def message(self, text: str) -> None: ...


class RichProgress(Progress):
    """Rich bars on stderr: one per (subject, stage), with images/s and ETA."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RP

        class Rate(TextColumn):
            def __init__(self) -> None:
                super().__init__("")

            def render(self, task):  # type: ignore[override]
                from rich.text import Text

                speed = task.finished_speed or task.speed
                unit = task.fields.get("unit", "img")
                return Text("" if speed is None else f"{speed:6.1f} {unit}/s", style="progress.data.speed")

        self.console = Console(stderr=True)
        self.bars = RP(
            TextColumn("{task.description:<28}"),
            BarColumn(),
            MofNCompleteColumn(),
            Rate(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.tasks: dict[str, Any] = {}
        self.totals: dict[str, int | None] = {}

    def __enter__(self) -> RichProgress:  # noqa: PYI034
        self.bars.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.__exit__(*exc)

    def start(self, key: str, description: str, total: int | None, unit: str = "img") -> None:
        self.totals[key] = total
        if key in self.tasks:
            self.bars.reset(self.tasks[key], total=total, description=description, unit=unit)
        else:
            self.tasks[key] = self.bars.add_task(description, total=total, unit=unit)

    def advance(self, key: str, n: int = 1) -> None:
        if key in self.tasks:
            self.bars.advance(self.tasks[key], n)

    def set_total(self, key: str, total: int | None, unit: str = "img") -> None:
        if key in self.tasks:
            self.totals[key] = total
            self.bars.update(self.tasks[key], total=total, unit=unit)

    def finish(self, key: str) -> None:
        if key in self.tasks:
            total = self.totals.get(key) or 1
            self.bars.update(self.tasks[key], total=total, completed=total)

    def message(self, text: str) -> None:
        self.console.print(text, highlight=False)


def scaled_progress(advance: Callable[[int], None], units: int) -> Callable[[int, int], None]:
    """Map the engine's (done, total) work count onto a bar of `units` (its reconstructions) as increments."""
    shown = 0

    def report(done: int, total: int) -> None:
        nonlocal shown
        target = units if total <= 0 else min(units, done * units // total)
        if target > shown:
            advance(target - shown)
            shown = target

    return report
