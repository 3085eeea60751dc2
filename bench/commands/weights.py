"""`nsdbench weights list|fetch|verify`."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from nsdbench import weights
from nsdbench.errors import NSDBenchError

out = Console()
FETCH_NAMES = typer.Argument(None, help="Artifacts to fetch (default: all).")
VERIFY_NAMES = typer.Argument(None, help="Artifacts to verify (default: cached).")


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Manage pretrained artifacts in NSDBENCH_HOME/weights.", no_args_is_help=True)

    @group.command("list")
    def list_(as_json: bool = typer.Option(False, "--json", help="Print one JSON document.")) -> None:
        """List every artifact, its source and whether it is cached."""
        rows = [
            {
                "name": a.name,
                "kind": a.kind,
                "source": a.source,
                "cached": weights.is_cached(a.name),
                "path": str(weights.local_path(a.name)),
                "used_by": list(a.used_by),
                "description": a.description,
                "loader": a.loader,
                "subfolder": a.subfolder,
                "variant": a.variant,
                "size_bytes": a.size_bytes,
                "revision": a.revision,
                "sha256": a.sha256,
            }
            for a in weights.artifacts().values()
        ]
        if as_json:
            print(json.dumps(rows, indent=2))
            return
        table = Table(title=f"weights in {weights.weights_dir()}")
        for col in ("name", "cached", "source", "used by"):
            table.add_column(col)
        for r in rows:
            table.add_row(r["name"], "yes" if r["cached"] else "no", r["source"], ", ".join(r["used_by"]))
        out.print(table)

    @group.command("fetch")
    def fetch(
        names: list[str] = FETCH_NAMES,
        method: str = typer.Option(None, "--method", help="Fetch exactly what this method needs."),
    ) -> None:
        """Download artifacts with their standard client (needs network access)."""
        if method:
            todo = [a.name for a in weights.method_artifacts(method)] + list(names or [])
            known, unknown = weights.download_size([weights.get(n) for n in todo])
            out.print(
                f"{method}: {len(todo)} artifacts ({', '.join(todo) or 'none'}); to download "
                f"{_human(known)}{f' + {unknown} of unknown size' if unknown else ''}"
            )
            names = todo
            if not names:
                return
        for name in names or list(weights.artifacts()):
            path = weights.fetch(name)
            out.print(f"{name}: {path} sha256={weights.recorded_sha256(name)}")

    @group.command("verify")
    def verify(names: list[str] = VERIFY_NAMES) -> None:
        """Recompute the sha256 of cached artifacts and compare with the published hash when known."""
        todo = names or [n for n in weights.artifacts() if weights.is_cached(n)]
        bad = []
        for name in todo:
            ok, digest = weights.verify(name)
            out.print(f"{name}: {'ok' if ok else 'MISMATCH'} sha256={digest}")
            if not ok:
                bad.append(name)
        if bad:
            raise NSDBenchError(f"sha256 mismatch for {', '.join(bad)}")

    app.add_typer(group, name="weights")
