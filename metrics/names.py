"""Metric names shared by the engine, the leaderboard and the published-results table."""

from __future__ import annotations

METRIC_ORDER: list[str] = [
    "pixcorr",
    "ssim",
    "alexnet2",
    "alexnet5",
    "alexnet7",
    "inception",
    "clip_2way",
    "clip_cos",
    "effnet_b",
    "swav",
    "bc_v1",
    "bc_v2",
    "bc_v3",
    "bc_v4",
    "bc_early",
    "bc_higher_vis",
    "bc_nsdgeneral",
]

# Distances are the only metrics where a lower value is better.
HIGHER_IS_BETTER: dict[str, bool] = {name: name not in ("effnet_b", "swav") for name in METRIC_ORDER}

LABELS: dict[str, str] = {
    "pixcorr": "PixCorr",
    "ssim": "SSIM",
    "alexnet2": "AlexNet(2)",
    "alexnet5": "AlexNet(5)",
    "alexnet7": "AlexNet(7)",
    "inception": "Inception",
    "clip_2way": "CLIP",
    "clip_cos": "CLIP cos",
    "effnet_b": "EffNet-B",
    "swav": "SwAV",
    "bc_v1": "Brain V1",
    "bc_v2": "Brain V2",
    "bc_v3": "Brain V3",
    "bc_v4": "Brain V4",
    "bc_early": "Brain early",
    "bc_higher_vis": "Brain higher vis.",
    "bc_nsdgeneral": "Brain nsdgeneral",
}

# Brain-correlation metric name -> ROI key in NSD.roi_voxel_masks / BrainTarget.rois.
BRAIN_ROIS: dict[str, str] = {
    "bc_v1": "V1",
    "bc_v2": "V2",
    "bc_v3": "V3",
    "bc_v4": "V4",
    "bc_early": "early",
    "bc_higher_vis": "higher_vis",
    "bc_nsdgeneral": "nsdgeneral",
}


def order_key(name: str) -> int:
    """Sort key that puts metrics in METRIC_ORDER (unknown names last)."""
    return METRIC_ORDER.index(name) if name in METRIC_ORDER else len(METRIC_ORDER)
