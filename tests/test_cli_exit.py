"""The installed command exits without the interpreter's teardown of torch (about 2 s), but only once the
non-daemon threads have ended, the atexit handlers have run and the output is flushed."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

SCRIPT = """\
import atexit, sys, threading, time, torch
from concurrent.futures import ThreadPoolExecutor
from nsdbench.cli import exit_skipping_teardown

class Torn:
    def __del__(self):
        print('torn down', flush=True)

kept = Torn()  # a module global: only a teardown deletes it
pool = ThreadPoolExecutor(2)  # idle workers left behind
print(sum(pool.map(abs, [-1, -2, -3])))
threading.Thread(target=lambda: (time.sleep(0.5), open({done!r}, 'w').close())).start()  # still working
atexit.register(lambda: print('atexit ran', flush=True))
print('unflushed output', end='')
{exit}
"""


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


def test_the_console_script_is_the_fast_exit_entry() -> None:
    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "nsdbench"]
    assert ep.value == "nsdbench.cli:entry"


def test_the_fast_exit_keeps_output_threads_and_atexit_and_skips_the_teardown(tmp_path: Path) -> None:
    fast_done, normal_done = tmp_path / "fast", tmp_path / "normal"
    fast = _python(SCRIPT.format(done=str(fast_done), exit="exit_skipping_teardown(3)"))
    normal = _python(SCRIPT.format(done=str(normal_done), exit="sys.exit(3)"))
    assert fast.returncode == normal.returncode == 3, fast.stderr + normal.stderr
    assert fast_done.exists() and normal_done.exists()  # the working thread was waited for
    assert fast.stdout == "6\nunflushed outputatexit ran\n"
    assert normal.stdout == "6\nunflushed outputatexit ran\ntorn down\n"  # what the fast exit skips


def test_the_installed_command_keeps_its_exit_codes() -> None:
    """A usage error and a success through the real console script."""
    bad = subprocess.run(["nsdbench", "score"], capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 2 and "Missing argument" in bad.stderr
    ok = subprocess.run(
        ["nsdbench", "protocols", "list"], capture_output=True, text=True, timeout=120, check=False
    )
    assert ok.returncode == 0 and "brain-diffuser-2023" in ok.stdout
