"""Method runs: a frozen spec, a run folder, deterministic shards, resumable stages.

Run folder layout (everything written atomically: temp file in the same folder + rename):

    spec.toml                     the RunSpec (identity of the run; checked on resume)
    run.log                       one line per event, appended by every worker
    subjXX/<nsd_id>_<sample>.png  reconstructions, at the size the method produces
    shards/subjXX-NNNN.json       completion record of a shard: sha256 of each of its PNGs
    scores/subjXX.parquet         the subject's scores (nsdbench.scoring, the path `nsdbench score` uses)
    scores/subjXX.json            completion record of the scoring: digest of the PNGs it scored

Work is cut into shards of (subject, consecutive test ids in ascending order, `shard_size` ids); a
worker k of N takes shards k, k+N, k+2N, ... of the subject-major list. Shards never depend on N,
so any number of workers writes the same files. A subject is scored once all its shards are complete;
the run is ingested into the leaderboard by a single writer (`ingest_run`).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from nsdbench.errors import DataError, NSDBenchError, UsageError
from nsdbench.files import atomic_write_bytes, sha256_file

SPEC_FILE = "spec.toml"
LOG_FILE = "run.log"
SPEC_FORMAT = 1
# how the work is cut, not what it produces: part of the folder's spec, not of the run's identity (run_id)
EXECUTION_FIELDS = ("shard_size",)


# ---------------------------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines a run's outputs. Two runs with equal specs write identical files."""

    method: str
    subjects: tuple[int, ...]
    split: str
    protocol: str
    data: str  # "synthetic" or an absolute NSD root
    weights: str = "pretrained"
    samples: int = 1
    seed: int = 0
    device: str = "cpu"
    variant: str = ""
    settings: dict[str, Any] = field(default_factory=dict)  # resolved method settings
    method_version: str = ""
    shard_size: int = 100
    nsdbench_version: str = ""

    def __post_init__(self) -> None:
        # canonical forms, so a spec read back from TOML equals the one written
        object.__setattr__(self, "subjects", tuple(int(s) for s in self.subjects))
        object.__setattr__(self, "settings", _jsonable(dict(self.settings)))

    def identity(self) -> dict[str, Any]:
        d = asdict(self)
        d["subjects"] = list(self.subjects)
        d["settings"] = _jsonable(self.settings)
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


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in sorted(obj.items())}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
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
    atomic_write_bytes(run_dir / SPEC_FILE, tomli_w.dumps(doc).encode())


def read_spec(run_dir: Path) -> tuple[RunSpec, dict[str, Any]]:
    """The spec of an existing run folder and the document's other fields (created, run_id)."""
    path = Path(run_dir) / SPEC_FILE
    if not path.is_file():
        raise UsageError(f"{run_dir}: not a run folder (no {SPEC_FILE})")
    try:
        doc = tomllib.loads(path.read_text())
        raw = dict(doc["spec"])
        known = {f.name for f in fields(RunSpec)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise KeyError(unknown[0])
        raw["subjects"] = tuple(int(s) for s in raw["subjects"])
        spec = RunSpec(**raw)
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as exc:
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


# ---------------------------------------------------------------------------------------------- files


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 HxWx3 image (no metadata: equal pixels give equal bytes)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image, mode=None).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def read_png(path: Path, size: int | None = None) -> np.ndarray | None:
    """The image in a PNG file, or None when it is missing, truncated, undecodable or the wrong shape."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.format != "PNG" or im.mode != "RGB":
                return None
            im.verify()  # chunk CRCs and the IEND chunk: catches truncation that decoding tolerates
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except (OSError, ValueError, SyntaxError, EOFError):
        return None
    if size is not None and arr.shape != (size, size, 3):
        return None
    return arr


def file_digest(path: Path) -> str | None:
    """sha256 of a file, or None when it is missing or unreadable."""
    try:
        return sha256_file(path)
    except OSError:
        return None


def log_event(run_dir: Path, message: str) -> None:
    """Append one line to run.log (one write call, so concurrent workers do not interleave lines)."""
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    line = f"{stamp} {socket.gethostname()}:{os.getpid()} {message}\n".encode()
    fd = os.open(Path(run_dir) / LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def subject_dir(run_dir: Path, subject: int) -> Path:
    return Path(run_dir) / f"subj{subject:02d}"


def png_path(run_dir: Path, subject: int, nsd_id: int, sample: int) -> Path:
    return subject_dir(run_dir, subject) / f"{nsd_id}_{sample}.png"


def score_path(run_dir: Path, subject: int) -> Path:
    return Path(run_dir) / "scores" / f"subj{subject:02d}.parquet"


def score_record_path(run_dir: Path, subject: int) -> Path:
    return Path(run_dir) / "scores" / f"subj{subject:02d}.json"


# ---------------------------------------------------------------------------------------------- shards


@dataclass(frozen=True)
class Shard:
    """A unit of work: consecutive test ids (ascending) of one subject."""

    subject: int
    index: int
    nsd_ids: tuple[int, ...]

    @property
    def name(self) -> str:
        return f"subj{self.subject:02d}-{self.index:04d}"

    def items(self, samples: int) -> list[tuple[int, int]]:
        return [(n, s) for n in self.nsd_ids for s in range(samples)]


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


def shard_is_complete(run_dir: Path, spec: RunSpec, shard: Shard) -> bool:
    """True when the shard's record matches the spec and every PNG it lists has the recorded sha256."""
    rec = _read_json(shard_record_path(run_dir, shard))
    if rec is None or rec.get("spec_hash") != spec.hash:
        return False
    files = rec.get("files", {})
    for nsd_id, sample in shard.items(spec.samples):
        name = f"{nsd_id}_{sample}.png"
        if files.get(name) is None or file_digest(subject_dir(run_dir, shard.subject) / name) != files[name]:
            return False
    return True


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------- progress


class Progress:
    """Stage progress callbacks; the CLI plugs in rich bars, library callers get no output."""

    def start(self, key: str, description: str, total: int | None, unit: str = "img") -> None: ...

    def advance(self, key: str, n: int = 1) -> None: ...

    def set_total(self, key: str, total: int | None, unit: str = "img") -> None: ...

    def finish(self, key: str) -> None: ...

    def message(self, text: str) -> None: ...


class RichProgress(Progress):
    """Rich bars on stderr: one per (subject, stage), with images/s and ETA."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RP

        class Rate(TextColumn):
            def __init__(self) -> None:
                super().__init__("")

            def render(self, task):  # type: ignore[override]
                from rich.text import Text

                speed = task.finished_speed or task.speed
                unit = task.fields.get("unit", "img")
                return Text("" if speed is None else f"{speed:6.1f} {unit}/s", style="progress.data.speed")

        self.console = Console(stderr=True)
        self.bars = RP(
            TextColumn("{task.description:<28}"),
            BarColumn(),
            MofNCompleteColumn(),
            Rate(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.tasks: dict[str, Any] = {}
        self.totals: dict[str, int | None] = {}

    def __enter__(self) -> RichProgress:  # noqa: PYI034
        self.bars.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.__exit__(*exc)

    def start(self, key: str, description: str, total: int | None, unit: str = "img") -> None:
        self.totals[key] = total
        if key in self.tasks:
            self.bars.reset(self.tasks[key], total=total, description=description, unit=unit)
        else:
            self.tasks[key] = self.bars.add_task(description, total=total, unit=unit)

    def advance(self, key: str, n: int = 1) -> None:
        if key in self.tasks:
            self.bars.advance(self.tasks[key], n)

    def set_total(self, key: str, total: int | None, unit: str = "img") -> None:
        if key in self.tasks:
            self.totals[key] = total
            self.bars.update(self.tasks[key], total=total, unit=unit)

    def finish(self, key: str) -> None:
        if key in self.tasks:
            total = self.totals.get(key) or 1
            self.bars.update(self.tasks[key], total=total, completed=total)

    def message(self, text: str) -> None:
        self.console.print(text, highlight=False)


# ---------------------------------------------------------------------------------------------- session


class RunSession:
    """One worker's view of a run: opens the data once, fits each subject once, runs shards and scoring."""

    def __init__(
        self, run_dir: Path, spec: RunSpec, progress: Progress | None = None, force: bool = False
    ) -> None:
        from nsdbench.methods.registry import get_method

        self.run_dir = Path(run_dir)
        self.spec = spec
        self.progress = progress or Progress()
        self.force = force  # --no-resume: regenerate even what is complete
        self.method = get_method(spec.method)
        self._nsd = None
        self._splits: dict[int, Any] = {}
        self._data: dict[int, Any] = {}
        self._fitted: dict[int, Any] = {}
        self._shards: list[Shard] | None = None

    # -- data ------------------------------------------------------------------------------------
    @property
    def nsd(self):
        if self._nsd is None:
            self._nsd = open_data(self.spec.data)
        return self._nsd

    def split(self, subject: int):
        if subject not in self._splits:
            from nsdbench.nsd.splits import get_split

            self._splits[subject] = get_split(self.nsd, self.spec.split, subject)
        return self._splits[subject]

    def shards(self) -> list[Shard]:
        if self._shards is None:
            ids = {s: self.split(s).test_ids for s in self.spec.subjects}
            self._shards = make_shards(ids, self.spec.shard_size)
        return self._shards

    def subject_data(self, subject: int):
        if subject not in self._data:
            from nsdbench.methods.protocol import SubjectData

            self._data[subject] = SubjectData(self.nsd, subject, self.split(subject))
        return self._data[subject]

    def context(self, subject: int, progress_key: str | None = None):
        from nsdbench import config
        from nsdbench.methods.protocol import FitCache, RunContext

        adv = (lambda n, k=progress_key: self.progress.advance(k, n)) if progress_key else None
        total = (lambda t, u, k=progress_key: self.progress.set_total(k, t, u)) if progress_key else None
        return RunContext(
            method=self.spec.method,
            subject=subject,
            split=self.spec.split,
            data=self.subject_data(subject),
            base_seed=self.spec.seed,
            samples=self.spec.samples,
            device=resolve_device(self.spec.device),
            weights_mode=self.spec.weights,
            settings=dict(self.spec.settings),
            cache=FitCache(config.cache_dir("methods", self.spec.method)),
            progress=adv,
            progress_total=total,
        )

    # -- stages ----------------------------------------------------------------------------------
    def fitted(self, subject: int) -> Any:
        """The method fitted for `subject` (once per session; methods cache decoders on disk)."""
        if subject not in self._fitted:
            key = f"fit-{subject}"
            self.progress.start(key, f"subj{subject:02d} fit", None, unit="step")
            t0 = time.perf_counter()
            self._fitted[subject] = self.method.fit(self.subject_data(subject), self.context(subject, key))
            self.progress.finish(key)
            log_event(self.run_dir, f"fit subj{subject:02d} {time.perf_counter() - t0:.2f}s")
        return self._fitted[subject]

    def run_shard(self, shard: Shard) -> int:
        """Make the shard complete; returns the number of images (re)generated."""
        spec = self.spec
        rec_path = shard_record_path(self.run_dir, shard)
        if not self.force and shard_is_complete(self.run_dir, spec, shard):
            return 0
        items = shard.items(spec.samples)
        todo = []
        old = (_read_json(rec_path) or {}) if not self.force else {}
        old_files = old.get("files", {}) if old.get("spec_hash") == spec.hash else {}
        for nsd_id, sample in items:
            path = png_path(self.run_dir, shard.subject, nsd_id, sample)
            name = path.name
            if self.force:
                todo.append((nsd_id, sample))
            elif name in old_files:
                if file_digest(path) != old_files[name]:
                    todo.append((nsd_id, sample))
            elif read_png(path) is None:
                todo.append((nsd_id, sample))
        rkey = f"rec-{shard.subject}"
        written = 0
        if todo:
            fitted = self.fitted(shard.subject)
            ctx = self.context(shard.subject)
            from nsdbench.methods.protocol import TestItem

            wanted = {(n, s) for n, s in todo}
            test_items = [TestItem(n, s, ctx.seed(n, s)) for n, s in todo]
            t0 = time.perf_counter()
            for nsd_id, sample, image in self.method.reconstruct(test_items, fitted, ctx):
                key = (int(nsd_id), int(sample))
                if key not in wanted:
                    raise NSDBenchError(
                        f"method {spec.method}: returned NSD id {nsd_id} sample {sample}, "
                        f"which shard {shard.name} did not ask for (or returned twice)"
                    )
                wanted.discard(key)
                image = check_image(image, spec.method, *key)
                atomic_write_bytes(png_path(self.run_dir, shard.subject, *key), encode_png(image))
                written += 1
                self.progress.advance(rkey, 1)
            if wanted:
                n, s = min(wanted)
                raise NSDBenchError(
                    f"method {spec.method}: returned no image for NSD id {n} sample {s} "
                    f"({len(wanted)} missing in shard {shard.name})"
                )
            log_event(self.run_dir, f"shard {shard.name} {written} images {time.perf_counter() - t0:.2f}s")
        self.progress.advance(rkey, len(items) - written)
        files = {}
        for nsd_id, sample in items:
            path = png_path(self.run_dir, shard.subject, nsd_id, sample)
            digest = file_digest(path)
            if digest is None:
                raise NSDBenchError(f"{path}: missing after shard {shard.name} finished")
            files[path.name] = digest
        record = {
            "shard": shard.name,
            "spec_hash": spec.hash,
            "subject": shard.subject,
            "nsd_ids": list(shard.nsd_ids),
            "files": files,
        }
        atomic_write_bytes(rec_path, json.dumps(record, indent=1, sort_keys=True).encode())
        return written

    def subject_complete(self, subject: int) -> bool:
        return all(
            shard_is_complete(self.run_dir, self.spec, s) for s in self.shards() if s.subject == subject
        )

    def images_digest(self, subject: int) -> str:
        """Digest of the PNG hashes recorded by the subject's shards (what its scores were computed from)."""
        h = hashlib.sha256()
        for shard in (s for s in self.shards() if s.subject == subject):
            rec = _read_json(shard_record_path(self.run_dir, shard)) or {}
            for name, digest in sorted(rec.get("files", {}).items()):
                h.update(f"{name}={digest};".encode())
        return h.hexdigest()

    def score_is_complete(self, subject: int) -> bool:
        rec = _read_json(score_record_path(self.run_dir, subject))
        return (
            rec is not None
            and rec.get("spec_hash") == self.spec.hash
            and rec.get("images_digest") == self.images_digest(subject)
            and file_digest(score_path(self.run_dir, subject)) == rec.get("parquet_sha256")
        )

    def score_subject(self, subject: int, lock: bool = False) -> bool:
        """Score the subject's reconstructions once all its shards are complete; True when scores exist.

        lock=True (several workers): only the worker that creates scores/subjXX.lock scores; the others
        return False and `nsdbench ingest` scores whatever is left (it never takes the lock).
        """
        if not self.subject_complete(subject):
            return False
        if not self.force and self.score_is_complete(subject):
            return True
        if not lock:
            return self._score_subject(subject)
        lock_path = score_path(self.run_dir, subject).with_suffix(".lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, f"{socket.gethostname()}:{os.getpid()}\n".encode())
            os.close(fd)
            return self._score_subject(subject)
        finally:
            lock_path.unlink(missing_ok=True)

    def _score_subject(self, subject: int) -> bool:
        spec = self.spec
        key = f"score-{subject}"
        items = [it for s in self.shards() if s.subject == subject for it in s.items(spec.samples)]
        self.progress.start(key, f"subj{subject:02d} score", len(items))
        images = {}
        for nsd_id, sample in items:
            img = read_png(png_path(self.run_dir, subject, nsd_id, sample))
            if img is None:  # changed after the completeness check: let the next pass regenerate it
                return False
            images[(nsd_id, sample)] = img
        t0 = time.perf_counter()
        digest = self.images_digest(subject)
        out = score_path(self.run_dir, subject)
        score_images(self, subject, images, out, lambda n: self.progress.advance(key, n))
        self.progress.finish(key)
        record = {
            "subject": subject,
            "spec_hash": spec.hash,
            "images_digest": digest,
            "parquet_sha256": file_digest(out),
            "n_images": len(items),
        }
        atomic_write_bytes(score_record_path(self.run_dir, subject), json.dumps(record, indent=1).encode())
        log_event(
            self.run_dir, f"scored subj{subject:02d} {len(items)} images {time.perf_counter() - t0:.2f}s"
        )
        return True


def check_image(image: Any, method: str, nsd_id: int, sample: int) -> np.ndarray:
    """A method's output as a contiguous uint8 (H, W, 3) array, or a one-line error naming the image.

    Images are stored at the size the method produces (e.g. 512 px for diffusion methods): each protocol
    resizes reconstructions its own way, so resizing here would change the scores.
    """
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 8:
        raise NSDBenchError(
            f"method {method}: image for NSD id {nsd_id} sample {sample} is {arr.dtype} {arr.shape}, "
            f"expected uint8 (H, W, 3) with H, W >= 8"
        )
    return np.ascontiguousarray(arr)


# ---------------------------------------------------------------------------------------------- scoring


def score_images(
    session: RunSession,
    subject: int,
    images: dict[tuple[int, int], np.ndarray],
    out_path: Path,
    advance: Callable[[int], None] | None = None,
) -> Path:
    """Score one subject's reconstructions through the same function `nsdbench score` uses."""
    from nsdbench.metrics.protocols import get_protocol
    from nsdbench.scoring import brain_target, score_images_to_parquet

    spec = session.spec
    split = session.split(subject)
    report = scaled_progress(advance, len(images)) if advance is not None else None
    brain, note = brain_target(session.nsd, subject, split.name, spec.weights, None)
    if note:
        log_event(session.run_dir, note)
        session.progress.message(note)
    path = score_images_to_parquet(  # written atomically by nsdbench.scoring
        nsd=session.nsd,
        subject=subject,
        split=split,
        protocol=get_protocol(spec.protocol),
        images=images,
        weights_mode=spec.weights,
        device=resolve_device(spec.device),
        out_path=Path(out_path),
        run_id=spec.run_id,
        brain=brain,
        progress=report or False,
        extra_meta={"run_dir_spec_hash": spec.hash},
    )
    if report is not None:
        report(1, 1)  # the bar ends at its total whatever the engine reported
    return Path(path)


def scaled_progress(advance: Callable[[int], None], units: int) -> Callable[[int, int], None]:
    """Map the engine's (done, total) work count onto a bar of `units` (its reconstructions) as increments."""
    shown = 0

    def report(done: int, total: int) -> None:
        nonlocal shown
        target = units if total <= 0 else min(units, done * units // total)
        if target > shown:
            advance(target - shown)
            shown = target

    return report


# ---------------------------------------------------------------------------------------------- ingest


@dataclass(frozen=True)
class RunStatus:
    shards_total: int
    shards_complete: int
    subjects_scored: tuple[int, ...]
    incomplete: tuple[str, ...]  # names of incomplete shards

    @property
    def complete(self) -> bool:
        return self.shards_complete == self.shards_total


def run_status(session: RunSession) -> RunStatus:
    shards = session.shards()
    incomplete = tuple(s.name for s in shards if not shard_is_complete(session.run_dir, session.spec, s))
    scored = tuple(s for s in session.spec.subjects if session.score_is_complete(s))
    return RunStatus(len(shards), len(shards) - len(incomplete), scored, incomplete)


def ingest_run(run_dir: Path, db: str | Path | None = None, progress: Progress | None = None):
    """Score any complete-but-unscored subject, then record the run in the leaderboard (single writer)."""
    from nsdbench.leaderboards.store import Store
    from nsdbench.metrics.protocols import get_protocol

    spec, doc = read_spec(run_dir)
    session = RunSession(run_dir, spec, progress=progress)
    status = run_status(session)
    if not status.complete:
        first = ", ".join(status.incomplete[:3])
        raise NSDBenchError(
            f"{run_dir}: {len(status.incomplete)} of {status.shards_total} shards are incomplete ({first}"
            f"{', ...' if len(status.incomplete) > 3 else ''}); "
            "finish them with the same `nsdbench run` command"
        )
    for subject in spec.subjects:
        if not session.score_subject(subject):
            raise NSDBenchError(
                f"{run_dir}: subject {subject} could not be scored (images changed while reading)"
            )
    store = Store(db)
    record = store.new_run_record(
        kind="run",
        method=spec.method + (f":{spec.variant}" if spec.variant else ""),
        subjects=spec.subjects,
        split=spec.split,
        protocol=get_protocol(spec.protocol),
        weights_mode=spec.weights,
        run_id=spec.run_id,
        seeds={
            "base_seed": spec.seed,
            "samples": spec.samples,
            "scheme": "sha256(base,method,subject,nsd_id,sample)",
        },
        data=data_label(session.nsd, spec.data),
        config={"run_dir": str(Path(run_dir).resolve()), "spec_hash": spec.hash, **spec.identity()},
        created_at=str(doc.get("created", "")),
    )
    paths = [score_path(run_dir, s) for s in spec.subjects]
    result = store.ingest(record, paths)
    log_event(run_dir, f"ingested run {spec.run_id} into {store.path} (new={result.inserted})")
    return result


# ---------------------------------------------------------------------------------------------- helpers


def open_data(data: str | None):
    """The NSD named by a spec: 'synthetic' (generated on first use) or an NSD root."""
    from nsdbench.nsd import open_nsd

    return open_nsd("synthetic" if data in (None, "", "synthetic") else data)


def data_label(nsd: Any, data: str) -> str:
    return f"synthetic:{nsd.root}" if data in ("", "synthetic") else str(data)


def resolve_device(device: str) -> str:
    """'auto' → 'cuda' when a GPU is visible, else 'cpu'; a bare 'cuda' under torchrun/accelerate
    (LOCAL_RANK set) → 'cuda:LOCAL_RANK', so each process of a node uses its own GPU."""
    if device == "auto":
        try:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:  # pragma: no cover - torch is a hard dependency
            device = "cpu"
    local_rank = os.environ.get("LOCAL_RANK", "")
    if device == "cuda" and local_rank.isdigit():
        return f"cuda:{int(local_rank)}"
    return device
