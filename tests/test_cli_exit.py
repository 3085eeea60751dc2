"""The installed command exits without the interpreter's teardown of torch (about 1.5 s), but only once
its output is flushed and the atexit handlers have run, and never while another thread still works."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


def test_the_console_script_is_the_fast_exit_entry() -> None:
    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "nsdbench"]
    assert ep.value == "nsdbench.cli:entry"


def test_output_and_atexit_handlers_survive_the_fast_exit() -> None:
    proc = _python(
        "import atexit, torch\n"
        "from nsdbench.cli import exit_skipping_teardown\n"
        "atexit.register(lambda: print('atexit ran', flush=True))\n"
        "print('unflushed output', end='')\n"
        "exit_skipping_teardown(3)\n"
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "unflushed outputatexit ran\n"


def test_a_working_thread_is_waited_for(tmp_path: Path) -> None:
    done = tmp_path / "done"
    proc = _python(
        "import threading, time, torch\n"
        "from nsdbench.cli import exit_skipping_teardown\n"
        f"threading.Thread(target=lambda: (time.sleep(0.5), open({str(done)!r}, 'w').close())).start()\n"
        "exit_skipping_teardown(0)\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert done.exists()


def test_the_installed_command_keeps_its_exit_codes(tmp_path: Path) -> None:
    """A usage error and a success through the real console script."""
    bad = subprocess.run(["nsdbench", "score"], capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 2 and "Missing argument" in bad.stderr
    ok = subprocess.run(
        ["nsdbench", "protocols", "list"], capture_output=True, text=True, timeout=120, check=False
    )
    assert ok.returncode == 0 and "brain-diffuser-2023" in ok.stdout


def test_idle_executor_workers_do_not_block_the_exit() -> None:
    proc = _python(
        "import torch\n"
        "from concurrent.futures import ThreadPoolExecutor\n"
        "from nsdbench.cli import exit_skipping_teardown\n"
        "pool = ThreadPoolExecutor(2)\n"
        "print(sum(pool.map(abs, [-1, -2, -3])))\n"
        "exit_skipping_teardown(0)\n"
    )
    assert proc.returncode == 0 and proc.stdout == "6\n", proc.stderr


def test_the_teardown_is_skipped() -> None:
    """What tells the fast exit from the normal one: module globals are never torn down (their __del__
    does not run), while the atexit handlers do."""
    code = (
        "import atexit, sys, torch\n"
        "from nsdbench.cli import exit_skipping_teardown\n"
        "class Torn:\n"
        "    def __del__(self):\n"
        "        print('torn down', flush=True)\n"
        "kept = Torn()\n"
        "atexit.register(lambda: print('atexit ran', flush=True))\n"
        "{exit}\n"
    )
    fast = _python(code.format(exit="exit_skipping_teardown(0)"))
    normal = _python(code.format(exit="sys.exit(0)"))
    assert fast.returncode == normal.returncode == 0
    assert fast.stdout == "atexit ran\n"
    assert normal.stdout == "atexit ran\ntorn down\n"
