"""The method adapter protocol: `fit(train, ctx)` then `reconstruct(test_items, fitted, ctx)`.

An adapter sees one subject at a time. `train` is a `SubjectData` (NSD access restricted to what a
method may legitimately use: training betas and images, test betas, no test images except through
`ground_truth_images`, which only the ground-truth baseline calls). `reconstruct` yields
`(nsd_id, sample, uint8 HxWx3)` for the items it is given, in any order; the runner writes them.
Randomness comes from `ctx.seed(nsd_id, sample)` so outputs never depend on batching or sharding.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from nsdbench.methods import seeds
from nsdbench.nsd.subject import SubjectData, zscore_with_train  # noqa: F401 (moved there; re-exported)


@dataclass(frozen=True)
class TestItem:
    """One reconstruction to produce: NSD id (0-based), sample index and its seed."""

    __test__ = False  # not a pytest class

    nsd_id: int
    sample: int
    seed: int


class FitCache:
    """Fitted decoders on disk, keyed by a content hash of their inputs; arrays only (npz, no pickle)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @staticmethod
    def key(*parts: Any) -> str:
        """sha256 over JSON-able parts and the bytes (with dtype and shape) of numpy arrays."""
        h = hashlib.sha256()
        for part in parts:
            if isinstance(part, np.ndarray):
                arr = np.ascontiguousarray(part)
                h.update(f"ndarray|{arr.dtype.str}|{arr.shape}|".encode())
                h.update(memoryview(arr).cast("B"))
            else:
                h.update(json.dumps(part, sort_keys=True, default=str).encode())
            h.update(b"\x00")
        return h.hexdigest()

    def path(self, key: str) -> Path:
        return self.root / f"{key}.npz"

    def load(self, key: str) -> dict[str, np.ndarray] | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                return {name: data[name] for name in data.files}
        except (OSError, ValueError, EOFError):  # a damaged entry is recomputed, never trusted
            return None

    def save(self, key: str, arrays: Mapping[str, np.ndarray]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{key[:16]}-", suffix=".npz.part")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays)
            os.replace(tmp, self.path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get_or_compute(
        self, key: str, compute: Callable[[], Mapping[str, np.ndarray]]
    ) -> dict[str, np.ndarray]:
        cached = self.load(key)
        if cached is not None:
            return cached
        arrays = {k: np.asarray(v) for k, v in compute().items()}
        self.save(key, arrays)
        return arrays


@dataclass(frozen=True)
class RunContext:
    """Everything an adapter needs besides the data: who, where, how, and the seed source."""

    method: str
    subject: int
    split: str
    data: SubjectData
    base_seed: int = 0
    samples: int = 1
    device: str = "cpu"
    dtype: str = "float32"
    weights_mode: str = "pretrained"
    settings: Mapping[str, Any] = field(default_factory=dict)
    cache: FitCache | None = None
    progress: Callable[[int], None] | None = None  # advance the current stage's progress bar
    progress_total: Callable[[int | None, str], None] | None = None  # set that bar's total and unit

    def seed(self, nsd_id: int, sample: int) -> int:
        return seeds.image_seed(self.base_seed, self.method, self.subject, nsd_id, sample)

    def rng(self, nsd_id: int, sample: int) -> np.random.Generator:
        return seeds.numpy_rng(self.seed(nsd_id, sample))

    def torch_generator(self, nsd_id: int, sample: int):
        return seeds.torch_generator(self.seed(nsd_id, sample), self.device)

    def advance(self, n: int = 1) -> None:
        """Advance the current stage's progress bar by n units."""
        if self.progress is not None:
            self.progress(n)

    def set_total(self, total: int | None, unit: str = "img") -> None:
        """Announce how many units the current stage will advance by, so the bar shows a rate and an ETA."""
        if self.progress_total is not None:
            self.progress_total(total, unit)

    def items(self, nsd_ids: Iterable[int]) -> list[TestItem]:
        """All samples of the given ids as TestItems (id-major)."""
        return [TestItem(int(n), s, self.seed(int(n), s)) for n in nsd_ids for s in range(self.samples)]


Reconstruction = tuple[int, int, np.ndarray]


@runtime_checkable
class Method(Protocol):
    """A reconstruction method adapter (register it with nsdbench.methods.registry.register_method)."""

    name: str
    description: str
    paper: str  # citation or URL; "" for baselines without one
    version: str  # bump when outputs change: part of cache keys and run provenance
    required_weights: tuple[str, ...]  # nsdbench.weights artifact names (pretrained mode)
    defaults: Mapping[str, Any]  # default settings; "samples" is the default number of samples
    variants: Mapping[str, Mapping[str, Any]]  # named setting overrides (ablations)

    def fit(self, train: SubjectData, ctx: RunContext) -> Any:
        """Fit the decoders for one subject (cache them through ctx.cache; report long loops with
        ctx.set_total and ctx.advance)."""
        ...

    def reconstruct(
        self, test_items: Sequence[TestItem], fitted: Any, ctx: RunContext
    ) -> Iterator[Reconstruction]:
        """Yield (nsd_id, sample, uint8 HxWx3) for every item given."""
        ...
