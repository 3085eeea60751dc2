"""CLIP's CPU chunks side by side (one intra-op thread each) against one chunk at a time on every
thread, on the same images and network, with bit-identical features.

    NSDBENCH_BENCH_N=16 NSDBENCH_BENCH_WEIGHTS=random \
        pytest tests/benchmarks/test_bench_side_by_side.py --benchmark-enable -s

Defaults (N=9, `tiny` CLIP) let the suite, run with --benchmark-disable, execute it once quickly as a
test; the measured comparison uses NSDBENCH_BENCH_WEIGHTS=random (full-size ViT-L/14), where each
precision prints its seconds per image both ways and the ratio. Both run with NSDBENCH_BENCH_THREADS
intra-op threads (default: every CPU; the test suite's conftest would otherwise leave torch one).
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from nsdbench.metrics import engine, forward
from nsdbench.metrics.protocols import FeatureMetric, ResizeStep

N = int(os.environ.get("NSDBENCH_BENCH_N", "9"))
MODE = os.environ.get("NSDBENCH_BENCH_WEIGHTS", "tiny")
THREADS = int(os.environ.get("NSDBENCH_BENCH_THREADS", str(os.cpu_count() or 1)))
CLIP224 = (ResizeStep("pil", "bilinear", 224),)


@pytest.fixture(autouse=True)
def threads():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("precision", ["fp32", "fp16-openai"])
def test_side_by_side_against_one_chunk_at_a_time(benchmark, monkeypatch, precision: str) -> None:
    metric = FeatureMetric(
        "clip", "clip_vit_l14", "-", "visual", CLIP224, CLIP224, "clip", precision=precision
    )
    images = np.random.default_rng(0).integers(0, 256, (N, 64, 64, 3), dtype=np.uint8)
    engine.metric_features(metric, images[:1], "gt", MODE, "cpu")  # build the network outside the timing

    def one_at_a_time() -> np.ndarray:
        with monkeypatch.context() as m:
            m.setattr(forward, "CPU_SIDE_BY_SIDE", frozenset())
            return engine.metric_features(metric, images, "gt", MODE, "cpu")

    t0 = time.perf_counter()
    sequential = one_at_a_time()
    t_sequential = time.perf_counter() - t0
    t0 = time.perf_counter()
    side_by_side = benchmark.pedantic(
        lambda: engine.metric_features(metric, images, "gt", MODE, "cpu"), rounds=1, iterations=1
    )
    t_side = time.perf_counter() - t0
    assert np.array_equal(side_by_side, sequential)
    print(
        f"\n{precision}: one chunk at a time {t_sequential / N:.3f} s/img, side by side {t_side / N:.3f} "
        f"s/img, ratio {t_sequential / t_side:.2f} ({THREADS} threads)"
    )
