"""Time the whole `nsdbench score` command on one GPU: 4 subjects x 982 reconstructions, full-size networks.

Builds a synthetic NSD with exactly 982 nsd982 test images per subject (432-px stimuli: the synthetic
generator needs a multiple of 16; NSD's are 425) and a submission of 512-px PNG reconstructions, then
runs the console script as a user does, each run in its own process with `--timings`:

  1. one protocol, cold (empty ground-truth feature cache)   goal: < 30 s on an H100-class GPU
  2. the same protocol again, warm (ground-truth features cached)
  3. every protocol in one command, cold

and reports seconds and images/s per stage (reconstructions / stage seconds), the share of wall time
outside forward passes, and the peak GPU memory of the scoring process (nvidia-smi, sampled every 0.2 s).
Brain correlation is off unless --brain (it would fit an encoding model on the synthetic betas first).

    python scripts/gpu_bench_metrics.py                           # 4 x 982, random weights, cuda
    python scripts/gpu_bench_metrics.py --keep /scratch/gb         # keep (and reuse) data and submission
    python scripts/gpu_bench_metrics.py --tiny                     # CPU smoke check: tiny nets, 1 x 8
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Self

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_score_command as bsc


class GpuMemory:
    """Peak memory (MiB) nvidia-smi reports for processes started by this script while it samples."""

    def __init__(self, period: float = 0.2) -> None:
        self.period = period
        self.peak_mib = 0.0
        self.available = shutil.which("nvidia-smi") is not None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> float:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        used = 0.0
        for line in out.splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 2 and parts[1].replace(".", "", 1).isdigit():
                used += float(parts[1])
        return used

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mib = max(self.peak_mib, self._sample())
            self._stop.wait(self.period)

    def __enter__(self) -> Self:
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.available:
            self._thread.join()


def run(wl, protocols, home: Path, work: Path, args, label: str, cuda: bool) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    with GpuMemory() as mem:
        t = bsc.run_nsdbench(
            wl,
            protocols,
            home,
            work,
            args.weights,
            args.device,
            args.batch_size,
            label=label,
            extra=args.extra,
        )
    n_rec = wl.n_images * len(wl.subjects)
    return {
        "label": label,
        "protocols": protocols,
        "wall_s": t.wall_s,
        "recon_images_per_s": n_rec / t.wall_s,
        "outside_forward_share": bsc.outside_share(t),
        "peak_gpu_mib": mem.peak_mib if (cuda and mem.available) else None,
        "stages": {k: {"s": v, "images_per_s": n_rec / v if v > 0 else None} for k, v in t.stages.items()},
        "_timed": t,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=None, help="nsd982 test images per subject (default 982)")
    ap.add_argument("--subjects", type=int, default=None, help="subjects, 1..4 (default 4)")
    ap.add_argument("--device", default=None, help="default cuda (cpu with --tiny)")
    ap.add_argument("--weights", default=None, choices=("random", "tiny", "pretrained"))
    ap.add_argument("--protocol", default="brain-diffuser-2023", help="the one-protocol runs")
    ap.add_argument(
        "--every", default="all", help="protocols of the every-protocol run (a comma list or all)"
    )
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument(
        "--image-size", type=int, default=None, help="stimulus side, multiple of 16 (default 432)"
    )
    ap.add_argument("--rec-size", type=int, default=None, help="reconstruction side (default 512)")
    ap.add_argument(
        "--brain", action="store_true", help="score brain correlation too (fits an encoder first)"
    )
    ap.add_argument(
        "--tiny", action="store_true", help="CPU smoke check: tiny networks, 1 subject x 8 images"
    )
    ap.add_argument("--keep", type=Path, default=None, help="work folder to keep and reuse")
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    args = ap.parse_args(argv)
    tiny = args.tiny
    args.n = args.n or (8 if tiny else 982)
    args.subjects = args.subjects or (1 if tiny else 4)
    args.device = args.device or ("cpu" if tiny else "cuda")
    args.weights = args.weights or ("tiny" if tiny else "random")
    args.image_size = args.image_size or (64 if tiny else 432)
    args.rec_size = args.rec_size or (128 if tiny else 512)
    args.extra = [] if args.brain else ["--no-brain"]
    if not 1 <= args.subjects <= 4:
        ap.error("--subjects must be 1..4")
    cuda = args.device.startswith("cuda")

    root = args.keep or Path(tempfile.mkdtemp(prefix="nsdbench-gpu-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    wl = bsc.build_workload(
        root, args.n, args.image_size, args.rec_size, tuple((1, 2, 5, 7)[: args.subjects])
    )
    prep_s = time.perf_counter() - t0
    one = [args.protocol]
    every = "all" if args.every == "all" else args.every.split(",")
    home = root / "home-one"
    shutil.rmtree(home, ignore_errors=True)
    runs = [
        run(wl, one, home, root / "cold", args, f"{args.protocol} cold", cuda),
        run(wl, one, home, root / "warm", args, f"{args.protocol} warm", cuda),
    ]
    shutil.rmtree(root / "home-every", ignore_errors=True)
    runs.append(
        run(wl, every, root / "home-every", root / "every", args, f"--protocol {args.every} cold", cuda)
    )
    device_name = "cpu"
    if cuda:
        import torch

        device_name = torch.cuda.get_device_name()
    report = {
        "device": args.device,
        "device_name": device_name,
        "weights": args.weights,
        "subjects": args.subjects,
        "images_per_subject": wl.n_images,
        "reconstructions": wl.n_images * args.subjects,
        "stimulus_px": wl.image_size,
        "reconstruction_px": wl.rec_size,
        "data_and_submission_s": prep_s,
        "runs": [{k: v for k, v in r.items() if k != "_timed"} for r in runs],
        "goal_one_protocol_s": 30.0,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"{report['reconstructions']} reconstructions ({args.subjects} x {wl.n_images}, {wl.rec_size} px PNG; "
            f"{wl.image_size} px stimuli), {args.weights} weights, {device_name}; data built in {prep_s:.0f} s"
        )
        for r in runs:
            mem = f", peak GPU memory {r['peak_gpu_mib']:.0f} MiB" if r["peak_gpu_mib"] is not None else ""
            print(f"{r['label']}: {r['wall_s']:.1f} s, {r['recon_images_per_s']:.1f} reconstructions/s{mem}")
            print(f"  {'stage':<28}{'seconds':>10}{'images/s':>12}{'share':>8}")
            for k, v in sorted(r["stages"].items(), key=lambda kv: -kv[1]["s"]):
                ips = f"{v['images_per_s']:.1f}" if v["images_per_s"] else "-"
                print(f"  {k:<28}{v['s']:>10.2f}{ips:>12}{100 * v['s'] / r['wall_s']:>7.1f}%")
            print(f"  outside forward passes: {100 * r['outside_forward_share']:.1f} %")
        first = runs[0]["wall_s"]
        print(f"one protocol, cold: {first:.1f} s (goal < 30 s on an H100-class GPU)")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
