"""`nsdbench protocols list|show`: the metric protocols and where they disagree."""

from __future__ import annotations

import dataclasses
import json

import typer
from rich.console import Console
from rich.table import Table

out = Console()


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
        table = Table(title="metric protocols")
        for col in ("name", "version", "hash", "split", "metrics", "description"):
            table.add_column(col, overflow="fold")
        for r in rows:
            table.add_row(
                r["name"], r["version"], r["hash"], r["split"], str(len(r["metrics"])), r["description"]
            )
        out.print(table)
        out.print(_diff_table(diffs, [p.name for p in protos]))

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
        out.print(_diff_table(differences([p, *others]), [p.name] + [q.name for q in others]))

    app.add_typer(group, name="protocols")


def _diff_table(diffs: list[dict], names: list[str]) -> Table:
    table = Table(title="where the protocols differ", show_lines=True)
    table.add_column("metric")
    table.add_column("field")
    for n in names:
        table.add_column(n, overflow="fold")
    for r in diffs:
        table.add_row(r["metric"], r["field"], *[str(r.get(n, "")) for n in names])
    return table
