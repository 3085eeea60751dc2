"""The scoring engine: invariances, multiple samples, brain correlation, cache, provenance, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nsdbench.errors import InvalidSubmission, UsageError
from nsdbench.metrics import engine
from nsdbench.metrics.protocols import BrainMetric, FeatureMetric, PixelMetric, Protocol, ResizeStep

P64 = (ResizeStep("pil", "bicubic", 64),)
B64 = (ResizeStep("pil", "bilinear", 64),)
T48 = (ResizeStep("torch", "bilinear", 48, antialias=True),)
PT64 = (ResizeStep("pil", "bicubic", 80), ResizeStep("torch", "bilinear", 64, antialias=True))

# A small protocol (64 px) so the invariance tests run in seconds; shipped protocols are covered by
# tests/test_metrics_fidelity.py.
SMALL = Protocol(
    name="test-small",
    version="0",
    description="small test protocol",
    split="nsd982",
    published_order="nsd-ascending",
    metrics=(
        PixelMetric("pixcorr", P64, P64, "rgb", "pearson"),
        PixelMetric("ssim", P64, PT64, "gray", "ssim-2d"),
        FeatureMetric("alexnet2", "alexnet", "IMAGENET1K_V1", "features.4", B64, B64, "imagenet"),
        FeatureMetric("alexnet7", "alexnet", "IMAGENET1K_V1", "classifier.5", B64, B64, "imagenet"),
        FeatureMetric("inception", "inception_v3", "IMAGENET1K_V1", "avgpool", B64, T48, "imagenet"),
        FeatureMetric(
            "effnet_b",
            "efficientnet_b1",
            "IMAGENET1K_V1",
            "avgpool",
            B64,
            B64,
            "imagenet",
            statistic="correlation-distance",
        ),
        FeatureMetric(
            "swav", "swav_resnet50", "800ep", "avgpool", B64, B64, "clip", statistic="correlation-distance"
        ),
        BrainMetric("bc_v1", "V1"),
        BrainMetric("bc_nsdgeneral", "nsdgeneral"),
    ),
)


def _images(n, size, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def data():
    ids = np.array([40, 7, 300, 12, 99, 5])
    gt = _images(len(ids), 40, 0)
    rng = np.random.default_rng(1)
    rec0 = np.clip(gt.astype(int) + rng.integers(-60, 60, gt.shape), 0, 255).astype(np.uint8)
    rec1 = _images(len(ids), 40, 2)
    return ids, gt, rec0, rec1


def _score(ids, gt, rec_ids, rec_samples, rec, protocol=SMALL, brain=None, **kw):
    kw.setdefault("weights_mode", "tiny")
    kw.setdefault("cache", False)
    options = engine.ScoreOptions(**kw)
    return engine.score_reconstructions(ids, gt, rec_ids, rec_samples, rec, protocol, options, brain)


def test_batch_size_does_not_change_results(data):
    ids, gt, rec0, _ = data
    a = _score(ids, gt, ids, np.zeros(len(ids), int), rec0, batch_size=1)
    b = _score(ids, gt, ids, np.zeros(len(ids), int), rec0, batch_size=64)
    pd.testing.assert_frame_equal(a.per_sample, b.per_sample, check_exact=True)
    assert set(a.set_scores) == {"pixcorr", "ssim", "alexnet2", "alexnet7", "inception", "effnet_b", "swav"}


def test_input_order_does_not_change_per_id_results(data):
    ids, gt, rec0, _ = data
    a = _score(ids, gt, ids, np.zeros(len(ids), int), rec0, batch_size=4)
    g = np.random.default_rng(5).permutation(len(ids))
    r = np.random.default_rng(6).permutation(len(ids))
    b = _score(ids[g], gt[g], ids[r], np.zeros(len(ids), int), rec0[r], batch_size=3)
    pd.testing.assert_frame_equal(a.per_sample, b.per_sample, check_exact=True)


def test_ground_truth_against_itself(data):
    ids, gt, _, _ = data
    res = _score(ids, gt, ids, np.zeros(len(ids), int), gt, protocol="nsdbench-v1")
    for m in ("pixcorr", "ssim", "alexnet2", "alexnet5", "alexnet7", "inception", "clip_2way", "clip_cos"):
        assert res.set_scores[m] == pytest.approx(1.0, abs=1e-9), m
    for m in ("effnet_b", "swav"):
        assert res.set_scores[m] == pytest.approx(0.0, abs=1e-9), m


def test_samples_scored_as_sets_and_averaged(data):
    ids, gt, rec0, rec1 = data
    n = len(ids)
    both = _score(ids, gt, np.concatenate([ids, ids]), np.repeat([0, 3], n), np.concatenate([rec0, rec1]))
    only0 = _score(ids, gt, ids, np.zeros(n, int), rec0)
    only1 = _score(ids, gt, ids, np.full(n, 3), rec1)
    ps = both.per_sample
    for sample, single in ((0, only0), (3, only1)):
        part = ps[ps["sample"] == sample].reset_index(drop=True)
        pd.testing.assert_frame_equal(part, single.per_sample, check_exact=True)
    mean = ps.groupby(["metric", "nsd_id"])["value"].mean()
    pi = both.per_image.set_index(["metric", "nsd_id"])["value"]
    assert np.allclose(pi.loc[mean.index].to_numpy(), mean.to_numpy(), rtol=0, atol=1e-15)
    for m, v in both.set_scores.items():
        assert v == pytest.approx((only0.set_scores[m] + only1.set_scores[m]) / 2, abs=1e-12)
    assert len(both.per_image) == n * len(both.set_scores)


class PixelEncoder:
    """A real (tiny) brain target: a fixed random linear map from 8x8 pixels to 30 voxels."""

    def __init__(self, ids):
        rng = np.random.default_rng(7)
        self.w = rng.normal(size=(8 * 8 * 3, 30))
        self.measured = {int(i): rng.normal(size=30) for i in ids}
        mask = np.zeros(30, bool)
        mask[:12] = True
        self.rois = {"V1": mask, "nsdgeneral": np.ones(30, bool)}
        self.calls = []

    def predict(self, images):
        images = np.asarray(images)
        self.calls.append(len(images))
        small = images[:, ::5, ::5, :].reshape(len(images), -1) / 255.0
        return small @ self.w


def test_brain_correlation_per_roi(data):
    from nsdbench.metrics.brain import BrainTarget

    ids, gt, rec0, _ = data
    brain = PixelEncoder(ids)
    target = BrainTarget(brain, brain.measured, brain.rois)
    res = _score(ids, gt, ids, np.zeros(len(ids), int), rec0, brain=target, batch_size=4)
    ps = res.per_sample
    pred = brain.predict(rec0)
    for metric, mask in (("bc_v1", brain.rois["V1"]), ("bc_nsdgeneral", brain.rois["nsdgeneral"])):
        got = ps[ps["metric"] == metric].set_index("nsd_id")["value"]
        for k, i in enumerate(ids):
            want = np.corrcoef(pred[k][mask], brain.measured[int(i)][mask])[0, 1]
            assert got[int(i)] == pytest.approx(want, abs=1e-9)
    # without a brain target the brain metrics are simply absent
    assert "bc_v1" not in _score(ids, gt, ids, np.zeros(len(ids), int), rec0).set_scores


def test_ground_truth_features_cached_on_disk(data, nsdbench_home):
    ids, gt, rec0, _ = data
    zeros = np.zeros(len(ids), int)
    first = _score(ids, gt, ids, zeros, rec0, cache=True)
    cached = sorted((nsdbench_home / "cache" / "features").rglob("meta.json"))
    assert cached, "no feature cache written"
    second = _score(ids, gt, ids, zeros, rec0, cache=True)
    pd.testing.assert_frame_equal(first.per_sample, second.per_sample, check_exact=True)
    assert sorted((nsdbench_home / "cache" / "features").rglob("meta.json")) == cached
    changed = gt.copy()
    changed[0, 0, 0, 0] ^= 1  # one pixel of one ground truth: a new key, not a stale hit
    _score(ids, changed, ids, zeros, rec0, cache=True)
    assert len(list((nsdbench_home / "cache" / "features").rglob("meta.json"))) > len(cached)


def test_provenance(data):
    ids, gt, rec0, _ = data
    prov = _score(ids, gt, ids, np.zeros(len(ids), int), rec0).provenance
    assert prov["protocol_hash"] == SMALL.hash and prov["smoke"] is True and prov["weights_mode"] == "tiny"
    assert prov["precision"]["tf32"] is False and prov["precision"]["cudnn_deterministic"] is True
    assert set(prov["networks"]) == {
        "alexnet:-:fp32",
        "inception_v3:-:fp32",
        "efficientnet_b1:-:fp32",
        "swav_resnet50:-:fp32",
    }
    assert all(len(v["sha256"]) == 64 for v in prov["networks"].values())


def test_protocols_scored_together_match_separate_runs(data):
    ids, gt, rec0, _ = data
    zeros = np.zeros(len(ids), int)
    proto2 = Protocol("test-small-2", "0", "", "nsd982", "nsd-ascending", SMALL.metrics[:3])
    together = engine.score_reconstructions_by_protocol(
        ids, gt, ids, zeros, rec0, [SMALL, proto2], engine.ScoreOptions("tiny", cache=False)
    )
    alone = _score(ids, gt, ids, zeros, rec0, protocol=proto2)
    pd.testing.assert_frame_equal(together["test-small-2"].per_sample, alone.per_sample, check_exact=True)


def test_progress_callback_counts_images_to_total(data, nsdbench_home):
    ids, gt, rec0, rec1 = data
    n = len(ids)
    rec_ids, samples, recs = np.concatenate([ids, ids]), np.repeat([0, 1], n), np.concatenate([rec0, rec1])
    quiet = _score(ids, gt, rec_ids, samples, recs, batch_size=4)
    calls: list[tuple[int, int]] = []
    res = _score(ids, gt, rec_ids, samples, recs, batch_size=4, progress=lambda d, t: calls.append((d, t)))
    pd.testing.assert_frame_equal(res.per_sample, quiet.per_sample, check_exact=True)
    # one unit per ground-truth image (feature pass) and per image of each sample set, in batches of 4
    assert calls == [(d, 3 * n) for d in (0, 4, 6, 10, 12, 16, 18)]
    # ground-truth features from the disk cache count at once; the count still ends at its total
    for _ in range(2):
        calls.clear()
        _score(
            ids,
            gt,
            rec_ids,
            samples,
            recs,
            batch_size=4,
            cache=True,
            progress=lambda d, t: calls.append((d, t)),
        )
    done = [d for d, _ in calls]
    assert {t for _, t in calls} == {3 * n} and done == sorted(done) and done[0] == 0 and done[-1] == 3 * n
    assert done[1] == n  # cache hit: the whole ground-truth pass at once
    # a protocol without feature metrics has no ground-truth pass to count
    pixel_only = Protocol("test-pixel", "0", "", "nsd982", "nsd-ascending", SMALL.metrics[:2])
    calls.clear()
    _score(ids, gt, rec_ids, samples, recs, protocol=pixel_only, progress=lambda d, t: calls.append((d, t)))
    assert calls[0] == (0, 2 * n) and calls[-1] == (2 * n, 2 * n)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: {**d, "gt": d["gt"].astype(np.float32) * np.nan}, "float32 containing NaN"),
        (lambda d: {**d, "rec": d["rec"][..., 0]}, r"expected uint8 \(N, H, W, 3\)"),
        (
            lambda d: {**d, "rec_ids": np.where(d["rec_ids"] == 7, 8, d["rec_ids"])},
            "nsd_id 8 has no ground-truth",
        ),
        (
            lambda d: {
                **d,
                "rec_ids": d["rec_ids"][:-1],
                "rec_samples": d["rec_samples"][:-1],
                "rec": d["rec"][:-1],
            },
            "no reconstruction for nsd_id 5",
        ),
        (
            lambda d: {
                **d,
                "ids": d["ids"][:1],
                "gt": d["gt"][:1],
                "rec_ids": d["ids"][:1],
                "rec_samples": d["rec_samples"][:1],
                "rec": d["rec"][:1],
            },
            "at least 2 images",
        ),
        (lambda d: {**d, "ids": np.where(d["ids"] == 7, 40, d["ids"])}, "nsd_id 40 given more than once"),
        (lambda d: {**d, "rec_samples": d["rec_samples"][:-1]}, "sample indices"),
        (lambda d: {**d, "gt": d["gt"][:-1]}, "5 images for 6 ids"),
    ],
)
def test_bad_input_is_a_one_line_error(data, mutate, match):
    ids, gt, rec0, _ = data
    d = mutate({"ids": ids, "gt": gt, "rec_ids": ids, "rec_samples": np.zeros(len(ids), int), "rec": rec0})
    with pytest.raises(InvalidSubmission, match=match) as exc:
        _score(d["ids"], d["gt"], d["rec_ids"], d["rec_samples"], d["rec"])
    assert "\n" not in str(exc.value)


def test_bad_image_in_lazy_sequence_names_the_id(data):
    ids, gt, rec0, _ = data
    recs = list(rec0)
    recs[2] = recs[2].astype(np.float64)
    with pytest.raises(InvalidSubmission, match=f"nsd_id {ids[2]}: expected uint8"):
        _score(ids, gt, ids, np.zeros(len(ids), int), recs)


def test_usage_errors(data):
    ids, gt, rec0, _ = data
    with pytest.raises(UsageError, match="unknown protocol"):
        _score(ids, gt, ids, np.zeros(len(ids), int), rec0, protocol="nope")
    with pytest.raises(UsageError, match="weights mode"):
        _score(ids, gt, ids, np.zeros(len(ids), int), rec0, weights_mode="huge")


def test_pretrained_weights_missing_names_the_artifact(data):
    from nsdbench.errors import WeightsMissing

    ids, gt, rec0, _ = data
    with pytest.raises(WeightsMissing, match="nsdbench weights fetch alexnet-imagenet1k-v1"):
        _score(ids, gt, ids, np.zeros(len(ids), int), rec0, weights_mode="pretrained")


def test_scores_synthetic_nsd_test_split(nsd):
    """End to end on the synthetic NSD: a split's ground truth, keyed by NSD id, vs degraded copies."""
    from nsdbench.nsd.splits import get_split

    split = get_split(nsd, "nsd982", 1)
    ids = np.array(split.test_ids[:5])
    gt = nsd.images(ids)
    rec = np.ascontiguousarray(gt[:, ::-1])  # vertically flipped reconstructions
    res = _score(ids, gt, ids[::-1], np.zeros(len(ids), int), rec[::-1])
    assert sorted(res.per_image["nsd_id"].unique()) == sorted(ids.tolist())
    assert res.set_scores["pixcorr"] < 0.99 and np.isfinite(list(res.set_scores.values())).all()
    self_res = _score(ids, gt, ids, np.zeros(len(ids), int), gt)
    assert self_res.set_scores["pixcorr"] == pytest.approx(1.0) and self_res.set_scores["alexnet2"] == 1.0


def test_prefetch_and_batch_size_leave_every_value_bit_identical(data):
    """Reading, decoding and resizing ahead on a worker thread changes when work is done, never a value."""
    from nsdbench.metrics.brain import BrainTarget

    ids, gt, rec0, rec1 = data
    brain = PixelEncoder(ids)
    target = BrainTarget(brain, brain.measured, brain.rois)
    rec_ids, samples, recs = (
        np.concatenate([ids, ids]),
        np.repeat([0, 1], len(ids)),
        np.concatenate([rec0, rec1]),
    )
    runs = [
        _score(ids, gt, rec_ids, samples, recs, brain=target, prefetch=depth, batch_size=bs)
        for depth, bs in ((0, 32), (2, 1), (3, 4))
    ]
    assert {"alexnet2", "ssim", "bc_v1"} <= set(runs[0].set_scores)
    for other in runs[1:]:
        pd.testing.assert_frame_equal(runs[0].per_sample, other.per_sample, check_exact=True)
        assert other.set_scores == runs[0].set_scores


def test_protocol_on_a_subset_of_ids_matches_a_separate_run_on_that_subset(data):
    """Protocols on nested splits are scored in one pass; the narrower one gets exactly the values of a
    separate call on its ids (feature passes and 2-way over its own rows only)."""
    ids, gt, rec0, _ = data
    zeros = np.zeros(len(ids), int)
    narrow = Protocol("test-narrow", "0", "", "nsd897", "nsd-ascending", SMALL.metrics[:5])
    subset = [5, 12, 40, 300]
    together = engine.score_reconstructions_by_protocol(
        ids, gt, ids, zeros, rec0, [SMALL, narrow], engine.ScoreOptions("tiny", cache=False),
        protocol_ids={"test-narrow": subset},
    )  # fmt: skip
    keep = np.isin(ids, subset)
    alone = _score(ids[keep], gt[keep], ids[keep], zeros[keep], rec0[keep], protocol=narrow)
    wide = _score(ids, gt, ids, zeros, rec0)
    pd.testing.assert_frame_equal(together["test-narrow"].per_sample, alone.per_sample, check_exact=True)
    pd.testing.assert_frame_equal(together["test-small"].per_sample, wide.per_sample, check_exact=True)
    assert together["test-narrow"].provenance["n_images"] == 4
    with pytest.raises(InvalidSubmission, match="nsd_id 77 has no ground-truth image"):
        engine.score_reconstructions_by_protocol(
            ids, gt, ids, zeros, rec0, [narrow], engine.ScoreOptions("tiny", cache=False),
            protocol_ids={"test-narrow": [5, 77]},
        )  # fmt: skip


def test_a_new_feature_metric_needs_only_its_protocol_entry(data):
    """A feature metric that no shipped protocol has (a new name, AlexNet(5) with the cosine statistic)
    is defined in a test-local protocol alone and scored; its values are the cosine of the raw features."""
    from nsdbench.metrics.protocols import FeatureMetric as Feature

    ids, gt, rec0, _ = data
    metric = Feature(
        name="alexnet5_cos", network="alexnet", weights="IMAGENET1K_V1", layer="features.11",
        gt_chain=B64, rec_chain=B64, normalize="imagenet", statistic="cosine",
    )  # fmt: skip
    proto = Protocol("test-new-metric", "0", "", "nsd982", "nsd-ascending", (metric,))
    res = _score(ids, gt, ids, np.zeros(len(ids), int), rec0, protocol=proto)
    assert list(res.set_scores) == ["alexnet5_cos"]
    order = np.argsort(ids)
    g = engine.metric_features(metric, gt[order], "gt", "tiny").astype(np.float64)
    r = engine.metric_features(metric, rec0[order], "rec", "tiny").astype(np.float64)
    cos = (g * r).sum(1) / np.linalg.norm(g, axis=1) / np.linalg.norm(r, axis=1)
    got = res.per_image.set_index("nsd_id")["value"].loc[ids[order]].to_numpy()
    np.testing.assert_allclose(got, cos, rtol=1e-12)


def test_timings_name_each_network_pass_and_stage(data):
    ids, gt, rec0, _ = data
    timings: dict[str, float] = {}
    _score(ids, gt, ids, np.zeros(len(ids), int), rec0, timings=timings)
    assert {
        "forward:alexnet",
        "forward:inception_v3",
        "forward:efficientnet_b1",
        "forward:swav_resnet50",
    } <= set(timings)
    assert {"ground_truth", "decode", "resize", "pixel", "statistics"} <= set(timings)
    assert all(v >= 0 for v in timings.values())


def test_statistics_run_in_float64_where_the_device_has_it():
    """The N x N correlation of 2-way runs on the features' device in float64; MPS has no float64, so it
    falls back to the CPU (whose values the CPU path gives unchanged)."""
    import torch

    from nsdbench.metrics.metric_kinds import float64_device

    assert float64_device(torch.device("cpu")) == torch.device("cpu")
    assert float64_device(torch.device("cuda", 0)) == torch.device("cuda", 0)
    assert float64_device(torch.device("mps")) == torch.device("cpu")
