"""Time the metrics engine on a full-size workload: S subjects x N reconstructions + ground truth.

Every metric of the chosen protocol(s) with full-size `random`-weight networks (or `tiny` for a quick CPU
check), including brain correlation against a synthetic linear brain target. Ground-truth features are
computed for the first subject and read from the feature cache afterwards, as in real use.

    python scripts/gpu_bench_metrics.py                       # 4 x 982 on cuda, nsdbench-v1, random weights
    python scripts/gpu_bench_metrics.py --protocol all        # all four protocols in one pass
    python scripts/gpu_bench_metrics.py --n 4 --subjects 1 --device cpu --weights tiny   # smoke check
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np


class LinearBrainTarget:
    """A stand-in encoding model: fixed random projection of a 16x16 thumbnail onto V voxels."""

    def __init__(self, ids, n_voxels: int = 2000, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.w = rng.normal(size=(16 * 16 * 3, n_voxels)).astype(np.float32)
        self.measured = {int(i): rng.normal(size=n_voxels) for i in ids}
        edges = np.linspace(0, n_voxels, 6).astype(int)
        masks = {}
        for k, roi in enumerate(("V1", "V2", "V3", "V4", "higher_vis")):
            m = np.zeros(n_voxels, bool)
            m[edges[k] : edges[k + 1]] = True
            masks[roi] = m
        masks["early"] = masks["V1"] | masks["V2"] | masks["V3"] | masks["V4"]
        masks["nsdgeneral"] = np.ones(n_voxels, bool)
        self.rois = masks

    def predict(self, images) -> np.ndarray:
        images = np.asarray(images)
        step = max(1, images.shape[1] // 16)
        thumb = images[:, ::step, ::step, :][:, :16, :16, :].reshape(len(images), -1).astype(np.float32) / 255
        return thumb @ self.w


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=982, help="images per subject")
    ap.add_argument("--subjects", type=int, default=4)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--weights", default="random", choices=("random", "tiny", "pretrained"))
    ap.add_argument("--protocol", default="nsdbench-v1", help="a protocol name, or 'all'")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--gt-size", type=int, default=425)
    ap.add_argument("--rec-size", type=int, default=512)
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    args = ap.parse_args(argv)

    os.environ.setdefault("NSDBENCH_HOME", tempfile.mkdtemp(prefix="nsdbench-bench-"))
    import torch

    from nsdbench.metrics import engine
    from nsdbench.metrics.protocols import PROTOCOLS

    protocols = list(PROTOCOLS) if args.protocol == "all" else [args.protocol]
    rng = np.random.default_rng(0)
    ids = np.arange(args.n) * 73 + 11
    gt = rng.integers(0, 256, (args.n, args.gt_size, args.gt_size, 3), dtype=np.uint8)
    brain = LinearBrainTarget(ids)
    zeros = np.zeros(args.n, int)

    # Build the networks once (not part of the per-subject scoring time).
    t0 = time.perf_counter()
    engine.score_protocols(
        ids[:2],
        gt[:2],
        ids[:2],
        zeros[:2],
        gt[:2],
        protocols,
        args.weights,
        args.device,
        batch_size=2,
        cache=False,
    )
    load_s = time.perf_counter() - t0

    per_subject = []
    timings_total: dict[str, float] = {}
    wall = 0.0
    for s in range(args.subjects):
        rec = rng.integers(0, 256, (args.n, args.rec_size, args.rec_size, 3), dtype=np.uint8)
        timings: dict[str, float] = {}
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = engine.score_protocols(
            ids,
            gt,
            ids,
            zeros,
            rec,
            protocols,
            args.weights,
            args.device,
            brain=brain,
            batch_size=args.batch_size,
            cache=True,
            timings=timings,
        )
        dt = time.perf_counter() - t0
        wall += dt
        for k, v in timings.items():
            timings_total[k] = timings_total.get(k, 0.0) + v
        per_subject.append({"subject": s, "seconds": dt, "set_scores": res[protocols[0]].set_scores})
        print(f"subject {s}: {dt:.1f} s ({args.n / dt:.1f} recon images/s)", file=sys.stderr)

    n_rec = args.n * args.subjects
    report = {
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "weights": args.weights,
        "protocols": protocols,
        "subjects": args.subjects,
        "images_per_subject": args.n,
        "network_build_s": load_s,
        "total_s": wall,
        "recon_images_per_s": n_rec / wall,
        "forward_share": timings_total.get("forward", 0.0) / wall,
        "stage_seconds": timings_total,
        "per_subject_s": [p["seconds"] for p in per_subject],
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"{n_rec} reconstructions + {args.n} ground truths, {', '.join(protocols)}, {args.weights} weights, "
            f"{report['device_name']}"
        )
        print(
            f"total {wall:.1f} s  ->  {report['recon_images_per_s']:.1f} recon images/s; "
            f"forward passes {100 * report['forward_share']:.0f}% of the time (networks built in {load_s:.1f} s)"
        )
        print("stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(timings_total.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
