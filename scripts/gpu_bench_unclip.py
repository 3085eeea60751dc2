"""One Second-Sight search iteration, timed: 100 samples from Stable Diffusion 2.1 unCLIP (768 px, DDIM,
guidance, strength of the first iteration) drawn in a few batched fp16 calls vs one sample per call as the
published code draws them. Random full-size weights (`--weights random`) or the real ones
(`--weights pretrained`). The one-at-a-time path is timed on `--single` samples and scaled to the iteration;
both paths share per-sample generators, so the report gives their largest pixel difference too.

    python scripts/gpu_bench_unclip.py                        # cuda, fp16, 100 samples, batch 25
    python scripts/gpu_bench_unclip.py --steps 20 --batch 50
    python scripts/gpu_bench_unclip.py --tiny                 # CPU smoke run with tiny components

Goal (issue 17): the whole search (6 iterations) in at most 3 minutes per image on one H100.
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
    ap.add_argument("--samples", type=int, default=100, help="samples per search iteration")
    ap.add_argument("--single", type=int, default=4, help="samples timed one at a time (scaled to --samples)")
    ap.add_argument("--batch", type=int, default=25, help="samples per batched call")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--strength", type=float, default=0.92 - 0.3 * (1 / 6) ** 3, help="first iteration's")
    ap.add_argument("--scale", type=float, default=10.0)
    ap.add_argument("--noise-level", type=int, default=0)
    ap.add_argument("--size", type=int, default=0, help="image size (default: the model's native 768)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.tiny:
        args.weights, args.device = "tiny", args.device or "cpu"
        args.samples, args.single, args.batch, args.steps = 4, 4, 4, 4
    device = torch.device(args.device or "cuda")

    from nsdbench.methods.components.stable_diffusion import encode_prompts, load_unclip
    from nsdbench.methods.diffusion.unclip import UnclipSettings, unclip_img2img

    c = load_unclip(args.weights, device)
    settings = UnclipSettings(args.steps, args.strength, args.scale, args.noise_level)
    n = args.samples
    size = args.size or c.unet.config.sample_size * 2 ** (len(c.vae.config.block_out_channels) - 1)
    g = torch.Generator().manual_seed(0)
    init = torch.rand(1, 3, size, size, generator=g).expand(n, -1, -1, -1)  # the branch's seed image
    dim = c.image_encoder.config.projection_dim
    embeds = torch.randn(1, dim, generator=g).expand(n, -1)  # the branch's CLIP embedding
    cond = encode_prompts(c, [""]).expand(n, -1, -1)

    def gens(lo: int, hi: int) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(1000 + k) for k in range(lo, hi)]

    def run(batch: int, count: int) -> torch.Tensor:
        outs = []
        with torch.inference_mode():
            for lo in range(0, count, batch):
                hi = min(count, lo + batch)
                outs.append(
                    unclip_img2img(
                        c,
                        embeds[lo:hi],
                        cond[lo:hi],
                        cond[lo:hi],
                        gens(lo, hi),
                        settings,
                        init_images=init[lo:hi],
                    )
                )
        return torch.cat(outs).float().cpu()

    run(min(args.batch, 2), min(args.batch, 2))  # warm-up
    single, t_single, mem_single = timed(lambda: run(1, args.single), device)
    batched, t_batched, mem_batched = timed(lambda: run(args.batch, n), device)
    per_iteration_single = t_single * n / args.single
    report = {
        "device": str(device),
        "weights": args.weights,
        "dtype": str(c.dtype),
        "samples": n,
        "steps": args.steps,
        "batch": args.batch,
        "one_at_a_time_s": per_iteration_single,
        "batched_s": t_batched,
        "speedup": per_iteration_single / t_batched,
        "search_minutes_per_image_batched": 6 * t_batched / 60,
        "peak_mem_one_at_a_time_gib": mem_single / 2**30,
        "peak_mem_batched_gib": mem_batched / 2**30,
        "max_abs_diff": (single - batched[: args.single]).abs().max().item(),
    }
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:34s} {value:.4g}" if isinstance(value, float) else f"{key:34s} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
