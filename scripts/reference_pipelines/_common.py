"""What the three reference pipelines share: command line, image reading, the same networks nsdbench
uses, stage timers and the per-image output file.

These scripts are the yardstick for `nsdbench score`: they reproduce the STRUCTURE of the published
evaluation code (written here from facts, see shared/reference/METRICS.md), not nsdbench's. They read
the ground truth straight from the NSD stimuli HDF5 and the reconstructions from a submission folder
(subjXX/<nsd_id>_<sample>.png, sample 0), and build the metric networks with nsdbench's builders so both
sides run the very same (random or tiny) weights.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

STIMULI = "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"  # nsdbench.nsd.layout.STIMULI
STIM_KEY = "imgBrick"


class Stages:
    """Wall seconds per named stage; `forward:<net>` for network passes (the same names as --timings)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.t0 = time.perf_counter()

    @contextmanager
    def __call__(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t

    def wall(self) -> float:
        return time.perf_counter() - self.t0


def parse_args(doc: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--data", required=True, help="NSD root (real or `nsdbench data synth`)")
    ap.add_argument("--submission", required=True, help="folder with subjXX/<nsd_id>_<sample>.png")
    ap.add_argument("--subject", type=int, default=1)
    ap.add_argument("--weights", default="tiny", choices=("random", "tiny", "pretrained"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", required=True, help="JSON file: per-image values and stage seconds")
    return ap.parse_args()


def submission_files(submission: str | Path, subject: int) -> tuple[list[int], list[Path]]:
    """Sample-0 PNGs of one subject, by ascending NSD id (the reference scripts glob their folder)."""
    folder = Path(submission) / f"subj{subject:02d}"
    found = {}
    for p in folder.iterdir():
        m = re.fullmatch(r"(\d+)_0\.png", p.name)
        if m:
            found[int(m.group(1))] = p
    ids = sorted(found)
    return ids, [found[i] for i in ids]


def read_ground_truth(data: str | Path, ids: list[int]) -> np.ndarray:
    """uint8 (N, S, S, 3) stimuli for 0-based NSD ids, straight from nsd_stimuli.hdf5."""
    with h5py.File(Path(data) / STIMULI, "r") as f:
        brick = f[STIM_KEY]
        return np.stack([brick[i] for i in ids])


def read_png(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def network(
    name: str, version: str, mode: str, precision: str = "fp32", device: str = "cpu", fresh: bool = False
):
    """nsdbench's module for `name` (the same seeded random weights, or the published `version` in
    pretrained mode); fresh=True builds it anew, as scripts that reload a network per pass do."""
    from nsdbench.metrics.networks import FeatureNetwork, NetworkKey, get_network

    if fresh:
        key = NetworkKey(name, version if mode == "pretrained" else "-", mode, precision, str(device))
        return FeatureNetwork(key).module
    return get_network(name, version, mode, precision, device).module


def pairwise_corr_all(ground_truth: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """2-way per prediction: np.corrcoef cross block, success = r < diag (per column), / (N - 1)."""
    n = len(ground_truth)
    r = np.corrcoef(ground_truth, predictions)[:n, n:]
    return np.sum(r < np.diag(r), 0) / (n - 1)


def write(out: str | Path, ids: list[int], values: dict[str, np.ndarray], stages: Stages, **extra) -> None:
    doc = {
        "ids": [int(i) for i in ids],
        "values": {k: [float(x) for x in np.asarray(v)] for k, v in values.items()},
        "wall_s": stages.wall(),
        "stages": stages.seconds,
        **extra,
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(doc, indent=1))
