"""Feature passes shared between protocols: one pass serves every protocol that agrees on it, whatever
rows each scores. This relies on an image's features depending on the image alone, not on the other
images of its fixed-size chunk; the first tests check that for every metric network."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from nsdbench.metrics import engine
from nsdbench.metrics.networks import FeatureNetwork
from nsdbench.metrics.protocols import FeatureMetric, PixelMetric, Protocol, ResizeStep

B64 = (ResizeStep("pil", "bilinear", 64),)
CLIP224 = (ResizeStep("pil", "bilinear", 224),)
T48 = (ResizeStep("torch", "bilinear", 48, antialias=True),)


def _metric(network: str, layer: str, chain=B64, precision: str = "fp32") -> FeatureMetric:
    norm = "clip" if network == "clip_vit_l14" else "imagenet"
    return FeatureMetric(network, network, "-", layer, chain, chain, norm, precision=precision)


NETWORK_METRICS = [
    _metric("alexnet", "features.4"),
    _metric("alexnet", "classifier.5"),
    _metric("inception_v3", "avgpool"),
    _metric("efficientnet_b1", "avgpool"),
    _metric("swav_resnet50", "avgpool"),
    _metric("clip_vit_l14", "visual", CLIP224),
    _metric("clip_vit_l14", "visual", CLIP224, "fp16-openai"),
]


def _images(n: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _neighbours_do_not_matter(metric: FeatureMetric, mode: str, n: int, device: str = "cpu") -> None:
    """n images scored alone, then shuffled among as many others (other chunk positions, other
    neighbours, other padding): every image's features are bit-identical."""
    mine, others = _images(n, 72, 0), _images(n, 72, 1)
    alone = engine.metric_features(metric, mine, "gt", mode, device)
    mixed = np.concatenate([others, mine])
    order = np.random.default_rng(2).permutation(len(mixed))
    feats = engine.metric_features(metric, mixed[order], "gt", mode, device)
    where = np.argsort(order)[len(others) :]  # where each of `mine` went
    assert feats[where].shape == alone.shape
    assert np.array_equal(feats[where], alone), f"{metric.network} {metric.layer} {metric.precision}"


@pytest.mark.parametrize("metric", NETWORK_METRICS, ids=lambda m: f"{m.network}-{m.layer}-{m.precision}")
def test_an_images_features_do_not_depend_on_its_chunk(metric: FeatureMetric) -> None:
    _neighbours_do_not_matter(metric, "tiny", 11)


DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")),
]


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("metric", NETWORK_METRICS, ids=lambda m: f"{m.network}-{m.layer}-{m.precision}")
def test_an_images_features_do_not_depend_on_its_chunk_full_size(metric: FeatureMetric, device: str) -> None:
    """The same with the full-size architectures (seeded random weights) at 224 px: the kernels of real
    width and size; on a GPU, with its own chunk sizes."""
    _neighbours_do_not_matter(dataclasses.replace(metric, gt_chain=CLIP224), "random", 5, device)


@pytest.mark.parametrize(
    "metric", NETWORK_METRICS[:2] + NETWORK_METRICS[5:6], ids=lambda m: m.network + m.layer
)
def test_tf32_flags_change_no_cpu_feature(metric: FeatureMetric) -> None:
    """Why a pass's identity leaves the TF32 flags out off CUDA: on the CPU, features computed with both
    flags on equal those with both off, bit for bit (convolutions, linear layers, attention)."""
    from nsdbench.metrics.forward import ChunkedForward, FeaturePass
    from nsdbench.metrics.networks import get_network
    from nsdbench.metrics.resize import apply_chain

    net = get_network(metric.network, "-", "tiny")
    x = apply_chain(list(_images(8, 72, 4)), metric.gt_chain, "cpu")
    feats = []
    for on in (True, False):
        fp = FeaturePass(metric.network, "-", "fp32", metric.normalize, metric.gt_chain, on, on)
        fwd = ChunkedForward(net, (metric.layer,), 8, fp, None)
        fwd.push(x)
        feats.append(fwd.finish()[metric.layer])
    assert torch.equal(*feats)


SMALL = Protocol(
    "test-share",
    "0",
    "",
    "nsd982",
    "nsd-ascending",
    (
        PixelMetric("pixcorr", B64, B64, "rgb", "pearson"),
        FeatureMetric("alexnet2", "alexnet", "IMAGENET1K_V1", "features.4", B64, B64, "imagenet"),
        FeatureMetric("inception", "inception_v3", "IMAGENET1K_V1", "avgpool", B64, T48, "imagenet"),
        FeatureMetric(
            "swav", "swav_resnet50", "800ep", "avgpool", B64, B64, "clip", statistic="correlation-distance"
        ),
    ),
)


@pytest.fixture
def chunk_counter(monkeypatch):
    """Counts the forward chunks each network runs (a spy around the real forward pass)."""
    counts: dict[str, int] = {}
    real = FeatureNetwork.features

    def counted(self, x, layers):
        counts[self.key.network] = counts.get(self.key.network, 0) + 1
        return real(self, x, layers)

    monkeypatch.setattr(FeatureNetwork, "features", counted)
    return counts


def _score(protocols, ids, gt, rec, protocol_ids=None):
    zeros = np.zeros(len(ids), int)
    return engine.score_reconstructions_by_protocol(
        ids, gt, ids, zeros, rec, protocols, engine.ScoreOptions("tiny", cache=False),
        protocol_ids=protocol_ids,
    )  # fmt: skip


def test_one_pass_serves_nested_splits_and_cpu_tf32_variants(chunk_counter) -> None:
    """A protocol on a subset of the ids, and one that differs only in TF32 flags (which change nothing
    off CUDA), add no forward pass to the wide protocol's; each still gets exactly its separate values."""
    ids = np.array([3, 11, 25, 40, 57, 61, 70, 88, 93, 120, 150])
    gt = _images(len(ids), 40, 0)
    rec = np.clip(gt.astype(int) + np.random.default_rng(1).integers(-60, 60, gt.shape), 0, 255).astype(
        np.uint8
    )
    narrow = dataclasses.replace(SMALL, name="test-share-narrow", split="nsd897")
    tf32 = dataclasses.replace(
        SMALL,
        name="test-share-tf32",
        metrics=tuple(
            dataclasses.replace(m, tf32=True, tf32_conv=True) if isinstance(m, FeatureMetric) else m
            for m in SMALL.metrics
        ),
    )
    subset = [11, 40, 61, 88, 150]
    wide = _score([SMALL], ids, gt, rec)["test-share"]
    alone_counts = dict(chunk_counter)
    assert alone_counts == {"alexnet": 4, "inception_v3": 4, "swav_resnet50": 4}  # gt + rec, 11 ids in 8s
    chunk_counter.clear()
    together = _score([SMALL, narrow, tf32], ids, gt, rec, protocol_ids={narrow.name: subset})
    assert chunk_counter == alone_counts

    keep = np.isin(ids, subset)
    narrow_alone = _score([narrow], ids[keep], gt[keep], rec[keep])[narrow.name]
    tf32_alone = _score([tf32], ids, gt, rec)[tf32.name]
    check = {"check_exact": True}
    pd.testing.assert_frame_equal(together["test-share"].per_sample, wide.per_sample, **check)
    pd.testing.assert_frame_equal(together[narrow.name].per_sample, narrow_alone.per_sample, **check)
    pd.testing.assert_frame_equal(together[tf32.name].per_sample, tf32_alone.per_sample, **check)
    assert together[narrow.name].per_sample["nsd_id"].unique().tolist() == subset
