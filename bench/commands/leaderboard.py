"""`nsdbench leaderboard`, `compare`, `runs list|show|delete` and `drift`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from nsdbench import config
from nsdbench.commands.options import check_split, out_opt, parse_protocols, parse_subjects, subjects_opt
from nsdbench.commands.score import DB_OPT, JSON_OPT, writable
from nsdbench.devices import resolve_device
from nsdbench.errors import MetricDrift, UsageError
from nsdbench.files import atomic_write_text
from nsdbench.terminal import print_table_or_records, print_whole

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _metrics(value: str | None) -> list[str] | None:
    return [m.strip() for m in value.split(",") if m.strip()] if value else None


def register(app: typer.Typer) -> None:
    @app.command("leaderboard")
    def leaderboard_cmd(
        split: str = typer.Option(None, "--split", help="Test split (default: the protocol's)."),
        protocol: str = typer.Option(
            None, "--protocol", "-p", help="Protocol, or a comma list: one board each (default: config)."
        ),
        subjects: str = subjects_opt("Only runs covering these subjects; mean over them."),
        metric: str = typer.Option(
            None, "--metric", help="Comma-separated metrics to show (default: all scored)."
        ),
        fmt: str = typer.Option("table", "--format", help="table|md|csv|json|latex|html."),
        ci: bool = typer.Option(False, "--ci", help="Terminal table: show the 95% CI beside each mean."),
        include_smoke: bool = typer.Option(
            False, "--include-smoke", help="Show random/tiny-weight runs too."
        ),
        run: Annotated[
            list[str] | None, typer.Option("--run", help="Use this run for its method (repeatable).")
        ] = None,
        best_by: str = typer.Option(
            None, "--best-by", help="Pick each method's run by this metric (default: latest)."
        ),
        reported: bool = typer.Option(
            True, "--reported/--no-reported", help="Published rows beside reproduced."
        ),
        per_subject: bool = typer.Option(True, "--per-subject/--no-per-subject", help="Per-subject tables."),
        other_test_sets: bool = typer.Option(
            False,
            "--other-test-sets",
            help="Also show published rows measured on test sets no nsdbench split reproduces (marked §, "
            "never ranked; shown anyway beside a run of the paper's own method).",
        ),
        digits: int = typer.Option(3, "--digits", min=1, max=8, help="Decimals shown (1-8)."),
        db: Path = DB_OPT,
        output: Annotated[Path | None, out_opt("Write to this file instead of stdout.")] = None,
        output_old: Annotated[Path | None, typer.Option("--output", hidden=True)] = None,
        as_json: bool = JSON_OPT,
    ) -> None:
        """One row per method, columns in the papers' order, reported rows marked with their source."""
        from nsdbench.leaderboards.exports import FORMATS, render
        from nsdbench.leaderboards.store import Store
        from nsdbench.leaderboards.views import build_leaderboard

        if fmt not in FORMATS:
            raise UsageError(f"unknown --format {fmt!r}; expected one of {', '.join(FORMATS)}")
        if as_json and fmt not in ("table", "json"):
            raise UsageError(f"--json and --format {fmt} exclude each other")
        fmt = "json" if as_json else fmt
        flag = "--out" if output is not None or output_old is None else "--output"
        output = output or output_old
        protocols = parse_protocols(protocol)
        if split is not None:
            check_split(split)
        if len(protocols) > 1 and fmt == "csv":
            raise UsageError("--format csv takes one --protocol (the CSV has no protocol column)")
        if output is not None:
            writable(output, flag)
        subj = parse_subjects(subjects)
        metrics = _metrics(metric)
        boards = [
            build_leaderboard(
                Store(db),
                split=split,
                protocol=p,
                subjects=subj,
                metrics=metrics,
                include_smoke=include_smoke,
                runs=run,
                best_by=best_by,
                reported=reported,
                per_subject=per_subject,
                other_test_sets=other_test_sets,
            )
            for p in protocols or [None]
        ]
        if fmt == "json":
            docs = [b.to_dict() for b in boards]
            text = (
                json.dumps(docs[0] if len(docs) == 1 else {"leaderboards": docs}, indent=2, default=str)
                + "\n"
            )
        else:
            text = "".join(render(b, fmt, digits) for b in boards)
        if output is not None:
            atomic_write_text(output, text)
            err.print(f"wrote {output}")
        elif fmt == "table":
            for b in boards:
                _print_board(b, digits, ci)
        else:
            print(text, end="")

    @app.command("compare")
    def compare_cmd(
        run_a: str = typer.Argument(..., help="Run id (or unique prefix)."),
        run_b: str = typer.Argument(..., help="Run id (or unique prefix)."),
        metric: str = typer.Option(None, "--metric", help="Comma-separated metrics (default: all shared)."),
        n_resamples: int = typer.Option(
            2000, "--bootstrap", min=10, help="Paired bootstrap resamples for the CIs and p-values."
        ),
        seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap resampling (same seed, same CIs)."),
        allow_mismatch: bool = typer.Option(
            False,
            "--allow-protocol-mismatch",
            help="Compare runs scored under different protocols (their metrics differ in definition).",
        ),
        db: Path = DB_OPT,
        as_json: bool = JSON_OPT,
    ) -> None:
        """Paired bootstrap per metric on the images both runs scored: A − B with 95% CI and p-value."""
        from nsdbench.leaderboards.store import Store
        from nsdbench.leaderboards.views import compare_runs
        from nsdbench.metrics.names import LABELS

        res = compare_runs(Store(db), run_a, run_b, _metrics(metric), n_resamples, seed, allow_mismatch)
        if as_json:
            print(json.dumps(res, indent=2))
            return
        t = Table(
            title=f"{res['method_a']} ({res['run_a']}) − {res['method_b']} ({res['run_b']}) · {res['protocol']}",
            title_justify="left",
        )
        for c in ("metric", "n", "A", "B", "A − B [95% CI]", "p", "better"):
            t.add_column(c, justify="left" if c == "metric" else "right")
        for r in res["rows"]:
            sig = r["ci_lo"] > 0 or r["ci_hi"] < 0
            better = ("A" if (r["diff"] > 0) == r["higher_is_better"] else "B") if sig else "–"
            t.add_row(
                LABELS.get(r["metric"], r["metric"]),
                str(r["n"]),
                f"{r['mean_a']:.4f}",
                f"{r['mean_b']:.4f}",
                f"{r['diff']:+.4f} [{r['ci_lo']:+.4f}, {r['ci_hi']:+.4f}]",
                f"{r['p_value']:.4f}",
                better,
            )
        print_whole(t)

    runs = typer.Typer(help="Recorded runs.", no_args_is_help=True)

    @runs.command("list")
    def runs_list(
        db: Path = DB_OPT,
        as_json: bool = JSON_OPT,
    ) -> None:
        """Every recorded run, newest first (smoke runs included and marked)."""
        from nsdbench.leaderboards.store import Store

        df = Store(db).runs(include_smoke=True)
        cols = [
            "id",
            "kind",
            "method",
            "subjects",
            "split",
            "protocol",
            "weights_mode",
            "smoke",
            "created_at",
        ]
        if as_json:
            print(df[cols].to_json(orient="records", date_format="iso", indent=2) if len(df) else "[]")
            return
        print_table_or_records(
            f"runs in {Store(db).path}", cols, [[str(r[c]) for c in cols] for r in df.to_dict("records")]
        )

    @runs.command("show")
    def runs_show(
        run_id: str = typer.Argument(..., help="Run id (or unique prefix)."),
        db: Path = DB_OPT,
        as_json: bool = JSON_OPT,
    ) -> None:
        """A run's provenance and aggregates."""
        from nsdbench.leaderboards.exports import run_summary_table
        from nsdbench.leaderboards.store import Store
        from nsdbench.leaderboards.views import single_run_board

        store = Store(db)
        info = store.run(run_id)
        if as_json:
            agg = store.aggregates(info["id"])
            print(json.dumps({"run": info, "aggregates": agg.to_dict("records")}, indent=2, default=str))
            return
        t = Table(show_header=False, title=f"run {info['id']}", title_justify="left")
        t.add_column("field", no_wrap=True)
        t.add_column("value", overflow="fold")
        for k, v in info.items():
            t.add_row(k, json.dumps(v, default=str) if isinstance(v, (dict, list)) else str(v))
        out.print(t)
        print_whole(run_summary_table(single_run_board(store, info["id"])))

    @runs.command("delete")
    def runs_delete(
        run_id: str = typer.Argument(..., help="Run id (or unique prefix)."),
        yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
        db: Path = DB_OPT,
    ) -> None:
        """Remove a run and all its scores (one transaction)."""
        from nsdbench.leaderboards.store import Store

        store = Store(db)
        full = store.resolve_id(run_id)
        if not yes and not typer.confirm(f"delete run {full} from {store.path}?"):
            out.print(f"kept run {full} (nothing deleted)")
            return
        store.delete(full)
        out.print(f"deleted run {full}")

    app.add_typer(runs, name="runs")

    @app.command("drift")
    def drift_cmd(
        golden: Annotated[
            Path | None,
            typer.Option("--golden", help="Golden file (default: the shipped synthetic/tiny one)."),
        ] = None,
        update: bool = typer.Option(
            False, "--update", help="Rewrite the expected values after a deliberate change."
        ),
        create: bool = typer.Option(False, "--create", help="Make a new golden file at --golden."),
        data: str = typer.Option(
            None, "--data", help="NSD root or 'synthetic' (default: the golden file's)."
        ),
        submission: Annotated[
            Path | None, typer.Option("--submission", help="--create: reconstructions to freeze (else blur).")
        ] = None,
        fmt: str = typer.Option(None, "--format", help="--create: submission format (default: detect)."),
        order: str = typer.Option(None, "--order", help="--create: order for arrays without ids."),
        split: str = typer.Option(None, "--split", help="--create: test split (default: the protocol's)."),
        protocol: str = typer.Option(
            "nsdbench-v1", "--protocol", "-p", help="--create: a protocol or a comma list."
        ),
        protocols_old: str = typer.Option(None, "--protocols", hidden=True),
        subjects: str = subjects_opt("--create: subjects.", default="1"),
        weights_mode: str = typer.Option("pretrained", "--weights", help="--create: pretrained|random|tiny."),
        max_images: int = typer.Option(
            None, "--max-images", min=2, help="--create: first N ids per subject."
        ),
        radius: int = typer.Option(3, "--radius", min=0, help="--create without --submission: blur radius."),
        brain: bool = typer.Option(False, "--brain/--no-brain", help="--create: include brain correlation."),
        tol_float64: float = typer.Option(
            1e-6, "--tol-float64", help="--create: tolerance, float64 pixel metrics."
        ),
        tol_network: float = typer.Option(
            1e-4, "--tol-network", help="--create: tolerance, network metrics."
        ),
        device: str = typer.Option("cpu", "--device", help="cpu|cuda|auto."),
        verbose: bool = typer.Option(
            False, "--verbose", "-v", help="List the set scores within tolerance too."
        ),
        as_json: bool = JSON_OPT,
    ) -> None:
        """Rescore the golden set; exit 4 listing every metric that moved beyond its tolerance."""
        from nsdbench import weights
        from nsdbench.leaderboards import drift

        dev = resolve_device(config.get("device", device))
        if create:
            if golden is None:
                raise UsageError("--create needs --golden FILE (where to write the golden file)")
            writable(golden, "--golden")
            report = drift.create_golden(
                golden,
                data=data,
                split=split,
                protocols=tuple(parse_protocols(protocols_old or protocol)),
                subjects=parse_subjects(subjects) or (1,),
                weights_mode=weights.check_mode(weights_mode),
                submission=submission,
                submission_format=fmt,
                order=order,
                blur_radius=radius,
                max_images=max_images,
                brain=brain,
                tol_float64=tol_float64,
                tol_network=tol_network,
                device=dev,
                progress=True,
            )
        else:
            report = drift.check(golden, update=update, data=data, device=dev, progress=True)
        if as_json:
            print(json.dumps(report.to_dict(), indent=2, default=str))
        else:
            t = Table(title=f"drift check · {report.golden}", title_justify="left")
            for c in ("protocol", "subject", "metric", "expected", "actual", "|diff|", "tolerance", "status"):
                t.add_column(
                    c, justify="left" if c in ("protocol", "subject", "metric", "status") else "right"
                )
            bad = {(d.protocol, d.subject, d.metric) for d in report.deviations if d.level == "set"}
            moved = {
                (d.protocol, d.subject, d.metric): len(d.images)
                for d in report.deviations
                if d.level == "image"
            }
            shown = 0
            for c in report.checked:
                status = _drift_status(c["protocol"], c["subject"], c["metric"], bad, moved)
                if status == "ok" and not verbose:
                    continue
                shown += 1
                e, a = c["expected"], c["actual"]
                diff = abs(a - e) if e is not None and a is not None else None
                t.add_row(
                    c["protocol"],
                    c["subject"],
                    c["metric"],
                    _num(e),
                    _num(a),
                    _num(diff, ".2e"),
                    f"{c['tolerance']:g}",
                    status,
                )
            if shown:
                print_whole(t)
            n_ok = sum(
                _drift_status(c["protocol"], c["subject"], c["metric"], bad, moved) == "ok"
                for c in report.checked
            )
            err.print(
                f"{n_ok} of {len(report.checked)} set scores ok"
                + ("" if verbose or n_ok == 0 else " (--verbose lists them)"),
                highlight=False,
            )
            for d in report.deviations:
                err.print(f"drift: {d.line()}", markup=False)
        if report.updated:
            err.print(f"{'created' if create else 'updated'} {report.golden}")
            return
        if report.deviations:
            n_moved = sum(len(d.images) or 1 for d in report.deviations)  # per-image: each moved id
            raise MetricDrift(
                f"{n_moved} value(s) beyond tolerance in {report.golden} "
                f"(listed above; `nsdbench drift --update` after a deliberate change)"
            )
        images = f" and {report.checked_per_image} per-image values" if report.checked_per_image else ""
        err.print(f"no drift: {len(report.checked)} set scores{images} within tolerance")


def _print_board(board, digits: int, ci: bool) -> None:
    """The leaderboard on stdout: metric groups that fit the terminal, footnotes, notes on stderr."""
    from nsdbench.leaderboards.exports import terminal_tables
    from nsdbench.terminal import console_for, stdout_width

    limit = stdout_width()
    tables, footnotes = terminal_tables(board, digits, width=limit, ci=ci)
    for rt, need in tables:
        console_for(need, limit).print(rt)
    shown = Console(highlight=False, width=limit) if limit else console_for(0, None)  # prose wraps at words
    for line in footnotes:
        shown.print(line, markup=False)
    has_ci = any(c.lo is not None for t in board.tables for r in t.rows for c in r.cells.values())
    if has_ci and not ci:
        shown.print("means over images; --ci adds 95% bootstrap CIs", markup=False, style="dim")
    for n in board.notes:
        err.print(n, markup=False)


def _num(x: float | None, spec: str = ".8f") -> str:
    return "–" if x is None else format(x, spec)


def _drift_status(protocol: str, subject: str, metric: str, bad: set, moved: dict) -> str:
    """A drift table row's status: the set score moved, only some per-image values moved, or ok."""
    key = (protocol, subject, metric)
    if key in bad:
        return "[red]DRIFT[/]"
    if key in moved:
        return f"[red]{moved[key]} img moved[/]"
    return "ok"
