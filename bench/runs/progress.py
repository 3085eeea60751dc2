"""Stage progress: callbacks the runner reports to; the CLI plugs in rich bars."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


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
