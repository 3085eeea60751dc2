"""CLIP's chunks run on the CPU with one intra-op thread each, side by side. That keeps its values
because its features do not depend on the thread count; these tests check that claim (full size: -m slow),
that a pass gives the same features either way, and that the thread count is restored."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from nsdbench.metrics import engine, forward
from nsdbench.metrics.forward import (
    CPU_SIDE_BY_SIDE,
    MAX_SIDE_BY_SIDE,
    ChunkedForward,
    FeaturePass,
    run_one_thread_each,
    side_by_side_chunks,
)
from nsdbench.metrics.networks import get_network, normalize
from nsdbench.metrics.protocols import FeatureMetric, ResizeStep

CLIP224 = (ResizeStep("pil", "bilinear", 224),)
PRECISIONS = ("fp32", "fp16-openai")


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _clip_input(n: int, seed: int = 0) -> torch.Tensor:
    x = torch.rand(n, 3, 224, 224, generator=torch.Generator().manual_seed(seed))
    return normalize(x, "clip").contiguous()


def _same_with_one_and_two_threads(mode: str, precision: str) -> None:
    net = get_network("clip_vit_l14", "-", mode, precision)
    x = _clip_input(8)
    torch.set_num_threads(2)
    two = net.features(x, ("visual",))["visual"]
    torch.set_num_threads(1)
    one = net.features(x, ("visual",))["visual"]
    torch.set_num_threads(2)
    assert torch.equal(one, two), f"{mode} {precision}"


@pytest.mark.parametrize("precision", PRECISIONS)
def test_clip_features_do_not_depend_on_the_thread_count(precision: str, two_threads) -> None:
    _same_with_one_and_two_threads("tiny", precision)


@pytest.mark.slow  # about 25 s (fp32) and 75 s (fp16) on 2 cores: by hand, to keep CI within its budget
@pytest.mark.parametrize("precision", PRECISIONS)
def test_full_size_clip_features_do_not_depend_on_the_thread_count(precision: str, two_threads) -> None:
    """The same for the full-size ViT-L/14 (seeded random weights), one 8-image chunk at 224 px: GEMMs
    large enough to be split between threads."""
    _same_with_one_and_two_threads("random", precision)


def test_only_clip_on_the_cpu_runs_side_by_side(two_threads) -> None:
    assert CPU_SIDE_BY_SIDE == {"clip_vit_l14"}
    assert side_by_side_chunks("cpu", "clip_vit_l14") == 2
    assert side_by_side_chunks("cuda", "clip_vit_l14") == side_by_side_chunks("cuda:1", "clip_vit_l14") == 1
    for network in ("alexnet", "inception_v3", "efficientnet_b1", "swav_resnet50"):
        assert side_by_side_chunks("cpu", network) == 1
    torch.set_num_threads(1)
    assert side_by_side_chunks("cpu", "clip_vit_l14") == 1
    torch.set_num_threads(MAX_SIDE_BY_SIDE + 4)
    assert side_by_side_chunks("cpu", "clip_vit_l14") == MAX_SIDE_BY_SIDE


def test_cached_cpu_clip_features_are_marked_one_thread_per_chunk() -> None:
    """Ground-truth features cached by a many-thread pass (before) are not mixed with one-thread ones."""
    clip = FeaturePass("clip_vit_l14", "-", "fp32", "clip", CLIP224)
    alex = FeaturePass("alexnet", "-", "fp32", "imagenet", CLIP224)
    assert clip.part(["visual"], "tiny", 8, "cpu")["threads_per_chunk"] == 1
    assert "threads_per_chunk" not in clip.part(["visual"], "tiny", 64, "cuda")
    assert "threads_per_chunk" not in alex.part(["features.4"], "tiny", 8, "cpu")


@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_pass_gives_the_same_features_side_by_side(precision: str, two_threads, monkeypatch) -> None:
    """19 images pushed in uneven batches (two chunks side by side, then a padded chunk of 3) give the
    features of the sequential pass, bit for bit."""
    m = FeatureMetric("clip", "clip_vit_l14", "-", "visual", CLIP224, CLIP224, "clip", precision=precision)
    images = np.random.default_rng(3).integers(0, 256, (19, 40, 40, 3), dtype=np.uint8)
    net = get_network("clip_vit_l14", "-", "tiny", precision)
    fp = FeaturePass("clip_vit_l14", "-", precision, "clip", CLIP224)
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    x = torch.nn.functional.interpolate(x.float(), size=224).round().to(torch.uint8)
    runs = []
    calls: list[int] = []
    real = forward.run_one_thread_each

    def spy(fn, chunks):
        calls.append(len(chunks))
        return real(fn, chunks)

    monkeypatch.setattr(forward, "run_one_thread_each", spy)
    for side_by_side in (2, 1):
        monkeypatch.setattr(
            forward, "CPU_SIDE_BY_SIDE", frozenset({"clip_vit_l14"} if side_by_side > 1 else ())
        )
        fwd = ChunkedForward(net, ("visual",), 8, fp, None)
        assert fwd.side_by_side == side_by_side
        for part in (x[:5], x[5:7], x[7:18], x[18:]):
            fwd.push(part)
        runs.append(fwd.finish()["visual"])
    assert calls == [2, 1]  # two chunks side by side, then the padded one; none in the sequential pass
    assert runs[0].shape == (19, 16)
    assert torch.equal(runs[0], runs[1])
    # and the whole-engine path agrees with itself either way
    monkeypatch.setattr(forward, "CPU_SIDE_BY_SIDE", frozenset({"clip_vit_l14"}))
    a = engine.metric_features(m, images, "gt", "tiny", "cpu")
    monkeypatch.setattr(forward, "CPU_SIDE_BY_SIDE", frozenset())
    assert np.array_equal(a, engine.metric_features(m, images, "gt", "tiny", "cpu"))


def test_one_thread_each_and_the_count_restored() -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        both = threading.Barrier(2, timeout=30)  # passes only if the two chunks run at the same time

        def job(x):
            both.wait()
            return x, torch.get_num_threads()

        assert run_one_thread_each(job, [1, 2]) == [(1, 1), (2, 1)]  # in order, one thread each
        assert torch.get_num_threads() == 4
        here = threading.get_ident()
        assert run_one_thread_each(lambda x: (torch.get_num_threads(), threading.get_ident()), [0]) == [
            (1, here)
        ]
        assert torch.get_num_threads() == 4

        def fails(x):
            if x == 1:
                raise RuntimeError("chunk 1 failed")
            return x

        with pytest.raises(RuntimeError, match="chunk 1 failed"):
            run_one_thread_each(fails, [0, 1])
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(before)


def test_hooked_layers_stay_with_their_own_call(two_threads) -> None:
    """Forward hooks of two calls running at once on one network each record their own chunk: both
    calls are held at an early layer until both have registered their hooks."""
    net = get_network("alexnet", "-", "tiny")
    layers = ("features.4", "classifier.5")
    chunks = [
        normalize(torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(s)), "imagenet")
        for s in (0, 1)
    ]
    alone = [net.features(c, layers) for c in chunks]
    meet = threading.Barrier(2, timeout=30)

    def hold(*_) -> None:
        meet.wait()

    held = net.module.features[0].register_forward_hook(hold)
    try:
        together = run_one_thread_each(lambda c: net.features(c, layers), chunks)
    finally:
        held.remove()
    for a, t in zip(alone, together):
        assert all(torch.equal(a[k], t[k]) for k in layers)
