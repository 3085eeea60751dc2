"""`nsdbench run`, `nsdbench ingest RUN_DIR`, `nsdbench methods list|show NAME`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from nsdbench.errors import NSDBenchError, UsageError

out = Console()
err = Console(stderr=True)
Opt = str | None


class Interrupted(NSDBenchError):
    """Ctrl-C / SIGINT during a run: one line, the conventional exit code 128 + SIGINT."""

    exit_code = 130


def parse_subjects(text: str) -> tuple[int, ...]:
    """'1,2,5,7' → (1, 2, 5, 7); duplicates removed, order ascending."""
    try:
        subjects = sorted({int(t) for t in text.replace(" ", "").split(",") if t})
    except ValueError:
        raise UsageError(
            f"--subjects {text!r}: expected comma-separated subject numbers, e.g. 1,2,5,7"
        ) from None
    if not subjects:
        raise UsageError("--subjects: no subject given")
    return tuple(subjects)


def build_spec(
    method: str,
    subjects: str,
    split: str | None,
    samples: int | None,
    seed: int | None,
    protocol: str | None,
    data: str | None,
    weights_mode: str | None,
    device: str | None,
    variant: str | None,
    shard_size: int,
):
    """Validate every argument against the method registry and the data; returns (spec, nsd)."""
    import nsdbench
    from nsdbench import config, weights
    from nsdbench.methods.registry import get_method, resolve_settings
    from nsdbench.metrics.protocols import get_protocol
    from nsdbench.nsd.splits import SPLITS, get_split
    from nsdbench.runner import RunSpec, open_data

    mode = weights.check_mode(str(config.get("weights", weights_mode)))
    m = get_method(method)
    settings = resolve_settings(m, variant)
    subj = parse_subjects(subjects)
    proto = get_protocol(str(config.get("protocol", protocol)))
    split_name = split or getattr(proto, "split", None) or str(config.get("split"))
    if split_name not in SPLITS:
        raise UsageError(f"unknown split {split_name!r} (known: {', '.join(SPLITS)})")
    if split and getattr(proto, "split", split) != split:
        raise UsageError(
            f"--split {split} conflicts with protocol {proto.name}, which scores on {proto.split}"
        )
    n_samples = int(samples if samples is not None else settings.get("samples", 1))
    if n_samples < 1:
        raise UsageError(f"--samples must be >= 1, got {n_samples}")
    data_value = config.get("data", data)
    synthetic = data_value in (None, "", "synthetic")
    if not synthetic and not Path(str(data_value)).expanduser().is_dir():
        raise UsageError(f"--data {data_value}: no such NSD root folder (or use --data synthetic)")
    data_key = "synthetic" if synthetic else str(Path(str(data_value)).expanduser().resolve())
    nsd = open_data(data_key)
    available = [int(s) for s in nsd.subjects]
    missing = [s for s in subj if s not in available]
    if missing:
        raise UsageError(
            f"subject {missing[0]} has no data in {nsd.root} (available: {','.join(map(str, available))})"
        )
    for s in subj:
        get_split(nsd, split_name, s)  # UsageError when the split is not available for this dataset
    if mode == "pretrained":  # fail now, not after hours of reconstruction
        for name in (*m.required_weights, *protocol_artifacts(proto)):
            weights.require(name)
    spec = RunSpec(
        method=m.name,
        subjects=subj,
        split=split_name,
        protocol=proto.name,
        data=data_key,
        weights=mode,
        samples=n_samples,
        seed=int(config.get("seed", seed)),
        device=str(config.get("device", device)),
        variant=variant or "",
        settings={k: v for k, v in settings.items() if k != "samples"},
        method_version=str(m.version),
        shard_size=shard_size,
        nsdbench_version=nsdbench.__version__,
    )
    return spec, nsd


def protocol_artifacts(proto: Any) -> list[str]:
    """The pretrained artifacts the protocol's feature metrics load (nsdbench.metrics.networks)."""
    from nsdbench.metrics.networks import ARTIFACT_OF

    names = []
    for metric in proto.metrics:
        key = (getattr(metric, "network", None), getattr(metric, "weights", None))
        if key in ARTIFACT_OF and ARTIFACT_OF[key] not in names:
            names.append(ARTIFACT_OF[key])
    return names


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(
        method: Annotated[
            str, typer.Option("--method", "-m", help="Method adapter (`nsdbench methods list`).")
        ],
        subjects: Annotated[
            str, typer.Option("--subjects", "-s", help="Comma-separated subjects.")
        ] = "1,2,5,7",
        split: Annotated[Opt, typer.Option("--split", help="Test split (default: the protocol's).")] = None,
        samples: Annotated[
            int | None, typer.Option("--samples", help="Samples per image (default: method's).")
        ] = None,
        seed: Annotated[
            int | None, typer.Option("--seed", help="Base of the per-image seeds (default 0).")
        ] = None,
        protocol: Annotated[
            Opt, typer.Option("--protocol", help="Metric protocol (default nsdbench-v1).")
        ] = None,
        data: Annotated[
            Opt, typer.Option("--data", help="'synthetic' or an NSD root (default: config).")
        ] = None,
        weights_mode: Annotated[
            Opt, typer.Option("--weights", help="pretrained | random | tiny (default: config, pretrained).")
        ] = None,
        device: Annotated[Opt, typer.Option("--device", help="auto | cpu | cuda | cuda:N.")] = None,
        variant: Annotated[
            Opt, typer.Option("--variant", help="A named variant of the method (ablation).")
        ] = None,
        out_dir: Annotated[
            Path | None, typer.Option("--out", "-o", help="Run folder (default HOME/runs/RUN_ID).")
        ] = None,
        resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Skip completed work.")] = True,
        shard: Annotated[
            Opt, typer.Option("--shard", help="Worker k of N, 0-based 'k/N' (or Slurm/RANK env).")
        ] = None,
        executor: Annotated[str, typer.Option("--executor", help="inprocess | ray.")] = "inprocess",
        address: Annotated[
            Opt, typer.Option("--address", help="Ray address (default: a local instance).")
        ] = None,
        shard_size: Annotated[int, typer.Option("--shard-size", help="Test images per shard.")] = 100,
        db: Annotated[Path | None, typer.Option("--db", help="Leaderboard database.")] = None,
        ingest: Annotated[bool, typer.Option("--ingest/--no-ingest", help="Record the finished run.")] = True,
        fit_only: Annotated[
            bool,
            typer.Option("--fit-only", help="Only fit (and cache) the decoders of this worker's subjects."),
        ] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    ) -> None:
        """Run a method end to end: fit, reconstruct the test split with fixed seeds, score, record."""
        from nsdbench import config
        from nsdbench.executors import EXECUTORS, resolve_worker, run_inprocess, run_ray
        from nsdbench.nsd.splits import get_split
        from nsdbench.runner import (
            RichProgress,
            adopt_execution,
            data_label,
            ingest_run,
            log_event,
            make_shards,
            prepare_run_dir,
        )

        if executor not in EXECUTORS:
            raise UsageError(f"--executor {executor!r}: expected one of {', '.join(EXECUTORS)}")
        if executor == "ray" and shard:
            raise UsageError("--shard and --executor ray exclude each other (Ray runs every shard)")
        if executor == "ray" and fit_only:
            raise UsageError("--fit-only is for in-process workers (Ray fits each subject first by itself)")
        if executor != "ray" and address:
            raise UsageError("--address is only used with --executor ray")
        worker = resolve_worker(shard) if executor == "inprocess" else None
        spec, nsd = build_spec(
            method, subjects, split, samples, seed, protocol, data, weights_mode, device, variant, shard_size
        )
        run_dir = (out_dir or config.home() / "runs" / spec.run_id).expanduser().resolve()
        spec = adopt_execution(run_dir, spec)
        prepare_run_dir(run_dir, spec)
        n_shards = len(
            make_shards({s: get_split(nsd, spec.split, s).test_ids for s in spec.subjects}, spec.shard_size)
        )
        who = f"worker {worker.k}/{worker.n} ({worker.source})" if worker and worker.sharded else executor
        log_event(run_dir, f"start {who} resume={resume}")
        err.print(
            f"run {spec.run_id} → {run_dir} ({who}; {n_shards} shards; data: {data_label(nsd, spec.data)})",
            highlight=False,
            soft_wrap=True,
        )
        try:
            with RichProgress() as progress:
                if executor == "ray":
                    result = run_ray(run_dir, spec, address=address, progress=progress, force=not resume)
                else:
                    result = run_inprocess(
                        run_dir, spec, worker, progress=progress, force=not resume, fit_only=fit_only
                    )
        except KeyboardInterrupt:
            log_event(run_dir, f"interrupted {who}")
            raise Interrupted(
                f"interrupted; finished images and shards in {run_dir} are kept: "
                "rerun the same command to resume"
            ) from None
        ingested: Any = None
        if fit_only:
            mine = list(spec.subjects)[worker.k :: worker.n] if worker else []
            if as_json:
                print(json.dumps({"run_id": spec.run_id, "run_dir": str(run_dir), "fitted_subjects": mine}))
            else:
                out.print(f"{who}: fitted subjects {','.join(map(str, mine)) or 'none'}", highlight=False)
            return
        if result.all_complete and ingest and not (worker and worker.sharded):
            ingested = ingest_run(run_dir, db)
        doc = {
            "run_id": spec.run_id,
            "run_dir": str(run_dir),
            "method": spec.method,
            "subjects": list(spec.subjects),
            "smoke": spec.smoke,
            "shards_total": n_shards,
            "shards_run": result.shards_run,
            "images_written": result.images_written,
            "complete": result.all_complete,
            "ingested": bool(ingested and ingested.inserted),
            "db": str(config.default_db(db)) if ingested else None,
        }
        if as_json:
            print(json.dumps(doc, indent=2))
            return
        if ingested is not None:
            hint = "nsdbench leaderboard" + (" --include-smoke" if spec.smoke else "")
            out.print(
                f"run {spec.run_id}: recorded in {doc['db']}"
                f"{'' if ingested.inserted else ' (already recorded)'}; see `{hint}`",
                highlight=False,
                soft_wrap=True,
            )
        elif result.all_complete:
            out.print(
                f"run {spec.run_id}: complete; record it with `nsdbench ingest {run_dir}`",
                highlight=False,
                soft_wrap=True,
            )
        else:
            out.print(
                f"{who}: {result.shards_run} shards done; when every worker has finished run "
                f"`nsdbench ingest {run_dir}`",
                highlight=False,
                soft_wrap=True,
            )

    @app.command("ingest")
    def ingest_cmd(
        run_dir: Annotated[Path, typer.Argument(help="A run folder written by `nsdbench run`.")],
        db: Annotated[Path | None, typer.Option("--db", help="Leaderboard database.")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    ) -> None:
        """Score any unscored subject of a finished (sharded) run, then record it in the leaderboard."""
        from nsdbench import config
        from nsdbench.runner import RichProgress, ingest_run

        try:
            with RichProgress() as progress:
                result = ingest_run(run_dir.expanduser().resolve(), db, progress=progress)
        except KeyboardInterrupt:
            raise Interrupted(
                f"interrupted; nothing was recorded from {run_dir}: rerun `nsdbench ingest` to finish"
            ) from None
        doc = {
            "run_id": result.run_id,
            "inserted": result.inserted,
            "rows": result.rows,
            "db": str(config.default_db(db)),
        }
        if as_json:
            print(json.dumps(doc, indent=2))
        else:
            out.print(
                f"run {result.run_id}: {'recorded' if result.inserted else 'already recorded'} "
                f"in {doc['db']}",
                highlight=False,
                soft_wrap=True,
            )

    methods = typer.Typer(
        help="Method adapters: built-in and from the `nsdbench.methods` entry points.", no_args_is_help=True
    )

    @methods.command("list")
    def methods_list(
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    ) -> None:
        """List every registered method."""
        from nsdbench.methods.registry import list_methods

        rows = [describe(m) for m in list_methods()]
        if as_json:
            print(json.dumps(rows, indent=2))
            return
        table = Table(title="nsdbench methods")
        for col in ("name", "description", "variants", "source"):
            table.add_column(col)
        for r in rows:
            table.add_row(r["name"], r["description"], ", ".join(r["variants"]) or "-", r["source"])
        out.print(table)

    @methods.command("show")
    def methods_show(
        name: Annotated[str, typer.Argument(help="Method name.")],
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    ) -> None:
        """Description, paper, required weights, default settings and variants of one method."""
        from nsdbench.methods.registry import get_method

        d = describe(get_method(name))
        if as_json:
            print(json.dumps(d, indent=2))
            return
        out.print(f"[bold]{d['name']}[/] (version {d['version']}, {d['source']})")
        out.print(d["description"], highlight=False, soft_wrap=True)
        if d["paper"]:
            out.print(f"paper: {d['paper']}", highlight=False, soft_wrap=True)
        out.print(
            f"required weights: {', '.join(d['required_weights']) or 'none'}", highlight=False, soft_wrap=True
        )
        out.print(f"defaults: {json.dumps(d['defaults'])}", highlight=False, soft_wrap=True)
        for v, overrides in d["variants"].items():
            out.print(f"variant {v}: {json.dumps(overrides)}", highlight=False, soft_wrap=True)

    app.add_typer(methods, name="methods")


def describe(m: Any) -> dict[str, Any]:
    from nsdbench.methods.registry import method_source
    from nsdbench.runner import _jsonable

    return {
        "name": m.name,
        "version": str(m.version),
        "description": m.description,
        "paper": m.paper,
        "required_weights": list(m.required_weights),
        "defaults": _jsonable(dict(m.defaults)),
        "variants": {k: _jsonable(dict(v)) for k, v in m.variants.items()},
        "source": method_source(m.name),
    }
