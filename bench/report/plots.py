"""Matplotlib figures for the report, rendered off-screen (Agg) to PNG bytes."""

from __future__ import annotations

import io
import math

import numpy as np

from nsdbench.report.data import ReportData, higher_is_better, metric_label

PALETTE = ("#2f5d8a", "#c4622d", "#3a8a4f", "#8a3a7a", "#b39b2e", "#4f9fb3", "#8a5a3a", "#6b7480")


def distribution_png(data: ReportData, columns: int = 5, dpi: int = 110) -> bytes | None:
    """One panel per metric, one box per run (quartiles, 5–95% whiskers, mean ◆); None without scores."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    scores = data.image_scores.dropna(subset=["value"])
    metrics = [m for m in data.metrics() if (scores["metric"] == m).any()]
    if not metrics:
        return None
    runs = data.runs
    colors = {r.run_id: PALETTE[i % len(PALETTE)] for i, r in enumerate(runs)}
    cols = min(columns, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig = Figure(figsize=(3.0 * cols, 2.3 * rows + 0.5), dpi=dpi)
    FigureCanvasAgg(fig)
    by_key = {key: g["value"].to_numpy(dtype=np.float64) for key, g in scores.groupby(["metric", "run"])}
    for k, m in enumerate(metrics):
        ax = fig.add_subplot(rows, cols, k + 1)
        vals, pos, cs = [], [], []
        for j, r in enumerate(runs):
            v = by_key.get((m, r.run_id))
            if v is not None and len(v):
                vals.append(v)
                pos.append(j)
                cs.append(colors[r.run_id])
        bp = ax.boxplot(
            vals,
            positions=pos,
            widths=0.6,
            whis=(5, 95),
            showfliers=False,
            showmeans=True,
            patch_artist=True,
            meanprops={
                "marker": "D",
                "markerfacecolor": "white",
                "markeredgecolor": "#1d2430",
                "markersize": 4,
            },
            medianprops={"color": "#1d2430", "linewidth": 1.2},
        )
        for patch, c in zip(bp["boxes"], cs, strict=True):
            patch.set_facecolor(c)
            patch.set_alpha(0.75)
            patch.set_edgecolor("#1d2430")
        ax.set_title(f"{metric_label(m)} {'↑' if higher_is_better(m) else '↓'}", fontsize=10)
        ax.set_xticks([])
        ax.set_xlim(-0.7, len(runs) - 0.3)
        ax.tick_params(labelsize=8)
        ax.grid(axis="y", color="#dde2e8", linewidth=0.6)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    handles = [
        Patch(facecolor=colors[r.run_id], edgecolor="#1d2430", alpha=0.75, label=r.label) for r in runs
    ]
    fig.legend(handles=handles, loc="upper center", ncol=min(len(runs), 4), frameon=False, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()
