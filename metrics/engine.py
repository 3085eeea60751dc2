"""The scoring engine: every metric of one or more protocols for ground truth vs reconstructions.

Everything is keyed by (nsd_id, sample). Images are put in canonical order (ascending id, then sample)
before any computation, read, decoded and resized in batches on prefetch threads, and pushed through
each network in fixed, zero-padded chunks (metrics.forward), so results are bit-identical whatever the
caller's batch size, input order or prefetch setting. One pass per (network, weights, precision,
normalization, resize chain, rows) serves every metric and protocol that agrees on it. Each sample set
is scored as a full set; per-image values are averaged over samples (Second Sight's convention), and
the set score is the mean over images.

The steps: plan (metric kinds) -> ground-truth features -> per-sample pass -> statistics -> provenance.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from nsdbench import weights
from nsdbench.devices import resolve_device
from nsdbench.errors import UsageError
from nsdbench.metrics import features_cache
from nsdbench.metrics.forward import ChunkedForward, feature_pass, forward_batch
from nsdbench.metrics.image_batches import ChainRequest, batch_jobs
from nsdbench.metrics.metric_kinds import MetricKind, ScoringContext, Values, build_kinds
from nsdbench.metrics.names import order_key
from nsdbench.metrics.networks import get_network
from nsdbench.metrics.prefetch import prefetched
from nsdbench.metrics.protocols import FeatureMetric, Metric, Protocol, get_protocol
from nsdbench.metrics.resize import apply_chain
from nsdbench.metrics.score_inputs import (
    ImageSet,
    NsdIds,
    ScoreInputs,
    scope_masks,
    uint8_image,
    validate_inputs,
)
from nsdbench.progress import ProgressArg, progress_bar
from nsdbench.stage_times import Timings, stage

if TYPE_CHECKING:
    from nsdbench.metrics.brain import BrainTarget


@dataclass(frozen=True)
class ScoreOptions:
    """How to score (none of it changes a value, except weights_mode and the device type)."""

    weights_mode: str = "pretrained"
    device: str = "cpu"
    batch_size: int = 32  # images read, decoded and resized per batch
    progress: ProgressArg = False
    cache: bool = True  # ground-truth features on disk (NSDBENCH_HOME/cache/features)
    timings: Timings | None = field(default=None, compare=False)  # stage -> seconds, added to in place
    prefetch: int = 2  # batches prepared ahead on a worker thread (0: none)


@dataclass
class ScoreResult:
    per_sample: pd.DataFrame  # nsd_id, sample, metric, value
    per_image: pd.DataFrame  # nsd_id, metric, value (mean over samples)
    set_scores: dict[str, float]  # mean of per_image per metric = the published statistic
    provenance: dict[str, Any]


# --------------------------------------------------------------------------- public entry points


def score_reconstructions(
    gt_ids: NsdIds,
    gt_images: ImageSet,
    rec_ids: NsdIds,
    rec_samples: NsdIds,
    rec_images: ImageSet,
    protocol: str | Protocol,
    options: ScoreOptions = ScoreOptions(),
    brain: BrainTarget | Mapping[str, BrainTarget | None] | None = None,
) -> ScoreResult:
    """Score reconstructions against ground truth under one protocol (see score_reconstructions_by_protocol)."""
    p = get_protocol(protocol)
    return score_reconstructions_by_protocol(
        gt_ids, gt_images, rec_ids, rec_samples, rec_images, [p], options, brain
    )[p.name]


def score_reconstructions_by_protocol(
    gt_ids: NsdIds,
    gt_images: ImageSet,
    rec_ids: NsdIds,
    rec_samples: NsdIds,
    rec_images: ImageSet,
    protocols: Sequence[str | Protocol],
    options: ScoreOptions = ScoreOptions(),
    brain: BrainTarget | Mapping[str, BrainTarget | None] | None = None,
    protocol_ids: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, ScoreResult]:
    """Score under several protocols in one pass: every image decoded once, every network pass they
    agree on shared.

    gt_images: uint8 (N, H, W, 3) array/tensor or a sequence of HxWx3 uint8 images (read lazily);
    rec_images likewise (M items, any size); rec_ids / rec_samples: length M. `brain`: None, one target
    or {protocol name: target}; a target has .predict(uint8 NHWC) -> (B, V), .measured {nsd_id: (V,)},
    .rois {roi: bool (V,)}. `protocol_ids`: a protocol scored on a subset of the ground-truth ids (a
    nested split) gets exactly the values of a separate call on that subset. `options.progress`: True
    draws rich bars on stderr; a callable gets (done, total) in image units: one per ground-truth image
    (the feature pass, or at once when every pass is cached) and one per image of each sample set.
    """
    protos = [get_protocol(p) for p in protocols]
    if not protos:
        raise UsageError("no protocol given")
    mode = weights.check_mode(options.weights_mode)
    if options.batch_size < 1:
        raise UsageError(f"batch_size must be >= 1; got {options.batch_size}")
    dev = resolve_device(options.device)
    inputs = validate_inputs(gt_ids, gt_images, rec_ids, rec_samples, rec_images)
    scopes = scope_masks(inputs.gt_ids, [p.name for p in protos], protocol_ids)
    ctx = ScoringContext(
        mode,
        dev,
        inputs.gt_ids,
        scopes,
        options.cache,
        options.timings,
        _content_hasher(gt_images, inputs),
        _brain_for(brain),
    )
    try:
        with deterministic_mode(dev) as flags:
            kinds = _plan(protos, ctx)  # pretrained networks start building in the background
            n, has_gt = len(inputs.gt_ids), any(k.has_ground_truth_pass() for k in kinds)
            units = n * (len(inputs.samples) + (1 if has_gt else 0))
            with progress_bar(options.progress, units, "scoring") as advance:
                _ground_truth_features(kinds, inputs, gt_images, options, advance, has_gt)
                rows: list[tuple[str, int, int, str, float]] = []
                for sample in inputs.samples:
                    _sample_pass(kinds, inputs, gt_images, rec_images, sample, options, advance)
                    with stage(options.timings, "statistics"):
                        rows.extend(_rows(sample, (v for k in kinds for v in k.statistics())))
        return {
            p.name: _result(
                p, [r[1:] for r in rows if r[0] == p.name], kinds, ctx, flags, len(inputs.samples)
            )
            for p in protos
        }
    finally:
        ctx.close()


def metric_features(
    metric: FeatureMetric,
    images: Sequence[np.ndarray] | np.ndarray,
    side: str = "gt",
    weights_mode: str = "pretrained",
    device: str = "cpu",
) -> np.ndarray:
    """The raw layer features (N, D) float32 that scoring computes for one side ("gt" or "rec") of a
    feature metric: same chain, normalization, precision, TF32 flags and fixed forward chunks."""
    if side not in ("gt", "rec"):
        raise UsageError(f"side must be 'gt' or 'rec' (got {side!r})")
    mode = weights.check_mode(weights_mode)
    dev = resolve_device(device)
    version = metric.weights if mode == "pretrained" else "-"
    net = get_network(metric.network, version, mode, metric.precision, dev)
    chain = metric.gt_chain if side == "gt" else metric.rec_chain
    fp = feature_pass(metric, chain, version, dev)
    fwd = ChunkedForward(net, (metric.layer,), forward_batch(dev, metric.network), fp, None)
    items = [uint8_image(im, side, k) for k, im in enumerate(images)]
    with deterministic_mode(dev):
        for s in range(0, len(items), 32):
            fwd.push(apply_chain(items[s : s + 32], chain, dev))
        return fwd.finish()[metric.layer].cpu().numpy()


# --------------------------------------------------------------------------- the steps


def _plan(protos: list[Protocol], ctx: ScoringContext) -> list[MetricKind]:
    """One kind object per metric class, each holding every (protocol, metric) of that class."""
    entries: list[tuple[str, Metric]] = [(p.name, m) for p in protos for m in p.metrics]
    return build_kinds(entries, ctx)


def _ground_truth_features(
    kinds: list[MetricKind],
    inputs: ScoreInputs,
    gt_images: ImageSet,
    options: ScoreOptions,
    advance: Callable[[int], None],
    has_gt: bool,
) -> None:
    """Ground-truth features of every pass not in the disk cache, in one streamed pass over the images."""
    requests: set[ChainRequest] = set().union(*(k.ground_truth_requests() for k in kinds))
    if has_gt and not requests:
        advance(len(inputs.gt_ids))  # every ground-truth pass came from the cache
    if requests:
        jobs = batch_jobs(
            inputs.gt_ids, options.batch_size, (gt_images, inputs.gt_pos), None, requests, options.timings
        )
        for batch in prefetched(jobs, options.prefetch):
            for k in kinds:
                k.add_ground_truth(batch)
            advance(len(batch.ids))
    for k in kinds:
        k.finish_ground_truth()


def _sample_pass(
    kinds: list[MetricKind],
    inputs: ScoreInputs,
    gt_images: ImageSet,
    rec_images: ImageSet,
    sample: int,
    options: ScoreOptions,
    advance: Callable[[int], None],
) -> None:
    """One sample set through every kind: images read, decoded and resized ahead on the prefetch thread."""
    requests: set[ChainRequest] = set().union(*(k.sample_requests() for k in kinds))
    gt = (gt_images, inputs.gt_pos) if any(r.side == "gt" for r in requests) else None
    rec = (rec_images, inputs.rec_pos[sample], f"reconstruction (sample {sample})")
    for k in kinds:
        k.start_sample()
    for batch in prefetched(
        batch_jobs(inputs.gt_ids, options.batch_size, gt, rec, requests, options.timings), options.prefetch
    ):
        for k in kinds:
            k.add_batch(batch)
        advance(len(batch.ids))
    for k in kinds:
        k.finish_sample()


def _rows(sample: int, values: Iterator[Values]) -> Iterator[tuple[str, int, int, str, float]]:
    for pname, metric, ids, vals in values:
        yield from ((pname, int(i), sample, metric, float(v)) for i, v in zip(ids, vals))


def _result(
    p: Protocol, rows: list, kinds: list[MetricKind], ctx: ScoringContext, flags: dict, n_samples: int
) -> ScoreResult:
    """Per-sample rows -> per-image means -> set scores, with the protocol's provenance."""
    per_sample = pd.DataFrame(rows, columns=["nsd_id", "sample", "metric", "value"])
    per_sample["_o"] = per_sample["metric"].map(order_key)
    per_sample = (
        per_sample.sort_values(["_o", "metric", "nsd_id", "sample"]).drop(columns="_o").reset_index(drop=True)
    )
    per_image = per_sample.groupby(["metric", "nsd_id"], sort=False, as_index=False)["value"].mean()
    per_image = per_image[["nsd_id", "metric", "value"]].reset_index(drop=True)
    names = list(dict.fromkeys(per_image["metric"]))
    set_scores = {m: float(per_image.loc[per_image["metric"] == m, "value"].mean()) for m in names}
    return ScoreResult(
        per_sample, per_image, set_scores, _provenance(p, kinds, ctx, flags, n_samples, set_scores)
    )


def _provenance(p: Protocol, kinds, ctx: ScoringContext, flags: dict, n_samples: int, set_scores) -> dict:
    import PIL
    import torchvision

    dev = ctx.device
    prov: dict[str, Any] = {
        "protocol": p.name,
        "protocol_version": p.version,
        "protocol_hash": p.hash,
        "protocol_identity": p.identity,
        "split": p.split,
        "weights_mode": ctx.mode,
        "smoke": weights.is_smoke(ctx.mode),
        "networks": {},
        "precision": {
            "pixel": "float64",
            "statistics": "float64",
            **flags,
            "tf32_feature_matmul_cuda": any(getattr(m, "tf32", False) for m in p.metrics),
            "tf32_feature_conv_cuda": any(bool(getattr(m, "tf32_conv", False)) for m in p.metrics),
        },
        "brain_forward_batch": forward_batch(dev),  # the brain encoders' buffering
        "forward_batch": {},  # per feature network: the feature kinds fill it in
        "device": dev,
        "device_name": torch.cuda.get_device_name(dev) if dev.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "n_images": int(ctx.scopes[p.name].sum()),
        "n_samples": n_samples,
        "metrics": list(set_scores),
        "brain": None,
    }
    for k in kinds:
        prov.update(k.provenance(p.name))
    return prov


def _content_hasher(gt_images: ImageSet, inputs: ScoreInputs) -> Callable[[np.ndarray], str]:
    """sha256 of the ground-truth images under a row mask (read once per mask; the feature-cache key)."""
    memo: dict[bytes, str] = {}

    def content(mask: np.ndarray) -> str:
        key = mask.tobytes()
        if key not in memo:
            rows = np.nonzero(mask)[0]
            ids = inputs.gt_ids[rows].tolist()
            images = (
                uint8_image(gt_images[int(inputs.gt_pos[r])], "ground truth", int(i))
                for r, i in zip(rows, ids)
            )
            memo[key] = features_cache.images_sha256(zip(ids, images))
        return memo[key]

    return content


def _brain_for(brain: Any) -> Callable[[str], Any]:
    if isinstance(brain, Mapping):
        return lambda name: brain.get(name)
    return lambda name: brain


# --------------------------------------------------------------------------- determinism


@contextlib.contextmanager
def deterministic_mode(device: str = "cpu", allow_tf32: bool = False) -> Iterator[dict[str, Any]]:
    """Precision/determinism flags for the duration of scoring; the previous state is restored.

    CPU kernels are deterministic already; on CUDA, cuDNN is made deterministic, benchmarking and TF32
    are turned off and torch's deterministic algorithms are requested (warning where none exists).
    """
    cuda = str(device).startswith("cuda")
    if cuda:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    saved = (
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    torch.backends.cudnn.allow_tf32 = allow_tf32
    if cuda:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield {
            "cudnn_deterministic": True,
            "cudnn_benchmark": False,
            "tf32": allow_tf32,
            "deterministic_algorithms": "on (warn_only)" if cuda else "cpu kernels (deterministic)",
            "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG") if cuda else None,
        }
    finally:
        (
            torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark,
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
            det,
            warn,
        ) = saved
        if cuda:
            torch.use_deterministic_algorithms(det, warn_only=warn)
