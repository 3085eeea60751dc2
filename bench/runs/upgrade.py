"""Convert a run folder of format 1 (protocol part of the run, scores/subjXX.parquet) in place."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from nsdbench.errors import DataError
from nsdbench.runs.folder import log_event, read_json, write_owned
from nsdbench.runs.shards import Shard, shard_record_path
from nsdbench.runs.spec import RunSpec, read_spec_doc, write_spec


def upgrade_run_folder(run_dir: Path) -> tuple[RunSpec, str]:
    """Rewrite a format-1 folder as format 2; returns (new spec, the protocol it was scored under).

    Format 1 handed each shard's items to the method in one call, so the converted spec's batch size is
    the shard size; every PNG keeps the sha256 its old shard record lists. Old scores are moved aside
    (scores-format1/) and the run is scored again under its protocol.
    """
    run_dir = Path(run_dir)
    doc = read_spec_doc(run_dir)
    raw = dict(doc.get("spec") or {})
    if doc.get("format", 1) != 1 and "protocol" not in raw:
        raise DataError(f"{run_dir}: already a run folder of the current format")
    protocol = str(raw.pop("protocol", ""))
    raw["subjects"] = tuple(int(s) for s in raw["subjects"])
    raw.setdefault("batch_size", int(raw.get("shard_size", 100)))
    try:
        spec = RunSpec(**raw)
    except TypeError as exc:
        raise DataError(f"{run_dir}/spec.toml: cannot convert ({exc})") from None
    for path in sorted((run_dir / "shards").glob("subj*-*.json")):
        old = read_json(path) or {}
        files = old.get("files")
        if not isinstance(files, dict):
            continue
        ids = tuple(int(i) for i in old.get("nsd_ids", []))
        shard = Shard(int(old.get("subject", 0)), int(path.stem.split("-")[1]), ids)
        batches = shard.batches(spec.samples, spec.batch_size)
        record = {
            "shard": shard.name,
            "spec_hash": spec.hash,
            "subject": shard.subject,
            "nsd_ids": list(ids),
            "batch_size": spec.batch_size,
            "batches": {
                str(i): {"files": {f"{n}_{s}.png": files.get(f"{n}_{s}.png") for n, s in b}}
                for i, b in enumerate(batches)
            },
        }
        write_owned(shard_record_path(run_dir, shard), json.dumps(record, indent=1, sort_keys=True).encode())
    legacy = run_dir / "scores-format1"
    for p in sorted((run_dir / "scores").glob("subj*.*")):
        legacy.mkdir(parents=True, exist_ok=True)
        shutil.move(str(p), legacy / p.name)
    write_spec(run_dir, spec)
    log_event(run_dir, f"upgraded from format 1 (protocol {protocol}) to run {spec.run_id}")
    return spec, protocol
