"""The scoring engine: every metric of one or more protocols for ground truth vs reconstructions.

Everything is keyed by (nsd_id, sample). Images are put in canonical order (ascending id, then sample)
before any computation, read in batches, resized per protocol chain, and pushed through each network in
fixed, zero-padded chunks of FORWARD_BATCH, so results are bit-identical whatever the caller's batch
size or input order. One pass per (network, weights, precision, normalization, resize chain) serves
every metric and protocol that agrees on it. Each sample set is scored as a full set; per-image values
are averaged over samples (Second Sight's convention), and the set score is the mean over images.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from nsdbench import weights as weights_mod
from nsdbench.errors import InvalidSubmission, UsageError
from nsdbench.metrics import distances, features_cache, identification, pixel
from nsdbench.metrics.names import METRIC_ORDER, order_key
from nsdbench.metrics.networks import get_network, normalize
from nsdbench.metrics.protocols import (
    BrainMetric,
    Chain,
    FeatureMetric,
    PixelMetric,
    Protocol,
    get_protocol,
)
from nsdbench.metrics.resize import apply_chain, to_float

FORWARD_BATCH = {"cpu": 8, "cuda": 64}  # fixed per device: part of the result's identity

# False, True (rich bars on stderr) or a callback(done, total)
ProgressArg = bool | Callable[[int, int], None]


@dataclass
class ScoreResult:
    per_sample: pd.DataFrame  # nsd_id, sample, metric, value
    per_image: pd.DataFrame  # nsd_id, metric, value (mean over samples)
    set_scores: dict[str, float]  # mean of per_image per metric = the published statistic
    provenance: dict[str, Any]


@dataclass(frozen=True)
class FeaturePass:
    """One network forward pass over one side (gt or rec) with one preprocessing."""

    network: str
    weights: str
    precision: str
    normalize: str
    chain: Chain
    tf32: bool = False
    tf32_conv: bool = False

    def part(self, layers: Sequence[str], mode: str, forward_batch: int, device_type: str) -> dict[str, Any]:
        return {
            **asdict(self),
            "layers": sorted(layers),
            "mode": mode,
            "forward_batch": forward_batch,
            "device_type": device_type,
            "torch": torch.__version__,
        }


# --------------------------------------------------------------------------- input handling


def _resolve_device(device: str | torch.device | None) -> str:
    d = str(device or "cpu")
    if d == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if d.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {d!r} requested but CUDA is not available")
    return d


def _check_image(im: Any, what: str, nsd_id: int) -> np.ndarray:
    a = im.detach().cpu().numpy() if isinstance(im, torch.Tensor) else np.asarray(im)
    if a.dtype != np.uint8:
        nan = " containing NaN" if a.dtype.kind == "f" and np.isnan(a).any() else ""
        raise InvalidSubmission(
            f"{what} nsd_id {nsd_id}: expected uint8 HxWx3 image, got {a.dtype}{nan} of shape {a.shape}"
        )
    if a.ndim != 3 or a.shape[2] != 3 or min(a.shape[:2]) < 1:
        raise InvalidSubmission(f"{what} nsd_id {nsd_id}: expected uint8 HxWx3 image, got shape {a.shape}")
    return a


def _check_array(images: Any, n: int, what: str) -> None:
    """Fast whole-array checks when images come as one array; sequences are checked per item."""
    if isinstance(images, np.ndarray | torch.Tensor):
        dtype = images.dtype
        if dtype not in (np.uint8, torch.uint8):
            arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else images
            nan = " containing NaN" if arr.dtype.kind == "f" and np.isnan(arr).any() else ""
            raise InvalidSubmission(f"{what}: expected uint8 (N, H, W, 3) images, got {dtype}{nan}")
        if images.ndim != 4 or images.shape[-1] != 3:
            raise InvalidSubmission(
                f"{what}: expected uint8 (N, H, W, 3) images, got shape {tuple(images.shape)}"
            )
    try:
        count = len(images)
    except TypeError as exc:
        raise UsageError(f"{what}: expected an array or a sequence of images") from exc
    if count != n:
        raise InvalidSubmission(f"{what}: {count} images for {n} ids")


def _take(images: Any, idx: Sequence[int], ids: Sequence[int], what: str) -> list[np.ndarray]:
    return [_check_image(images[int(i)], what, int(nsd_id)) for i, nsd_id in zip(idx, ids)]


def _as_int_array(x: Any, what: str) -> np.ndarray:
    a = np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x)
    if a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
        raise InvalidSubmission(f"{what}: expected a 1-D sequence of integers, got {a.dtype} shape {a.shape}")
    return a.astype(np.int64)


@dataclass
class _Inputs:
    gt_ids: np.ndarray  # ascending
    gt_pos: np.ndarray  # positions in the caller's gt arrays, aligned with gt_ids
    samples: list[int]  # ascending sample indices
    rec_pos: dict[int, np.ndarray]  # sample -> positions in caller's rec arrays, aligned with gt_ids


def _validate(gt_ids, gt_images, rec_ids, rec_samples, rec_images) -> _Inputs:
    g = _as_int_array(gt_ids, "ground-truth ids")
    _check_array(gt_images, len(g), "ground-truth images")
    uniq, counts = np.unique(g, return_counts=True)
    if (counts > 1).any():
        raise InvalidSubmission(f"ground truth: nsd_id {int(uniq[counts > 1][0])} given more than once")
    if len(g) < 2:
        raise InvalidSubmission(
            f"scoring needs at least 2 images (2-way identification is undefined for {len(g)}); "
            f"got nsd_ids {g.tolist()}"
        )
    r = _as_int_array(rec_ids, "reconstruction ids")
    s = _as_int_array(rec_samples, "reconstruction samples")
    if len(r) != len(s):
        raise InvalidSubmission(f"reconstructions: {len(r)} ids but {len(s)} sample indices")
    _check_array(rec_images, len(r), "reconstruction images")
    order = np.argsort(g, kind="stable")
    gt_sorted = g[order]
    gt_set = set(gt_sorted.tolist())
    rec_pos: dict[int, np.ndarray] = {}
    for sample in sorted(set(s.tolist())):
        pos = np.nonzero(s == sample)[0]
        ids = r[pos]
        u, c = np.unique(ids, return_counts=True)
        if (c > 1).any():
            raise InvalidSubmission(
                f"sample {sample}: nsd_id {int(u[c > 1][0])} reconstructed more than once"
            )
        extra = sorted(set(ids.tolist()) - gt_set)
        if extra:
            raise InvalidSubmission(f"sample {sample}: nsd_id {extra[0]} has no ground-truth image")
        missing = sorted(gt_set - set(ids.tolist()))
        if missing:
            raise InvalidSubmission(
                f"sample {sample}: no reconstruction for nsd_id {missing[0]} ({len(missing)} missing; "
                f"every sample must cover all {len(gt_sorted)} ground-truth ids)"
            )
        rec_pos[sample] = pos[np.argsort(ids, kind="stable")]
    if not rec_pos:
        raise InvalidSubmission("no reconstructions given")
    return _Inputs(gt_sorted, order, sorted(rec_pos), rec_pos)


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


# --------------------------------------------------------------------------- feature passes


class _Forwarder:
    """Feeds a network fixed-size, zero-padded chunks so each image's features never depend on batching."""

    def __init__(
        self,
        net,
        layers: tuple[str, ...],
        chunk: int,
        normalize_kind: str,
        timer: dict[str, float],
        tf32: bool = False,
        tf32_conv: bool = False,
    ):
        self.net, self.layers, self.chunk, self.kind, self.timer = net, layers, chunk, normalize_kind, timer
        self.tf32, self.tf32_conv = tf32, tf32_conv
        self.buffer: list[torch.Tensor] = []
        self.n_buffered = 0
        self.out: dict[str, list[torch.Tensor]] = {layer: [] for layer in layers}

    def push(self, x: torch.Tensor) -> None:
        self.buffer.append(x)
        self.n_buffered += x.shape[0]
        while self.n_buffered >= self.chunk:
            self._run(self.chunk)

    def _run(self, n: int) -> None:
        x = torch.cat(self.buffer)
        head, rest = x[:n], x[n:]
        self.buffer = [rest] if rest.shape[0] else []
        self.n_buffered = rest.shape[0]
        if head.shape[0] < self.chunk:
            pad = head.new_zeros((self.chunk - head.shape[0], *head.shape[1:]))
            head = torch.cat([head, pad])
        # contiguous NCHW like a DataLoader batch (not the channels-last strides of the HWC->CHW permute)
        x = normalize(to_float(head, torch.float32), self.kind).contiguous()
        _sync(x.device)
        t0 = _now()
        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = self.tf32
        torch.backends.cudnn.allow_tf32 = self.tf32_conv
        try:
            feats = self.net.features(x, self.layers)
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
        _sync(x.device)
        stage = f"forward:{self.net.key.network}"
        self.timer[stage] = self.timer.get(stage, 0.0) + _now() - t0
        for layer in self.layers:
            self.out[layer].append(feats[layer][:n])

    def finish(self) -> dict[str, torch.Tensor]:
        if self.n_buffered:
            self._run(self.n_buffered)
        return {layer: torch.cat(v) for layer, v in self.out.items()}


def _now() -> float:
    import time

    return time.perf_counter()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- planning


@dataclass
class _Plan:
    pixel: dict[tuple[Chain, Chain], list[tuple[str, PixelMetric]]]  # chains -> [(protocol, metric)]
    gt_passes: dict[FeaturePass, set[str]]  # pass -> layers
    rec_passes: dict[FeaturePass, set[str]]
    features: list[tuple[str, FeatureMetric, FeaturePass, FeaturePass]]
    brain: list[tuple[str, BrainMetric]]


def _plan(protocols: list[Protocol], mode: str, with_brain: bool) -> _Plan:
    plan = _Plan({}, {}, {}, [], [])
    for p in protocols:
        for m in p.metrics:
            if isinstance(m, PixelMetric):
                plan.pixel.setdefault((m.gt_chain, m.rec_chain), []).append((p.name, m))
            elif isinstance(m, FeatureMetric):
                version = m.weights if mode == "pretrained" else "-"
                conv = bool(m.tf32_conv)
                gp = FeaturePass(m.network, version, m.precision, m.normalize, m.gt_chain, m.tf32, conv)
                rp = FeaturePass(m.network, version, m.precision, m.normalize, m.rec_chain, m.tf32, conv)
                plan.gt_passes.setdefault(gp, set()).add(m.layer)
                plan.rec_passes.setdefault(rp, set()).add(m.layer)
                plan.features.append((p.name, m, gp, rp))
            elif isinstance(m, BrainMetric) and with_brain:
                plan.brain.append((p.name, m))
    return plan


# --------------------------------------------------------------------------- brain correlation


def _brain_correlation(
    pred: np.ndarray, measured: np.ndarray, rois: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    from nsdbench.metrics.brain import brain_correlation  # imported lazily: only runs with a brain target

    return brain_correlation(pred, measured, rois)


# --------------------------------------------------------------------------- scoring


def score(
    gt_ids,
    gt_images,
    rec_ids,
    rec_samples,
    rec_images,
    protocol: str | Protocol,
    weights_mode: str = "pretrained",
    device: str = "cpu",
    brain=None,
    batch_size: int = 32,
    progress: ProgressArg = False,
    cache: bool = True,
    timings: dict[str, float] | None = None,
) -> ScoreResult:
    """Score reconstructions against ground truth under one protocol (see score_protocols)."""
    p = get_protocol(protocol)
    return score_protocols(
        gt_ids,
        gt_images,
        rec_ids,
        rec_samples,
        rec_images,
        [p],
        weights_mode,
        device,
        brain,
        batch_size,
        progress,
        cache,
        timings,
    )[p.name]


def score_protocols(
    gt_ids,
    gt_images,
    rec_ids,
    rec_samples,
    rec_images,
    protocols: Sequence[str | Protocol],
    weights_mode: str = "pretrained",
    device: str = "cpu",
    brain=None,
    batch_size: int = 32,
    progress: ProgressArg = False,
    cache: bool = True,
    timings: dict[str, float] | None = None,
) -> dict[str, ScoreResult]:
    """Score under several protocols at once, sharing every feature pass they agree on.

    gt_images: uint8 (N, H, W, 3) array/tensor or a sequence of HxWx3 uint8 images (read lazily);
    rec_images likewise (M items, any size); rec_ids / rec_samples: length M. `brain`: None or an
    object with .predict(uint8 NHWC) -> (B, V), .measured {nsd_id: (V,)}, .rois {roi: bool (V,)}.
    `progress`: True draws rich bars on stderr; a callable gets (done, total) in image units: one per
    ground-truth image (the feature pass, or at once when every pass is cached) and one per image of
    each sample set (pixel metrics, reconstruction features, brain predictions), ending at total.
    """
    protos = [get_protocol(p) for p in protocols]
    if not protos:
        raise UsageError("no protocol given")
    mode = weights_mode_checked(weights_mode)
    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1; got {batch_size}")
    dev = _resolve_device(device)
    inputs = _validate(gt_ids, gt_images, rec_ids, rec_samples, rec_images)
    timer = timings if timings is not None else {}
    plan = _plan(protos, mode, brain is not None)
    chunk = FORWARD_BATCH["cuda" if dev.startswith("cuda") else "cpu"]
    ids = inputs.gt_ids
    n = len(ids)
    units = n * (len(inputs.samples) + (1 if plan.gt_passes else 0))

    with deterministic_mode(dev) as flags, _progress(progress, units) as bar:
        networks: dict[FeaturePass, Any] = {}
        net_info: dict[str, dict[str, Any]] = {}
        for fp in list(plan.gt_passes) + list(plan.rec_passes):
            t0 = _now()
            net = get_network(fp.network, fp.weights, mode, fp.precision, dev)
            timer["networks"] = timer.get("networks", 0.0) + _now() - t0
            networks[fp] = net
            net_info[f"{fp.network}:{fp.weights}:{fp.precision}"] = {
                "network": fp.network,
                "weights": fp.weights,
                "mode": mode,
                "artifact": net.artifact,
                "sha256": net.sha256,
                "precision": fp.precision,
            }

        # ---- ground-truth features (disk cache, else one streamed pass per FeaturePass)
        gt_feats: dict[FeaturePass, dict[str, torch.Tensor]] = {}
        todo: dict[FeaturePass, str] = {}
        if plan.gt_passes:
            content = None
            for fp, layers in plan.gt_passes.items():
                key = None
                if cache:
                    if content is None:
                        content = features_cache.images_sha256(
                            zip(
                                ids.tolist(),
                                (
                                    _check_image(gt_images[int(i)], "ground truth", int(k))
                                    for i, k in zip(inputs.gt_pos, ids)
                                ),
                            )
                        )
                    part = fp.part(sorted(layers), mode, chunk, dev.split(":")[0])
                    key = features_cache.cache_key(part, networks[fp].sha256, ids.tolist(), content)
                    hit = features_cache.load(key, sorted(layers))
                    if hit is not None:
                        gt_feats[fp] = {k: torch.from_numpy(v).to(dev) for k, v in hit.items()}
                        continue
                todo[fp] = key or ""
        if plan.gt_passes and not todo:
            bar.skip(n)  # every ground-truth pass came from the cache
        if todo:
            fwd = {
                fp: _Forwarder(
                    networks[fp],
                    tuple(sorted(plan.gt_passes[fp])),
                    chunk,
                    fp.normalize,
                    timer,
                    fp.tf32,
                    fp.tf32_conv,
                )
                for fp in todo
            }
            task = bar.add("ground-truth features", n)
            for s in range(0, n, batch_size):
                pos, bids = inputs.gt_pos[s : s + batch_size], ids[s : s + batch_size]
                t0 = _now()
                imgs = _take(gt_images, pos, bids, "ground truth")
                timer["ground_truth"] = timer.get("ground_truth", 0.0) + _now() - t0
                for chain, fps in _by_chain(todo).items():
                    t0 = _now()
                    x = apply_chain(imgs, chain, dev)
                    timer["resize"] = timer.get("resize", 0.0) + _now() - t0
                    for fp in fps:
                        fwd[fp].push(x)
                bar.advance(task, len(bids))
            for fp, key in todo.items():
                gt_feats[fp] = fwd[fp].finish()
                if cache and key:
                    features_cache.save(
                        key,
                        {k: v.cpu().numpy() for k, v in gt_feats[fp].items()},
                        {"pass": fp.part(sorted(plan.gt_passes[fp]), mode, chunk, dev), "n": n},
                    )

        groups = _brain_groups(plan.brain, brain, ids)

        # ---- each sample set: pixel metrics, reconstruction features, brain predictions
        rows: list[tuple[str, int, int, str, float]] = []  # protocol, nsd_id, sample, metric, value
        for sample in inputs.samples:
            rpos = inputs.rec_pos[sample]
            pix: dict[tuple[str, str], list[np.ndarray]] = {}
            fwd = {
                fp: _Forwarder(
                    networks[fp], tuple(sorted(layers)), chunk, fp.normalize, timer, fp.tf32, fp.tf32_conv
                )
                for fp, layers in plan.rec_passes.items()
            }
            for g in groups:
                g.pred, g.buf = [], []
            task = bar.add(f"sample {sample}", n)
            for s in range(0, n, batch_size):
                bids = ids[s : s + batch_size]
                t0 = _now()
                recs = _take(rec_images, rpos[s : s + batch_size], bids, f"reconstruction (sample {sample})")
                timer["decode"] = timer.get("decode", 0.0) + _now() - t0
                t0 = _now()
                gts = (
                    _take(gt_images, inputs.gt_pos[s : s + batch_size], bids, "ground truth")
                    if plan.pixel
                    else []
                )
                timer["ground_truth"] = timer.get("ground_truth", 0.0) + _now() - t0
                t0 = _now()
                for (gchain, rchain), metrics in plan.pixel.items():
                    g = apply_chain(gts, gchain, dev)
                    r = apply_chain(recs, rchain, dev)
                    done: dict[PixelMetric, np.ndarray] = {}  # protocols that agree share the computation
                    for pname, m in metrics:
                        key = dataclasses.replace(m, note="")
                        if key not in done:
                            done[key] = _pixel_metric(m, g, r).cpu().numpy()
                        pix.setdefault((pname, m.name), []).append(done[key])
                timer["pixel"] = timer.get("pixel", 0.0) + _now() - t0
                for chain, fps in _by_chain(plan.rec_passes).items():
                    t0 = _now()
                    x = apply_chain(recs, chain, dev)
                    timer["resize"] = timer.get("resize", 0.0) + _now() - t0
                    for fp in fps:
                        fwd[fp].push(x)
                for g in groups:
                    g.buf.extend(_encoder_input(recs, g.chain))
                    while len(g.buf) >= chunk:
                        g.pred.append(_predict(g.target, g.buf[:chunk], timer))
                        g.buf = g.buf[chunk:]
                bar.advance(task, len(bids))
            rec_feats = {fp: f.finish() for fp, f in fwd.items()}
            t0 = _now()
            for (pname, mname), vals in pix.items():
                rows.extend(
                    (pname, int(i), sample, mname, float(v)) for i, v in zip(ids, np.concatenate(vals))
                )
            for pname, m, gp, rp in plan.features:
                gfe, rfe = gt_feats[gp][m.layer], rec_feats[rp][m.layer]
                if m.statistic == "2way-pearson":
                    vals = identification.two_way(gfe, rfe)
                elif m.statistic == "correlation-distance":
                    vals = distances.correlation_distance(gfe, rfe)
                else:
                    vals = distances.cosine(gfe, rfe)
                rows.extend(
                    (pname, int(i), sample, m.name, float(v)) for i, v in zip(ids, vals.cpu().numpy())
                )
            for g in groups:
                if g.buf:
                    g.pred.append(_predict(g.target, g.buf, timer))
                pred = np.concatenate(g.pred)
                if pred.shape != g.measured.shape:
                    raise InvalidSubmission(
                        f"brain target predicted shape {pred.shape}, measured betas have {g.measured.shape}"
                    )
                bc = _brain_correlation(pred, g.measured, g.target.rois)
                for pname, m in g.metrics:
                    if m.name in bc:
                        rows.extend(
                            (pname, int(i), sample, m.name, float(v)) for i, v in zip(ids, bc[m.name])
                        )
            timer["statistics"] = timer.get("statistics", 0.0) + _now() - t0

    return {
        p.name: _result(
            p,
            [r[1:] for r in rows if r[0] == p.name],
            mode,
            dev,
            flags,
            net_info,
            plan,
            chunk,
            [g for g in groups if any(pname == p.name for pname, _ in g.metrics)],
            n,
            len(inputs.samples),
        )
        for p in protos
    }


def metric_features(
    metric: FeatureMetric,
    images: Sequence[np.ndarray] | np.ndarray,
    side: str = "gt",
    weights_mode: str = "pretrained",
    device: str = "cpu",
) -> np.ndarray:
    """The raw layer features (N, D) float32 that score() computes for one side ("gt" or "rec") of a
    feature metric: same chain, normalization, precision, TF32 flags and fixed forward chunks."""
    if side not in ("gt", "rec"):
        raise UsageError(f"side must be 'gt' or 'rec' (got {side!r})")
    mode = weights_mode_checked(weights_mode)
    dev = _resolve_device(device)
    version = metric.weights if mode == "pretrained" else "-"
    net = get_network(metric.network, version, mode, metric.precision, dev)
    chunk = FORWARD_BATCH["cuda" if dev.startswith("cuda") else "cpu"]
    chain = metric.gt_chain if side == "gt" else metric.rec_chain
    fwd = _Forwarder(net, (metric.layer,), chunk, metric.normalize, {}, metric.tf32, bool(metric.tf32_conv))
    items = [_check_image(im, side, k) for k, im in enumerate(images)]
    with deterministic_mode(dev):
        for s in range(0, len(items), 32):
            fwd.push(apply_chain(items[s : s + 32], chain, dev))
        return fwd.finish()[metric.layer].cpu().numpy()


def weights_mode_checked(mode: str) -> str:
    return weights_mod.check_mode(mode)


def _by_chain(passes) -> dict[Chain, list[FeaturePass]]:
    out: dict[Chain, list[FeaturePass]] = {}
    for fp in passes:
        out.setdefault(fp.chain, []).append(fp)
    return out


@dataclass
class _BrainGroup:
    """Brain metrics that share an encoder, its input chain and the beta normalization."""

    target: Any
    chain: Chain
    measured: np.ndarray
    metrics: list[tuple[str, BrainMetric]]
    pred: list[np.ndarray] = dataclasses.field(default_factory=list)
    buf: list[np.ndarray] = dataclasses.field(default_factory=list)


def _brain_groups(metrics: list[tuple[str, BrainMetric]], brain: Any, ids: np.ndarray) -> list[_BrainGroup]:
    """One group per (encoder, beta normalization, encoder input); the target is asked for the encoder a
    metric names (BrainTarget.for_encoder) when it can provide it, else used as given."""
    groups: dict[tuple, _BrainGroup] = {}
    for pname, m in metrics:
        key = (m.encoder_name, m.betas, m.encoder_input or ())
        if key not in groups:
            pick = getattr(brain, "for_encoder", None)
            target = pick(m.encoder_name, m.betas) if pick else brain
            missing = [int(i) for i in ids if int(i) not in target.measured]
            if missing:
                raise InvalidSubmission(f"brain target has no measured betas for nsd_id {missing[0]}")
            measured = np.stack([np.asarray(target.measured[int(i)], dtype=np.float64) for i in ids])
            groups[key] = _BrainGroup(target, m.encoder_input or (), measured, [])
        groups[key].metrics.append((pname, m))
    return list(groups.values())


def _encoder_input(images: list[np.ndarray], chain: Chain) -> list[np.ndarray]:
    """The reconstruction as the encoder receives it: through `chain`, then uint8 HxWx3 as torchvision's
    ToPILImage makes it from a float tensor (x * 255, truncated)."""
    if not chain:
        return images
    x = apply_chain(images, chain, "cpu")
    if x.dtype != torch.uint8:
        x = x.mul(255).to(torch.uint8)
    return list(x.permute(0, 2, 3, 1).contiguous().numpy())


def _predict(brain, images: list[np.ndarray], timer: dict[str, float]) -> np.ndarray:
    t0 = _now()
    shapes = {im.shape for im in images}
    batch = np.stack(images) if len(shapes) == 1 else images
    out = np.asarray(brain.predict(batch), dtype=np.float64)
    timer["brain"] = timer.get("brain", 0.0) + _now() - t0
    if out.ndim != 2 or out.shape[0] != len(images):
        raise InvalidSubmission(f"brain target predict returned shape {out.shape} for {len(images)} images")
    return out


def _pixel_metric(m: PixelMetric, g: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    gf = to_float(g, torch.float64)
    rf = to_float(r, torch.float64)
    if gf.shape != rf.shape:
        raise UsageError(
            f"protocol metric {m.name}: its resize chains give different sizes {tuple(gf.shape)} vs {tuple(rf.shape)}"
        )
    if m.color == "gray":
        gf, rf = pixel.rgb2gray(gf), pixel.rgb2gray(rf)
    if m.kind == "pearson":
        return pixel.pixcorr(gf, rf)
    dr: float | torch.Tensor = pixel.gt_range(gf) if m.data_range == "gt-range" else 1.0
    fn = pixel.ssim_2d if m.kind == "ssim-2d" else pixel.ssim_columnwise
    return fn(rf, gf, dr, m.sample_covariance, m.sigma, m.truncate, m.k1, m.k2)


def _result(
    p: Protocol, rows, mode, dev, flags, net_info, plan: _Plan, chunk, brain, n, n_samples
) -> ScoreResult:
    per_sample = pd.DataFrame(rows, columns=["nsd_id", "sample", "metric", "value"])
    per_sample["_o"] = per_sample["metric"].map(order_key)
    per_sample = per_sample.sort_values(["_o", "nsd_id", "sample"]).drop(columns="_o").reset_index(drop=True)
    per_image = per_sample.groupby(["metric", "nsd_id"], sort=False, as_index=False)["value"].mean()
    per_image = per_image[["nsd_id", "metric", "value"]]
    set_scores = {
        m: float(per_image.loc[per_image["metric"] == m, "value"].mean())
        for m in METRIC_ORDER
        if m in set(per_image["metric"])
    }
    used = {
        f"{m.network}:{(m.weights if mode == 'pretrained' else '-')}:{m.precision}"
        for m in p.metrics
        if isinstance(m, FeatureMetric)
    }
    import PIL
    import torchvision

    prov = {
        "protocol": p.name,
        "protocol_version": p.version,
        "protocol_hash": p.hash,
        "protocol_identity": p.identity,
        "split": p.split,
        "weights_mode": mode,
        "smoke": weights_mod.is_smoke(mode),
        "networks": {k: v for k, v in net_info.items() if k in used},
        "precision": {
            "pixel": "float64",
            "statistics": "float64",
            **flags,
            "tf32_feature_matmul_cuda": any(getattr(m, "tf32", False) for m in p.metrics),
            "tf32_feature_conv_cuda": any(bool(getattr(m, "tf32_conv", False)) for m in p.metrics),
        },
        "forward_batch": chunk,
        "device": dev,
        "device_name": torch.cuda.get_device_name(dev) if dev.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "n_images": n,
        "n_samples": n_samples,
        "metrics": list(set_scores),
        "brain": None
        if not brain
        else {
            "type": type(brain[0].target).__name__,
            "info": getattr(brain[0].target, "info", None) or getattr(brain[0].target, "provenance", None),
            "encoders": [
                {
                    "encoder": m.encoder_name,
                    "beta_normalization": m.betas,
                    "info": getattr(g.target, "info", None),
                }
                for g in brain
                for m in [g.metrics[0][1]]
            ],
        },
    }
    return ScoreResult(per_sample, per_image.reset_index(drop=True), set_scores, prov)


# --------------------------------------------------------------------------- progress


class _NoBar:
    def add(self, *_a, **_k):
        return None

    def advance(self, *_a, **_k):
        return None

    def skip(self, *_a, **_k):
        return None


class _RichBar(_NoBar):
    def __init__(self, progress) -> None:
        self.p = progress

    def add(self, desc: str, total: int):
        return self.p.add_task(desc, total=total)

    def advance(self, task, k: int) -> None:
        self.p.advance(task, k)


class _CallbackBar(_NoBar):
    """Sums every stage's images into one (done, total) count for a caller's own progress display."""

    def __init__(self, fn: Callable[[int, int], None], total: int) -> None:
        self.fn, self.total, self.done = fn, total, 0
        fn(0, total)

    def advance(self, _task, k: int) -> None:
        self.done += k
        self.fn(self.done, self.total)

    def skip(self, k: int) -> None:
        self.advance(None, k)


@contextlib.contextmanager
def _progress(progress: ProgressArg, total: int):
    if callable(progress):
        yield _CallbackBar(progress, total)
        return
    if not progress:
        yield _NoBar()
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=False) as prog:
        yield _RichBar(prog)
