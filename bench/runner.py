"""Method runs (kept for imports): the code lives in the nsdbench.runs sub-package."""

from __future__ import annotations

from nsdbench.files import atomic_write_bytes
from nsdbench.runs.folder import (
    LOG_FILE,
    FileLock,
    check_image,
    clean_leftovers,
    encode_png,
    extra_path,
    file_digest,
    log_event,
    png_path,
    read_png,
    score_path,
    score_record_path,
    subject_dir,
)
from nsdbench.runs.progress import Progress, RichProgress, scaled_progress
from nsdbench.runs.scores import (
    RunStatus,
    ingest_run,
    rescore_run,
    row_id,
    run_status,
    score_is_complete,
    score_subject,
)
from nsdbench.runs.session import RunSession, data_label, open_data, resolve_device
from nsdbench.runs.shards import Shard, assign, make_shards, shard_is_complete, shard_record_path
from nsdbench.runs.spec import (
    EXECUTION_FIELDS,
    SPEC_FILE,
    SPEC_FORMAT,
    RunSpec,
    adopt_execution,
    jsonable,
    prepare_run_dir,
    read_spec,
    write_spec,
)

_jsonable = jsonable

__all__ = [
    "EXECUTION_FIELDS", "LOG_FILE", "SPEC_FILE", "SPEC_FORMAT", "FileLock", "Progress", "RichProgress",
    "RunSession", "RunSpec", "RunStatus", "Shard", "adopt_execution", "assign", "atomic_write_bytes",
    "check_image", "clean_leftovers", "data_label", "encode_png", "extra_path", "file_digest", "ingest_run",
    "jsonable", "log_event", "make_shards", "open_data", "png_path", "prepare_run_dir", "read_png",
    "read_spec", "rescore_run", "resolve_device", "row_id", "run_status", "scaled_progress", "score_is_complete",
    "score_path", "score_record_path", "score_subject", "shard_is_complete", "shard_record_path",
    "subject_dir", "write_spec",
]  # fmt: skip
