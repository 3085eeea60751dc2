"""Tiny SD img2img on the CPU: one batched call for N samples vs N calls of batch 1 (the published
Takagi/Second-Sight way), same per-sample generators, so the outputs must agree as well.

    pytest tests/benchmarks/test_bench_sd.py --benchmark-enable --benchmark-group-by=group \
        --benchmark-columns=min,mean,rounds

The full-size GPU figures come from scripts/gpu_bench_sd14.py and scripts/gpu_bench_unclip.py.
"""

from __future__ import annotations

import pytest
import torch

from nsdbench.methods.components.stable_diffusion import encode_prompts, load_sd14
from nsdbench.methods.diffusion.img2img import Img2ImgSettings, img2img

N = 8
SETTINGS = Img2ImgSettings(num_inference_steps=10, strength=0.8, guidance_scale=5.0)


@pytest.fixture(scope="module")
def problem():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    c = load_sd14("tiny")
    images = torch.rand(N, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cond = encode_prompts(c, ["a photograph"]).expand(N, -1, -1)
    uncond = encode_prompts(c, [""]).expand(N, -1, -1)
    yield c, images, cond, uncond
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def results() -> dict[str, torch.Tensor]:
    return {}


def _run(problem, batch: int) -> torch.Tensor:
    c, images, cond, uncond = problem
    outs = []
    with torch.inference_mode():
        for lo in range(0, N, batch):
            hi = min(N, lo + batch)
            gens = [torch.Generator().manual_seed(100 + k) for k in range(lo, hi)]
            outs.append(img2img(c, cond[lo:hi], uncond[lo:hi], gens, SETTINGS, init_images=images[lo:hi]))
    return torch.cat(outs)


@pytest.mark.benchmark(group="sd-img2img-tiny")
def test_bench_img2img_batch_of_one(benchmark, problem, results):
    results["single"] = benchmark.pedantic(_run, args=(problem, 1), rounds=1, iterations=1)


@pytest.mark.benchmark(group="sd-img2img-tiny")
def test_bench_img2img_batched(benchmark, problem, results):
    out = benchmark.pedantic(_run, args=(problem, N), rounds=1, iterations=1)
    single = results.get("single")
    if single is None:
        single = _run(problem, 1)
    assert (out - single).abs().max().item() < 1e-5
