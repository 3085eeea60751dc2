"""Executors: who runs which shards of a run.

in-process   one process runs its shards (all of them, or worker k of N);
environment  the same command under a Slurm array, torchrun or accelerate: k/N comes from `--shard k/N`,
             SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT or RANK/WORLD_SIZE; `nsdbench ingest` merges;
ray          one Ray task per shard (with its GPU request), fits and scoring as tasks too, retries of
             failed tasks, results written to the shared run folder, ingest by the driver alone.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nsdbench.errors import NSDBenchError, UsageError
from nsdbench.progress import Progress
from nsdbench.runs.folder import clean_leftovers, log_event
from nsdbench.runs.scores import run_protocols, run_status, score_is_complete, score_run_subject
from nsdbench.runs.session import RunSession
from nsdbench.runs.shards import assign, shard_is_complete
from nsdbench.runs.spec import RunSpec, read_spec

EXECUTORS = ("inprocess", "ray")


@dataclass(frozen=True)
class Worker:
    """This process's share of a run: worker k of n (0-based) and where that came from."""

    k: int = 0
    n: int = 1
    source: str = "single"

    @property
    def sharded(self) -> bool:
        return self.n > 1


def parse_shard(text: str) -> tuple[int, int]:
    """'k/N' (0-based k) → (k, N), or a one-line usage error."""
    try:
        k_text, n_text = text.split("/")
        k, n = int(k_text), int(n_text)
    except ValueError:
        raise UsageError(
            f"--shard {text!r}: expected k/N with integers, e.g. 0/4 (k counts from 0)"
        ) from None
    if n < 1 or not 0 <= k < n:
        raise UsageError(f"--shard {text}: expected 0 <= k < N (k counts from 0)")
    return k, n


def resolve_worker(flag: str | None, env: Mapping[str, str] | None = None) -> Worker:
    """--shard, else SLURM_ARRAY_TASK_ID/COUNT (minus SLURM_ARRAY_TASK_MIN), else RANK/WORLD_SIZE."""
    env = os.environ if env is None else env
    if flag:
        k, n = parse_shard(flag)
        return Worker(k, n, "--shard")
    if env.get("SLURM_ARRAY_TASK_ID") not in (None, "") and env.get("SLURM_ARRAY_TASK_COUNT") not in (
        None,
        "",
    ):
        try:
            task, count = int(env["SLURM_ARRAY_TASK_ID"]), int(env["SLURM_ARRAY_TASK_COUNT"])
            k = task - int(env.get("SLURM_ARRAY_TASK_MIN") or 0)
        except ValueError:
            raise UsageError("SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT are not integers") from None
        if not 0 <= k < count:
            raise UsageError(
                f"Slurm array task {task} is outside 0..{count - 1} after SLURM_ARRAY_TASK_MIN; "
                f"use a contiguous --array range"
            )
        return Worker(k, count, "slurm")
    if env.get("WORLD_SIZE") not in (None, "") and env.get("RANK") not in (None, ""):
        try:
            k, n = int(env["RANK"]), int(env["WORLD_SIZE"])
        except ValueError:
            raise UsageError("RANK/WORLD_SIZE are not integers") from None
        if n < 1 or not 0 <= k < n:
            raise UsageError(f"RANK={k} WORLD_SIZE={n}: expected 0 <= RANK < WORLD_SIZE")
        return Worker(k, n, "rank")
    return Worker()


@dataclass(frozen=True)
class ExecResult:
    shards_run: int
    images_written: int
    subjects_scored: tuple[int, ...]
    all_complete: bool  # every shard and every subject's scores exist: ready to ingest


def run_inprocess(
    run_dir: Path,
    spec: RunSpec,
    worker: Worker = Worker(),
    progress: Progress | None = None,
    force: bool = False,
    fit_only: bool = False,
    protocols: tuple[str, ...] = (),
    device: str | None = None,
) -> ExecResult:
    """Run worker k of n's shards in this process (one method instance for all its subjects), scoring
    each subject that becomes complete under every protocol."""
    clean_leftovers(run_dir)  # temp files of killed writers (a live worker's own are kept)
    session = RunSession(run_dir, spec, progress=progress, force=force, protocols=protocols, device=device)
    try:
        return _run_inprocess(session, worker, fit_only)
    finally:
        session.close()


def _run_inprocess(session: RunSession, worker: Worker, fit_only: bool) -> ExecResult:
    spec, run_dir, force = session.spec, session.run_dir, session.force
    protos = run_protocols(session, session.protocols)
    for proto in protos:  # the folder says which protocols were asked for (ingest scores what is left)
        (Path(run_dir) / "scores" / proto.name).mkdir(parents=True, exist_ok=True)
    if fit_only:  # worker k fits subjects k, k+n, ...: decoders land in the cache for the shard workers
        subjects = list(spec.subjects)[worker.k :: worker.n]
        for subject in subjects:
            session.fitted(subject)
        return ExecResult(0, 0, (), False)
    shards = assign(session.shards(), worker.k, worker.n)
    before = {s.name for s in shards}
    written = 0
    by_subject: dict[int, list] = {}
    for shard in shards:
        by_subject.setdefault(shard.subject, []).append(shard)
    scored = []
    prog = session.progress
    for subject in sorted(by_subject):
        # complete shards are skipped outright, so a resumed run's bars count (and time) only new work
        todo = [s for s in by_subject[subject] if force or not shard_is_complete(run_dir, spec, s)]
        if todo:
            session.fitted(subject)  # fit first, so the bars read fit -> reconstruct -> score
            key = f"rec-{subject}"
            prog.start(key, f"subj{subject:02d} reconstruct", sum(len(s.items(spec.samples)) for s in todo))
            for shard in todo:
                written += session.run_shard(shard)
            prog.finish(key)
        # with several workers, the one completing a subject scores it; `ingest` catches any left over
        if protos and score_run_subject(session, subject, protos, lock=worker.sharded):  # one pass for all
            scored.append(subject)
    status = run_status(session, protos)
    done = status.complete and bool(protos) and len(status.subjects_scored) == len(spec.subjects)
    return ExecResult(len(before), written, tuple(scored), done)


# ---------------------------------------------------------------------------------------------- ray

_SESSIONS: dict[tuple[str, str, bool], RunSession] = {}


def close_worker_sessions(keep: tuple[str, str, bool] | None = None) -> None:
    """Close the cached sessions (their method's `close()` frees its models), all but `keep`."""
    for key in [k for k in _SESSIONS if k != keep]:
        _SESSIONS.pop(key).close()


def worker_sessions() -> list[RunSession]:
    """The sessions this worker process holds open (one per run it has worked on and not closed)."""
    return list(_SESSIONS.values())


def worker_session(run_dir: str, force: bool) -> RunSession:
    """One RunSession (one method instance) per run in each Ray worker process, reused across its tasks; a
    worker that moves on to another run closes the previous one, and every session is closed at exit."""
    import atexit

    spec, _ = read_spec(Path(run_dir))
    key = (run_dir, spec.hash, force)
    if key not in _SESSIONS:
        if not _SESSIONS:
            atexit.unregister(close_worker_sessions)  # registered once however many runs pass through
            atexit.register(close_worker_sessions)
        close_worker_sessions(keep=key)
        _SESSIONS[key] = RunSession(Path(run_dir), spec, force=force)
    return _SESSIONS[key]


def _task_fit(run_dir: str, subject: int, force: bool) -> dict[str, Any]:
    try:
        worker_session(run_dir, force).fitted(subject)
        return {"ok": True}
    except NSDBenchError as exc:  # deterministic user-facing errors are reported, not retried
        return {"ok": False, "error": f"subj{subject:02d} fit: {exc}"}


def _task_shard(run_dir: str, shard_name: str, force: bool, *deps: Any) -> dict[str, Any]:
    for dep in deps:
        if isinstance(dep, dict) and not dep.get("ok", True):
            return {"ok": False, "error": dep["error"], "upstream": True}
    session = worker_session(run_dir, force)
    shard = next(s for s in session.shards() if s.name == shard_name)
    try:
        written = session.run_shard(shard)
        return {"ok": True, "written": written}
    except NSDBenchError as exc:
        return {"ok": False, "error": f"{shard_name}: {exc}"}


def _task_score(
    run_dir: str, subject: int, force: bool, protocols: tuple[str, ...], *deps: Any
) -> dict[str, Any]:
    for dep in deps:
        if isinstance(dep, dict) and not dep.get("ok", True):
            return {"ok": False, "error": dep["error"], "upstream": True}
    try:
        session = worker_session(run_dir, force)
        protos = run_protocols(session, protocols)
        ok = not protos or score_run_subject(session, subject, protos)
        return (
            {"ok": ok} if ok else {"ok": False, "error": f"subj{subject:02d}: shards incomplete at scoring"}
        )
    except NSDBenchError as exc:
        return {"ok": False, "error": f"subj{subject:02d} score: {exc}"}


def _forward_env() -> dict[str, str]:
    """Settings the workers need to see the same NSDBENCH_HOME, data and config as the driver."""
    keys = [k for k in os.environ if k.startswith("NSDBENCH_")]
    return {k: os.environ[k] for k in keys}


def _runtime_env(extra: dict[str, Any] | None) -> dict[str, Any]:
    env = dict(extra or {})
    env["env_vars"] = {**_forward_env(), **dict(env.get("env_vars") or {})}
    return env


def run_ray(
    run_dir: Path,
    spec: RunSpec,
    address: str | None = None,
    progress: Progress | None = None,
    force: bool = False,
    max_retries: int = 2,
    num_gpus: float | None = None,
    runtime_env: dict[str, Any] | None = None,
    protocols: tuple[str, ...] = (),
) -> ExecResult:
    """One Ray task per shard (fit per subject first, scoring per subject after its shards).

    The run folder and NSDBENCH_HOME must be on a filesystem every worker sees; NSDBENCH_* variables are
    forwarded to the workers. `runtime_env` (Ray's, e.g. pip packages or py_modules holding third-party
    adapters) is merged with that forwarding.
    """
    try:
        import ray
    except ImportError:
        raise UsageError('--executor ray needs Ray: pip install "nsdbench[ray]"') from None

    run_dir = Path(run_dir).resolve()
    progress = progress or Progress()
    started_here = False
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UsageError(f"cannot connect to Ray at {address or 'a new local instance'}: {exc}") from None
        started_here = True
    try:
        if num_gpus is None:
            wants_cuda = spec.device == "cuda" or (
                spec.device == "auto" and ray.cluster_resources().get("GPU", 0) > 0
            )
            num_gpus = 1.0 if wants_cuda else 0.0
        session = RunSession(run_dir, spec, progress=progress, force=force, protocols=protocols)
        protos = run_protocols(session, protocols)
        for proto in protos:
            (run_dir / "scores" / proto.name).mkdir(parents=True, exist_ok=True)
        shards = session.shards()
        opts = {
            "num_gpus": num_gpus,
            "max_retries": max_retries,
            "retry_exceptions": True,
            "runtime_env": _runtime_env(runtime_env),
        }
        fit = ray.remote(_task_fit).options(**opts)
        work = ray.remote(_task_shard).options(**opts)
        score = ray.remote(_task_score).options(**opts)
        rd = str(run_dir)
        fits = {s: fit.remote(rd, s, force) for s in spec.subjects}
        shard_refs = {sh.name: work.remote(rd, sh.name, force, fits[sh.subject]) for sh in shards}
        score_refs = {
            s: score.remote(
                rd, s, force, tuple(protocols), *[shard_refs[sh.name] for sh in shards if sh.subject == s]
            )
            for s in spec.subjects
        }
        # the same bars as in-process: per subject, per stage (fit, reconstruct, score)
        n_items = {s: 0 for s in spec.subjects}
        for sh in shards:
            n_items[sh.subject] += len(sh.items(spec.samples))
        for s in spec.subjects:
            progress.start(f"fit-{s}", f"subj{s:02d} fit", 1, unit="fit")
            progress.start(f"rec-{s}", f"subj{s:02d} reconstruct", n_items[s])
            progress.start(f"score-{s}", f"subj{s:02d} score", n_items[s])
        by_name = {sh.name: sh for sh in shards}
        # fits are waited on too: a fit that fails with a user-facing error is reported, not swallowed
        pending = {
            **{ref: ("fit", s) for s, ref in fits.items()},
            **{ref: ("shard", name) for name, ref in shard_refs.items()},
            **{ref: ("score", s) for s, ref in score_refs.items()},
        }
        errors: list[str] = []
        written = 0
        t0 = time.perf_counter()
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                kind, name = pending.pop(ref)
                try:
                    out = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a task that failed after all its retries
                    last = (str(exc).strip().splitlines() or [""])[-1]
                    label = name if kind == "shard" else f"subj{name:02d} {kind}"
                    out = {"ok": False, "error": f"{label}: {type(exc).__name__}: {last}"}
                if not out.get("ok"):
                    if not out.get("upstream"):
                        errors.append(out["error"])
                    continue
                if kind == "fit":
                    progress.advance(f"fit-{name}", 1)
                elif kind == "shard":
                    written += int(out.get("written", 0))
                    shard = by_name[name]
                    progress.advance(f"rec-{shard.subject}", len(shard.items(spec.samples)))
                else:
                    progress.advance(f"score-{name}", n_items[name])
        log_event(
            run_dir,
            f"ray executor: {len(shards)} shards in {time.perf_counter() - t0:.1f}s, {len(errors)} errors",
        )
        if errors:
            raise NSDBenchError(
                f"{len(errors)} task(s) failed (first: {errors[0]}); other errors were retried "
                f"{max_retries} times; rerun the same command to resume"
            )
        scored = tuple(
            s for s in spec.subjects if protos and all(score_is_complete(session, s, p) for p in protos)
        )
        return ExecResult(len(shards), written, scored, bool(protos) and len(scored) == len(spec.subjects))
    finally:
        if started_here:
            ray.shutdown()
