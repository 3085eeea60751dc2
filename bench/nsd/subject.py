"""What a method may read of one subject and split: training data, test betas, never test stimuli.

`SubjectData` is the only door from a method to the dataset. It hands out training and library images and
captions, repetition-averaged and single-trial betas of any ROI (by ctab label), and the test betas a
decoder needs; asking for a test image or a test caption is an error. The NSD object and the split's file
access stay in private attributes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nsdbench.errors import NSDBenchError, UsageError
from nsdbench.nsd.rois import RoiSpec, roi_key
from nsdbench.nsd.splits import split_betas

PARTS = ("train", "test")
NORMALIZE = ("train-zscore", "session-zscore", "none")
TRIAL_NORMALIZE = ("none", "session-zscore")


def zscore_with_train(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Z-score `train` by its column mean/std and `others` by the same (constant columns: std 1)."""
    mean = train.mean(axis=0, dtype=np.float64)
    std = train.std(axis=0, dtype=np.float64)
    std[std == 0] = 1.0
    return [((a - mean) / std).astype(np.float32) for a in (train, *others)]


@dataclass(frozen=True, eq=False)
class SingleTrials:
    """Single-trial betas (n_trials, n_vox) float32 in global-trial order, with each trial's NSD id and session."""

    betas: np.ndarray
    nsd_ids: np.ndarray  # (n_trials,) int64, 0-based
    sessions: np.ndarray  # (n_trials,) int64, 1-based


class SubjectData:
    """One subject's data for one split, as a method may see it; arrays are loaded once and kept."""

    def __init__(self, nsd, subject: int, split) -> None:
        self._nsd = nsd
        self._subject = int(subject)
        self._split = split
        self._test_set = frozenset(int(n) for n in split.test_ids)
        self._cache: dict[Any, Any] = {}

    def __repr__(self) -> str:
        return f"SubjectData(subject={self._subject}, split={self._split.name!r})"

    @property
    def subject(self) -> int:
        return self._subject

    @property
    def split_name(self) -> str:
        return str(self._split.name)

    @property
    def sessions(self) -> tuple[int, ...]:
        """The sessions the split's betas come from."""
        return tuple(self._split.sessions)

    @property
    def train_ids(self) -> tuple[int, ...]:
        return tuple(self._split.train_ids)

    @property
    def test_ids(self) -> tuple[int, ...]:
        return tuple(self._split.test_ids)

    @property
    def image_size(self) -> int:
        return int(self._nsd.image_size)

    @property
    def n_images(self) -> int:
        """Number of NSD images (73,000 on the real NSD); ids run 0..n_images-1."""
        return int(self._nsd.n_images)

    # ------------------------------------------------------------------ betas

    def _raw(self, part: str, roi: RoiSpec, normalize: str) -> np.ndarray:
        key = ("avg", part, roi_key(roi), normalize)
        if key not in self._cache:
            self._cache[key] = np.asarray(
                split_betas(self._nsd, self._split, part=part, roi=roi, normalize=normalize)
            )
        return self._cache[key]

    def betas(self, part: str, roi: RoiSpec = "nsdgeneral", normalize: str = "train-zscore") -> np.ndarray:
        """Repetition-averaged betas, rows aligned with train_ids/test_ids, voxels of `roi` in C order.

        roi: "nsdgeneral", "streams:early", "floc-faces:FFA-1", ... or a list (their union).
        normalize: "train-zscore" z-scores both parts with the training mean/std (brain-diffuser's choice);
        "session-zscore" z-scores each session's trials per voxel before averaging; "none" is betas/300.
        """
        if part not in PARTS:
            raise UsageError(f"part must be 'train' or 'test', got {part!r}")
        if normalize not in NORMALIZE:
            raise UsageError(f"unknown normalization {normalize!r} (known: {', '.join(NORMALIZE)})")
        if normalize != "train-zscore":
            return self._raw(part, roi, normalize)
        key = ("z", roi_key(roi))
        if key not in self._cache:
            self._cache[key] = zscore_with_train(
                self._raw("train", roi, "none"), self._raw("test", roi, "none")
            )
        train, test = self._cache[key]
        return train if part == "train" else test

    def test_betas_for(
        self, nsd_ids: Sequence[int], roi: RoiSpec = "nsdgeneral", normalize: str = "train-zscore"
    ) -> np.ndarray:
        """Test betas for the given test ids (rows in the order given)."""
        index = {nid: i for i, nid in enumerate(self.test_ids)}
        missing = [int(n) for n in nsd_ids if int(n) not in index]
        if missing:
            raise UsageError(
                f"subject {self._subject}: NSD id {missing[0]} is not a test id of {self.split_name}"
            )
        return self.betas("test", roi, normalize)[[index[int(n)] for n in nsd_ids]]

    def single_trials(
        self, part: str = "train", roi: RoiSpec = "nsdgeneral", normalize: str = "none"
    ) -> SingleTrials:
        """Every trial of the part's images in the split's sessions (global-trial order), not averaged.

        normalize: "none" (betas/300) or "session-zscore" (per session and voxel, over all its trials).
        """
        if part not in PARTS:
            raise UsageError(f"part must be 'train' or 'test', got {part!r}")
        if normalize not in TRIAL_NORMALIZE:
            raise UsageError(f"unknown normalization {normalize!r} (known: {', '.join(TRIAL_NORMALIZE)})")
        key = ("trials", part, roi_key(roi), normalize)
        if key not in self._cache:
            groups = self._split.train_trials if part == "train" else self._split.test_trials
            wanted = np.sort(np.fromiter((t for g in groups for t in g), np.int64))
            trials = self._nsd.trials(self._subject).set_index("global_trial").loc[wanted]
            rows = self._nsd.trial_rows(self._subject, self._split.sessions).loc[wanted].to_numpy()
            betas = self._nsd.betas(
                self._subject, sessions=self._split.sessions, roi=roi, normalize=normalize
            )
            self._cache[key] = SingleTrials(
                betas=np.asarray(betas[rows], dtype=np.float32),
                nsd_ids=trials["nsd_id"].to_numpy(np.int64),
                sessions=trials["session"].to_numpy(np.int64),
            )
        return self._cache[key]

    # ------------------------------------------------------------------ stimuli

    def _refuse_test(self, ids: list[int], what: str) -> None:
        leaked = [n for n in ids if n in self._test_set]
        if leaked:
            raise NSDBenchError(
                f"subject {self._subject}: a method asked for the {what} of test NSD id {leaked[0]} "
                f"({self.split_name}); methods may not read test stimuli or their captions"
            )

    def train_images(self) -> np.ndarray:
        """Training stimuli, uint8 (n_train, H, W, 3), rows aligned with train_ids (kept in memory: on the
        real NSD this is ~5 GB at 425 px; prefer `images` over chunks of train_ids)."""
        key = ("train_images",)
        if key not in self._cache:
            self._cache[key] = self._nsd.images(list(self.train_ids))
        return self._cache[key]

    @property
    def data_identity(self) -> str:
        """The image set behind this subject's data (for keying per-id feature caches)."""
        return self._nsd.stimuli_identity

    def images(self, nsd_ids: Sequence[int]) -> np.ndarray:
        """NSD images other than the test stimuli (training, library); a test id is an error."""
        ids = [int(n) for n in nsd_ids]
        self._refuse_test(ids, "image")
        return self._nsd.images(ids)

    def captions(self, nsd_ids: Sequence[int]) -> list[list[str]]:
        """COCO captions (5 per image on NSD) of training or library images; a test id is an error."""
        ids = [int(n) for n in nsd_ids]
        self._refuse_test(ids, "caption")
        return self._nsd.captions(ids)

    def seen_ids(self) -> np.ndarray:
        """Every NSD id assigned to this subject (expdesign subjectim, 10k on the real NSD: also the images of
        sessions not released or not run) plus every id in its trials."""
        assigned = np.asarray(self._nsd.design["subjectim"][self._subject - 1], dtype=np.int64) - 1
        shown = self._nsd.trials(self._subject)["nsd_id"].to_numpy(dtype=np.int64)
        return np.union1d(assigned, shown)

    def roi_voxel_masks(self) -> dict[str, np.ndarray]:
        """Boolean masks over this subject's nsdgeneral voxels: V1, V2, V3, V4, early, higher_vis, nsdgeneral."""
        return self._nsd.roi_voxel_masks(self._subject)
