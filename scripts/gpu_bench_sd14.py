"""Takagi & Nishimoto's generation step, timed: SD 1.4 img2img (512 px, DDIM 50 steps, strength 0.8, scale 5,
5 samples per image) batched in fp16 vs one sample per call as the published code runs it. Random full-size
weights (`--weights random`) or the real ones (`--weights pretrained`); both paths use the same per-sample
generators, so the report also gives the largest pixel difference between them.

    python scripts/gpu_bench_sd14.py                         # cuda, fp16, 8 images x 5 samples, batch 40
    python scripts/gpu_bench_sd14.py --images 4 --batch 20   # smaller
    python scripts/gpu_bench_sd14.py --tiny                  # CPU smoke run with tiny components

Goal (issue 16): batched images/s >= 4x the batch-1 rate. MindDiffuser's stage 2: scripts/gpu_bench_minddiffuser.py.
"""

from __future__ import annotations

import argparse
import json

import torch

from nsdbench.stage_times import timed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny components on the CPU (fp32, a few steps)")
    ap.add_argument("--weights", default="random", choices=("random", "pretrained"))
    ap.add_argument("--device", default=None)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--samples", type=int, default=5, help="samples per image")
    ap.add_argument("--batch", type=int, default=40, help="samples per batched call")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--strength", type=float, default=0.8)
    ap.add_argument("--scale", type=float, default=5.0)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.tiny:
        args.weights, args.device = "tiny", args.device or "cpu"
        args.images, args.samples, args.batch, args.steps, args.size = 2, 2, 4, 4, 32
    device = torch.device(args.device or "cuda")

    from nsdbench.methods.components.stable_diffusion import encode_prompts, load_sd14
    from nsdbench.methods.diffusion.img2img import Img2ImgSettings, img2img

    c = load_sd14(args.weights, device)
    settings = Img2ImgSettings(args.steps, args.strength, args.scale)
    n = args.images * args.samples
    g = torch.Generator().manual_seed(0)
    images = torch.rand(args.images, 3, args.size, args.size, generator=g).repeat_interleave(args.samples, 0)
    cond = encode_prompts(c, ["a photograph"]).expand(n, -1, -1)
    uncond = encode_prompts(c, [""]).expand(n, -1, -1)

    def gens(lo: int, hi: int) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(1000 + k) for k in range(lo, hi)]

    def run(batch: int) -> torch.Tensor:
        outs = []
        with torch.inference_mode():
            for lo in range(0, n, batch):
                hi = min(n, lo + batch)
                outs.append(
                    img2img(c, cond[lo:hi], uncond[lo:hi], gens(lo, hi), settings, init_images=images[lo:hi])
                )
        return torch.cat(outs).float().cpu()

    run(min(args.batch, 2))  # warm-up: kernels, allocator
    single, t_single, mem_single = timed(lambda: run(1), device)
    batched, t_batched, mem_batched = timed(lambda: run(args.batch), device)
    report = {
        "device": str(device),
        "weights": args.weights,
        "dtype": str(c.dtype),
        "samples": n,
        "steps": args.steps,
        "batch": args.batch,
        "one_at_a_time_s": t_single,
        "batched_s": t_batched,
        "one_at_a_time_images_per_s": n / t_single,
        "batched_images_per_s": n / t_batched,
        "speedup": t_single / t_batched,
        "peak_mem_one_at_a_time_gib": mem_single / 2**30,
        "peak_mem_batched_gib": mem_batched / 2**30,
        "max_abs_diff": (single - batched).abs().max().item(),
    }
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:28s} {value:.4g}" if isinstance(value, float) else f"{key:28s} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
