"""The method adapter protocol: a `Method` class instantiated per run, `setup(ctx)`, `fit(train, ctx)`,
`reconstruct(items, fitted, ctx)` per fixed batch, `close()`.

An adapter sees one subject at a time. `train` is a `SubjectData` (NSD access restricted to what a
method may legitimately use: training betas and images, test betas, never test images; the baselines
that need the stimuli declare `reads_ground_truth` and read them through `ctx.ground_truth`).
`reconstruct` yields `(nsd_id, sample, uint8 HxWx3)` or an `Output` (with named extras) for every item
of the batch it is given; the runner writes them. Randomness comes from `ctx.seed`/`ctx.generator`
(CPU generators) so outputs never depend on the device's RNG, sharding or resume state.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from nsdbench.errors import NSDBenchError
from nsdbench.methods import seeds


@dataclass(frozen=True)
class TestItem:
    """One reconstruction to produce: NSD id (0-based), sample index and its seed."""

    __test__ = False  # not a pytest class

    nsd_id: int
    sample: int
    seed: int


def zscore_with_train(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Z-score `train` by its column mean/std and `others` by the same (constant columns: std 1)."""
    mean = train.mean(axis=0, dtype=np.float64)
    std = train.std(axis=0, dtype=np.float64)
    std[std == 0] = 1.0
    return [((a - mean) / std).astype(np.float32) for a in (train, *others)]


class SubjectData:
    """What a method may read for one subject and split; arrays are loaded once and kept."""

    def __init__(self, nsd, subject: int, split) -> None:
        self.nsd = nsd
        self.subject = int(subject)
        self.split = split
        self._cache: dict[Any, Any] = {}

    @property
    def train_ids(self) -> tuple[int, ...]:
        return tuple(self.split.train_ids)

    @property
    def test_ids(self) -> tuple[int, ...]:
        return tuple(self.split.test_ids)

    @property
    def image_size(self) -> int:
        return int(self.nsd.image_size)

    def _raw(self, part: str, roi: str) -> np.ndarray:
        key = ("raw", part, roi)
        if key not in self._cache:
            from nsdbench.nsd.splits import split_betas

            self._cache[key] = np.asarray(
                split_betas(self.nsd, self.split, part=part, roi=roi, normalize="none")
            )
        return self._cache[key]

    def betas(self, part: str, roi: str = "nsdgeneral", normalize: str = "train-zscore") -> np.ndarray:
        """Repetition-averaged betas, rows aligned with train_ids/test_ids.

        normalize="train-zscore" z-scores both parts with the training mean/std (brain-diffuser's choice);
        "none" returns betas/300 as stored.
        """
        if part not in ("train", "test"):
            raise ValueError(f"part must be 'train' or 'test', got {part!r}")
        if normalize == "none":
            return self._raw(part, roi)
        if normalize != "train-zscore":
            raise ValueError(f"unknown normalization {normalize!r}")
        key = ("z", roi)
        if key not in self._cache:
            self._cache[key] = zscore_with_train(self._raw("train", roi), self._raw("test", roi))
        train, test = self._cache[key]
        return train if part == "train" else test

    def test_betas_for(
        self, nsd_ids: Sequence[int], roi: str = "nsdgeneral", normalize: str = "train-zscore"
    ) -> np.ndarray:
        """Test betas for the given test ids (rows in the order given)."""
        index = {nid: i for i, nid in enumerate(self.test_ids)}
        rows = [index[int(n)] for n in nsd_ids]
        return self.betas("test", roi, normalize)[rows]

    def train_images(self) -> np.ndarray:
        """Training stimuli, uint8 (n_train, H, W, 3), rows aligned with train_ids (kept in memory: on the
        real NSD this is ~5 GB at 425 px; prefer `images` over chunks of train_ids)."""
        key = ("train_images",)
        if key not in self._cache:
            self._cache[key] = self.nsd.images(list(self.train_ids))
        return self._cache[key]

    def images(self, nsd_ids: Sequence[int]) -> np.ndarray:
        """NSD images other than the test stimuli (training, library); a test id is an error, so a method
        cannot read the images it must reconstruct."""
        ids = [int(n) for n in nsd_ids]
        if "test_set" not in self._cache:
            self._cache["test_set"] = frozenset(int(n) for n in self.split.test_ids)
        leaked = [n for n in ids if n in self._cache["test_set"]]
        if leaked:
            raise NSDBenchError(
                f"subject {self.subject}: a method asked for the image of test NSD id {leaked[0]} "
                f"({self.split.name}); only the ground-truth baselines read test stimuli (ground_truth_images)"
            )
        return self.nsd.images(ids)

    def ground_truth_images(self, nsd_ids: Sequence[int]) -> np.ndarray:
        """The test stimuli themselves: only the ground-truth and shuffled baselines use this."""
        return self.nsd.images(list(nsd_ids))

    def seen_ids(self) -> np.ndarray:
        """Every NSD id assigned to this subject (expdesign subjectim, 10k on the real NSD: also the images of
        sessions not released or not run) plus every id in its trials."""
        assigned = np.asarray(self.nsd.design["subjectim"][self.subject - 1], dtype=np.int64) - 1
        shown = self.nsd.trials(self.subject)["nsd_id"].to_numpy(dtype=np.int64)
        return np.union1d(assigned, shown)


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
        import io

        from nsdbench.files import atomic_write_bytes

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
    cache: FitCache | None = None
    progress: Callable[[int], None] | None = None  # advance the current stage's progress bar
    progress_total: Callable[[int | None, str], None] | None = None  # set that bar's total and unit
    checkpoint_dir: Path | None = None  # the run folder's checkpoints/subjXX (None: checkpoints off)
    ground_truth: Any = None  # GroundTruthStimuli for methods that declare reads_ground_truth
    encoder_loader: Callable[[str], Any] | None = None  # name -> guidance encoder (loaded once, recorded)

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
