"""The three metric kinds, each owning its computation and its statistic: pixel metrics on resized image
pairs, feature metrics on network features (one pass per network and preprocessing, shared by every
metric and protocol that agrees on it), brain correlation on encoder predictions.

The engine drives every kind through the same steps (see MetricKind) and never asks which kind it
holds; KINDS maps a metric class of the protocol table to the kind that computes it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from nsdbench.errors import InvalidSubmission
from nsdbench.metrics import distances, features_cache, identification
from nsdbench.metrics.forward import (
    ChunkedForward,
    FeaturePass,
    device_type,
    feature_pass,
    forward_batch,
)
from nsdbench.metrics.image_batches import ChainRequest, ImageBatch
from nsdbench.metrics.networks import FeatureNetwork, get_network, pretrained_sha256
from nsdbench.metrics.pixel import pixel_metric_values
from nsdbench.metrics.protocols import BrainMetric, Chain, FeatureMetric, Metric, PixelMetric
from nsdbench.stage_times import Timings, add, stage

Values = tuple[str, str, np.ndarray, np.ndarray]  # protocol, metric, nsd_ids, per-image values


@dataclass
class ScoringContext:
    """What every kind shares during one scoring call."""

    mode: str  # weights mode
    device: str
    ids: np.ndarray  # canonical order (ascending NSD id)
    scopes: dict[str, np.ndarray]  # protocol -> bool mask over ids: the rows it scores
    cache: bool
    timings: Timings | None
    gt_content: Callable[[np.ndarray], str]  # sha256 of the ground-truth images under a mask
    brain: Callable[[str], Any]  # protocol -> brain target (None: no brain correlation)
    _networks: dict[tuple, FeatureNetwork] = field(default_factory=dict)
    _building: dict[tuple, Future[FeatureNetwork]] = field(default_factory=dict)
    _builder: ThreadPoolExecutor | None = None

    def scope_key(self, protocol: str) -> bytes:
        return self.scopes[protocol].tobytes()

    def start_networks(self, passes: Iterable[FeaturePass]) -> None:
        """Start building the networks of `passes`, in order, on one background thread, so that reading,
        decoding and resizing the first images and the pixel metrics go on meanwhile. Pretrained
        networks only: random and tiny ones are drawn from the process's random state, and are
        built when first needed, on the caller's thread."""
        if self.mode != "pretrained":
            return
        device = self.device
        if device_type(device) == "cuda" and ":" not in device:  # the caller's current GPU, not the thread's
            device = f"cuda:{torch.cuda.current_device()}"
        for fp in passes:
            key = (fp.network, fp.weights, fp.precision)
            if key in self._networks or key in self._building:
                continue
            pretrained_sha256(fp.network, fp.weights)  # a missing weights file fails now, not later
            if self._builder is None:
                self._builder = ThreadPoolExecutor(1, thread_name_prefix="nsdbench-networks")
            self._building[key] = self._builder.submit(
                get_network, fp.network, fp.weights, self.mode, fp.precision, device
            )

    def network(self, fp: FeaturePass) -> FeatureNetwork:
        """The built network of a pass (waiting for its background build, if one was started)."""
        key = (fp.network, fp.weights, fp.precision)
        if key not in self._networks:
            with stage(self.timings, "networks"):
                building = self._building.pop(key, None)
                self._networks[key] = (
                    building.result()
                    if building is not None
                    else get_network(fp.network, fp.weights, self.mode, fp.precision, self.device)
                )
        return self._networks[key]

    def network_sha256(self, fp: FeaturePass) -> str:
        """A pass's network identity, without waiting for its build when the weights are pretrained."""
        if self.mode == "pretrained":
            return pretrained_sha256(fp.network, fp.weights)
        return self.network(fp).sha256

    def close(self) -> None:
        """Stop the background builds (one already running finishes)."""
        if self._builder is not None:
            self._builder.shutdown(wait=True, cancel_futures=True)
            self._builder = None
        self._building.clear()


class MetricKind(Protocol):
    """The steps the engine runs for each kind, in this order."""

    def has_ground_truth_pass(self) -> bool: ...
    def ground_truth_requests(self) -> set[ChainRequest]: ...  # views of a ground-truth pass (may be none)
    def add_ground_truth(self, batch: ImageBatch) -> None: ...
    def finish_ground_truth(self) -> None: ...
    def sample_requests(self) -> set[ChainRequest]: ...  # views each sample set's pass needs
    def start_sample(self) -> None: ...
    def add_batch(self, batch: ImageBatch) -> None: ...
    def finish_sample(self) -> None: ...
    def statistics(self) -> Iterator[Values]: ...  # per-image values of the sample set just passed
    def provenance(self, protocol: str) -> dict[str, Any]: ...


class NoGroundTruthPass:
    """The ground-truth steps of a kind that reads ground truth only beside each sample set (pixel, brain)."""

    def has_ground_truth_pass(self) -> bool:
        return False

    def ground_truth_requests(self) -> set[ChainRequest]:
        return set()

    def add_ground_truth(self, batch: ImageBatch) -> None:
        pass

    def finish_ground_truth(self) -> None:
        pass


# --------------------------------------------------------------------------- pixel


class PixelKind(NoGroundTruthPass):
    """PixCorr and SSIM variants in float64; protocols that agree on a metric share its computation."""

    def __init__(self, entries: list[tuple[str, PixelMetric]], ctx: ScoringContext) -> None:
        self.ctx = ctx
        self.groups: dict[tuple[Chain, Chain], list[tuple[str, PixelMetric]]] = {}
        for pname, m in entries:
            self.groups.setdefault((m.gt_chain, m.rec_chain), []).append((pname, m))
        self.values: dict[tuple[str, str], list[np.ndarray]] = {}

    def sample_requests(self) -> set[ChainRequest]:
        dev = self.ctx.device
        return {ChainRequest(side, c, dev) for g, r in self.groups for side, c in (("gt", g), ("rec", r))}

    def start_sample(self) -> None:
        self.values = {}

    def add_batch(self, batch: ImageBatch) -> None:
        dev = self.ctx.device
        with stage(self.ctx.timings, "pixel"):
            for (gchain, rchain), metrics in self.groups.items():
                g, r = batch.view("gt", gchain, dev), batch.view("rec", rchain, dev)
                done: dict[PixelMetric, np.ndarray] = {}
                for pname, m in metrics:
                    key = dataclasses.replace(m, note="")
                    if key not in done:
                        done[key] = pixel_metric_values(m, g, r).cpu().numpy()
                    self.values.setdefault((pname, m.name), []).append(done[key])

    def finish_sample(self) -> None:
        pass

    def statistics(self) -> Iterator[Values]:
        for (pname, name), vals in self.values.items():
            mask = self.ctx.scopes[pname]
            yield pname, name, self.ctx.ids[mask], np.concatenate(vals)[mask]

    def provenance(self, protocol: str) -> dict[str, Any]:
        return {}


# --------------------------------------------------------------------------- features


def float64_device(device: torch.device) -> torch.device:
    """Where float64 statistics run: the features' device, or the CPU where float64 is missing (MPS)."""
    return torch.device("cpu") if device.type == "mps" else device


# statistic name -> (ground-truth features, reconstruction features) -> (N,) per-image float64 values
FEATURE_STATISTICS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "2way-pearson": identification.two_way,
    "correlation-distance": distances.correlation_distance,
    "cosine": distances.cosine,
}


class FeatureKind:
    """Network features: ground-truth passes once (or from the disk cache), one reconstruction pass per
    sample set, then the metric's statistic over the protocol's rows.

    A pass runs over the union of the rows of every protocol that needs it (nsd897 inside nsd982): an
    image's features depend only on the image, since chunks have a fixed size and each row of a chunk is
    computed independently of the others (tests/test_feature_passes.py checks this for every network)."""

    def __init__(self, entries: list[tuple[str, FeatureMetric]], ctx: ScoringContext) -> None:
        self.ctx = ctx
        self.metrics: list[tuple[str, FeatureMetric, FeaturePass, FeaturePass]] = []
        self.gt_layers: dict[FeaturePass, set[str]] = {}
        self.rec_layers: dict[FeaturePass, set[str]] = {}
        self.gt_rows: dict[FeaturePass, np.ndarray] = {}  # bool over ctx.ids: the union of its scopes
        self.rec_rows: dict[FeaturePass, np.ndarray] = {}
        for pname, m in entries:
            version = m.weights if ctx.mode == "pretrained" else "-"
            gp = feature_pass(m, m.gt_chain, version, ctx.device)
            rp = dataclasses.replace(gp, chain=m.rec_chain)
            scope = ctx.scopes[pname]
            for layers, rows, fp in (
                (self.gt_layers, self.gt_rows, gp),
                (self.rec_layers, self.rec_rows, rp),
            ):
                layers.setdefault(fp, set()).add(m.layer)
                rows[fp] = rows[fp] | scope if fp in rows else scope.copy()
            self.metrics.append((pname, m, gp, rp))
        ctx.start_networks([*self.gt_layers, *self.rec_layers])
        self.gt_feats: dict[FeaturePass, dict[str, torch.Tensor]] = {}
        self.rec_feats: dict[FeaturePass, dict[str, torch.Tensor]] = {}
        self.todo: dict[FeaturePass, str] = {}
        self.passes: dict[FeaturePass, tuple[set[str], np.ndarray]] = {}  # the side's passes: layers, rows
        self.forwards: dict[FeaturePass, ChunkedForward] = {}  # made at a pass's first images

    def _chunk(self, fp: FeaturePass) -> int:
        return forward_batch(self.ctx.device, fp.network)

    def _forward(self, fp: FeaturePass) -> ChunkedForward:
        """The pass's chunked forward, made when its first images arrive (its network may still have
        been building until then)."""
        if fp not in self.forwards:
            layers = tuple(sorted(self.passes[fp][0]))
            net = self.ctx.network(fp)
            self.forwards[fp] = ChunkedForward(net, layers, self._chunk(fp), fp, self.ctx.timings)
        return self.forwards[fp]

    def _finish(self) -> dict[FeaturePass, dict[str, torch.Tensor]]:
        feats = {fp: self._forward(fp).finish() for fp in self.passes}
        self.passes, self.forwards = {}, {}
        return feats

    def _cache_part(self, fp: FeaturePass) -> dict[str, Any]:
        layers = sorted(self.gt_layers[fp])
        return fp.part(layers, self.ctx.mode, self._chunk(fp), device_type(self.ctx.device))

    def has_ground_truth_pass(self) -> bool:
        return bool(self.gt_layers)

    def ground_truth_requests(self) -> set[ChainRequest]:
        ctx = self.ctx
        for fp, layers in self.gt_layers.items():
            cache_key = ""
            if ctx.cache:
                rows = self.gt_rows[fp]
                cache_key = features_cache.cache_key(
                    self._cache_part(fp), ctx.network_sha256(fp), ctx.ids[rows].tolist(), ctx.gt_content(rows)
                )
                hit = features_cache.load(cache_key, sorted(layers))
                if hit is not None:
                    self.gt_feats[fp] = {k: torch.from_numpy(v).to(ctx.device) for k, v in hit.items()}
                    continue
            self.todo[fp] = cache_key
        self.passes = {fp: (self.gt_layers[fp], self.gt_rows[fp]) for fp in self.todo}
        return {ChainRequest("gt", fp.chain, ctx.device) for fp in self.todo}

    def _push(self, batch: ImageBatch, side: str) -> None:
        for fp, (_layers, rows) in self.passes.items():
            sel = rows[batch.rows]
            if not sel.any():
                continue
            x = batch.view(side, fp.chain, self.ctx.device)
            self._forward(fp).push(x if sel.all() else x[torch.from_numpy(sel).to(x.device)])

    def add_ground_truth(self, batch: ImageBatch) -> None:
        self._push(batch, "gt")

    def finish_ground_truth(self) -> None:
        self.gt_feats.update(self._finish())
        for fp, cache_key in self.todo.items():
            if cache_key:
                features_cache.save(
                    cache_key,
                    {k: v.cpu().numpy() for k, v in self.gt_feats[fp].items()},
                    {"pass": self._cache_part(fp), "n": int(self.gt_rows[fp].sum())},
                )

    def sample_requests(self) -> set[ChainRequest]:
        return {ChainRequest("rec", fp.chain, self.ctx.device) for fp in self.rec_layers}

    def start_sample(self) -> None:
        self.passes = {fp: (layers, self.rec_rows[fp]) for fp, layers in self.rec_layers.items()}

    def add_batch(self, batch: ImageBatch) -> None:
        self._push(batch, "rec")

    def finish_sample(self) -> None:
        self.rec_feats = self._finish()

    def statistics(self) -> Iterator[Values]:
        for pname, m, gp, rp in self.metrics:
            scope = self.ctx.scopes[pname]
            gfe = _rows_of(self.gt_feats[gp][m.layer], scope, self.gt_rows[gp])
            rfe = _rows_of(self.rec_feats[rp][m.layer], scope, self.rec_rows[rp])
            where = float64_device(gfe.device)
            vals = FEATURE_STATISTICS[m.statistic](gfe.to(where), rfe.to(where))
            yield pname, m.name, self.ctx.ids[scope], vals.cpu().numpy()

    def provenance(self, protocol: str) -> dict[str, Any]:
        nets = {}
        for pname, _m, fp, _ in self.metrics:
            if pname != protocol:
                continue
            net = self.ctx.network(fp)
            nets[f"{fp.network}:{fp.weights}:{fp.precision}"] = {
                "network": fp.network,
                "weights": fp.weights,
                "mode": self.ctx.mode,
                "artifact": net.artifact,
                "sha256": net.sha256,
                "precision": fp.precision,
            }
        batches = {fp.network: forward_batch(self.ctx.device, fp.network) for _, _, fp, _ in self.metrics}
        used = {n.split(":")[0] for n in nets}
        return {"networks": nets, "forward_batch": {k: v for k, v in sorted(batches.items()) if k in used}}


def _rows_of(feats: torch.Tensor, scope: np.ndarray, rows: np.ndarray) -> torch.Tensor:
    """The rows of `scope` out of features computed over `rows` (a superset of it, in the same order)."""
    keep = scope[rows]
    return feats if keep.all() else feats[torch.from_numpy(keep).to(feats.device)]


# --------------------------------------------------------------------------- brain


@dataclass
class BrainGroup:
    """Brain metrics that share an encoder, its input chain, the beta normalization and the rows."""

    target: Any
    chain: Chain
    mask: np.ndarray
    measured: np.ndarray
    metrics: list[tuple[str, BrainMetric]]
    pred: list[np.ndarray] = field(default_factory=list)
    buf: list[np.ndarray] = field(default_factory=list)


def encoder_input(x: torch.Tensor) -> list[np.ndarray]:
    """A resized batch as the encoder receives it: uint8 HxWx3, made from a float tensor as torchvision's
    ToPILImage does (x * 255, truncated)."""
    if x.dtype != torch.uint8:
        x = x.mul(255).to(torch.uint8)
    return list(x.permute(0, 2, 3, 1).contiguous().numpy())


class BrainKind(NoGroundTruthPass):
    """Encoder predictions for the reconstructions, correlated with the measured betas per ROI."""

    def __init__(self, entries: list[tuple[str, BrainMetric]], ctx: ScoringContext) -> None:
        self.ctx = ctx
        self.chunk = forward_batch(ctx.device)
        groups: dict[tuple, BrainGroup] = {}
        for pname, m in entries:
            brain = ctx.brain(pname)
            if brain is None:
                continue
            key = (id(brain), m.encoder_name, m.betas, m.encoder_input or (), ctx.scope_key(pname))
            if key not in groups:
                pick = getattr(brain, "for_encoder", None)
                target = pick(m.encoder_name, m.betas) if pick else brain
                mask = ctx.scopes[pname]
                ids = ctx.ids[mask]
                missing = [int(i) for i in ids if int(i) not in target.measured]
                if missing:
                    raise InvalidSubmission(f"brain target has no measured betas for nsd_id {missing[0]}")
                measured = np.stack([np.asarray(target.measured[int(i)], dtype=np.float64) for i in ids])
                groups[key] = BrainGroup(target, m.encoder_input or (), mask, measured, [])
            groups[key].metrics.append((pname, m))
        self.groups = list(groups.values())

    def sample_requests(self) -> set[ChainRequest]:
        return {ChainRequest("rec", g.chain, "cpu") for g in self.groups if g.chain}

    def start_sample(self) -> None:
        for g in self.groups:
            g.pred, g.buf = [], []

    def _predict(self, g: BrainGroup, images: list[np.ndarray]) -> None:
        t0 = time.perf_counter()
        batch = np.stack(images) if len({im.shape for im in images}) == 1 else images
        out = np.asarray(g.target.predict(batch), dtype=np.float64)
        add(self.ctx.timings, "brain", time.perf_counter() - t0)
        if out.ndim != 2 or out.shape[0] != len(images):
            raise InvalidSubmission(
                f"brain target predict returned shape {out.shape} for {len(images)} images"
            )
        g.pred.append(out)

    def add_batch(self, batch: ImageBatch) -> None:
        for g in self.groups:
            sel = g.mask[batch.rows]
            images = batch.rec if not g.chain else encoder_input(batch.view("rec", g.chain, "cpu"))
            g.buf.extend(im for im, keep in zip(images, sel) if keep)
            while len(g.buf) >= self.chunk:
                self._predict(g, g.buf[: self.chunk])
                g.buf = g.buf[self.chunk :]

    def finish_sample(self) -> None:
        for g in self.groups:
            if g.buf:
                self._predict(g, g.buf)
                g.buf = []

    def statistics(self) -> Iterator[Values]:
        from nsdbench.metrics.brain import brain_correlation

        for g in self.groups:
            pred = np.concatenate(g.pred)
            if pred.shape != g.measured.shape:
                raise InvalidSubmission(
                    f"brain target predicted shape {pred.shape}, measured betas have {g.measured.shape}"
                )
            bc = brain_correlation(pred, g.measured, g.target.rois)
            ids = self.ctx.ids[g.mask]
            for pname, m in g.metrics:
                if m.name in bc:
                    yield pname, m.name, ids, bc[m.name]

    def provenance(self, protocol: str) -> dict[str, Any]:
        groups = [g for g in self.groups if any(pname == protocol for pname, _ in g.metrics)]
        if not groups:
            return {"brain": None}
        first = groups[0].target
        return {
            "brain": {
                "type": type(first).__name__,
                "info": getattr(first, "info", None) or getattr(first, "provenance", None),
                "encoders": [
                    {
                        "encoder": m.encoder_name,
                        "beta_normalization": m.betas,
                        "info": getattr(g.target, "info", None),
                    }
                    for g in groups
                    for m in [g.metrics[0][1]]
                ],
            }
        }


KINDS: dict[type, Callable[[list[tuple[str, Any]], ScoringContext], MetricKind]] = {
    PixelMetric: PixelKind,
    FeatureMetric: FeatureKind,
    BrainMetric: BrainKind,
}


def build_kinds(entries: list[tuple[str, Metric]], ctx: ScoringContext) -> list[MetricKind]:
    """One kind object per metric class present, in the order of KINDS."""
    by_class: dict[type, list[tuple[str, Metric]]] = {}
    for pname, m in entries:
        by_class.setdefault(type(m), []).append((pname, m))
    return [make(by_class[cls], ctx) for cls, make in KINDS.items() if cls in by_class]
