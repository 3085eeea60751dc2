"""Seconds per image of the Second Sight search at the published settings (6 iterations, 100 samples in 4
branches, SD 2.1 unCLIP at 768 px and 50 steps, fp16 on CUDA) scored by GNet8 on the device (the hybrid's
CLIP -> betas ridge adds one CLIP embedding per candidate, not timed here), with random full-size weights
(`--weights random`) or the real ones (`--weights pretrained`). The stage-1 inputs (c0, z0 image, measured
betas) are seeded random arrays: this times stage 2, the per-image cost.

    python scripts/gpu_bench_second_sight.py                    # cuda, random weights, unet batch 64
    python scripts/gpu_bench_second_sight.py --unet-batch 128 --steps 20
    python scripts/gpu_bench_second_sight.py --tiny             # CPU smoke run; also times one sample per call

Goal (issue 17): at most 3 minutes per image on one H100 (published: ~30 minutes on an A100).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import numpy as np
import torch


def search_seconds(settings, gen, encoder, target, c0, z0, images: int) -> tuple[float, list[float]]:
    """Wall seconds of `images` whole searches (the device synchronized) and the last trace."""
    from nsdbench.methods.adapter import TestItem
    from nsdbench.methods.second_sight_search import initial_state, second_sight_iteration

    device = gen.components.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for k in range(images):
        state = initial_state(c0, settings.branches, gen.image_size)
        for i in range(settings.iterations):
            state = second_sight_iteration(
                state, i, z0, target, TestItem(k, 0, 1000 + k), settings, gen, encoder
            )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / images, [float(x) for x in state.trace_scores]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny components on the CPU")
    ap.add_argument("--weights", default="random", choices=("random", "pretrained"))
    ap.add_argument("--device", default=None)
    ap.add_argument("--images", type=int, default=1, help="searches timed (after one warm-up iteration)")
    ap.add_argument("--unet-batch", type=int, default=64, help="candidates per sampler call")
    ap.add_argument("--steps", type=int, default=50, help="sampler steps (published: 50)")
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--voxels", type=int, default=15724, help="nsdgeneral voxels (subject 1)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.tiny:
        args.weights, args.device, args.steps, args.voxels = "tiny", args.device or "cpu", 3, 500
        args.samples, args.iterations = 8, 2
    device = torch.device(args.device or "cuda")

    from nsdbench.methods.second_sight_search import SecondSightSettings, UnclipSampler
    from nsdbench.metrics.gnet8 import load_published_encoder
    from nsdbench.metrics.guidance import GNet8GuidanceEncoder

    settings = SecondSightSettings(
        iterations=args.iterations, search_samples=args.samples, num_inference_steps=args.steps,
        unet_batch=args.unet_batch,
    )  # fmt: skip
    gen = UnclipSampler(args.weights, str(device), settings)
    encoder = GNet8GuidanceEncoder(load_published_encoder("gnet8", 1, args.voxels, args.weights, str(device)))
    rng = np.random.default_rng(0)
    c0 = rng.normal(size=gen.components.image_encoder.config.projection_dim).astype(np.float32)
    z0 = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    target = torch.as_tensor(rng.normal(size=args.voxels).astype(np.float32), device=device)

    warm = replace(settings, iterations=1, search_samples=min(settings.search_samples, 8))
    search_seconds(warm, gen, encoder, target, c0, z0, 1)
    seconds, trace = search_seconds(settings, gen, encoder, target, c0, z0, args.images)
    report = {
        "device": str(device),
        "weights": args.weights,
        "dtype": str(gen.components.dtype),
        "iterations": settings.iterations,
        "samples": settings.search_samples,
        "steps": settings.num_inference_steps,
        "unet_batch": settings.unet_batch,
        "seconds_per_image": seconds,
        "minutes_per_image": seconds / 60,
        "trace": trace,
    }
    if device.type == "cuda":
        report["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if args.tiny:  # the same search one candidate per sampler call, as the published code draws them
        single, _ = search_seconds(replace(settings, unet_batch=1), gen, encoder, target, c0, z0, args.images)
        report["seconds_per_image_one_at_a_time"] = single
        report["batched_over_one_at_a_time"] = seconds / single
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:34s} {value:.4g}" if isinstance(value, float) else f"{key:34s} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
