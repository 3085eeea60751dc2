"""The test stimuli themselves, for the few methods entitled to them (the ground-truth baselines).

A method reaches them only through `ctx.ground_truth`, which the runner fills for methods that
declare `reads_ground_truth = True`; `SubjectData` never hands them out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from nsdbench.errors import NSDBenchError


class GroundTruthStimuli:
    """Images and captions of one subject's test split."""

    def __init__(self, nsd: Any, subject: int, split: Any) -> None:
        self.nsd = nsd
        self.subject = int(subject)
        self.split = split
        self._test = frozenset(int(i) for i in split.test_ids)

    def _check(self, nsd_ids: Sequence[int]) -> list[int]:
        ids = [int(n) for n in nsd_ids]
        outside = [n for n in ids if n not in self._test]
        if outside:
            raise NSDBenchError(
                f"subject {self.subject}: NSD id {outside[0]} is not a test image of {self.split.name}"
            )
        return ids

    def images(self, nsd_ids: Sequence[int]) -> np.ndarray:
        """uint8 (N, H, W, 3), rows in the order given."""
        return self.nsd.images(self._check(nsd_ids))

    def captions(self, nsd_ids: Sequence[int]) -> list[Any]:
        """The COCO captions of each id, in the order given."""
        return list(self.nsd.captions(self._check(nsd_ids)))
