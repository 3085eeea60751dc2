"""How sklearn's per-token Ridge loop (brain-diffuser) and nsdbench's fit_predict scale with samples,
voxels and targets (three points each around a base size), on random data, side by side.

    python scripts/bench_ridge_scaling.py                # base 1000 samples × 2000 voxels → 64 × 64
    python scripts/bench_ridge_scaling.py --json out.json

Each row times both on the same arrays (best of --repeats for nsdbench, one run for sklearn) and checks
that the predictions agree to 1e-6 of the largest |prediction|.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from sklearn.linear_model import Ridge

from nsdbench.ridge import RidgeSettings, fit_predict

ALPHA = 60000.0


def _problem(n: int, p: int, tokens: int, dims: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    Xt = rng.standard_normal((max(10, n // 10), p))
    Y = rng.standard_normal((n, tokens, dims))
    return X, Y, Xt


def _sklearn_loop(X, Y, Xt) -> np.ndarray:
    pred = np.zeros((len(Xt), *Y.shape[1:]))
    for i in range(Y.shape[1]):
        pred[:, i] = Ridge(alpha=ALPHA, fit_intercept=True).fit(X, Y[:, i]).predict(Xt)
    return pred


def measure(n: int, p: int, tokens: int, dims: int, repeats: int) -> dict:
    X, Y, Xt = _problem(n, p, tokens, dims)
    settings = RidgeSettings(alpha=ALPHA, dtype="float64", backend="auto")
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        ours = fit_predict(X, Y, Xt, settings)
        best = min(best, time.perf_counter() - t0)
    t0 = time.perf_counter()
    ref = _sklearn_loop(X, Y, Xt)
    t_sk = time.perf_counter() - t0
    err = float(np.abs(ours - ref).max() / np.abs(ref).max())
    return {
        "samples": n,
        "voxels": p,
        "tokens": tokens,
        "dims": dims,
        "targets": tokens * dims,
        "sklearn_s": round(t_sk, 3),
        "nsdbench_s": round(best, 3),
        "speedup": round(t_sk / best, 1),
        "max_rel_err": err,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--voxels", type=int, default=2000)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--dims", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    a = ap.parse_args()
    grid = (
        [("samples", n, a.voxels, a.tokens) for n in (a.samples // 2, a.samples, a.samples * 2)]
        + [("voxels", a.samples, p, a.tokens) for p in (a.voxels // 2, a.voxels, a.voxels * 2)]
        + [("targets", a.samples, a.voxels, t) for t in (a.tokens // 4, a.tokens, 257)]
    )
    rows = []
    print(f"# load average {os.getloadavg()}, {os.cpu_count()} CPUs")
    print(
        "| varied | samples | voxels | targets (tokens×dims) | sklearn loop s | nsdbench s | speedup | max rel err |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for varied, n, p, t in grid:
        r = measure(n, p, t, a.dims, a.repeats)
        r["varied"] = varied
        rows.append(r)
        print(
            f"| {varied} | {n} | {p} | {r['targets']} ({t}×{a.dims}) | {r['sklearn_s']:.2f} | "
            f"{r['nsdbench_s']:.2f} | {r['speedup']:.0f}× | {r['max_rel_err']:.1e} |",
            flush=True,
        )
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
