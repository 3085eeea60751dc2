"""VDVAE encode (91,168 latents) and decode (64x64 images) throughput, batched vs one image at a time.

    python scripts/gpu_bench_vdvae.py                          # imagenet64, random weights, cuda, fp32 + fp16
    python scripts/gpu_bench_vdvae.py --weights tiny --device cpu --n 4 --batch 2 --dtypes float32

brain-diffuser's scripts run batches of 30 in float32; the reference here is batch 1 of the same functions.
Prints one line per (dtype, stage, batch) and, with --json, one JSON document; peak GPU memory on CUDA.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from nsdbench.methods.components import vdvae


def _timed(device: str, fn, model, data, chunks: list[tuple[int, int]]) -> float:
    """Seconds to run `fn(model, data[a:b], generators a..b)` over all chunks."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for a, b in chunks:
        fn(model, data[a:b], [torch.Generator().manual_seed(i) for i in range(a, b)])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="random", choices=("random", "tiny", "pretrained"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--n", type=int, default=60, help="images per measurement")
    ap.add_argument("--batch", type=int, default=30)
    ap.add_argument("--dtypes", default="float32,float16")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    size = vdvae.config_for(args.weights).image_size
    images = np.random.default_rng(0).integers(0, 256, (args.n, size, size, 3), dtype=np.uint8)

    rows = []
    one = [(0, 1)]
    for name in args.dtypes.split(","):
        model = vdvae.load_vdvae(args.weights, args.device, getattr(torch, name))
        latents = vdvae.encode_latents(
            model, images, [torch.Generator().manual_seed(i) for i in range(args.n)]
        )
        _timed(args.device, vdvae.decode_latents, model, latents, one)  # warm-up
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        for batch in (1, args.batch):
            chunks = [(i, min(i + batch, args.n)) for i in range(0, args.n, batch)]
            enc = _timed(args.device, vdvae.encode_latents, model, images, chunks)
            dec = _timed(args.device, vdvae.decode_latents, model, latents, chunks)
            for stage, seconds in (("encode", enc), ("decode", dec)):
                rows.append({"dtype": name, "stage": stage, "batch": batch, "images_per_s": args.n / seconds})
        if args.device.startswith("cuda"):
            rows.append({"dtype": name, "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20})
    for row in rows:
        print("  ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    if args.json:
        json.dump({"weights": args.weights, "device": args.device, "n": args.n, "rows": rows}, sys.stdout)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
