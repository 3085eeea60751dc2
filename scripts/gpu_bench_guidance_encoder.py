"""Guidance encoder at the canonical encoder's full size (random AlexNet, random ridge), timed on a device.

    python scripts/gpu_bench_guidance_encoder.py                     # cuda, float32, 16 × 425 px images
    python scripts/gpu_bench_guidance_encoder.py --device cpu --voxels 2000 --images 4   # CPU plumbing check

Sizes: 6,400 features (AlexNet conv2 192×4×4 + conv5 256×3×3 + 4×16×16 low-level) → 15,724 nsdgeneral voxels.
Reports the seconds per predict call (after one warm-up) and the largest difference from the numpy encoder
(EncodingModel.predict on the CPU, float64 ridge) relative to its largest |prediction|.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    import torch

    from nsdbench.metrics.encoder import EncoderSpec, EncodingModel, FeatureScaler, _ridge_settings
    from nsdbench.metrics.guidance import CanonicalGuidanceEncoder
    from nsdbench.ridge import RidgeModel

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--voxels", type=int, default=15724)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--size", type=int, default=425)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)

    spec = EncoderSpec()
    p = 192 * 16 + 256 * 9 + 4 * spec.lowres_grid**2
    rng = np.random.default_rng(0)
    ridge = RidgeModel(
        coef=rng.standard_normal((p, args.voxels)) / np.sqrt(p),
        intercept=rng.standard_normal(args.voxels) * 0.1,
        alpha=np.ones(args.voxels),
        settings=_ridge_settings(spec),
        n_features=p,
        target_shape=(args.voxels,),
    )
    scaler = FeatureScaler(rng.standard_normal(p) * 0.1, np.abs(rng.standard_normal(p)) + 0.5)
    model = EncodingModel(
        spec, 1, "nsd982", "random", scaler, ridge, np.zeros(args.voxels), np.zeros(args.voxels)
    )
    images = rng.integers(0, 256, (args.images, args.size, args.size, 3), dtype=np.uint8)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).to(args.device)

    guide = CanonicalGuidanceEncoder(model, args.device, args.dtype)
    guide.predict(x)
    times = []
    for _ in range(args.repeats):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = guide.predict(x)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    ref = model.predict(images).astype(np.float64)
    t_numpy = time.perf_counter() - t0
    diff = float(np.abs(out.double().cpu().numpy() - ref).max() / np.abs(ref).max())
    report = {
        "device": args.device,
        "dtype": args.dtype,
        "images": args.images,
        "features": p,
        "voxels": args.voxels,
        "predict_s_min": round(min(times), 4),
        "predict_s_mean": round(float(np.mean(times)), 4),
        "numpy_encoder_s": round(t_numpy, 3),
        "max_rel_diff_vs_numpy": diff,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
