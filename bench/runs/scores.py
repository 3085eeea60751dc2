"""Scoring a run's images under any number of protocols (scores/<protocol>/), status, and ingest."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nsdbench.errors import NSDBenchError, UsageError
from nsdbench.metrics.protocols import Protocol
from nsdbench.progress import Progress, scaled_progress
from nsdbench.runs.folder import (
    FileLock,
    file_digest,
    log_event,
    png_path,
    read_json,
    read_png,
    score_path,
    score_record_path,
    scored_protocols,
    write_owned,
)
from nsdbench.runs.session import RunSession, data_label, guiding_encoders
from nsdbench.runs.shards import shard_files, shard_is_complete
from nsdbench.runs.spec import read_spec
from nsdbench.stage_times import Timings, stage

if TYPE_CHECKING:
    from nsdbench.leaderboards.store import IngestResult

IDENTITY_KEYS = ("encoder", "encoder_key", "encoder_sha256")  # what names the metric's encoder


def circular_guidance(guiding: list[str], brain_infos: list[dict[str, Any]]) -> bool:
    """True when a guidance encoder is the brain-correlation metric's own encoder: a guiding identity
    names the metric encoder's name, content key or sha256 (then its brain-correlation cells are
    circular, and the leaderboard marks them)."""
    names = {str(info.get(k)) for info in brain_infos for k in IDENTITY_KEYS if info.get(k)}
    return any(name == g or name in g.replace("/", ":").split(":") for g in guiding for name in names)


def row_id(run_id: str, protocol: str) -> str:
    """The leaderboard row of a run scored under one protocol."""
    return f"{run_id}@{protocol}"


def protocol_split(protocol: Protocol, run_split: str) -> str:
    """The split a protocol scores a run on: its own (the run's, or one nested in it)."""
    return str(getattr(protocol, "split", None) or run_split)


def check_protocols(
    names: tuple[str, ...] | list[str], split: str, nested: Callable[[str], bool] | None = None
) -> list[Protocol]:
    """Protocol objects for `names`; each must score on the run's split or, with `nested` (a session's
    `RunSession.nested`), on a split within it (scored on the run's images in that split)."""
    from nsdbench.metrics.protocols import get_protocol
    from nsdbench.runs.folder import check_protocol_name

    out = []
    for name in names:
        proto = get_protocol(name)
        check_protocol_name(proto.name)
        own = protocol_split(proto, split)
        if own != split and not (nested is not None and nested(own)):
            raise UsageError(
                f"protocol {proto.name} scores on {own}, but this run generated images for {split} "
                f"({own} is not within {split})"
            )
        if proto.name not in [p.name for p in out]:
            out.append(proto)
    return out


def run_protocols(session: RunSession, names: tuple[str, ...] | list[str]) -> list[Protocol]:
    """`check_protocols` for a run: protocols on the run's split or on a split nested in it."""
    return check_protocols(names, session.spec.split, session.nested)


def subject_complete(session: RunSession, subject: int) -> bool:
    return all(
        shard_is_complete(session.run_dir, session.spec, s) for s in session.shards() if s.subject == subject
    )


def images_digest(session: RunSession, subject: int) -> str:
    """Digest of the PNG hashes recorded by the subject's shards (what its scores are computed from)."""
    h = hashlib.sha256()
    for shard in (s for s in session.shards() if s.subject == subject):
        for name, digest in sorted(shard_files(session.run_dir, session.spec, shard).items()):
            if name.endswith(".png") and name.count(".") == 1:
                h.update(f"{name}={digest};".encode())
    return h.hexdigest()


def score_is_complete(session: RunSession, subject: int, protocol: Protocol) -> bool:
    rec = read_json(score_record_path(session.run_dir, subject, protocol.name))
    return (
        rec is not None
        and rec.get("spec_hash") == session.spec.hash
        and rec.get("protocol_hash") == protocol.hash
        and rec.get("images_digest") == images_digest(session, subject)
        and file_digest(score_path(session.run_dir, subject, protocol.name)) == rec.get("parquet_sha256")
        and _same_batches(session, subject, protocol)
    )


def _same_batches(session: RunSession, subject: int, protocol: Protocol) -> bool:
    """The score file was computed with the forward chunk sizes this session's device uses now."""
    from nsdbench.metrics.forward import batches_match
    from nsdbench.score_files import read_parquet_meta

    try:
        meta = read_parquet_meta(score_path(session.run_dir, subject, protocol.name))
    except NSDBenchError:
        return False
    return batches_match(meta.get("provenance") or {}, session.device)


def score_run_subject(
    session: RunSession,
    subject: int,
    protocols: Protocol | Sequence[Protocol],
    lock: bool = False,
    timings: Timings | None = None,
) -> bool:
    """Score the subject's reconstructions under every protocol (one engine pass for all that are not yet
    scored) once all its shards are complete; True when all its scores exist. lock=True (several
    workers): a protocol is scored only by the worker holding its OS lock (a killed worker's lock dies
    with it); the others return False and `nsdbench ingest` scores what is left."""
    protos = [protocols] if isinstance(protocols, Protocol) else list(protocols)
    if not subject_complete(session, subject):
        return False
    todo = [p for p in protos if session.force or not score_is_complete(session, subject, p)]
    if not todo:
        return True
    if not lock:
        return _score(session, subject, todo, timings)
    guards = []
    try:
        held = []
        for proto in todo:
            guard = FileLock(score_path(session.run_dir, subject, proto.name).with_suffix(".lock"))
            if guard.acquire():
                guards.append(guard)
                held.append(proto)
            else:
                log_event(session.run_dir, f"subj{subject:02d} {proto.name}: another worker is scoring it")
        left = [p for p in held if session.force or not score_is_complete(session, subject, p)]
        ok = _score(session, subject, left, timings) if left else True
        return ok and len(held) == len(todo)
    finally:
        for guard in guards:
            guard.release()


def _score(
    session: RunSession, subject: int, protocols: list[Protocol], timings: Timings | None = None
) -> bool:
    from nsdbench.metrics.engine import ScoreOptions
    from nsdbench.scoring import SubjectScope, brain_target, has_brain_metrics, write_subject_scores

    spec = session.spec
    key = f"score-{subject}"
    names = ", ".join(p.name for p in protocols)
    # a protocol on a nested split scores the run's images within its split, as `score` does
    scopes = [SubjectScope(p, session.split(subject, protocol_split(p, spec.split))) for p in protocols]
    wanted_ids = {int(i) for sc in scopes for i in sc.split.test_ids}
    every = [it for s in session.shards() if s.subject == subject for it in s.items(spec.samples)]
    items = [it for it in every if it[0] in wanted_ids]
    session.progress.start(key, f"subj{subject:02d} score {names}", len(items))
    images = {}
    with stage(timings, "decode"):
        for nsd_id, sample in items:
            img = read_png(png_path(session.run_dir, subject, nsd_id, sample))
            if img is None:  # changed after the completeness check: let the next pass regenerate it
                return False
            images[(nsd_id, sample)] = img
    t0 = time.perf_counter()
    digest = images_digest(session, subject)
    report = scaled_progress(lambda n: session.progress.advance(key, n), len(items))
    targets, meta = {}, {}
    for proto in protocols:
        wanted = None if has_brain_metrics(proto) else False
        with stage(timings if wanted is None else None, "brain"):
            brain, note = brain_target(
                session.nsd, subject, protocol_split(proto, spec.split), spec.weights, wanted, protocol=proto
            )
        if note and wanted is None:
            log_event(session.run_dir, note)
            session.progress.message(note)
        targets[proto.name] = brain
        meta[proto.name] = {
            "run": spec.run_id,
            "run_dir_spec_hash": spec.hash,
            "brain_encoder": dict(getattr(brain, "info", {}) or {}) if brain is not None else {},
        }
    write_subject_scores(  # written atomically by nsdbench.scoring
        session.nsd,
        subject,
        scopes,
        images,
        ScoreOptions(spec.weights, session.device, progress=report, timings=timings),
        {p.name: score_path(session.run_dir, subject, p.name) for p in protocols},
        {p.name: row_id(spec.run_id, p.name) for p in protocols},
        targets,
        meta,
    )
    report(1, 1)
    session.progress.finish(key)
    for sc in scopes:
        proto, in_split = sc.protocol, {int(i) for i in sc.split.test_ids}
        record = {
            "subject": subject,
            "protocol": proto.name,
            "protocol_hash": proto.hash,
            "split": sc.split.name,
            "spec_hash": spec.hash,
            "images_digest": digest,
            "parquet_sha256": file_digest(score_path(session.run_dir, subject, proto.name)),
            "n_images": len({nsd_id for nsd_id, _ in items if nsd_id in in_split}),
            "n_reconstructions": sum(1 for nsd_id, _ in items if nsd_id in in_split),
        }
        write_owned(
            score_record_path(session.run_dir, subject, proto.name), json.dumps(record, indent=1).encode()
        )
    log_event(
        session.run_dir,
        f"scored subj{subject:02d} {names} {len(items)} images {time.perf_counter() - t0:.2f}s",
    )
    return True


@dataclass(frozen=True)
class RunStatus:
    shards_total: int
    shards_complete: int
    subjects_scored: tuple[int, ...]  # scored under every protocol asked about
    incomplete: tuple[str, ...]  # names of incomplete shards

    @property
    def complete(self) -> bool:
        return self.shards_complete == self.shards_total


def run_status(session: RunSession, protocols: list[Protocol] | None = None) -> RunStatus:
    shards = session.shards()
    incomplete = tuple(s.name for s in shards if not shard_is_complete(session.run_dir, session.spec, s))
    protos = protocols if protocols is not None else run_protocols(session, session.protocols)
    scored = tuple(
        s for s in session.spec.subjects if protos and all(score_is_complete(session, s, p) for p in protos)
    )
    return RunStatus(len(shards), len(shards) - len(incomplete), scored, incomplete)


def ingest_run(
    run_dir: Path,
    db: str | Path | None = None,
    progress: Progress | None = None,
    protocols: tuple[str, ...] | list[str] | None = None,
    timings: Timings | None = None,
) -> list[IngestResult]:
    """Score any complete-but-unscored subject under each protocol, then record one leaderboard row per
    protocol (single writer). Protocols default to those the run folder has scores/ folders for."""
    from nsdbench import config
    from nsdbench.leaderboards.store import Store
    from nsdbench.score_files import read_parquet_meta

    spec, doc = read_spec(run_dir)
    names = list(protocols or scored_protocols(run_dir) or [str(config.get("protocol", None))])
    session = RunSession(run_dir, spec, progress=progress, protocols=tuple(names))
    protos = run_protocols(session, names)
    status = run_status(session, protos)
    if not status.complete:
        first = ", ".join(status.incomplete[:3])
        raise NSDBenchError(
            f"{run_dir}: {len(status.incomplete)} of {status.shards_total} shards are incomplete ({first}"
            f"{', ...' if len(status.incomplete) > 3 else ''}); "
            "finish them with the same `nsdbench run` command"
        )
    store = Store(db)
    encoders = guiding_encoders(run_dir)
    results = []
    for subject in spec.subjects:
        if not score_run_subject(session, subject, protos, timings=timings):
            raise NSDBenchError(
                f"{run_dir}: subject {subject} could not be scored (images changed while reading)"
            )
    for proto in protos:
        rid = row_id(spec.run_id, proto.name)
        record = store.new_run_record(
            kind="run",
            method=spec.method + (f":{spec.variant}" if spec.variant else ""),
            subjects=spec.subjects,
            split=protocol_split(proto, spec.split),
            protocol=proto,
            weights_mode=spec.weights,
            run_id=rid,
            run=spec.run_id,
            guiding_encoders=tuple(encoders),
            seeds={
                "base_seed": spec.seed,
                "samples": spec.samples,
                "scheme": "sha256(base,method,subject,nsd_id,sample)",
            },
            data=data_label(session.nsd, spec.data),
            config={"run_dir": str(Path(run_dir).resolve()), "spec_hash": spec.hash, **spec.identity()},
            created_at=str(doc.get("created", "")),
        )
        paths = [score_path(run_dir, s, proto.name) for s in spec.subjects]
        brain_infos = [dict(read_parquet_meta(p).get("brain_encoder") or {}) for p in paths]
        circular = circular_guidance(encoders, brain_infos)
        record = replace(record, config={**record.config, "circular_brain": circular})
        with stage(timings, "store"):
            result = store.ingest(record, paths)
        log_event(run_dir, f"ingested {rid} into {store.path} (new={result.inserted})")
        results.append(result)
    return results


def rescore_run(
    run_dir: Path,
    protocols: tuple[str, ...] | list[str],
    db: str | Path | None = None,
    progress: Progress | None = None,
    ingest: bool = True,
    force: bool = False,
    timings: Timings | None = None,
) -> list[IngestResult]:
    """Score a finished run under more protocols without generating anything; record them unless
    ingest=False. Returns the ingest results (or an empty list)."""
    spec, _ = read_spec(run_dir)
    session = RunSession(run_dir, spec, progress=progress, force=force, protocols=tuple(protocols))
    protos = run_protocols(session, list(protocols))
    status = run_status(session, [])
    if not status.complete:
        raise NSDBenchError(
            f"{run_dir}: {len(status.incomplete)} of {status.shards_total} shards are incomplete "
            f"({status.incomplete[0]}); rescore needs a finished run: complete it with `nsdbench run`"
        )
    for subject in spec.subjects:
        if not score_run_subject(session, subject, protos, timings=timings):
            raise NSDBenchError(
                f"{run_dir}: subject {subject} could not be scored under {', '.join(p.name for p in protos)}"
            )
    return ingest_run(run_dir, db, progress, [p.name for p in protos], timings) if ingest else []


def run_image_count(run_dir: Path) -> int:
    """How many reconstructions a run folder's shards hold (each is scored once per protocol)."""
    spec, _ = read_spec(run_dir)
    session = RunSession(run_dir, spec)
    return sum(len(s.items(spec.samples)) for s in session.shards())


def protocols_within_run_split(
    run_dir: Path, names: Sequence[str], notes: list[str] | None = None
) -> list[str]:
    """`rescore --protocol all`: the protocols that score on the run's split or on a split nested in it
    (scored on the run's images in their own split); the others are left out with a note, logged and
    appended to `notes` for the command to print."""
    from nsdbench.metrics.protocols import get_protocol

    spec, _ = read_spec(run_dir)
    session = RunSession(run_dir, spec)
    splits = {n: protocol_split(get_protocol(n), spec.split) for n in names}
    nested = {sp: session.nested(sp) for sp in dict.fromkeys(splits.values())}
    kept = [n for n in names if nested[splits[n]]]
    for n in names:
        if n not in kept:
            note = (
                f"{n} scores on {splits[n]}, not on this run's split {spec.split}: not scored "
                f"({splits[n]} is not within {spec.split}: the run has no images for some of its ids)"
            )
            log_event(run_dir, f"rescore all: {note}")
            if notes is not None:
                notes.append(note)
    if not kept:
        raise UsageError(f"{run_dir}: no protocol scores within the run's split {spec.split}")
    return kept
