"""`nsdbench validate`, `nsdbench score` and `nsdbench submission demo`."""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from nsdbench import config
from nsdbench.commands.options import (
    check_data,
    check_exists,
    check_split,
    check_subjects_in,
    parse_protocols,
    parse_subjects,
    protocol_artifacts,
    subjects_opt,
)
from nsdbench.devices import resolve_device
from nsdbench.errors import InvalidSubmission, UsageError
from nsdbench.metrics.protocols import Protocol
from nsdbench.stage_times import Timings, stage
from nsdbench.terminal import print_whole

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


# Options that `validate` and `score` (and `submission demo`) declare alike.
SUBMISSION_ARG = typer.Argument(..., help="Submission folder or file.")
SPLIT_OPT = typer.Option(None, "--split", help="Test split (default: the protocol's).")
DATA_OPT = typer.Option(None, "--data", help="NSD root, or 'synthetic'.")
FORMAT_OPT = typer.Option(None, "--format", help="folder|manifest|npy|npz|pt|hdf5|tar (default: detect).")
ORDER_OPT = typer.Option(None, "--order", help="Arrays without ids: nsd-ascending|first-presentation.")
IDS_OPT = typer.Option(None, "--ids", help="Arrays without ids: file with one 0-based NSD id per row.")
JSON_OPT = typer.Option(False, "--json", help="Print one JSON document.")
DB_OPT = typer.Option(None, "--db", help="Leaderboard database (default: NSDBENCH_HOME/leaderboard.duckdb).")


def wide(width: int = 200) -> Console:
    """stdout console; when not a terminal, `width` columns so that tables are not squeezed."""
    return out if out.is_terminal else Console(highlight=False, width=width)


def writable(path: Path, flag: str, folder: bool = False) -> Path:
    """Create `path` (folder=True) or its parent now, so an unwritable output is a one-line usage error
    before any work is done rather than a traceback after it."""
    target = Path(path).expanduser()
    where = target if folder else target.parent
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{flag} {target}: cannot create folder {where} ({exc.strerror or exc})") from None
    try:  # a real probe: permission bits say nothing to root or on special file systems
        tempfile.TemporaryFile(dir=where).close()
    except OSError as exc:
        raise UsageError(f"{flag} {target}: cannot write in {where} ({exc.strerror or exc})") from None
    return target


def _resolve_protocol_split(protocol: str | None, split: str | None) -> tuple[Protocol, str]:
    from nsdbench.metrics.protocols import get_protocol
    from nsdbench.nsd.splits import SPLITS

    proto = get_protocol(str(config.get("protocol", protocol)))
    split_name = split or proto.split
    if split_name not in SPLITS:
        raise UsageError(f"--split: unknown split {split_name!r}; expected one of {', '.join(SPLITS)}")
    return proto, split_name


def _print_problems(problems: list, as_json: bool, path: Path) -> None:
    from nsdbench.submissions.validation import errors

    n_err = len(errors(problems))
    if as_json:
        print(
            json.dumps(
                {
                    "submission": str(path),
                    "valid": n_err == 0,
                    "errors": n_err,
                    "warnings": len(problems) - n_err,
                    "problems": [p.as_dict() for p in problems],
                },
                indent=2,
            )
        )
        return
    for p in problems:
        style = "red" if p.severity == "error" else "yellow"
        out.print(f"[{style}]{p.severity}[/]{escape(p.line()[len(p.severity) :])}", markup=True)


def _validated(path: Path, fmt, order, ids, subjects, split_name, nsd, as_json: bool, quiet_ok: bool = False):
    from nsdbench.submissions.validation import errors, load_submission, validate

    sub = load_submission(path, fmt, order, ids, subjects)
    problems = validate(sub, nsd, split_name, subjects, progress=True)
    bad = errors(problems)
    if bad or not quiet_ok:
        _print_problems(problems, as_json, path)
    if bad:
        sub.close()
        tail = "" if quiet_ok is False else "; nothing was scored"
        raise InvalidSubmission(f"{path}: {len(bad)} problem(s) listed above{tail}")
    if not as_json and not quiet_ok:
        out.print(
            f"{path}: valid ({sub.fmt}, {len(sub.entries)} reconstructions, subjects "
            f"{', '.join(map(str, subjects or sub.subjects))}, split {split_name})"
        )
    return sub, problems


DEFAULT_RESAMPLES = 2000  # bootstrap resamples for the CIs; a run id names any other count


def submission_run_id(
    sub_sha: str,
    method: str,
    subjects: tuple[int, ...],
    split: str,
    protocol: Protocol,
    weights_mode: str,
    brain: bool | None,
    data: str,
    n_resamples: int,
) -> str:
    """Deterministic: rescoring the same submission the same way names (and records) the same run; another
    bootstrap size is another run (its intervals differ)."""
    key = json.dumps(
        [sub_sha, method, list(subjects), split, protocol.name, protocol.hash, weights_mode, brain, data]
        + ([n_resamples] if n_resamples != DEFAULT_RESAMPLES else []),
        sort_keys=True,
    )
    return "score-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def register(app: typer.Typer) -> None:
    @app.command("validate")
    def validate_cmd(
        submission: Path = SUBMISSION_ARG,
        subjects: str = subjects_opt("Subjects to check, e.g. 1,2,5,7 (default: all present)."),
        split: str = SPLIT_OPT,
        protocol: str = typer.Option(
            None, "--protocol", "-p", help="Protocol whose split is used (default: config)."
        ),
        data: str = DATA_OPT,
        fmt: str = FORMAT_OPT,
        order: str = ORDER_OPT,
        ids: Path = IDS_OPT,
        as_json: bool = JSON_OPT,
    ) -> None:
        """Check a submission without scoring it: every problem with its id, expected vs actual (exit 3)."""
        from nsdbench.nsd import open_nsd

        subj = parse_subjects(subjects)
        check_exists(submission, "submission")
        data = check_data(data)
        _proto, split_name = _resolve_protocol_split(protocol, split)
        nsd = open_nsd(data)
        check_subjects_in(subj, nsd)
        sub, _ = _validated(submission, fmt, order, ids, subj, split_name, nsd, as_json)
        sub.close()

    @app.command("score")
    def score_cmd(
        submission: Path = SUBMISSION_ARG,
        subjects: str = subjects_opt("Subjects to score, e.g. 1,2,5,7 (default: all present)."),
        split: str = SPLIT_OPT,
        protocol: str = typer.Option(
            None,
            "--protocol",
            "-p",
            help="Metric protocol, a comma list or 'all': scored in one pass, one recorded run each "
            "(default: config, nsdbench-v1).",
        ),
        method_name: str = typer.Option(
            None, "--method", "-m", help="Leaderboard name (default: the file/folder name)."
        ),
        method_name_old: str = typer.Option(None, "--method-name", hidden=True),
        data: str = DATA_OPT,
        weights_mode: str = typer.Option(
            None, "--weights", help="pretrained|random|tiny (default: config, pretrained)."
        ),
        device: str = typer.Option(None, "--device", help="cpu|cuda|auto (default: config)."),
        brain: bool = typer.Option(
            None, "--brain/--no-brain", help="Brain correlation (default: on when an encoder can be built)."
        ),
        encoder: str = typer.Option(
            None, "--encoder", help="Brain encoder (nsdbench|gnet8), only where the protocol allows a choice."
        ),
        fmt: str = FORMAT_OPT,
        order: str = ORDER_OPT,
        ids: Path = IDS_OPT,
        db: Path = DB_OPT,
        work_dir: Annotated[
            Path | None, typer.Option("--work-dir", help="Where per-subject score files go.")
        ] = None,
        batch_size: int = typer.Option(
            32, "--batch-size", min=1, help="Images per forward pass of the metric networks."
        ),
        n_resamples: int = typer.Option(
            DEFAULT_RESAMPLES, "--bootstrap", min=10, help="Bootstrap resamples for the CIs."
        ),
        as_json: bool = JSON_OPT,
        timings_path: Annotated[
            Path | None,
            typer.Option(
                "--timings", help="Write per-stage seconds (start-up, decode, each network, ...) as JSON."
            ),
        ] = None,
    ) -> None:
        """Validate, score and record a submission in the leaderboard (nothing is scored if it is invalid)."""
        from nsdbench.stage_times import CommandClock

        clock = CommandClock()
        from nsdbench import weights
        from nsdbench.leaderboards.store import Store
        from nsdbench.metrics.protocols import with_encoder
        from nsdbench.nsd import open_nsd

        # every cheap check first: arguments, paths, weights; then the data; then the submission
        subj = parse_subjects(subjects)
        mode = weights.check_mode(str(config.get("weights", weights_mode)))
        names = parse_protocols(protocol) or [str(config.get("protocol"))]
        every = _is_all(protocol)  # --encoder then applies to the protocols that allow a choice
        if every and split:
            check_split(split)
        # with `all` each protocol keeps its own split; --split only bounds them (_every_within)
        pairs = [_resolve_protocol_split(n, None if every else split) for n in names]
        scopes = [
            (with_encoder(pr, encoder) if pr.encoder_choices or not every else pr, sp) for pr, sp in pairs
        ]
        check_exists(submission, "submission")
        data = check_data(data)
        dev = resolve_device(config.get("device", device))
        if work_dir:
            writable(work_dir, "--work-dir", folder=True)
        if timings_path:
            writable(timings_path, "--timings")
        if mode == "pretrained":
            weights.require_all(a for proto, _ in scopes for a in protocol_artifacts(proto, brain))
        nsd = open_nsd(data)
        check_subjects_in(subj, nsd)
        method = method_name or method_name_old or submission.name.split(".")[0]
        store = Store(db)
        scopes = _every_within(nsd, scopes, subj, split) if every else scopes
        docs: dict[str, dict] = {}
        n_images = 0
        for root, family in _families(nsd, scopes, subj):
            with stage(clock.stages, "validate"):
                sub, problems = _validated(
                    submission, fmt, order, ids, subj, root, nsd, as_json, quiet_ok=True
                )
            n_images += len(sub.entries)
            with sub:
                for p in problems:
                    if p.severity == "warning":
                        err.print(p.line(), markup=False)
                settings = ScoreSettings(
                    method, subj or tuple(sub.subjects), root, mode, dev, brain, batch_size, n_resamples
                )
                outcome = _score_family(
                    sub,
                    nsd,
                    family,
                    settings,
                    store,
                    submission,
                    fmt,
                    order,
                    ids,
                    work_dir,
                    len(scopes) > 1,
                    clock.stages,
                )
            for name, (run_id, inserted) in outcome.items():
                docs[name] = _report(store, run_id, as_json, inserted)
        ordered = [docs[proto.name] for proto, _ in scopes]
        if timings_path:
            clock.write(timings_path, n_images, [proto.name for proto, _ in scopes])
        if as_json:
            print(json.dumps(ordered[0] if len(ordered) == 1 else {"runs": ordered}, indent=2, default=str))

    demo = typer.Typer(help="Make submissions.", no_args_is_help=True)

    @demo.command("demo")
    def demo_cmd(
        out_path: Annotated[
            Path, typer.Argument(help="Where to write (a folder, or a file for array formats).")
        ],
        data: str = DATA_OPT,
        split: str = typer.Option(None, "--split", help="Test split (default: config)."),
        subjects: str = subjects_opt("Subjects (default: all in the data)."),
        transform: str = typer.Option(
            "blur", "--transform", help="blur|identity|shuffle of the ground truth."
        ),
        radius: int = typer.Option(3, "--radius", min=0, help="Box-blur radius in pixels."),
        samples: int = typer.Option(
            1, "--samples", min=1, help="Samples per image (blur radius grows by one)."
        ),
        fmt: str = typer.Option("folder", "--format", help="folder|manifest|npy|npz|pt|hdf5|tar."),
        limit: int = typer.Option(None, "--limit", min=2, help="Only the first N test ids per subject."),
        force: bool = typer.Option(False, "--force", help="Write into an existing, non-empty target."),
    ) -> None:
        """Write a reconstruction set made from the ground truth (e.g. blurred) to try `score` offline."""
        from nsdbench.nsd import open_nsd
        from nsdbench.submissions.writers import demo_images, write_submission

        subj = parse_subjects(subjects)
        split_name = check_split(split or str(config.get("split")))
        data = check_data(data)
        target = writable(out_path, "submission demo")
        if not force and target.is_file():
            raise UsageError(f"{target} already exists; choose a new path, or --force to replace it")
        if not force and target.is_dir() and any(target.iterdir()):
            raise UsageError(
                f"{target} is a non-empty folder; files from another set would mix with the new ones "
                "(choose a new path, or --force)"
            )
        nsd = open_nsd(data)
        check_subjects_in(subj, nsd)
        subj = subj or tuple(nsd.subjects)
        images = demo_images(nsd, split_name, subj, transform, radius, samples, limit)
        path = write_submission(images, out_path, fmt)
        out.print(
            f"wrote {len(images)} reconstructions ({transform}, {fmt}) for subjects "
            f"{', '.join(map(str, subj))} to {path}"
        )

    app.add_typer(demo, name="submission")


@dataclass(frozen=True)
class ScoreSettings:
    """What `score` was asked for, beside the protocol (the run id holds all but device and batch size,
    which do not change the recorded values)."""

    method: str
    subjects: tuple[int, ...]
    split: str
    weights_mode: str
    device: str
    brain: bool | None
    batch_size: int
    n_resamples: int


def _is_all(protocol: str | None) -> bool:
    return protocol is not None and protocol.strip() == "all"


def _every_within(nsd: Any, scopes: list, subjects: tuple[int, ...] | None, split: str | None) -> list:
    """`--protocol all`: the protocols whose split lies within the scoring split (--split, else the
    configured split); the others are left out with a note naming the command that scores them."""
    from nsdbench.nsd.splits import ids_within, split_test_ids

    root = split or str(config.get("split"))
    subs = subjects or tuple(nsd.subjects)
    outer = split_test_ids(nsd, root, subs)
    kept = []
    for proto, sp in scopes:
        if sp == root or ids_within(split_test_ids(nsd, sp, subs), outer):
            kept.append((proto, sp))
        else:
            err.print(
                f"{proto.name} scores on {sp}, which is not within {root}: not scored "
                f"(score it with --protocol {proto.name})",
                markup=False,
            )
    if not kept:
        raise UsageError(f"--protocol all: no protocol scores within split {root}")
    return kept


def _families(nsd: Any, scopes: list, subjects: tuple[int, ...] | None) -> list[tuple[str, list]]:
    """Group (protocol, split) scopes by nested splits: each group is validated against its widest split
    and scored in one pass, each protocol restricted to its own split's ids."""
    from nsdbench.nsd.splits import ids_within, split_test_ids

    subs = subjects or tuple(nsd.subjects)
    names = list(dict.fromkeys(sp for _, sp in scopes))
    ids = {n: split_test_ids(nsd, n, subs) for n in names}
    names.sort(key=lambda n: -sum(len(v) for v in (ids[n] or {}).values()))
    root_of: dict[str, str] = {}
    for n in names:
        root_of[n] = next((r for r in dict.fromkeys(root_of.values()) if ids_within(ids[n], ids[r])), n)
    families: dict[str, list] = {}
    for proto, sp in scopes:
        families.setdefault(root_of[sp], []).append((proto, sp))
    return list(families.items())


def _score_family(
    sub,
    nsd,
    family: list,
    st: ScoreSettings,
    store,
    submission: Path,
    fmt,
    order,
    ids,
    work_dir,
    many: bool,
    timings: Timings | None = None,
) -> dict[str, tuple[str, bool]]:
    """Score one validated submission under protocols on nested splits, each subject in one engine pass,
    and record one run per protocol; returns {protocol: (run id, newly recorded)}."""
    from nsdbench.metrics.engine import ScoreOptions
    from nsdbench.scoring import (
        brain_target,
        completed_parquet,
        has_brain_metrics,
        subject_scopes,
        write_subject_scores,
    )

    data_id = str(Path(nsd.root).resolve())
    with stage(timings, "validate"):
        sub_sha = sub.sha256()
    out: dict[str, tuple[str, bool]] = {}
    todo = []
    for proto, split_name in family:
        run_id = submission_run_id(
            sub_sha,
            st.method,
            st.subjects,
            split_name,
            proto,
            st.weights_mode,
            st.brain,
            data_id,
            st.n_resamples,
        )
        if store.has_run(run_id):
            out[proto.name] = (run_id, False)
        else:
            todo.append((proto, split_name, run_id))
    paths: dict[str, list[Path]] = {proto.name: [] for proto, _, _ in todo}
    notes: dict[str, list[str]] = {proto.name: [] for proto, _, _ in todo}
    used_brain = {proto.name: False for proto, _, _ in todo}
    options = ScoreOptions(st.weights_mode, st.device, st.batch_size, True, timings=timings)
    for s in st.subjects:
        left = []
        for proto, split_name, run_id in todo:
            base = config.home() / "scores" / run_id if not work_dir else Path(work_dir)
            path = (base / proto.name if (work_dir and many) else base) / f"subj{s:02d}.parquet"
            paths[proto.name].append(path)
            if completed_parquet(path, run_id, s, proto.hash, st.device):
                err.print(f"subject {s}: reusing {path}")
            else:
                left.append((proto, split_name, run_id, path))
        if not left:
            continue
        targets = {}
        for proto, split_name, _, _ in left:
            targets[proto.name] = None
            if has_brain_metrics(proto):
                with stage(timings if st.brain is not False else None, "brain"):
                    target, note = brain_target(nsd, s, split_name, st.weights_mode, st.brain, proto)
                if note:
                    notes[proto.name].append(note)
                    err.print(note, markup=False)
                targets[proto.name] = target
                used_brain[proto.name] = used_brain[proto.name] or target is not None
        err.print(
            f"scoring subject {s} ({len(sub.entries_for(s))} reconstructions, "
            f"{', '.join(p.name for p, _, _, _ in left)}, {st.weights_mode} weights, {st.device})"
        )
        write_subject_scores(
            nsd,
            s,
            subject_scopes(nsd, s, [(proto, split_name) for proto, split_name, _, _ in left]),
            sub.images(s),
            options,
            {proto.name: path for proto, _, _, path in left},
            {proto.name: run_id for proto, _, run_id, _ in left},
            targets,
            {proto.name: {"submission_sha256": sub_sha} for proto, _, _, _ in left},
        )
    for proto, split_name, run_id in todo:
        record = store.new_run_record(
            kind="score",
            method=st.method,
            subjects=st.subjects,
            split=split_name,
            protocol=proto,
            weights_mode=st.weights_mode,
            run_id=run_id,
            device=st.device,
            submission_sha256=sub_sha,
            data=data_id,
            brain=used_brain[proto.name],
            config={
                "submission": str(submission.resolve()),
                "format": sub.fmt,
                "order": order,
                "ids": str(ids) if ids else None,
                "n_resamples": st.n_resamples,
                "batch_size": st.batch_size,
                "notes": notes[proto.name],
            },
        )
        with stage(timings, "store"):
            result = store.ingest(record, paths[proto.name], n_resamples=st.n_resamples)
        out[proto.name] = (run_id, result.inserted)
    return out


def _report(store: Any, run_id: str, as_json: bool, inserted: bool) -> dict:
    """Print one scored run (tables, or nothing under --json) and return its JSON document."""
    from nsdbench.leaderboards.exports import run_summary_table
    from nsdbench.leaderboards.views import single_run_board

    board = single_run_board(store, run_id)
    doc = {
        "run_id": run_id,
        "recorded": inserted,
        "already_recorded": not inserted,
        "db": str(store.path),
        **board.to_dict(),
    }
    if as_json:
        return doc
    print_whole(run_summary_table(board))
    for n in board.notes:
        err.print(n, markup=False)
    state = "recorded" if inserted else "already recorded (nothing changed)"
    out.print(f"run {run_id} {state} in {store.path}")
    return doc
