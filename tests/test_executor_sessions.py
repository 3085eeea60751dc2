"""Ray workers keep one RunSession per run and close its method when they move on to another run or exit
(bench/runs/executors.py `worker_session`, `close_worker_sessions`); checked without Ray on real tiny run folders."""

from __future__ import annotations

import atexit
from typing import ClassVar

from nsdbench.methods.baselines import Shuffled
from nsdbench.methods.registry import register_method, unregister_method


class ClosingShuffled(Shuffled):
    """The shuffled baseline, counting its close() calls."""

    name = "test-closing-shuffled"
    closed: ClassVar[list[str]] = []

    def close(self) -> None:
        ClosingShuffled.closed.append(self.name)


def test_worker_sessions_close_their_method(synth_root, tmp_path, monkeypatch):
    from nsdbench.runs import executors
    from nsdbench.runs.spec import RunSpec, prepare_run_dir

    register_method(ClosingShuffled, source="test")
    executors.close_worker_sessions()  # none left over from another test
    registered = []
    monkeypatch.setattr(atexit, "register", lambda f: registered.append(f))
    monkeypatch.setattr(atexit, "unregister", lambda f: None)
    try:
        dirs = []
        for k in (1, 2):
            spec = RunSpec(method=ClosingShuffled.name, subjects=(1,), split="nsd982", data=str(synth_root),
                           weights="tiny", device="cpu", seed=k)  # fmt: skip
            dirs.append(str(prepare_run_dir(tmp_path / f"run{k}", spec)))
        first = executors.worker_session(dirs[0], False)
        assert executors.worker_session(dirs[0], False) is first  # reused across tasks
        assert first.method.name == ClosingShuffled.name  # instantiated, as a task does
        mine = [f for f in registered if getattr(f, "__module__", None) == executors.__name__]
        assert mine == [executors.close_worker_sessions] and ClosingShuffled.closed == []  # registered once
        second = executors.worker_session(dirs[1], False)
        assert ClosingShuffled.closed == [ClosingShuffled.name]  # moving on closes the previous run
        assert executors.worker_sessions() == [second]
        assert second.method.name == ClosingShuffled.name
        executors.close_worker_sessions()  # what the worker runs at exit
        assert ClosingShuffled.closed == [ClosingShuffled.name] * 2 and executors.worker_sessions() == []
    finally:
        unregister_method(ClosingShuffled.name)
        ClosingShuffled.closed.clear()
