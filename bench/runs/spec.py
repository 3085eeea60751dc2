"""The RunSpec: everything that determines a run's images, stored as spec.toml in the run folder."""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from nsdbench.errors import DataError, UsageError
from nsdbench.files import atomic_write_bytes

SPEC_FILE = "spec.toml"
SPEC_FORMAT = 2  # 1: protocol part of the run, scores/subjXX.parquet (convert with rescore --upgrade)
# how the work is cut, not what it produces: part of the folder's spec, not of the run's identity (run_id)
EXECUTION_FIELDS = ("shard_size",)


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines a run's images. Two runs with equal specs write identical files."""

    method: str
    subjects: tuple[int, ...]
    split: str
    data: str  # "synthetic" or an absolute NSD root
    weights: str = "pretrained"
    samples: int = 1
    seed: int = 0
    device: str = "cpu"  # device type (cpu, cuda, mps): the index is an execution detail
    dtype: str = "float32"
    batch_size: int = 16
    variant: str = ""
    settings: dict[str, Any] = field(default_factory=dict)  # resolved method settings
    method_version: str = ""
    weights_sha256: dict[str, str] = field(default_factory=dict)  # pretrained artifacts the method loads
    shard_size: int = 100
    nsdbench_version: str = ""

    def __post_init__(self) -> None:
        # canonical forms, so a spec read back from TOML equals the one written
        object.__setattr__(self, "subjects", tuple(int(s) for s in self.subjects))
        object.__setattr__(self, "settings", jsonable(dict(self.settings)))
        object.__setattr__(self, "weights_sha256", jsonable(dict(self.weights_sha256)))

    def identity(self) -> dict[str, Any]:
        d = asdict(self)
        d["subjects"] = list(self.subjects)
        d["settings"] = jsonable(self.settings)
        d["weights_sha256"] = jsonable(self.weights_sha256)
        return d

    @property
    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()

    @property
    def run_id(self) -> str:
        """Deterministic: the same spec is the same run (ingesting it twice records it once), whatever
        the shard size it was cut into."""
        outputs = {k: v for k, v in self.identity().items() if k not in EXECUTION_FIELDS}
        digest = hashlib.sha256(json.dumps(outputs, sort_keys=True).encode()).hexdigest()
        return f"{self.method}{'-' + self.variant if self.variant else ''}-{digest[:12]}"

    @property
    def smoke(self) -> bool:
        return self.weights != "pretrained"


def jsonable(obj: Any) -> Any:
    """Plain JSON/TOML values: dict keys sorted, tuples as lists, numpy scalars as Python ones."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in sorted(obj.items())}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def write_spec(run_dir: Path, spec: RunSpec) -> None:
    import tomli_w

    doc = {
        "format": SPEC_FORMAT,
        "run_id": spec.run_id,
        "spec_hash": spec.hash,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "spec": spec.identity(),
    }
    atomic_write_bytes(Path(run_dir) / SPEC_FILE, tomli_w.dumps(doc).encode())


def read_spec_doc(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / SPEC_FILE
    if not path.is_file():
        raise UsageError(f"{run_dir}: not a run folder (no {SPEC_FILE})")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable run spec ({type(exc).__name__}: {exc})") from None


def read_spec(run_dir: Path) -> tuple[RunSpec, dict[str, Any]]:
    """The spec of an existing run folder and the document's other fields (created, run_id)."""
    path = Path(run_dir) / SPEC_FILE
    doc = read_spec_doc(run_dir)
    if doc.get("format", 1) == 1 or "protocol" in dict(doc.get("spec") or {}):
        raise DataError(
            f"{path}: a run folder of format 1 (protocol part of the run); convert it in place with "
            f"`nsdbench rescore {run_dir} --upgrade` (keeps its images, rescores them)"
        )
    try:
        raw = dict(doc["spec"])
        known = {f.name for f in fields(RunSpec)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise KeyError(unknown[0])
        raw["subjects"] = tuple(int(s) for s in raw["subjects"])
        spec = RunSpec(**raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: unreadable run spec ({type(exc).__name__}: {exc})") from None
    if doc.get("spec_hash") and doc["spec_hash"] != spec.hash:
        raise DataError(
            f"{path}: spec_hash {doc['spec_hash'][:12]} does not match its contents ({spec.hash[:12]})"
        )
    return spec, doc


def adopt_execution(run_dir: Path, spec: RunSpec) -> RunSpec:
    """`spec` with the shard size of the run already in `run_dir` when only that differs: a folder keeps
    the cut it was started with, and resuming it with another --shard-size continues the same run."""
    if not (Path(run_dir) / SPEC_FILE).is_file():
        return spec
    old, _ = read_spec(run_dir)
    if old.run_id != spec.run_id:
        return spec  # a different run: prepare_run_dir says so
    return replace(spec, **{k: getattr(old, k) for k in EXECUTION_FIELDS})


def prepare_run_dir(run_dir: Path, spec: RunSpec) -> Path:
    """Create the run folder with its spec, or check that an existing one holds the same spec."""
    run_dir = Path(run_dir)
    if (run_dir / SPEC_FILE).is_file():
        old, _ = read_spec(run_dir)
        if old.hash != spec.hash:
            a, b = old.identity(), spec.identity()
            diff = next(k for k in a if a[k] != b.get(k))
            raise UsageError(
                f"{run_dir} holds a different run ({diff}: {a[diff]!r} there, {b[diff]!r} now); "
                f"use another --out or delete that folder"
            )
        return run_dir
    # another worker of the same array may be writing the spec right now: its temp file does not count
    if run_dir.exists() and any(not p.name.startswith(".") for p in run_dir.iterdir()):
        raise UsageError(f"{run_dir} exists, is not empty and is not a run folder; choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_spec(run_dir, spec)
    return run_dir
