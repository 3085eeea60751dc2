"""Full-size brain-diffuser ridge regressions on random data, timed with nsdbench.ridge.

    python scripts/gpu_bench_ridge.py                      # one GPU (backend torch_cuda), float32
    python scripts/gpu_bench_ridge.py --scale 0.02 --backend numpy   # CPU smoke check of the plumbing

Regressions (8,859 training samples × 15,724 nsdgeneral voxels, 982 test samples):
  vdvae        → 91,168 VDVAE latent dims,      alpha 50,000
  clipvision   → 257 × 768 = 197,376 dims,     alpha 60,000
  cliptext     → 77 × 768 = 59,136 dims,       alpha 100,000
For each: `fit_predict` (test predictions, no weights), and with --weights `fit_ridge` (weights in host
memory). --check compares the first 64 targets with sklearn Ridge (float64, CPU).
Prints a table and, with --json, one JSON document.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from nsdbench.ridge import RidgeSettings, fit_predict, fit_ridge

FULL = {"n": 8859, "p": 15724, "n_test": 982}
REGRESSIONS = {"vdvae": (91168, 50000.0), "clipvision": (197376, 60000.0), "cliptext": (59136, 100000.0)}


def _random(shape: tuple[int, ...], seed: int) -> np.ndarray:
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float32).numpy()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--scale", type=float, default=1.0, help="multiply every size by this (e.g. 0.02 on a CPU)"
    )
    ap.add_argument("--backend", default="auto", help="auto | torch_cuda | torch | numpy")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--chunk-size", type=int, default=16384)
    ap.add_argument("--only", nargs="*", default=list(REGRESSIONS), choices=list(REGRESSIONS))
    ap.add_argument("--weights", action="store_true", help="also time fit_ridge (weights in memory)")
    ap.add_argument("--check", action="store_true", help="compare 64 targets with sklearn Ridge")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)

    import torch

    s = {k: max(8, int(v * a.scale)) for k, v in FULL.items()}
    X = _random((s["n"], s["p"]), 0)
    Xt = _random((s["n_test"], s["p"]), 1)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    rows = []
    for name in a.only:
        n_targets, alpha = REGRESSIONS[name]
        t = max(8, int(n_targets * a.scale))
        Y = _random((s["n"], t), 2)
        settings = RidgeSettings(alpha=alpha, dtype=a.dtype, backend=a.backend, chunk_size=a.chunk_size)
        fit_predict(X[:64], Y[:64, :64], Xt[:4], settings)  # warm-up: CUDA context, kernels
        t0 = time.perf_counter()
        pred = fit_predict(X, Y, Xt, settings, progress=True)
        row = {
            "regression": name,
            "samples": s["n"],
            "voxels": s["p"],
            "targets": t,
            "test": s["n_test"],
            "alpha": alpha,
            "dtype": a.dtype,
            "backend": a.backend,
            "device": device,
            "fit_predict_s": round(time.perf_counter() - t0, 2),
        }
        if a.weights:
            t0 = time.perf_counter()
            model = fit_ridge(X, Y, settings, cache=False, progress=True)
            row["fit_weights_s"] = round(time.perf_counter() - t0, 2)
            del model
        if a.check:
            from sklearn.linear_model import Ridge

            k = min(64, t)
            ref = (
                Ridge(alpha=alpha)
                .fit(X.astype(np.float64), Y[:, :k].astype(np.float64))
                .predict(Xt.astype(np.float64))
            )
            row["max_rel_err_vs_sklearn"] = float(np.abs(pred[:, :k] - ref).max() / np.abs(ref).max())
        rows.append(row)
        print(
            f"{name:11s} {s['n']}×{s['p']} → {t}: fit_predict {row['fit_predict_s']:.2f} s"
            + (f", fit (weights) {row['fit_weights_s']:.2f} s" if a.weights else "")
            + (f", max rel err {row['max_rel_err_vs_sklearn']:.1e}" if a.check else ""),
            file=sys.stderr,
            flush=True,
        )
        del Y, pred
    if a.json:
        print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
