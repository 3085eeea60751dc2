"""The one scoring path: one subject's reconstructions → metrics.engine.score_reconstructions_by_protocol → an atomic Parquet file.

`nsdbench score` (submissions), `nsdbench run` (methods) and `nsdbench drift` all call this module,
so every recorded number comes from the same code. Workers only write Parquet; the leaderboard store
ingests the files in a single transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nsdbench.errors import InvalidSubmission, NSDBenchError, UsageError
from nsdbench.metrics.brain import BrainTarget
from nsdbench.metrics.engine import ScoreOptions, ScoreResult, score_reconstructions_by_protocol
from nsdbench.metrics.forward import batches_match
from nsdbench.metrics.protocols import Protocol, get_protocol
from nsdbench.nsd.loader import NSD
from nsdbench.nsd.splits import Split
from nsdbench.runs.folder import owned_temp
from nsdbench.score_files import read_parquet_meta, write_score_file
from nsdbench.stage_times import stage

ImageKey = tuple[int, int]  # (nsd_id, sample)
BrainTargets = BrainTarget | Mapping[str, BrainTarget | None] | None  # one for all, or per protocol


def _split(nsd: NSD, split: Split | str, subject: int) -> Split:
    if isinstance(split, str):
        from nsdbench.nsd.splits import get_split

        return get_split(nsd, split, subject)
    return split


class KeyedImages(Sequence):
    """A subject's reconstructions in (nsd_id, sample) order, read from the mapping (decoded, for a
    submission) only when the engine asks, so decoding runs on its prefetch thread."""

    def __init__(self, images: Mapping[ImageKey, np.ndarray], keys: list[ImageKey], subject: int) -> None:
        self.images, self.keys, self.subject = images, keys, subject

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        k = self.keys[i]
        img = np.asarray(self.images[k])
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise InvalidSubmission(
                f"subject {self.subject}, nsd_id {k[0]}, sample {k[1]}: expected uint8 (H, W, 3), "
                f"got {img.dtype} {img.shape}"
            )
        return img


def collect_images(
    images: Mapping[ImageKey, np.ndarray], subject: int
) -> tuple[list[int], list[int], KeyedImages]:
    """Sorted (nsd_id, sample) keys and their uint8 (h, w, 3) images, read on access (sizes may differ;
    the protocol resizes)."""
    keys = sorted(images)
    if not keys:
        raise InvalidSubmission(f"subject {subject}: no reconstructions to score")
    return [k[0] for k in keys], [k[1] for k in keys], KeyedImages(images, keys, subject)


@dataclass(frozen=True)
class SubjectScope:
    """One protocol and the split it scores on for one subject."""

    protocol: Protocol
    split: Split


def subject_scopes(
    nsd: NSD, subject: int, pairs: Sequence[tuple[Protocol | str, Split | str]]
) -> list[SubjectScope]:
    """(protocol, split name or Split) pairs as SubjectScopes of `subject`."""
    return [SubjectScope(get_protocol(p), _split(nsd, sp, subject)) for p, sp in pairs]


def score_subject_images(
    nsd: NSD,
    subject: int,
    scopes: Sequence[SubjectScope],
    images: Mapping[ImageKey, np.ndarray],
    options: ScoreOptions,
    brain: BrainTargets = None,
) -> dict[str, ScoreResult]:
    """Score one subject's reconstructions under every scope in one engine pass; each protocol gets the
    values a separate call would give on its split's ids. `brain`: None, one target or {protocol: target}."""
    if not scopes:
        raise UsageError("no protocol to score")
    timings = options.timings
    rec_ids, rec_samples, rec_images = collect_images(images, subject)  # decoded on the prefetch thread
    allowed = {int(i) for sc in scopes for i in sc.split.test_ids}
    outside = sorted(set(rec_ids) - allowed)
    if outside:
        names = "/".join(dict.fromkeys(sc.split.name for sc in scopes))
        raise InvalidSubmission(
            f"subject {subject}: nsd_id {outside[0]} is not in the {names} test split "
            f"({len(outside)} such ids)"
        )
    gt_ids = sorted(set(rec_ids))
    protocol_ids = {}  # a protocol on a narrower split scores the reconstructions within its split
    for sc in scopes:
        ids = sorted({int(i) for i in sc.split.test_ids} & set(gt_ids))
        if len(ids) != len(gt_ids):
            protocol_ids[sc.protocol.name] = ids
    with stage(timings, "ground_truth"):
        gt_images = nsd.images(gt_ids)
    return score_reconstructions_by_protocol(
        gt_ids,
        gt_images,
        rec_ids,
        rec_samples,
        rec_images,
        [sc.protocol for sc in scopes],
        options,
        brain,
        protocol_ids or None,
    )


def scores_frame(result: ScoreResult, run_id: str, subject: int) -> pd.DataFrame:
    """Long rows [run_id, level, subject, nsd_id, sample, metric, value] for the three levels."""
    ps = result.per_sample
    pi = result.per_image
    frames = [
        pd.DataFrame(
            {
                "level": "sample",
                "nsd_id": ps["nsd_id"],
                "sample": ps["sample"],
                "metric": ps["metric"],
                "value": ps["value"],
            }
        ),
        pd.DataFrame(
            {
                "level": "image",
                "nsd_id": pi["nsd_id"],
                "sample": None,
                "metric": pi["metric"],
                "value": pi["value"],
            }
        ),
        pd.DataFrame(
            {
                "level": "set",
                "nsd_id": None,
                "sample": None,
                "metric": list(result.set_scores),
                "value": [float(v) for v in result.set_scores.values()],
            }
        ),
    ]
    df = pd.concat([f for f in frames if len(f)], ignore_index=True)
    df.insert(0, "run_id", run_id)
    df.insert(2, "subject", int(subject))
    df["nsd_id"] = df["nsd_id"].astype("Int32")
    df["sample"] = df["sample"].astype("Int32")
    df["subject"] = df["subject"].astype("int32")
    df["value"] = df["value"].astype("float64")
    return df


def write_subject_scores(
    nsd: NSD,
    subject: int,
    scopes: Sequence[SubjectScope],
    images: Mapping[ImageKey, np.ndarray],
    options: ScoreOptions,
    out_paths: Mapping[str, Path],
    run_ids: Mapping[str, str],
    brain: BrainTargets = None,
    extra_meta: Mapping[str, dict[str, Any]] | None = None,
) -> dict[str, Path]:
    """Score one subject under every scope in one pass and write each protocol's per-sample, per-image and
    set scores to its own Parquet file (out_paths[protocol name]) atomically; extra_meta[protocol name]
    is added to that file's metadata."""
    results = score_subject_images(nsd, subject, scopes, images, options, brain)
    written = {}
    for sc in scopes:
        name = sc.protocol.name
        result = results[name]
        in_split = {int(i) for i in sc.split.test_ids}
        target = brain.get(name) if isinstance(brain, Mapping) else brain
        meta = {
            "run_id": run_ids[name],
            "subject": int(subject),
            "split": sc.split.name,
            "protocol": name,
            "protocol_version": sc.protocol.version,
            "protocol_hash": sc.protocol.hash,
            "weights_mode": options.weights_mode,
            "brain": target is not None,
            "n_images": int(result.per_image["nsd_id"].nunique()) if len(result.per_image) else 0,
            "n_reconstructions": sum(1 for key in images if int(key[0]) in in_split),
            "provenance": result.provenance,
            "written_at": datetime.now(UTC).isoformat(),
            **(extra_meta or {}).get(name, {}),
        }
        with stage(options.timings, "store"):
            out = Path(out_paths[name])
            # the temp file names host and pid: a killed writer's leftover is removed on resume
            written[name] = write_score_file(
                scores_frame(result, run_ids[name], subject), out, meta, temp=owned_temp(out)
            )
    return written


def completed_parquet(
    path: str | Path, run_id: str, subject: int, protocol_hash: str, device: str | None = None
) -> bool:
    """True if `path` is a finished score file of this run and subject (a crashed run resumes from it),
    computed with the chunk sizes `device` uses now (when given)."""
    p = Path(path)
    if not p.is_file():
        return False
    try:
        meta = read_parquet_meta(p)
    except NSDBenchError:
        return False
    return (
        meta.get("run_id") == run_id
        and meta.get("subject") == subject
        and meta.get("protocol_hash") == protocol_hash
        and (device is None or batches_match(meta.get("provenance") or {}, device))
    )


def has_brain_metrics(protocol: Protocol) -> bool:
    from nsdbench.metrics.names import BRAIN_ROIS

    return any(name in BRAIN_ROIS for name in protocol.metric_names)


def brain_target(
    nsd: NSD,
    subject: int,
    split_name: str,
    weights_mode: str,
    wanted: bool | None,
    protocol: Protocol | None = None,
) -> tuple[BrainTarget | None, str]:
    """The encoding-model target for brain correlation, or (None, reason).

    wanted=None: use it when an encoder can be built for this weights mode, else skip with a note;
    wanted=True: required (errors propagate); wanted=False: off. `protocol`: build the encoder and beta
    normalization its brain metrics name (default nsdbench's encoder; others are built on demand).
    """
    if wanted is False:
        return None, "brain correlation off (--no-brain)"
    try:
        from nsdbench.metrics.encoder import load_brain_target
    except ImportError as exc:
        if wanted:
            raise UsageError(
                f"--brain needs nsdbench.metrics.encoder, which is not available ({exc})"
            ) from None
        return None, "brain correlation skipped: no encoding model in this installation"
    try:
        kwargs = {}
        first = next((m for m in getattr(protocol, "metrics", ()) if hasattr(m, "encoder_name")), None)
        if first is not None:
            kwargs = {"encoder": first.encoder_name, "beta_normalization": first.betas}
        return load_brain_target(nsd, subject, split_name, weights_mode, **kwargs), ""
    except NSDBenchError as exc:
        if wanted:
            raise
        return None, f"brain correlation skipped for subject {subject}: {exc}"
