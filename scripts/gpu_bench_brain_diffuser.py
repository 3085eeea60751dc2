"""brain-diffuser stage 2 (Versatile Diffusion dual-guided img2img at 512 px) on one GPU, random full-size
weights: nsdbench's batched fp16 loop against a batch-1 loop shaped like the published script (one image
at a time, unconditional embeddings recomputed per image), same components and settings.

    python scripts/gpu_bench_brain_diffuser.py                        # random full-size, cuda, fp16
    python scripts/gpu_bench_brain_diffuser.py --batch-size 16 --images 64 --json
    python scripts/gpu_bench_brain_diffuser.py --tiny --images 2 --steps 4   # CPU smoke check

Reports images/s of each loop, the speedup, peak GPU memory of each, the component build time and the
max |difference| of the uint8 images between the two loops (per-image CPU generators: same seeds, same
images up to fp16 reordering across batch sizes). Goal: batched >= 4x the reference.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from nsdbench.methods.components.vd_clip_features import clip_text_tokens, clip_vision_tokens
from nsdbench.methods.components.versatile_diffusion import load_components
from nsdbench.methods.diffusion.versatile import DualGuidedSettings, dual_guided_img2img
from nsdbench.stage_times import sync, timed


def _generators(seeds) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def _timed_loop(vd, images, vision, text, batch_size, settings) -> tuple[np.ndarray, float, int]:
    """All images in batches of `batch_size`: outputs, seconds, peak GPU bytes (0 on the CPU)."""

    def loop() -> np.ndarray:
        outs = []
        for i in range(0, len(images), batch_size):
            sl = slice(i, i + batch_size)
            gens = _generators(range(i, min(i + batch_size, len(images))))
            outs.append(dual_guided_img2img(vd, images[sl], vision[sl], text[sl], gens, settings))
        return np.concatenate(outs)

    return timed(loop, vd.device)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny random components (CPU smoke check)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--dtype", default=None, choices=["float16", "bfloat16", "float32"], help="default: fp16 on CUDA"
    )
    ap.add_argument("--images", type=int, default=32, help="images for the batched loop")
    ap.add_argument("--reference-images", type=int, default=8, help="images for the batch-1 loop")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--strength", type=float, default=0.75)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)

    device = torch.device(a.device)
    dtype = getattr(torch, a.dtype) if a.dtype else None
    settings = DualGuidedSettings(steps=a.steps, strength=a.strength)
    t0 = time.perf_counter()
    vd = load_components("tiny" if a.tiny else "random", device, dtype)
    sync(device)
    build_s = time.perf_counter() - t0

    rng = np.random.default_rng(0)
    n = max(a.images, a.reference_images)
    stage1 = rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)  # VDVAE-sized stage-1 images
    vision = clip_vision_tokens(vd, stage1)  # stand-ins for the predicted embeddings, right shape and scale
    text = clip_text_tokens(vd, [f"a photo of object {i}" for i in range(n)])

    warm = slice(0, min(2, n))
    dual_guided_img2img(vd, stage1[warm], vision[warm], text[warm], _generators(range(warm.stop)), settings)
    batched, batched_s, batched_peak = _timed_loop(
        vd, stage1[: a.images], vision[: a.images], text[: a.images], a.batch_size, settings
    )
    m = a.reference_images
    reference, reference_s, reference_peak = _timed_loop(vd, stage1[:m], vision[:m], text[:m], 1, settings)
    common = min(m, a.images)
    diff = int(np.abs(batched[:common].astype(np.int16) - reference[:common].astype(np.int16)).max())

    result = {
        "mode": vd.mode,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "dtype": str(vd.dtype).removeprefix("torch."),
        "image_size": vd.image_size,
        "denoising_steps": settings.denoising_steps,
        "batch_size": a.batch_size,
        "build_s": round(build_s, 2),
        "batched_images": a.images,
        "batched_images_per_s": round(a.images / batched_s, 3),
        "reference_images": m,
        "reference_images_per_s": round(m / reference_s, 3),
        "speedup": round((a.images / batched_s) / (m / reference_s), 2),
        "batched_peak_gib": round(batched_peak / 2**30, 2),
        "reference_peak_gib": round(reference_peak / 2**30, 2),
        "max_abs_uint8_diff_batched_vs_batch1": diff,
    }
    if a.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:40s} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
