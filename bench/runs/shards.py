"""Shards (subject, consecutive test ids) and their fixed batches, and the shard records on disk."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nsdbench.errors import UsageError
from nsdbench.runs.folder import file_digest, read_json, subject_dir
from nsdbench.runs.spec import RunSpec

Item = tuple[int, int]  # (nsd_id, sample)


@dataclass(frozen=True)
class Shard:
    """A unit of work: consecutive test ids (ascending) of one subject."""

    subject: int
    index: int
    nsd_ids: tuple[int, ...]

    @property
    def name(self) -> str:
        return f"subj{self.subject:02d}-{self.index:04d}"

    def items(self, samples: int) -> list[Item]:
        """The canonical item list: id-major, samples ascending."""
        return [(n, s) for n in self.nsd_ids for s in range(samples)]

    def batches(self, samples: int, batch_size: int) -> list[list[Item]]:
        """The shard's fixed batches: consecutive runs of `batch_size` items of the canonical list."""
        items = self.items(samples)
        return [items[i : i + batch_size] for i in range(0, len(items), batch_size)]


def make_shards(test_ids_by_subject: dict[int, Sequence[int]], shard_size: int) -> list[Shard]:
    """Subject-major list of shards; depends only on the test ids and the shard size."""
    if shard_size < 1:
        raise UsageError(f"shard size must be >= 1, got {shard_size}")
    shards = []
    for subject in sorted(test_ids_by_subject):
        ids = sorted(int(i) for i in test_ids_by_subject[subject])
        for index, start in enumerate(range(0, len(ids), shard_size)):
            shards.append(Shard(subject, index, tuple(ids[start : start + shard_size])))
    return shards


def assign(shards: Sequence[Shard], k: int, n: int) -> list[Shard]:
    """Worker k of n (0-based) takes shards k, k+n, k+2n, ..."""
    if n < 1 or not 0 <= k < n:
        raise UsageError(f"shard {k}/{n}: expected 0 <= k < N")
    return list(shards[k::n])


def shard_record_path(run_dir: Path, shard: Shard) -> Path:
    return Path(run_dir) / "shards" / f"{shard.name}.json"


def read_record(run_dir: Path, spec: RunSpec, shard: Shard) -> dict[str, Any]:
    """The shard's record when it belongs to this spec, else an empty one."""
    rec = read_json(shard_record_path(run_dir, shard))
    if rec is None or rec.get("spec_hash") != spec.hash or not isinstance(rec.get("batches"), dict):
        return {"batches": {}}
    return rec


def batch_is_done(run_dir: Path, subject: int, batch: Sequence[Item], entry: object) -> bool:
    """True when the batch's recorded files (every PNG, every extra) are on disk with their sha256."""
    if not isinstance(entry, dict) or not isinstance(entry.get("files"), dict):
        return False
    files = entry["files"]
    if any(f"{n}_{s}.png" not in files for n, s in batch):
        return False
    folder = subject_dir(run_dir, subject)
    return all(file_digest(folder / name) == digest for name, digest in files.items())


def shard_is_complete(run_dir: Path, spec: RunSpec, shard: Shard) -> bool:
    """True when every fixed batch of the shard is recorded and its files have the recorded sha256."""
    rec = read_record(run_dir, spec, shard)
    batches = shard.batches(spec.samples, spec.batch_size)
    return all(
        batch_is_done(run_dir, shard.subject, b, rec["batches"].get(str(i))) for i, b in enumerate(batches)
    )


def shard_files(run_dir: Path, spec: RunSpec, shard: Shard) -> dict[str, str]:
    """File name -> sha256 of every file the shard's record lists (PNGs and extras)."""
    rec = read_record(run_dir, spec, shard)
    out: dict[str, str] = {}
    for entry in rec["batches"].values():
        out.update(entry.get("files", {}))
    return out
