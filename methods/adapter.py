"""The method adapter interface: a `Method` class instantiated per run, `setup(ctx)`, `fit(train, ctx)`,
`reconstruct(items, fitted, ctx)` per fixed batch, `close()`.

An adapter sees one subject at a time. `train` is a `SubjectData` (NSD access restricted to what a
method may legitimately use: training betas and images, test betas, never test images; the baselines
that need the stimuli declare `reads_ground_truth` and read them through `ctx.ground_truth`).
`reconstruct` yields `(nsd_id, sample, uint8 HxWx3)` or an `Output` (with named extras) for every item
of the batch it is given; the runner writes them. Randomness comes from `ctx.seed`/`ctx.generator`
(CPU generators) so outputs never depend on the device's RNG, sharding or resume state.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from nsdbench.caches import ArrayCache
from nsdbench.errors import NSDBenchError
from nsdbench.files import atomic_write_bytes
from nsdbench.methods import seeds
from nsdbench.nsd.subject import SubjectData


@dataclass(frozen=True)
class TestItem:
    """One reconstruction to produce: NSD id (0-based), sample index and its seed."""

    __test__ = False  # not a pytest class

    nsd_id: int
    sample: int
    seed: int


@dataclass(frozen=True)
class NoSettings:
    """Settings of a method that has none."""


@dataclass(frozen=True)
class Output:
    """One reconstruction with named extras written next to its PNG (`<nsd_id>_<sample>.<name>`).

    An extra's name ends in its format: `.npy` (a numpy array: latents), `.png` (a uint8 HxWx3 image:
    stage-1 images), `.json` (a JSON-able value: search traces).
    """

    nsd_id: int
    sample: int
    image: Any
    extras: Mapping[str, Any] = field(default_factory=dict)


class Checkpoint:
    """Mid-image state of one item (arrays only, npz, no pickle): `load()` on entry, `save()` as it goes.

    The runner deletes an item's checkpoint once its image is written.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, np.ndarray] | None:
        """The last saved state, or None (nothing saved, or a damaged file: start the image over)."""
        if not self.path.is_file():
            return None
        try:
            with np.load(self.path, allow_pickle=False) as data:
                return {name: data[name] for name in data.files}
        except (OSError, ValueError, EOFError):
            return None

    def save(self, arrays: Mapping[str, Any]) -> None:
        """Replace the saved state atomically."""
        buf = io.BytesIO()
        np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
        atomic_write_bytes(self.path, buf.getvalue())

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


class GroundTruthDenied:
    """`ctx.ground_truth` of a method that did not declare `reads_ground_truth`: every use is an error."""

    def __init__(self, method: str) -> None:
        self.method = method

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise NSDBenchError(
            f"method {self.method}: ctx.ground_truth.{name} refused; only methods that declare "
            "reads_ground_truth = True (the ground-truth baselines) may read test stimuli"
        )


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
    settings: Any = field(default_factory=NoSettings)  # the method's frozen settings dataclass
    cache: ArrayCache | None = None  # fitted decoders, keyed by content (nsdbench.caches)
    progress: Callable[[int], None] | None = None  # advance the current stage's progress bar
    progress_total: Callable[[int | None, str], None] | None = None  # set that bar's total and unit
    checkpoint_dir: Path | None = None  # the run folder's checkpoints/subjXX (None: checkpoints off)
    ground_truth: Any = None  # GroundTruthStimuli for methods that declare reads_ground_truth
    encoder_loader: Callable[[str], Any] | None = None  # name -> guidance encoder (loaded once, recorded)
    encoder_recorder: Callable[[str], None] | None = None  # note an encoder the method built itself

    def seed(self, nsd_id: int, sample: int) -> int:
        return seeds.image_seed(self.base_seed, self.method, self.subject, nsd_id, sample)

    def rng(self, nsd_id: int, sample: int) -> np.random.Generator:
        return seeds.numpy_rng(self.seed(nsd_id, sample))

    def generator(self, nsd_id: int, sample: int):
        """A CPU torch.Generator for one item: draw noise on the CPU, then move it to the device."""
        return seeds.torch_generator(self.seed(nsd_id, sample), "cpu")

    torch_generator = generator

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

    def checkpoint(self, item: TestItem) -> Checkpoint:
        """Where a long per-image loop saves and resumes its state for `item`."""
        if self.checkpoint_dir is None:
            raise NSDBenchError(f"method {self.method}: checkpoints need a run folder (ctx.checkpoint_dir)")
        return Checkpoint(Path(self.checkpoint_dir) / f"{item.nsd_id}_{item.sample}.npz")

    def encoder(self, name: str) -> Any:
        """A device-resident guidance encoder (`.identity`, batched `.predict(images)`); its identity is
        recorded in the run's provenance (`guiding_encoders`)."""
        if self.encoder_loader is None:
            raise NSDBenchError(f"method {self.method}: no guidance encoders in this context")
        return self.encoder_loader(name)


Reconstruction = tuple[int, int, np.ndarray]


class Method:
    """Base class of a reconstruction method (register the class with `registry.register_method`).

    Class attributes describe the method; an instance holds one run's settings, device, dtype and
    weights mode. Subclasses override `fit` and `reconstruct`, and `setup`/`close` when they load models.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""  # citation or URL; "" for baselines without one
    version: ClassVar[str] = "1"  # bump when outputs change: part of run ids and cache keys
    Settings: ClassVar[type] = NoSettings  # a frozen dataclass: the method's typed settings
    variants: ClassVar[Mapping[str, Mapping[str, Any]]] = {}  # named setting overrides (ablations)
    default_samples: ClassVar[int] = 1
    default_batch_size: ClassVar[int] = 16  # items per reconstruct call (fixed batches; part of the run)
    reads_ground_truth: ClassVar[bool] = False  # only the ground-truth baselines

    def __init__(
        self,
        settings: Any = None,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        weights_mode: str = "pretrained",
    ) -> None:
        self.settings = settings if settings is not None else self.Settings()
        self.device = device
        self.dtype = dtype
        self.weights_mode = weights_mode

    def required_artifacts(self) -> tuple[str, ...]:
        """nsdbench.weights artifact names this instance loads (depends on weights mode and settings)."""
        return ()

    @classmethod
    def artifacts_by_mode(cls) -> dict[str, list[str]]:
        """Required artifacts of the default settings, per weights mode (for `nsdbench methods show`)."""
        return {m: list(cls(weights_mode=m).required_artifacts()) for m in ("pretrained", "random", "tiny")}

    def setup(self, ctx: RunContext) -> None:
        """Load models once per process (called before the first fit or batch)."""

    def fit(self, train: SubjectData, ctx: RunContext) -> Any:
        """Fit the decoders for one subject (cache them through ctx.cache; report long loops with
        ctx.set_total and ctx.advance)."""
        return None

    def reconstruct(
        self, items: Sequence[TestItem], fitted: Any, ctx: RunContext
    ) -> Iterator[Reconstruction | Output]:
        """Yield (nsd_id, sample, uint8 HxWx3) or an Output for every item of the batch."""
        raise NotImplementedError

    def close(self) -> None:
        """Free what setup loaded."""


def settings_dict(settings: Any) -> dict[str, Any]:
    """A settings dataclass as a plain dict (field order)."""
    if not is_dataclass(settings):
        return dict(settings or {})
    return {f.name: getattr(settings, f.name) for f in fields(settings)}
