"""The `nsdbench` command line: one typer app; each area registers its commands from nsdbench.commands."""

from __future__ import annotations

import importlib
import sys

import typer
from rich.console import Console

from nsdbench.errors import NSDBenchError

app = typer.Typer(
    name="nsdbench",
    help="Benchmark and evaluation suite for image reconstruction from NSD 7T fMRI.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Each module defines `register(app)`. Order is the order of `nsdbench --help`.
COMMAND_MODULES = (
    "data",  # data synth|info, splits show
    "weights",  # weights list|fetch|verify
    "protocols",  # protocols list|show
    "score",  # score, validate
    "leaderboard",  # leaderboard, compare, runs, drift
    "encoder",  # encoder fit|show
    "run",  # run, ingest, methods
    "report",  # report
)

err = Console(stderr=True)


def _register_all() -> None:
    for name in COMMAND_MODULES:
        modname = f"nsdbench.commands.{name}"
        try:
            module = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name == modname:
                continue  # area not present in this checkout
            raise
        module.register(app)


_register_all()


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: user-facing errors become one line and a documented exit code."""
    try:
        rc = app(args=argv, standalone_mode=False)
    except NSDBenchError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:  # Ctrl-C: what was finished is kept (every write is atomic)
        err.print("interrupted")
        return 130
    except OSError as exc:  # a file that vanished, a full disk, a permission: one line, not a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        err.print(f"[bold red]error:[/] {where}{exc.strerror or exc}", highlight=False, soft_wrap=True)
        return 1
    except Exception as exc:  # click usage errors carry their own exit code
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            return exc.exit_code
        if isinstance(exc, click.exceptions.Exit):
            return exc.exit_code
        raise
    return rc if type(rc) is int else 0


if __name__ == "__main__":
    sys.exit(main())
