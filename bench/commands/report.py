"""`nsdbench report RUN [RUN...]`: one self-contained HTML page showing what the runs reconstructed."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from nsdbench import config
from nsdbench.commands.options import check_data
from nsdbench.commands.score import writable
from nsdbench.errors import UsageError
from nsdbench.progress import rich_bars

err = Console(stderr=True)


def parse_int_list(value: str | None, flag: str) -> list[int] | None:
    """'1,2,5' → [1, 2, 5]; a bad item is a usage error naming the flag."""
    if value is None or value.strip() == "":
        return None
    out = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            out.append(int(item))
        except ValueError:
            raise UsageError(f"{flag}: {item!r} is not an integer (expected e.g. {flag} 1,2,5)") from None
    if any(v < 0 for v in out):
        raise UsageError(f"{flag}: values must be >= 0 (got {value})")
    return out


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report(
        runs: Annotated[
            list[str], typer.Argument(help="Leaderboard run ids (or unique prefixes) or run folders.")
        ],
        out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write.")] = Path("report.html"),
        subjects: Annotated[
            str | None, typer.Option("--subjects", "-s", help="Only these subjects, e.g. 1,2.")
        ] = None,
        n: Annotated[int, typer.Option("--n", help="Images per subject in the grids (seeded sample).")] = 48,
        ids: Annotated[
            str | None, typer.Option("--ids", help="Pin the grid images: 0-based NSD ids, e.g. 2950,3077.")
        ] = None,
        seed: Annotated[
            int | None, typer.Option("--seed", help="Seed of the image choice (default: config seed).")
        ] = None,
        k: Annotated[int, typer.Option("--k", help="Best and worst images shown per metric and run.")] = 4,
        thumb: Annotated[int, typer.Option("--thumb", help="Thumbnail size in pixels (48-512).")] = 112,
        db: Annotated[
            Path | None,
            typer.Option("--db", help="Leaderboard database (default: NSDBENCH_HOME/leaderboard.duckdb)."),
        ] = None,
        data: Annotated[
            str | None,
            typer.Option("--data", help="NSD root for ground truth (default: what the run recorded)."),
        ] = None,
        title: Annotated[str, typer.Option("--title", help="Page title.")] = "",
        as_json: Annotated[
            bool, typer.Option("--json", help="Print one JSON document describing the page.")
        ] = False,
    ) -> None:
        """Write an HTML report: leaderboard rows, per-subject image grids, best/worst images,
        score distributions and provenance. Images are embedded as thumbnails; the page needs no network."""
        from nsdbench.report.data import ReportOptions
        from nsdbench.report.page import write_report
        from nsdbench.report.sources import load_report_data

        if n <= 0:
            raise UsageError(f"--n must be positive (got {n})")
        if not 48 <= thumb <= 512:
            raise UsageError(f"--thumb must be between 48 and 512 pixels (got {thumb})")
        if k < 0:
            raise UsageError(f"--k must be >= 0 (got {k})")
        writable(out, "--out")
        if data is not None:
            check_data(data)
        seed_value = int(config.get("seed", seed))
        pinned = parse_int_list(ids, "--ids")
        report_data = load_report_data(
            runs, db=db, data=data, subjects=parse_int_list(subjects, "--subjects")
        )
        command = ["nsdbench", "report", *runs, "--n", str(n), "--seed", str(seed_value)]
        if pinned is not None:
            command += ["--ids", ",".join(map(str, pinned))]
        if subjects:
            command += ["--subjects", subjects]
        options = ReportOptions(
            n=n,
            seed=seed_value,
            ids=tuple(pinned) if pinned is not None else None,
            k_extremes=k,
            thumb=thumb,
            title=title,
            command=shlex.join(command),
        )
        with rich_bars(transient=True) as bar:

            def progress(total: int):
                task = bar.add_task("report images", total=total)
                return lambda: bar.advance(task)

            result = write_report(report_data, out, options, progress)
        if as_json:
            print(
                json.dumps(
                    {
                        "out": str(result.path),
                        "bytes": result.bytes,
                        "runs": [r.run_id for r in report_data.runs],
                        "subjects": report_data.subjects,
                        "grid_ids": {str(s): v for s, v in result.grid_ids.items()},
                        "notes": result.notes,
                    }
                )
            )
            return
        for note in result.notes:
            err.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
        err.print(f"wrote {result.path} ({result.bytes / 1e6:.1f} MB)", highlight=False)
