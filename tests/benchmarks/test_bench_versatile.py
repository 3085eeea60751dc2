"""brain-diffuser stage 2 in tiny mode: nsdbench's batched dual-guided img2img (all images in one UNet call
per step) against a batch-1 loop (one image at a time, as the published script runs), same components.

    pytest tests/benchmarks/test_bench_versatile.py --benchmark-enable --benchmark-group-by=group

extra_info["speedup"] on the batched case = batch-1 time / batched time (best of the rounds run). Both
produce the same images to 1e-4 (per-image CPU generators). The full-size GPU figure comes from
scripts/gpu_bench_brain_diffuser.py.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from nsdbench.methods.components.vd_clip_features import clip_text_tokens, clip_vision_tokens
from nsdbench.methods.components.versatile_diffusion import load_components
from nsdbench.methods.diffusion.versatile import DualGuidedSettings, decode, denoise, initial_latents

N_IMAGES = 4
SETTINGS = DualGuidedSettings(steps=12)  # 9 denoising steps at strength 0.75


@pytest.fixture(scope="module")
def problem():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    vd = load_components("tiny")
    rng = np.random.default_rng(0)
    # small stage-1 images, which the loop upsamples to the output size
    images = rng.integers(0, 256, (N_IMAGES, 8, 8, 3), dtype=np.uint8)
    vision = clip_vision_tokens(vd, images)
    text = clip_text_tokens(vd, [f"caption {i}" for i in range(N_IMAGES)])
    yield vd, images, vision, text
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def timings() -> dict[str, float]:
    return {}


def _run(vd, images, vision, text, seeds) -> torch.Tensor:
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    latents, timesteps = initial_latents(vd, images, gens, SETTINGS)
    return decode(vd, denoise(vd, latents, timesteps, vision, text, gens, SETTINGS))


def _timed(fn, timings: dict[str, float], key: str):
    def wrapper(*args):
        start = time.perf_counter()
        out = fn(*args)
        timings[key] = min(timings.get(key, float("inf")), time.perf_counter() - start)
        return out

    return wrapper


def _batch1_loop(vd, images, vision, text):
    return torch.cat(
        [_run(vd, images[i : i + 1], vision[i : i + 1], text[i : i + 1], [i]) for i in range(len(images))]
    )


def _batched(vd, images, vision, text):
    return _run(vd, images, vision, text, list(range(len(images))))


@pytest.mark.benchmark(group="bd-stage2-tiny")
def test_bench_batch1_loop(benchmark, problem, timings):
    out = benchmark.pedantic(_timed(_batch1_loop, timings, "batch1"), args=problem, rounds=1, iterations=1)
    timings["batch1_out"] = out


@pytest.mark.benchmark(group="bd-stage2-tiny")
def test_bench_batched(benchmark, problem, timings):
    out = benchmark.pedantic(_timed(_batched, timings, "batched"), args=problem, rounds=2, iterations=1)
    ref = timings.get("batch1_out")
    if ref is None:
        ref = _timed(_batch1_loop, timings, "batch1")(*problem)
    assert (out - ref).abs().max() < 1e-4
    benchmark.extra_info["images"] = N_IMAGES
    benchmark.extra_info["speedup"] = round(timings["batch1"] / timings["batched"], 2)
