"""`nsdbench protocols list|show`: the metric protocols and where they disagree."""

from __future__ import annotations

import dataclasses
import json

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nsdbench.terminal import print_table_or_records

out = Console(highlight=False)


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help="Metric protocols: exact, versioned definitions of every metric.", no_args_is_help=True
    )

    @group.command("list")
    def list_(as_json: bool = typer.Option(False, "--json", help="Print one JSON document.")) -> None:
        """List the shipped protocols and a table of the fields where they differ."""
        from nsdbench.metrics.protocols import PROTOCOLS, differences

        protos = list(PROTOCOLS.values())
        rows = [
            {
                "name": p.name,
                "version": p.version,
                "hash": p.hash,
                "split": p.split,
                "metrics": p.metric_names,
                "description": p.description,
            }
            for p in protos
        ]
        diffs = differences(protos)
        if as_json:
            print(json.dumps({"protocols": rows, "differences": diffs}, indent=2))
            return
        print_table_or_records(
            "metric protocols",
            ("name", "version", "hash", "split", "metrics"),
            [(r["name"], r["version"], r["hash"], r["split"], str(len(r["metrics"]))) for r in rows],
        )
        for r in rows:
            out.print(f"[bold]{r['name']}[/]: {escape(r['description'])}")
        _print_diffs(diffs, [p.name for p in protos])

    @group.command("show")
    def show(
        name: str = typer.Argument(..., help="Protocol name (see `nsdbench protocols list`)."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    ) -> None:
        """Print a protocol's full definition: per metric resize, color, network, layer, precision, statistic."""
        from nsdbench.metrics.protocols import PROTOCOLS, differences, get_protocol, metric_fields

        p = get_protocol(name)
        if as_json:
            doc = {**p.to_dict(), "hash": p.hash, "identity": p.identity}
            print(json.dumps({**doc, "changelog": [dataclasses.asdict(c) for c in p.changelog]}, indent=2))
            return
        out.print(f"[bold]{p.name}[/] version {p.version}  hash {p.hash}")
        out.print(p.description)
        out.print(f"split: {p.split} (reference order: {p.published_order}; nsdbench keys by NSD id)")
        table = Table(title=f"{p.name} metrics", show_lines=True)
        table.add_column("metric")
        table.add_column("definition", overflow="fold")
        for m in p.metrics:
            fields = metric_fields(m)
            note = getattr(m, "note", "")
            text = "\n".join(f"{k}: {v}" for k, v in fields.items()) + (f"\nnote: {note}" if note else "")
            table.add_row(m.name, text)
        out.print(table)
        for n in p.notes:
            out.print(f"- {n}")
        if p.changelog:
            out.print("[bold]changelog[/]")
            for c in p.changelog:
                out.print(f"- {c.line()}", markup=False)
        others = [q for q in PROTOCOLS.values() if q.name != p.name]
        _print_diffs(differences([p, *others]), [p.name] + [q.name for q in others])

    app.add_typer(group, name="protocols")


def _print_diffs(diffs: list[dict], names: list[str]) -> None:
    """The fields where protocols differ: a table when it fits, else one block per (metric, field)."""
    print_table_or_records(
        "where the protocols differ",
        ("metric · field", *names),
        [(_diff_key(r), *[str(r.get(n, "")) for n in names]) for r in diffs],
    )


def _diff_key(r: dict) -> str:
    return r["field"] if r["metric"] == "-" else f"{r['metric']} · {r['field']}"
