"""Aggregates with bootstrap confidence intervals: per subject, and the mean over subjects."""

from __future__ import annotations

import numpy as np
import pandas as pd

from nsdbench.metrics.bootstrap import bootstrap_ci

AGG_COLUMNS = ["subject", "metric", "mean", "ci_lo", "ci_hi", "n"]


def _bootstrap_ci(values: np.ndarray, n_resamples: int, seed: int) -> tuple[float, float, float]:
    if len(values) < 2:  # no interval from a single image
        return float(np.mean(values)), float("nan"), float("nan")
    mean, lo, hi = bootstrap_ci(values, n_resamples=n_resamples, seed=seed)
    return float(mean), float(lo), float(hi)


def stratified_bootstrap_ci(
    groups: list[np.ndarray], n_resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """Mean of group means with a percentile CI, resampling within each group independently.

    Used for the subject mean when subjects were scored on different image sets.
    """
    rng = np.random.default_rng(seed)
    means = np.empty((n_resamples, len(groups)))
    for g, vals in enumerate(groups):
        idx = rng.integers(0, len(vals), size=(n_resamples, len(vals)))
        means[:, g] = vals[idx].mean(axis=1)
    stat = means.mean(axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(stat, [alpha, 1 - alpha])
    return float(np.mean([v.mean() for v in groups])), float(lo), float(hi)


def aggregate_scores(images: pd.DataFrame, n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per-image scores [subject, nsd_id, metric, value] → rows per subject and 'mean' per metric.

    Per subject: the mean over images (the published statistic) and its bootstrap CI over images.
    Mean row: the mean of the subject means. When all subjects share the same images (the NSD test
    splits), images are resampled jointly: the bootstrap runs over the per-image subject mean.
    NaN or inf values (a metric undefined for an image) are left out and `n` says how many remained.
    """
    rows: list[dict] = []
    df = images[np.isfinite(images["value"].astype(np.float64))]
    for metric, mdf in df.groupby("metric", sort=True):
        per_subject: dict[int, pd.Series] = {}
        for subject, sdf in mdf.groupby("subject", sort=True):
            vals = sdf.set_index("nsd_id")["value"].astype(np.float64).sort_index()
            per_subject[int(subject)] = vals
            mean, lo, hi = _bootstrap_ci(vals.to_numpy(), n_resamples, seed)
            rows.append(
                {
                    "subject": str(int(subject)),
                    "metric": metric,
                    "mean": mean,
                    "ci_lo": lo,
                    "ci_hi": hi,
                    "n": len(vals),
                }
            )
        if not per_subject:
            continue
        id_sets = [tuple(v.index) for v in per_subject.values()]
        if all(ids == id_sets[0] for ids in id_sets):
            joint = np.mean([v.to_numpy() for v in per_subject.values()], axis=0)
            mean, lo, hi = _bootstrap_ci(joint, n_resamples, seed)
            n = len(joint)
        else:
            mean, lo, hi = stratified_bootstrap_ci(
                [v.to_numpy() for v in per_subject.values()], n_resamples, seed
            )
            n = int(sum(len(v) for v in per_subject.values()))
        rows.append({"subject": "mean", "metric": metric, "mean": mean, "ci_lo": lo, "ci_hi": hi, "n": n})
    return pd.DataFrame(rows, columns=AGG_COLUMNS)
