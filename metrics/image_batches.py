"""One batch of the canonical order, read, checked and resized through every chain the metrics asked for:
what the prefetch threads prepare and every metric kind reads."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from nsdbench.metrics.protocols import Chain
from nsdbench.metrics.resize import apply_chain
from nsdbench.metrics.score_inputs import take_images
from nsdbench.stage_times import Timings, add


@dataclass(frozen=True)
class ChainRequest:
    """A view a metric needs: one side ("gt" or "rec") through `chain` on `device`."""

    side: str
    chain: Chain
    device: str


@dataclass
class ImageBatch:
    rows: np.ndarray  # positions in the canonical order
    ids: np.ndarray
    gt: list[np.ndarray]  # empty when no metric reads the ground truth in this pass
    rec: list[np.ndarray]  # empty in the ground-truth pass
    views: dict[ChainRequest, torch.Tensor] = field(default_factory=dict)

    def view(self, side: str, chain: Chain, device: str) -> torch.Tensor:
        return self.views[ChainRequest(side, chain, device)]


def batch_jobs(
    ids: np.ndarray,
    batch_size: int,
    gt: tuple[Any, np.ndarray] | None,
    rec: tuple[Any, np.ndarray, str] | None,
    requests: Iterable[ChainRequest],
    timings: Timings | None,
) -> list[Callable[[], ImageBatch]]:
    """One job per batch of `batch_size` rows. gt = (images, positions); rec = (images, positions, what)."""
    wanted = sorted(set(requests), key=repr)

    def job(start: int) -> ImageBatch:
        rows = np.arange(start, min(start + batch_size, len(ids)))
        bids = ids[rows]
        t0 = time.perf_counter()
        gts = take_images(gt[0], gt[1][rows], bids, "ground truth") if gt is not None else []
        t1 = time.perf_counter()
        recs = take_images(rec[0], rec[1][rows], bids, rec[2]) if rec is not None else []
        t2 = time.perf_counter()
        add(timings, "ground_truth", t1 - t0)
        add(timings, "decode", t2 - t1)
        batch = ImageBatch(rows, bids, gts, recs)
        for req in wanted:
            batch.views[req] = apply_chain(gts if req.side == "gt" else recs, req.chain, req.device)
        add(timings, "resize", time.perf_counter() - t2)
        return batch

    return [lambda s=s: job(s) for s in range(0, len(ids), batch_size)]
