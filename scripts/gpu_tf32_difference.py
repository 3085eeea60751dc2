"""Measure what a protocol's TF32 choice changes on a GPU: every network metric scored with the protocol's
TF32 flags and again with TF32 off (exact float32), on N partly related image pairs.

    python scripts/gpu_tf32_difference.py                          # mindeye, 256 images, random weights, cuda
    python scripts/gpu_tf32_difference.py --protocol second-sight-2023 --weights pretrained
    python scripts/gpu_tf32_difference.py --device cpu --weights tiny --n 16   # smoke check (differences 0)
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np


def images(n: int, seed: int = 14) -> tuple[np.ndarray, np.ndarray]:
    """Smooth 425-px ground truths; 256-px reconstructions mixing each with another image, plus noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (n, 6, 6, 3), dtype=np.uint8)
    gt = np.stack(
        [np.asarray(Image.fromarray(c).resize((425, 425), Image.Resampling.BICUBIC)) for c in coarse]
    )
    w = np.linspace(0.1, 0.6, n)[rng.permutation(n)][:, None, None, None]
    mix = w * gt + (1 - w) * gt[(np.arange(n) + rng.integers(1, n, n)) % n]
    rec = np.stack([np.asarray(Image.fromarray(m.astype(np.uint8)).resize((256, 256))) for m in mix])
    return gt, np.clip(rec + rng.normal(0, 30, rec.shape), 0, 255).astype(np.uint8)


def main() -> None:
    from nsdbench.metrics import engine
    from nsdbench.metrics.protocols import FeatureMetric, get_protocol

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", default="mindeye")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--weights", default="random")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    p = get_protocol(args.protocol)
    feats = tuple(m for m in p.metrics if isinstance(m, FeatureMetric))
    as_shipped = dataclasses.replace(p, metrics=feats)
    exact = dataclasses.replace(
        p, metrics=tuple(dataclasses.replace(m, tf32=False, tf32_conv=False) for m in feats)
    )
    gt, rec = images(args.n)
    ids = np.arange(args.n)
    runs = {}
    for label, proto in (("tf32", as_shipped), ("fp32", exact)):
        options = engine.ScoreOptions(args.weights, args.device, cache=False)
        res = engine.score_reconstructions(ids, gt, ids, np.zeros(args.n, int), rec, proto, options)
        runs[label] = res
    out = {}
    for m in feats:
        a = runs["tf32"].per_image.query("metric == @m.name")["value"].to_numpy()
        b = runs["fp32"].per_image.query("metric == @m.name")["value"].to_numpy()
        out[m.name] = {
            "tf32": f"matmul={m.tf32} conv={bool(m.tf32_conv)}",
            "set_score_diff": float(abs(a.mean() - b.mean())),
            "max_per_image_diff": float(np.abs(a - b).max()),
            "per_image_changed": int((a != b).sum()),
        }
    print(
        json.dumps(
            {"protocol": p.identity, "n": args.n, "weights": args.weights, "device": args.device, **out},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
