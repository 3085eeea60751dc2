"""Tiny Second Sight search iteration on the CPU: all candidates of the iteration in one unCLIP call (nsdbench)
vs one candidate per call (as the published code generates them, src/stochastic_search.py generateNSamples),
same per-candidate seeds, so the iterations must agree as well.

    pytest tests/benchmarks/test_bench_second_sight.py --benchmark-enable --benchmark-group-by=group \
        --benchmark-columns=min,mean,rounds -s

The full-size GPU figure (seconds per image at the published settings) comes from
scripts/gpu_bench_second_sight.py.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest
import torch

N_SAMPLES, STEPS = 16, 10


class PixelEncoder:
    """A fixed seeded linear readout of 8x8 area-averaged pixels (a stand-in guidance encoder)."""

    identity, n_voxels = "bench-pixel-encoder", 50

    def __init__(self) -> None:
        self.w = torch.randn(3 * 8 * 8, self.n_voxels, generator=torch.Generator().manual_seed(3))

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255
        return torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1) @ self.w


@pytest.fixture(scope="module")
def problem():
    from nsdbench.methods.adapter import TestItem
    from nsdbench.methods.second_sight_search import (
        SecondSightSettings,
        UnclipSampler,
        initial_state,
        second_sight_iteration,
    )

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    settings = SecondSightSettings(iterations=3, search_samples=N_SAMPLES, num_inference_steps=STEPS)
    gen = UnclipSampler("tiny", "cpu", settings)
    enc = PixelEncoder()
    rng = np.random.default_rng(0)
    target = torch.as_tensor(rng.normal(size=enc.n_voxels))
    c0 = rng.normal(size=gen.components.image_encoder.config.projection_dim).astype(np.float32)
    z0 = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    item = TestItem(1, 0, 7)
    state0 = second_sight_iteration(
        initial_state(c0, settings.branches, gen.image_size), 0, z0, target, item, settings, gen, enc
    )
    yield settings, gen, enc, target, item, state0, z0
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def results() -> dict:
    return {}


def _iteration(problem, unet_batch: int):
    from nsdbench.methods.second_sight_search import second_sight_iteration

    settings, gen, enc, target, item, state0, z0 = problem
    s = replace(settings, unet_batch=unet_batch)
    t0 = time.perf_counter()
    state = second_sight_iteration(state0, 1, z0, target, item, s, gen, enc)
    return state, time.perf_counter() - t0


@pytest.mark.benchmark(group="second-sight-iteration-tiny")
def test_bench_search_iteration_one_candidate_per_call(benchmark, problem, results):
    results["single"] = benchmark.pedantic(_iteration, args=(problem, 1), rounds=1, iterations=1)


@pytest.mark.benchmark(group="second-sight-iteration-tiny")
def test_bench_search_iteration_batched(benchmark, problem, results):
    state, seconds = benchmark.pedantic(_iteration, args=(problem, 1024), rounds=1, iterations=1)
    single, single_seconds = results.get("single") or _iteration(problem, 1)
    np.testing.assert_allclose(state.seed_scores, single.seed_scores, atol=1e-5)
    np.testing.assert_allclose(state.seed_z, single.seed_z, atol=1e-4)
    print(f"\ntiny second-sight iteration ({N_SAMPLES} samples, {STEPS} steps): one per call "
          f"{single_seconds:.2f} s, batched {seconds:.2f} s, ratio {single_seconds / seconds:.2f}x")  # fmt: skip
