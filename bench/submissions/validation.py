"""Submissions: load reconstructions in any supported format and validate them against a test split.

`load_submission` reads only the structure (keys, shapes); images are read lazily. `validate` runs
every check and returns every problem at once — counts per subject, missing / duplicate / extra ids,
ids outside the split, shape, channels, dtype and range, NaN/inf, constant images, unreadable or
truncated files, JPEG (warning), sample counts that differ between images, sizes that differ.
Formats and the safe readers live in nsdbench.submissions.formats.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from nsdbench.errors import InvalidSubmission, UsageError
from nsdbench.nsd.splits import get_split
from nsdbench.progress import progress_bar
from nsdbench.submissions.formats import (
    FORMATS,
    MIN_SIDE,
    Entry,
    ImageError,
    Problem,
    Reader,
    detect_format,
    max_image_pixels,
    open_reader,
    read_ids_file,
    subject_from_filename,
)

if TYPE_CHECKING:
    from nsdbench.nsd.loader import NSD

ORDERS = ("nsd-ascending", "first-presentation")
SUMMARY_AFTER = 10  # per-key problems of one subject beyond which a count summary is added

__all__ = ["FORMATS", "ORDERS", "Entry", "Problem", "Submission", "errors", "load_submission", "validate"]


class Submission:
    """A submission's entries (subject, nsd_id, sample → where the image is) and how to read them."""

    def __init__(
        self,
        path: Path,
        reader: Reader,
        order: str | None = None,
        ids: list[int] | None = None,
        subjects: Sequence[int] | None = None,
    ) -> None:
        self.path = path
        self.reader = reader
        self.fmt = reader.fmt
        self.order = order
        self.ids = ids
        self.requested = tuple(sorted({int(s) for s in subjects})) if subjects else None
        self.entries: list[Entry] = list(reader.entries)
        self.problems: list[Problem] = list(reader.problems)
        # A folder named by position (brain-diffuser writes <index>.png in first-presentation order) plus
        # --order: the file-name numbers are positions in that order, not NSD ids.
        self.positional = order is not None and reader.fmt == "folder"
        self._resolved_for: str | None = None if reader.blocks or self.positional else "*"

    # -- structure ---------------------------------------------------------------------------------
    def resolve(self, nsd: NSD, split_name: str) -> None:
        """Give array blocks their subject and NSD ids (from the file, --ids, or --order)."""
        if self._resolved_for in ("*", split_name):
            return
        self._resolved_for = split_name
        if self.positional:
            self._resolve_positions(nsd, split_name)
        for block in self.reader.blocks:
            subject = block.subject
            if subject is None:
                if self.requested and len(self.requested) == 1:
                    subject = self.requested[0]
                else:
                    subject = subject_from_filename(self.path)
            if subject is None:
                self._problem(
                    "subject",
                    f"cannot tell which subject array {block.key!r} holds; pass --subjects S "
                    "(one subject) or name the file subjXX_...",
                )
                continue
            ids = block.ids
            if ids is not None and self.ids is not None and list(self.ids) != ids:
                self._problem(
                    "ids",
                    f"--ids differs from the id list stored in the file for {block.key!r}",
                    subject=subject,
                )
                continue
            if ids is None and self.ids is not None:
                ids = list(self.ids)
            if ids is None and self.order:
                try:
                    ids = list(get_split(nsd, split_name, subject).order(self.order))
                except UsageError as exc:
                    self._problem("split", str(exc), subject=subject)
                    continue
            if ids is None:
                self._problem(
                    "ids",
                    f"array {block.key!r} has no NSD id list; pass --ids FILE or "
                    "--order nsd-ascending|first-presentation",
                    subject=subject,
                )
                continue
            if len(ids) != block.n:
                self._problem(
                    "count",
                    f"array {block.key!r} and its id list differ in length",
                    subject=subject,
                    expected=f"{len(ids)} images ({self.order or 'id list'})",
                    actual=f"{block.n} images",
                )
                continue
            for i, nsd_id in enumerate(ids):
                for s in range(block.samples):
                    src = f"{self.path.name}[{block.key}][{i}]" + (f"[{s}]" if block.samples > 1 else "")
                    self.entries.append(Entry(subject, int(nsd_id), s, (block.key, i, s, block.layout), src))

    def _resolve_positions(self, nsd: Any, split_name: str) -> None:
        entries, self.entries = self.entries, []
        orders: dict[int, tuple[int, ...] | None] = {}
        for e in entries:
            if e.subject not in orders:
                try:
                    orders[e.subject] = tuple(get_split(nsd, split_name, e.subject).order(self.order))
                except UsageError as exc:
                    self._problem("split", str(exc), subject=e.subject)
                    orders[e.subject] = None
            ids = orders[e.subject]
            if ids is None:
                continue
            if e.nsd_id >= len(ids):
                self._problem(
                    "extra",
                    f"position {e.nsd_id} is beyond the {split_name} test split ({self.order} order)",
                    subject=e.subject,
                    sample=e.sample,
                    source=e.source,
                    expected=f"a position in 0..{len(ids) - 1}",
                    actual=str(e.nsd_id),
                )
                continue
            self.entries.append(Entry(e.subject, ids[e.nsd_id], e.sample, e.ref, e.source))

    def _problem(self, code: str, message: str, **kw: Any) -> None:
        kw.setdefault("source", str(self.path))
        self.problems.append(Problem(code, message, **kw))

    def expected_location(self, subject: int, nsd_id: int, sample: int) -> str:
        """Where a reconstruction of (subject, nsd_id, sample) belongs in this submission, in words."""
        if self.fmt == "folder" and not self.positional:
            return f"file subj{subject:02d}/{nsd_id}_{sample}.png"
        if self.fmt == "manifest":
            return f"a row {subject},{nsd_id},{sample},<path> in {self.reader.path.name}"
        if self.fmt == "tar":
            return f"a member with subject {subject}, nsd_id {nsd_id}, sample {sample}"
        return f"nsd_id {nsd_id} (sample {sample}) in the array's id list"

    @property
    def subjects(self) -> list[int]:
        return sorted({e.subject for e in self.entries})

    def entries_for(self, subject: int) -> list[Entry]:
        return sorted((e for e in self.entries if e.subject == subject), key=lambda e: (e.nsd_id, e.sample))

    # -- content -----------------------------------------------------------------------------------
    def load(self, entry: Entry) -> tuple[np.ndarray | None, list[Problem], str]:
        """Read one image; returns (uint8 HxWx3 or None, its problems, detected format)."""
        key = {
            "subject": entry.subject,
            "nsd_id": entry.nsd_id,
            "sample": entry.sample,
            "source": entry.source,
        }
        try:
            raw, fmt = self.reader.read(entry)
        except ImageError as exc:
            if exc.whole_file:  # one problem for the file, not one per image (see _check_contents)
                key = {"source": str(self.path)}
            return None, [Problem(exc.code, exc.message, expected=exc.expected, actual=exc.actual, **key)], ""
        # The readers turn every failure they know into ImageError; anything else from hostile bytes is
        # still one problem for this image, never a traceback.
        except Exception:  # noqa: BLE001
            return None, [Problem("unreadable", "cannot read this reconstruction (damaged data)", **key)], ""
        problems = image_array_problems(raw, key)
        if any(p.severity == "error" for p in problems):
            return None, problems, fmt
        return to_uint8(raw), problems, fmt

    def image(self, entry: Entry) -> np.ndarray:
        img, problems, _ = self.load(entry)
        if img is None:
            raise InvalidSubmission(problems[0].line())
        return img

    def images(self, subject: int) -> LazyImages:
        """(nsd_id, sample) → uint8 image for one subject, read on access."""
        return LazyImages(self, self.entries_for(subject))

    def sha256(self) -> str:
        """Content hash of the files that make up the submission (identity of what was scored)."""
        h = hashlib.sha256()
        root = self.path if self.path.is_dir() else self.path.parent
        for f in self.reader.files():
            f = Path(f)
            try:
                h.update(str(f.relative_to(root)).encode())
            except ValueError:
                h.update(f.name.encode())
            with open(f, "rb") as fh:
                while block := fh.read(1 << 22):
                    h.update(block)
        return h.hexdigest()

    def close(self) -> None:
        self.reader.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LazyImages(Mapping):
    """A read-on-access mapping (nsd_id, sample) → uint8 (H, W, 3)."""

    def __init__(self, submission: Submission, entries: list[Entry]) -> None:
        self._sub = submission
        self._by_key = {(e.nsd_id, e.sample): e for e in entries}

    def __getitem__(self, key: tuple[int, int]) -> np.ndarray:
        return self._sub.image(self._by_key[key])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self._by_key)

    def __len__(self) -> int:
        return len(self._by_key)


def image_array_problems(img: np.ndarray, key: dict[str, Any]) -> list[Problem]:
    """Shape, channels, dtype, range, NaN/inf, size and constant-image checks for one raw image."""
    out: list[Problem] = []
    if img.ndim != 3:
        return [
            Problem("shape", "image is not (H, W, 3)", expected="(H, W, 3)", actual=str(img.shape), **key)
        ]
    h, w, c = img.shape
    if c != 3:
        out.append(
            Problem("channels", "image does not have 3 (RGB) channels", expected="3", actual=str(c), **key)
        )
    if min(h, w) < MIN_SIDE or h * w > max_image_pixels():
        out.append(
            Problem(
                "shape",
                "image size is out of range",
                expected=f">= {MIN_SIDE} px per side and <= {max_image_pixels()} pixels",
                actual=f"{h}x{w}",
                **key,
            )
        )
    if out:
        return out
    kind = img.dtype.kind
    if kind == "f":
        arr = np.asarray(img, dtype=np.float64)
        finite = np.isfinite(arr)
        if not finite.all():
            n_nan, n_inf = int(np.isnan(arr).sum()), int(np.isinf(arr).sum())
            return [
                Problem(
                    "nonfinite",
                    "image contains NaN or inf",
                    expected="finite values",
                    actual=f"{n_nan} NaN, {n_inf} inf",
                    **key,
                )
            ]
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            return [
                Problem(
                    "range",
                    "float image outside [0, 1]",
                    expected="values in [0, 1]",
                    actual=f"min {lo:.4g}, max {hi:.4g}",
                    **key,
                )
            ]
        constant = lo == hi
    elif img.dtype == np.uint8:
        constant = int(img.min()) == int(img.max())
    else:
        return [
            Problem(
                "dtype",
                "unsupported image dtype",
                expected="uint8, or float in [0, 1]",
                actual=str(img.dtype),
                **key,
            )
        ]
    if constant:
        out.append(
            Problem(
                "constant",
                "image is constant (its correlation-based scores are undefined)",
                expected="a non-constant image",
                actual=f"every value {img.flat[0]}",
                **key,
            )
        )
    return out


def to_uint8(img: np.ndarray) -> np.ndarray:
    """uint8 unchanged; float in [0, 1] → round(x · 255)."""
    if img.dtype == np.uint8:
        return np.ascontiguousarray(img)
    return np.rint(np.asarray(img, dtype=np.float64) * 255.0).astype(np.uint8)


def load_submission(
    path: str | Path,
    fmt: str | None = None,
    order: str | None = None,
    ids: str | Path | Sequence[int] | None = None,
    subjects: Sequence[int] | None = None,
) -> Submission:
    """Open a submission (structure only). Usage mistakes raise UsageError; bad content becomes problems."""
    p = Path(path).expanduser()
    if not os.path.lexists(p):  # a dangling or looping symlink exists: its reader refuses it (exit 3)
        raise UsageError(f"{p}: no such submission file or folder")
    if fmt is not None and fmt not in FORMATS:
        raise UsageError(f"unknown submission format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if order is not None and order not in ORDERS:
        raise UsageError(f"unknown order {order!r}; expected one of {', '.join(ORDERS)}")
    fmt = fmt or detect_format(p)
    if (
        fmt == "manifest"
        and p.is_dir()
        and not any(os.path.lexists(p / n) for n in ("manifest.csv", "manifest.parquet"))
    ):
        raise UsageError(f"{p}: no manifest.csv or manifest.parquet in the folder")
    if fmt in ("folder",) and not p.is_dir():
        raise UsageError(f"{p}: format 'folder' needs a folder of subjXX/ subfolders")
    id_list = None
    if ids is not None:
        id_list = read_ids_file(Path(ids)) if isinstance(ids, (str, Path)) else [int(i) for i in ids]
    return Submission(p, open_reader(p, fmt), order=order, ids=id_list, subjects=subjects)


def validate(
    submission: Submission,
    nsd: Any,
    split_name: str,
    subjects: Sequence[int] | None = None,
    progress: bool = False,
) -> list[Problem]:
    """Every problem of a submission against `split_name` (errors and warnings), in a stable order."""
    sub = submission
    requested = tuple(sorted(set(subjects))) if subjects else sub.requested
    if requested and sub.requested is None:
        sub.requested = requested
    sub.resolve(nsd, split_name)
    problems = list(sub.problems)
    present = sub.subjects
    scope = list(requested) if requested else present
    for s in present:
        if requested and s not in requested:
            problems.append(
                Problem(
                    "subject",
                    "reconstructions for a subject that was not requested are ignored",
                    subject=s,
                    severity="warning",
                )
            )
    if not present and not any(p.severity == "error" for p in problems):
        problems.append(
            Problem(
                "count",
                "submission contains no reconstructions",
                source=str(sub.path),
                expected="at least one image",
                actual="0",
            )
        )
    structural = any(p.severity == "error" for p in problems)
    todo: list[Entry] = []
    for s in scope:
        if s not in present:
            if structural:  # the file-level problem above is the cause; do not list its consequence
                continue
            problems.append(
                Problem(
                    "subject",
                    "no reconstructions for a requested subject",
                    subject=s,
                    expected="images for this subject",
                    actual="none",
                )
            )
            continue
        try:
            split = get_split(nsd, split_name, s)
        except UsageError as exc:
            problems.append(Problem("split", str(exc), subject=s))
            continue
        entries = sub.entries_for(s)
        keyed = _check_keys(entries, split.test_ids, s, split_name, sub.expected_location)
        problems.extend(keyed)
        todo.extend(_to_decode(entries, split.test_ids, keyed))
    problems.extend(_check_contents(sub, todo, progress))
    return problems


def _to_decode(entries: list[Entry], test_ids: Sequence[int], keyed: list[Problem]) -> list[Entry]:
    """The entries whose images are read: one per (nsd_id, sample) of the split. Duplicates and ids
    outside the split are refused from their keys alone; an array whose keys are wrong is not inflated."""
    if any(p.severity == "error" for p in keyed) and any(isinstance(e.ref, tuple) for e in entries):
        return []
    wanted = {int(i) for i in test_ids}
    seen: set[tuple[int, int]] = set()
    out = []
    for e in entries:
        if e.nsd_id in wanted and (e.nsd_id, e.sample) not in seen:
            seen.add((e.nsd_id, e.sample))
            out.append(e)
    return out


def _check_keys(
    entries: list[Entry],
    test_ids: Sequence[int],
    subject: int,
    split_name: str,
    where: Callable[[int, int, int], str] | None = None,
) -> list[Problem]:
    """Duplicate, extra, missing and per-image sample-count problems of one subject, from keys alone.

    `where(subject, nsd_id, sample)` names the file or row a missing reconstruction is expected in."""
    out: list[Problem] = []
    where = where or (lambda s, i, k: f"a reconstruction of nsd_id {i}, sample {k}")
    expected = {int(i) for i in test_ids}
    keys = Counter((e.nsd_id, e.sample) for e in entries)
    first_source = {}
    for e in entries:
        first_source.setdefault((e.nsd_id, e.sample), e.source)
    for (nsd_id, sample), n in sorted(keys.items()):
        if n > 1:
            out.append(
                Problem(
                    "duplicate",
                    "the same (nsd_id, sample) appears more than once",
                    subject=subject,
                    nsd_id=nsd_id,
                    sample=sample,
                    expected="1 image",
                    actual=f"{n} images",
                    source=first_source[(nsd_id, sample)],
                )
            )
    present = {k[0] for k in keys}
    extra = sorted(present - expected)
    missing = sorted(expected - present)
    if (
        missing
        and present
        and present == set(range(len(present)))
        and len(present & expected) < len(present) // 2
    ):
        out.append(
            Problem(
                "ids",
                f"file names look like positions 0..{len(present) - 1}, not NSD ids; if they are "
                "positions in a split order, pass --order first-presentation|nsd-ascending",
                subject=subject,
            )
        )
    if extra and len({i - 1 for i in present} & expected) > len(present & expected):
        out.append(
            Problem(
                "ids",
                "ids look 1-based (most ids are a split id + 1); nsdbench uses 0-based NSD "
                "ids (nsdId, or 73KID - 1)",
                subject=subject,
            )
        )
    for nsd_id in extra:
        out.append(
            Problem(
                "extra",
                f"nsd_id is not in the {split_name} test split",
                subject=subject,
                nsd_id=nsd_id,
                expected=f"an id of {split_name}",
                actual=str(nsd_id),
            )
        )
    sample_sets: dict[int, frozenset[int]] = {}
    for nsd_id, sample in keys:
        if nsd_id in expected:
            sample_sets[nsd_id] = sample_sets.get(nsd_id, frozenset()) | {sample}
    common = Counter(sample_sets.values()).most_common(1)[0][0] if sample_sets else frozenset({0})
    for nsd_id in missing:
        out.append(
            Problem(
                "missing",
                "no reconstruction for a test image",
                subject=subject,
                nsd_id=nsd_id,
                expected=where(subject, nsd_id, min(common))
                + (f" (and samples {sorted(common)[1:]})" if len(common) > 1 else ""),
                actual="none",
            )
        )
    for nsd_id, samples in sorted(sample_sets.items()):
        if samples == common:
            continue
        if samples < common:  # only some samples are missing: name each missing file
            for k in sorted(common - samples):
                out.append(
                    Problem(
                        "missing",
                        f"no reconstruction for this sample (the other images have samples {sorted(common)})",
                        subject=subject,
                        nsd_id=nsd_id,
                        sample=k,
                        expected=where(subject, nsd_id, k),
                        actual="none",
                    )
                )
            continue
        out.append(
            Problem(
                "sample-count",
                "number of samples differs from the other images"
                if len(samples) != len(common)
                else "sample indices differ from the other images",
                subject=subject,
                nsd_id=nsd_id,
                expected=f"{len(common)} samples"
                if len(samples) != len(common)
                else f"samples {sorted(common)}",
                actual=f"{len(samples)}" if len(samples) != len(common) else f"samples {sorted(samples)}",
            )
        )
    if len(out) > SUMMARY_AFTER:
        # many problems: a count summary helps; for a few it only repeats them
        n_expected = len(expected) * len(common)
        out.append(
            Problem(
                "count",
                f"number of reconstructions for the {split_name} split",
                subject=subject,
                expected=f"{n_expected} ({len(expected)} ids x {len(common)} samples)",
                actual=str(sum(keys.values())),
            )
        )
    return out


def _check_contents(sub: Submission, todo: list[Entry], progress: bool) -> list[Problem]:
    with progress_bar(
        progress and len(todo) >= 50, len(todo), "validating images", transient=True
    ) as advance:
        return _check_entries(sub, todo, advance)


def _check_entries(sub: Submission, todo: list[Entry], advance: Callable[[int], None]) -> list[Problem]:
    out: list[Problem] = []
    sizes: dict[int, Counter] = {}
    where: dict[tuple[int, tuple[int, int]], Entry] = {}
    jpeg: Counter = Counter()
    seen: set[Problem] = set()
    for e in todo:
        img, problems, fmt = sub.load(e)
        out.extend(p for p in problems if p not in seen)
        seen.update(problems)
        if fmt == "JPEG":
            jpeg[e.subject] += 1
        if img is not None:
            hw = img.shape[:2]
            sizes.setdefault(e.subject, Counter())[hw] += 1
            where.setdefault((e.subject, hw), e)
        advance(1)
    for s, n in sorted(jpeg.items()):
        out.append(
            Problem(
                "jpeg",
                f"{n} image(s) are JPEG: lossy compression changes pixel-level scores",
                subject=s,
                severity="warning",
            )
        )
    for s, counter in sorted(sizes.items()):
        if len(counter) > 1:
            common = counter.most_common(1)[0][0]
            for hw, n in sorted(counter.items()):
                if hw != common:
                    e = where[(s, hw)]
                    out.append(
                        Problem(
                            "size",
                            f"{n} image(s) differ in size from the rest of the subject's images "
                            f"(first shown; each is resized per the protocol)",
                            severity="warning",
                            subject=s,
                            nsd_id=e.nsd_id,
                            sample=e.sample,
                            source=e.source,
                            expected=f"{common[0]}x{common[1]}",
                            actual=f"{hw[0]}x{hw[1]}",
                        )
                    )
    return out


def errors(problems: Sequence[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]
