"""`nsdbench weights list|fetch|verify`."""

from __future__ import annotations

import json

import typer
from rich.console import Console

from nsdbench import weights
from nsdbench.errors import NSDBenchError
from nsdbench.terminal import print_table_or_records

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)
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
        print_table_or_records(
            f"weights in {weights.weights_dir()}",
            ("name", "cached", "used by", "source"),
            [(r["name"], "yes" if r["cached"] else "no", ",".join(r["used_by"]), r["source"]) for r in rows],
        )

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
        todo = names or list(weights.artifacts())
        for name in todo:
            weights.get(name)  # every name is checked before the first download
        failed = []
        for name in todo:
            try:
                path = weights.fetch(name)
            except NSDBenchError:
                raise
            except Exception as exc:  # noqa: BLE001 - urllib, requests, httpx and hub errors alike
                failed.append(name)
                err.print(
                    f"{name}: cannot download {source_url(weights.get(name))} ({_reason(exc)})",
                    markup=False,
                    highlight=False,
                    soft_wrap=True,
                )
                continue
            out.print(f"{name}: {path} sha256={weights.recorded_sha256(name)}", markup=False, soft_wrap=True)
        if failed:
            raise NSDBenchError(
                f"{len(failed)} artifact(s) not fetched: {', '.join(failed)} (no network access? fetch on a "
                f"machine that has it and copy {weights.weights_dir()} here)"
            )

    @group.command("verify")
    def verify(
        names: list[str] = VERIFY_NAMES,
        as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    ) -> None:
        """Recompute the sha256 of cached artifacts and compare with the published hash when known."""
        todo = names or [n for n in weights.artifacts() if weights.is_cached(n)]
        if not todo and not as_json:
            out.print(
                f"no artifacts cached in {weights.weights_dir()}: nothing to verify "
                "(`nsdbench weights fetch` downloads them)",
                markup=False,
                soft_wrap=True,
            )
            return
        bad, rows = [], []
        for name in todo:
            ok, digest = weights.verify(name)
            rows.append(
                {"name": name, "ok": ok, "sha256": digest, "published_sha256": weights.get(name).sha256}
            )
            if not as_json:
                out.print(f"{name}: {'ok' if ok else 'MISMATCH'} sha256={digest}", markup=False)
            if not ok:
                bad.append(name)
        if as_json:
            print(json.dumps({"weights_dir": str(weights.weights_dir()), "verified": rows}, indent=2))
        if bad:
            raise NSDBenchError(f"sha256 mismatch for {', '.join(bad)}")

    app.add_typer(group, name="weights")


def source_url(art: weights.Artifact) -> str:
    """Where an artifact is downloaded from, as a URL a user can try in a browser."""
    if art.kind == "url":
        return art.source
    rev = art.revision or "main"
    if art.kind == "hf":
        return f"https://huggingface.co/{art.source}/resolve/{rev}/{art.filename}"
    return f"https://huggingface.co/{art.source}/tree/{rev}"


def _reason(exc: BaseException) -> str:
    """The innermost cause of a download error, in one line (not a bare `urlopen error`)."""
    while getattr(exc, "reason", None) is not None and isinstance(exc.reason, BaseException):
        exc = exc.reason
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
