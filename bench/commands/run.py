"""`nsdbench run`, `nsdbench ingest RUN_DIR`, `nsdbench methods list|show NAME`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from nsdbench.commands.options import parse_subjects, protocol_artifacts
from nsdbench.errors import NSDBenchError, UsageError

out = Console()
err = Console(stderr=True)
Opt = str | None


class Interrupted(NSDBenchError):
    """Ctrl-C / SIGINT during a run: one line, the conventional exit code 128 + SIGINT."""

    exit_code = 130


def parse_protocols(text: str | None) -> tuple[str, ...]:
    """'a,b' → ('a', 'b') (order kept, duplicates removed); None → the configured default."""
    from nsdbench import config

    value = str(config.get("protocol", text))
    names = tuple(dict.fromkeys(t.strip() for t in value.split(",") if t.strip()))
    if not names:
        raise UsageError("--protocol: no protocol given")
    return names


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
    overrides: dict[str, str] | None = None,
    batch_size: int | None = None,
    dtype: str | None = None,
):
    """Validate every argument against the method registry and the data; returns (spec, nsd, protocols).

    `protocol` is a comma list: the run is scored under each (they must share a split).
    """
    import nsdbench
    from nsdbench import config, weights
    from nsdbench.devices import device_type
    from nsdbench.methods.adapter import settings_dict
    from nsdbench.methods.registry import create_method, get_method
    from nsdbench.metrics.protocols import get_protocol
    from nsdbench.nsd.splits import SPLITS, get_split, split_within
    from nsdbench.runs.session import open_data
    from nsdbench.runs.spec import RunSpec

    mode = weights.check_mode(str(config.get("weights", weights_mode)))
    cls = get_method(method)
    dev = str(config.get("device", device))
    dt = dtype or "float32"
    if dt not in ("float32", "float16", "bfloat16"):
        raise UsageError(f"--dtype {dt!r}: expected float32, float16 or bfloat16")
    instance = create_method(cls.name, variant, overrides, device=dev, dtype=dt, weights_mode=mode)
    subj = parse_subjects(subjects)
    if not subj:
        raise UsageError("--subjects: no subject given")
    protos = [get_protocol(n) for n in parse_protocols(protocol)]
    own_splits = list(dict.fromkeys(getattr(p, "split", None) or str(config.get("split")) for p in protos))
    split_name = split or own_splits[0]
    for name in [split_name, *own_splits]:
        if name not in SPLITS:
            raise UsageError(f"unknown split {name!r} (known: {', '.join(SPLITS)})")
    n_samples = int(samples if samples is not None else cls.default_samples)
    if n_samples < 1:
        raise UsageError(f"--samples must be >= 1, got {n_samples}")
    n_batch = int(batch_size if batch_size is not None else cls.default_batch_size)
    if n_batch < 1:
        raise UsageError(f"--batch-size must be >= 1, got {n_batch}")
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
    if not split:  # the protocols' widest split, whatever their order: the others nest in it
        split_name = next(
            (c for c in own_splits if all(split_within(nsd, o, c, subj) for o in own_splits)), split_name
        )
    for s in subj:
        get_split(nsd, split_name, s)  # UsageError when the split is not available for this dataset
    for proto in protos:  # a protocol on a nested split scores the run's images within its split
        own = getattr(proto, "split", None) or split_name
        if not split_within(nsd, own, split_name, subj):
            source = (
                f"--split {split}"
                if split
                else f"split {split_name} (no protocol's split holds all the others)"
            )
            raise UsageError(
                f"{source} conflicts with protocol {proto.name}, which scores on {own} "
                f"(not within {split_name})"
            )
    artifacts = tuple(instance.required_artifacts())
    if mode == "pretrained":  # fail now, not after hours of reconstruction
        weights.require_all([*artifacts, *(a for p in protos for a in protocol_artifacts(p, brain=True))])
    spec = RunSpec(
        method=cls.name,
        subjects=subj,
        split=split_name,
        data=data_key,
        weights=mode,
        samples=n_samples,
        seed=int(config.get("seed", seed)),
        device=device_type(dev),
        dtype=dt,
        batch_size=n_batch,
        variant=variant or "",
        settings=settings_dict(instance.settings),
        method_version=str(cls.version),
        weights_sha256={a: weights.recorded_sha256(a) for a in artifacts} if mode == "pretrained" else {},
        shard_size=shard_size,
        nsdbench_version=nsdbench.__version__,
    )
    return spec, nsd, tuple(p.name for p in protos)


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
            Opt, typer.Option("--protocol", help="Metric protocol(s), comma-separated (default nsdbench-v1).")
        ] = None,
        set_: Annotated[
            list[str] | None,
            typer.Option("--set", help="Override a method setting: key=value (repeatable; type-checked)."),
        ] = None,
        batch_size: Annotated[
            int | None, typer.Option("--batch-size", help="Items per method call (default: the method's).")
        ] = None,
        dtype: Annotated[Opt, typer.Option("--dtype", help="float32 | float16 | bfloat16.")] = None,
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
        shard_size: Annotated[int, typer.Option("--shard-size", min=1, help="Test images per shard.")] = 100,
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
        from nsdbench.methods.registry import parse_assignments
        from nsdbench.nsd.splits import get_split
        from nsdbench.progress import RichProgress
        from nsdbench.runs.executors import EXECUTORS, resolve_worker, run_inprocess, run_ray
        from nsdbench.runs.folder import clean_leftovers, log_event
        from nsdbench.runs.scores import ingest_run
        from nsdbench.runs.session import data_label
        from nsdbench.runs.shards import make_shards
        from nsdbench.runs.spec import adopt_execution, prepare_run_dir

        if executor not in EXECUTORS:
            raise UsageError(f"--executor {executor!r}: expected one of {', '.join(EXECUTORS)}")
        if executor == "ray" and shard:
            raise UsageError("--shard and --executor ray exclude each other (Ray runs every shard)")
        if executor == "ray" and fit_only:
            raise UsageError("--fit-only is for in-process workers (Ray fits each subject first by itself)")
        if executor != "ray" and address:
            raise UsageError("--address is only used with --executor ray")
        worker = resolve_worker(shard) if executor == "inprocess" else None
        spec, nsd, protocols = build_spec(
            method, subjects, split, samples, seed, protocol, data, weights_mode, device, variant, shard_size,
            parse_assignments(set_ or []), batch_size, dtype,
        )  # fmt: skip
        exec_device = str(config.get("device", device))
        run_dir = (out_dir or config.home() / "runs" / spec.run_id).expanduser().resolve()
        spec = adopt_execution(run_dir, spec)
        prepare_run_dir(run_dir, spec)
        n_shards = len(
            make_shards({s: get_split(nsd, spec.split, s).test_ids for s in spec.subjects}, spec.shard_size)
        )
        who = f"worker {worker.k}/{worker.n} ({worker.source})" if worker and worker.sharded else executor
        cleaned = clean_leftovers(run_dir)
        log_event(run_dir, f"start {who} resume={resume} protocols={','.join(protocols)}"
                  + (f" removed {cleaned} leftover temp files" if cleaned else ""))  # fmt: skip
        err.print(
            f"run {spec.run_id} → {run_dir} ({who}; {n_shards} shards; data: {data_label(nsd, spec.data)})",
            highlight=False,
            soft_wrap=True,
        )
        try:
            with RichProgress() as progress:
                if executor == "ray":
                    result = run_ray(
                        run_dir,
                        spec,
                        address=address,
                        progress=progress,
                        force=not resume,
                        protocols=protocols,
                    )
                else:
                    result = run_inprocess(
                        run_dir, spec, worker, progress=progress, force=not resume, fit_only=fit_only,
                        protocols=protocols, device=exec_device,
                    )  # fmt: skip
        except KeyboardInterrupt:
            log_event(run_dir, f"interrupted {who}")
            raise Interrupted(
                f"interrupted; finished images and shards in {run_dir} are kept: "
                "rerun the same command to resume"
            ) from None
        ingested: list[Any] = []
        if fit_only:
            mine = list(spec.subjects)[worker.k :: worker.n] if worker else []
            if as_json:
                print(json.dumps({"run_id": spec.run_id, "run_dir": str(run_dir), "fitted_subjects": mine}))
            else:
                out.print(f"{who}: fitted subjects {','.join(map(str, mine)) or 'none'}", highlight=False)
            return
        if result.all_complete and ingest and not (worker and worker.sharded):
            ingested = ingest_run(run_dir, db, protocols=protocols)
        doc = {
            "run_id": spec.run_id,
            "run_dir": str(run_dir),
            "method": spec.method,
            "protocols": list(protocols),
            "leaderboard_ids": [r.run_id for r in ingested],
            "subjects": list(spec.subjects),
            "smoke": spec.smoke,
            "shards_total": n_shards,
            "shards_run": result.shards_run,
            "images_written": result.images_written,
            "complete": result.all_complete,
            "ingested": any(r.inserted for r in ingested),
            "db": str(config.default_db(db)) if ingested else None,
        }
        if as_json:
            print(json.dumps(doc, indent=2))
            return
        if ingested:
            hint = "nsdbench leaderboard" + (" --include-smoke" if spec.smoke else "")
            for r in ingested:
                out.print(
                    f"run {r.run_id}: recorded in {doc['db']}"
                    f"{'' if r.inserted else ' (already recorded)'}; see `{hint}`",
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
        protocol: Annotated[
            Opt,
            typer.Option(
                "--protocol", help="Protocol(s) to record (default: those the run was scored under)."
            ),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    ) -> None:
        """Score any unscored subject of a finished (sharded) run, then record it in the leaderboard."""
        from nsdbench.progress import RichProgress
        from nsdbench.runs.scores import ingest_run

        names = parse_protocols(protocol) if protocol else None
        try:
            with RichProgress() as progress:
                results = ingest_run(run_dir.expanduser().resolve(), db, progress=progress, protocols=names)
        except KeyboardInterrupt:
            raise Interrupted(
                f"interrupted; nothing was recorded from {run_dir}: rerun `nsdbench ingest` to finish"
            ) from None
        _print_ingested(results, db, as_json)

    @app.command("rescore")
    def rescore_cmd(
        run_dir: Annotated[Path, typer.Argument(help="A finished run folder written by `nsdbench run`.")],
        protocol: Annotated[
            Opt,
            typer.Option(
                "--protocol",
                help="Protocol(s) to score under, comma-separated, or 'all' (every protocol on the run's "
                "split or a split nested in it).",
            ),
        ] = None,
        db: Annotated[Path | None, typer.Option("--db", help="Leaderboard database.")] = None,
        ingest: Annotated[bool, typer.Option("--ingest/--no-ingest", help="Record the scores.")] = True,
        upgrade: Annotated[
            bool, typer.Option("--upgrade", help="Convert a run folder of format 1 in place first.")
        ] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
        timings_path: Annotated[
            Path | None, typer.Option("--timings", help="Write per-stage seconds as JSON (as `score`).")
        ] = None,
    ) -> None:
        """Score an existing run under more protocols without generating any image."""
        from nsdbench.stage_times import CommandClock

        clock = CommandClock()
        from nsdbench.progress import RichProgress
        from nsdbench.runs.scores import protocols_within_run_split, rescore_run, run_image_count
        from nsdbench.runs.upgrade import upgrade_run_folder

        folder = run_dir.expanduser().resolve()
        if protocol is None and not upgrade:  # arguments first: nothing is converted on a usage error
            raise UsageError("rescore: --protocol is required (e.g. --protocol brain-diffuser-2023)")
        if timings_path:
            from nsdbench.commands.score import writable

            writable(timings_path, "--timings")
        old_protocol = ""
        if upgrade:
            _, old_protocol = upgrade_run_folder(folder)
        if protocol is None and not old_protocol:
            raise UsageError("rescore: --protocol is required (e.g. --protocol brain-diffuser-2023)")
        names = parse_protocols(protocol or old_protocol)
        if protocol is not None and protocol.strip() == "all":
            from nsdbench.metrics.protocols import PROTOCOLS

            notes: list[str] = []
            names = protocols_within_run_split(folder, list(PROTOCOLS), notes)  # every shipped protocol
            for note in notes:
                err.print(note, markup=False, highlight=False, soft_wrap=True)
        try:
            with RichProgress() as progress:
                results = rescore_run(
                    folder, names, db, progress=progress, ingest=ingest, timings=clock.stages
                )
        except KeyboardInterrupt:
            raise Interrupted(
                f"interrupted; scores finished in {folder} are kept: rerun to continue"
            ) from None
        if timings_path:
            clock.write(timings_path, run_image_count(folder), list(names))
        if not ingest:
            doc = {"run_dir": str(folder), "protocols": list(names), "ingested": False}
            if as_json:
                print(json.dumps(doc, indent=2))
            else:
                out.print(f"{folder}: scored under {', '.join(names)}", highlight=False, soft_wrap=True)
            return
        _print_ingested(results, db, as_json)

    def _print_ingested(results: list[Any], db: Path | None, as_json: bool) -> None:
        from nsdbench import config

        doc = {
            "rows": [{"run_id": r.run_id, "inserted": r.inserted, "rows": r.rows} for r in results],
            "run_id": results[0].run_id if results else None,
            "inserted": any(r.inserted for r in results),
            "db": str(config.default_db(db)),
        }
        if as_json:
            print(json.dumps(doc, indent=2))
            return
        for r in results:
            out.print(
                f"run {r.run_id}: {'recorded' if r.inserted else 'already recorded'} in {doc['db']}",
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

        # artifacts import the weights registry (torch): only for --json, the table stays free of it
        rows = [describe(m, artifacts=as_json) for m in list_methods()]
        if as_json:
            print(json.dumps(rows, indent=2))
            return
        table = Table(title="nsdbench methods", caption="weights: nsdbench methods show NAME")
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
        """Description, paper, settings with their types and defaults, variants, artifacts per weights mode."""
        from nsdbench.methods.registry import get_method

        d = describe(get_method(name))
        if as_json:
            print(json.dumps(d, indent=2))
            return
        out.print(f"[bold]{d['name']}[/] (version {d['version']}, {d['source']})")
        out.print(d["description"], highlight=False, soft_wrap=True)
        if d["paper"]:
            out.print(f"paper: {d['paper']}", highlight=False, soft_wrap=True)
        for mode, arts in d["required_artifacts"].items():
            text = ", ".join(f"{a['name']}" + (f" ({a['size_bytes'] / 1e9:.2f} GB)" if a["size_bytes"] else "")
                             for a in arts) or "none"  # fmt: skip
            out.print(f"artifacts ({mode}): {text}", highlight=False, soft_wrap=True)
        out.print(
            f"samples {d['default_samples']}, batch size {d['default_batch_size']}"
            + (", reads the test stimuli (ground-truth baseline)" if d["reads_ground_truth"] else ""),
            highlight=False,
        )
        for key, value in d["defaults"].items():
            note = f"  {d['setting_help'][key]}" if key in d["setting_help"] else ""
            text = json.dumps(value, separators=(",", ":"))  # no spaces: pastes as one shell argument
            out.print(
                f"  --set {key}={text}  ({d['setting_types'][key]}){note}", highlight=False, soft_wrap=True
            )
        for v, overrides in d["variants"].items():
            out.print(f"variant {v}: {json.dumps(overrides)}", highlight=False, soft_wrap=True)

    app.add_typer(methods, name="methods")


def _artifact_info(name: str) -> dict[str, Any]:
    from nsdbench import weights

    try:
        art = weights.get(name)
    except UsageError:
        return {"name": name, "size_bytes": None, "registered": False}
    size = getattr(art, "size_bytes", None) or getattr(art, "download_size", None)
    return {"name": name, "size_bytes": size, "registered": True, "source": art.source}


def _type_name(tp: Any) -> str:
    """'int', 'tuple[float, ...]', 'Literal['a', 'b']': how `methods show` names a setting's type."""
    import typing

    if typing.get_args(tp) or not hasattr(tp, "__name__"):
        return str(tp).replace("typing.", "")
    return tp.__name__


def describe(cls: Any, artifacts: bool = True) -> dict[str, Any]:
    """Everything `methods show --json` prints about a method class; without `artifacts` (`methods list`)
    no weights module is imported, so listing stays free of torch."""
    from nsdbench.methods.adapter import settings_dict
    from nsdbench.methods.registry import method_source, setting_types
    from nsdbench.runs.spec import jsonable

    types_ = setting_types(cls)
    doc = {
        "name": cls.name,
        "version": str(cls.version),
        "description": cls.description,
        "paper": cls.paper,
        "default_samples": cls.default_samples,
        "default_batch_size": cls.default_batch_size,
        "reads_ground_truth": bool(cls.reads_ground_truth),
        "defaults": jsonable(settings_dict(cls.Settings())),
        "setting_types": {k: _type_name(t) for k, t in types_.items()},
        "variants": {k: jsonable(dict(v)) for k, v in cls.variants.items()},
        "setting_help": dict(getattr(cls, "setting_help", {})),
        "source": method_source(cls.name),
    }
    if artifacts:
        doc["required_artifacts"] = {
            m: [_artifact_info(a) for a in arts] for m, arts in cls.artifacts_by_mode().items()
        }
    return doc
