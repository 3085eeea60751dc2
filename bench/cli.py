"""The `nsdbench` command line: one typer app; each area registers its commands from nsdbench.commands."""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import sys
import threading
from types import ModuleType
from typing import NoReturn

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


def _show_version(value: bool) -> None:
    if value:
        import nsdbench

        print(f"nsdbench {nsdbench.__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", help="Print the version and exit.", is_eager=True, callback=_show_version
    ),
) -> None:
    """Benchmark and evaluation suite for image reconstruction from NSD 7T fMRI."""


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


def _plain_help(typer_app: typer.Typer) -> None:
    """Click-style help everywhere: typer's rich panels label every flag `<bool>`, as if it took a value."""
    typer_app.rich_markup_mode = None
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _plain_help(group.typer_instance)


_register_all()
_plain_help(app)


def _click_exception_modules() -> list[ModuleType]:
    """Every click the installed typer may raise from: its own copy (typer >= 0.17) and/or click itself."""
    mods = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            mods.append(importlib.import_module(name))
        except ImportError:
            continue
    return mods


def _classes(attr: str, *extra: type) -> tuple[type, ...]:
    found = [getattr(m, attr) for m in _click_exception_modules() if hasattr(m, attr)]
    return tuple(dict.fromkeys([*extra, *found]))


USAGE_ERRORS = _classes("ClickException")  # UsageError, NoSuchOption, MissingParameter, ... (exit_code 2)
EXITS = _classes("Exit", typer.Exit)
ABORTS = _classes("Abort", typer.Abort)


def exit_code_for(exc: BaseException) -> int | None:
    """The documented exit code for a CLI-level exception (showing its message), or None if it is a bug."""
    if isinstance(exc, NSDBenchError):
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return exc.exit_code
    if isinstance(exc, EXITS):
        return int(getattr(exc, "exit_code", 0) or 0)
    if isinstance(exc, ABORTS):  # Ctrl-C: what was finished is kept (every write is atomic)
        err.print("interrupted")
        return 130
    if isinstance(exc, USAGE_ERRORS):
        exc.show()
        return int(getattr(exc, "exit_code", 2))
    if isinstance(exc, OSError):  # a file that vanished, a full disk, a permission: one line
        where = f"{exc.filename}: " if exc.filename else ""
        err.print(f"[bold red]error:[/] {where}{exc.strerror or exc}", highlight=False, soft_wrap=True)
        return 1
    return None


def _missing_command(args: list[str]) -> bool:
    """`nsdbench` or `nsdbench GROUP` alone: click >= 8.2 calls it a usage error, older click exits 0."""
    return not args or (len(args) == 1 and args[0] in {g.name for g in app.registered_groups})


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: user-facing errors become one line and a documented exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if _missing_command(args):
        with contextlib.redirect_stdout(sys.stderr):  # the help, where a usage error goes
            app(args=[*args, "--help"], standalone_mode=False, prog_name="nsdbench")
        return 2
    try:
        rc = app(args=args, standalone_mode=False, prog_name="nsdbench")
    except Exception as exc:
        code = exit_code_for(exc)
        if code is None:
            raise
        return code
    return rc if type(rc) is int else 0


def exit_skipping_teardown(code: int) -> NoReturn:
    """Exit with `code` the way the interpreter does (wait for non-daemon threads, run the atexit handlers,
    flush the output) but without its teardown of every module and object, which takes 1.5 s or more
    once torch, torchvision and open_clip are loaded. Every file and database connection of nsdbench is
    closed by then. Without torch loaded, or where CPython's hooks are missing, the exit is the normal one."""
    wait_for_threads = getattr(threading, "_shutdown", None)  # CPython's own first step of exiting
    run_atexit = getattr(atexit, "_run_exitfuncs", None)
    if "torch" not in sys.modules or wait_for_threads is None or run_atexit is None:
        sys.exit(code)
    wait_for_threads()  # idle executor workers end here too
    run_atexit()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: what could be written was
            pass
    with contextlib.suppress(Exception):  # C-level stdio buffers of extension modules
        import ctypes

        ctypes.CDLL(None).fflush(None)
    os._exit(code)


def entry() -> NoReturn:
    """The installed `nsdbench` command."""
    exit_skipping_teardown(main())


if __name__ == "__main__":  # python -m nsdbench.cli (profilers, runpy): the interpreter's own exit
    sys.exit(main())
