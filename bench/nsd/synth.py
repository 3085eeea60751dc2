"""A small synthetic NSD with exactly the real layout, written from a known simulated encoding model.

The real loader reads it unchanged: same file names, HDF5 keys, dtypes, axis orders and 0/1-based ids
(see reference/NSD.md). Images are procedural scenes (a background plus a few shapes, faces, people and
signs) with captions describing them; betas come from retinotopic voxels in V1-V4 driven by local
luminance, contrast and color, category-selective voxels in the floc ROIs, and noise, so a linear
decoder recovers signal. Deterministic from the seed; a few seconds to generate.

Scale: 750 trials per session as in NSD, each subject sees every one of its images 3 times, so a
subject has 250 images per session (`SYNTH_SESSIONS` sessions); `SYNTH_SHARED` of them are shared by
all subjects. Sessions 1..N-1 play the role of the 37 "legacy" sessions; the cutoff and the nsd897
rule are recorded in nsddata/nsdbench_synthetic.json.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import scipy.io

from nsdbench.errors import UsageError
from nsdbench.files import atomic_folder
from nsdbench.nsd import layout
from nsdbench.progress import progress_bar

SYNTH_VERSION = 2  # 2: adds the streams ROI
SYNTH_SESSIONS = 3
SYNTH_SHARED = 100
SYNTH_IMAGE_SIZE = 64
SYNTH_SUBJECTS = layout.DATA_SUBJECTS
SYNTH_GRIDS = {1: (12, 14, 10), 2: (13, 14, 10), 5: (12, 13, 10), 7: (11, 14, 10)}  # (X, Y, Z)
SYNTH_MISSING_SHARED = 4  # shared images whose three trials all fall after the legacy sessions
SYNTH_NIFTI_SUBJECTS = (1,)  # subjects whose betas are also written as .nii.gz
SYNTH_DERIVATIVE_SUBJECTS = (1,)  # subjects with brain-diffuser / MindEye2 derivative files
SYNTH_NOISE_SD = 1.2  # single-trial noise, in percent signal change (signal sd ~1)

FEATURE_GRID = 16  # encoding-model features live on a 16x16 grid over the image

PALETTE = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 215, 50),
    "orange": (245, 140, 30),
    "purple": (140, 60, 180),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
COLOR_NAMES = tuple(PALETTE)
CATEGORIES = ("circle", "square", "triangle", "face", "person", "sign")
# Which floc ROI each category drives (outdoor scenes drive floc-places).
FLOC_OF = {"face": "floc-faces", "person": "floc-bodies", "sign": "floc-words"}

CTABS = {
    "nsdgeneral": ["0 Unknown", "1 nsdgeneral"],
    "prf-visualrois": ["0 Unknown", "1 V1v", "2 V1d", "3 V2v", "4 V2d", "5 V3v", "6 V3d", "7 hV4"],
    "prf-eccrois": ["0 Unknown", "1 ecc0pt5", "2 ecc1", "3 ecc2", "4 ecc4", "5 ecc4+"],
    "floc-faces": ["0 Unknown", "1 OFA", "2 FFA-1", "3 FFA-2", "4 mTL-faces", "5 aTL-faces"],
    "floc-words": ["0 Unknown", "1 OWFA", "2 VWFA-1", "3 VWFA-2", "4 mfs-words", "5 mTL-words"],
    "floc-places": ["0 Unknown", "1 OPA", "2 PPA", "3 RSC"],
    "floc-bodies": ["0 Unknown", "1 EBA", "2 FBA-1", "3 FBA-2", "4 mTL-bodies"],
    "streams": [
        "0 Unknown", "1 early", "2 midventral", "3 midlateral", "4 midparietal", "5 ventral", "6 lateral",
        "7 parietal",
    ],
}  # fmt: skip
RESPONSES_COLUMNS = [
    "SUBJECT", "SESSION", "RUN", "TRIAL", "73KID", "10KID", "TIME", "ISOLD", "ISCORRECT", "RT",
    "CHANGEMIND", "MEMORYRECENT", "MEMORYFIRST", "ISOLDCURRENT", "ISCORRECTCURRENT", "TOTAL1",
    "TOTAL2", "BUTTON", "MISSINGDATA",
]  # fmt: skip


@dataclass(frozen=True)
class SynthSizes:
    """Sizes of a synthetic NSD (defaults: the SYNTH_* constants)."""

    sessions: int = SYNTH_SESSIONS
    shared: int = SYNTH_SHARED
    image_size: int = SYNTH_IMAGE_SIZE
    missing_shared: int = SYNTH_MISSING_SHARED
    nifti_subjects: tuple[int, ...] = SYNTH_NIFTI_SUBJECTS
    derivative_subjects: tuple[int, ...] = SYNTH_DERIVATIVE_SUBJECTS
    noise_sd: float = SYNTH_NOISE_SD
    grids: dict = field(default_factory=lambda: dict(SYNTH_GRIDS))

    @property
    def images_per_subject(self) -> int:
        return layout.TRIALS_PER_SESSION * self.sessions // 3

    @property
    def unique_per_subject(self) -> int:
        return self.images_per_subject - self.shared

    @property
    def n_images(self) -> int:
        return self.shared + layout.N_SUBJECTS * self.unique_per_subject

    @property
    def legacy_sessions(self) -> int:
        return self.sessions - 1

    def check(self) -> None:
        if self.sessions < 2:
            raise UsageError(f"synthetic NSD needs at least 2 sessions (got {self.sessions})")
        if not 0 < self.shared < self.images_per_subject:
            raise UsageError(f"shared images must be in 1..{self.images_per_subject - 1} (got {self.shared})")
        if 3 * self.missing_shared > layout.TRIALS_PER_SESSION or self.missing_shared >= self.shared:
            raise UsageError(f"missing_shared={self.missing_shared} too large")
        if self.image_size < 16 or self.image_size % FEATURE_GRID:
            raise UsageError(f"image_size must be a multiple of {FEATURE_GRID} (got {self.image_size})")
        for s in SYNTH_SUBJECTS:
            if s not in self.grids:
                raise UsageError(f"no voxel grid for subject {s}")


# --------------------------------------------------------------------------- design


def make_design(sizes: SynthSizes, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """masterordering (1-based 10k index per trial), subjectim (8, n, 1-based 73k ids), sharedix (1-based)."""
    n_per, n_shared = sizes.images_per_subject, sizes.shared
    n_trials = layout.TRIALS_PER_SESSION * sizes.sessions
    ids = rng.permutation(sizes.n_images)  # 0-based 73k ids
    shared = np.sort(ids[:n_shared])
    subjectim = np.empty((layout.N_SUBJECTS, n_per), dtype=np.int64)
    for k in range(layout.N_SUBJECTS):
        block = ids[n_shared + k * sizes.unique_per_subject : n_shared + (k + 1) * sizes.unique_per_subject]
        subjectim[k] = np.concatenate([shared, block]) + 1
    # Forced-late shared images: all three presentations in the last session (so nsd982-like < nsd1000-like).
    late = rng.choice(n_shared, size=sizes.missing_shared, replace=False)
    others = np.setdiff1d(np.arange(n_per), late)
    pool = rng.permutation(np.repeat(others, 3))
    last_free = layout.TRIALS_PER_SESSION - 3 * len(late)
    head, tail = pool[: len(pool) - last_free], pool[len(pool) - last_free :]
    sessions = [
        head[i * layout.TRIALS_PER_SESSION : (i + 1) * layout.TRIALS_PER_SESSION]
        for i in range(sizes.sessions - 1)
    ]
    sessions.append(rng.permutation(np.concatenate([tail, np.repeat(late, 3)])))
    masterordering = np.concatenate(sessions) + 1
    assert masterordering.size == n_trials
    return {"masterordering": masterordering, "subjectim": subjectim, "sharedix": shared + 1}


def trial_table(design: dict[str, np.ndarray], subject: int) -> pd.DataFrame:
    """The generator's own trial list for one subject (used for betas and derivatives)."""
    mo = design["masterordering"]
    nsd_id = design["subjectim"][subject - 1, mo - 1] - 1
    t = np.arange(mo.size)
    rep = pd.Series(mo).groupby(mo).cumcount().to_numpy()
    return pd.DataFrame(
        {
            "global_trial": t,
            "session": t // layout.TRIALS_PER_SESSION + 1,
            "tenk": mo,
            "nsd_id": nsd_id,
            "rep": rep,
            "shared": mo <= len(design["sharedix"]),
        }
    )


# --------------------------------------------------------------------------- images and captions


def _position_words(cx: float, cy: float) -> str:
    h = "left" if cx < 0.4 else "right" if cx > 0.6 else "center"
    v = "top" if cy < 0.4 else "bottom" if cy > 0.6 else "middle"
    if v == "middle":
        return "in the center" if h == "center" else f"on the {h}"
    return f"at the {v}" if h == "center" else f"at the {v} {h}"


def _object_phrase(obj: dict, with_color: bool = True) -> str:
    cat, color = obj["category"], obj["color"]
    if cat == "face":
        return "a face"
    if cat == "person":
        return f"a person in {color}" if with_color else "a person"
    if cat == "sign":
        return f"a {color} sign with writing" if with_color else "a sign with writing"
    return f"a {color} {cat}" if with_color else f"a {cat}"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def captions_for(scene: dict) -> list[str]:
    """Five captions that describe a scene (what COCO's five annotators would have written)."""
    objs = scene["objects"]
    where = "outdoors" if scene["outdoor"] else "in a room"
    kind = "an outdoor" if scene["outdoor"] else "an indoor"
    with_pos = [f"{_object_phrase(o)} {_position_words(o['cx'], o['cy'])}" for o in objs]
    caps = [_join(with_pos) + f", {where}", f"{kind} scene with " + _join([_object_phrase(o) for o in objs])]
    if len(objs) >= 2:
        a, b = objs[0], objs[1]
        dx, dy = b["cx"] - a["cx"], b["cy"] - a["cy"]
        if abs(dy) > abs(dx):
            rel = "above" if dy > 0 else "below"
        else:
            rel = "to the left of" if dx > 0 else "to the right of"
        caps.append(f"{_object_phrase(a)} {rel} {_object_phrase(b)}")
    else:
        caps.append(f"{_object_phrase(objs[0])} {_position_words(objs[0]['cx'], objs[0]['cy'])} {where}")
    count = ("one object", "two objects", "three objects")[len(objs) - 1]
    caps.append(f"{count} {'under the sky' if scene['outdoor'] else 'in a room'}")
    caps.append("a picture of " + _join([_object_phrase(o, with_color=False) for o in objs]))
    return caps


def make_scenes(n: int, rng: np.random.Generator) -> list[dict]:
    scenes = []
    for _ in range(n):
        outdoor = bool(rng.random() < 0.5)
        n_obj = int(rng.choice([1, 2, 3], p=[0.3, 0.45, 0.25]))
        objs: list[dict] = []
        for _k in range(n_obj):
            for _try in range(8):
                cx, cy = rng.uniform(0.18, 0.82, size=2)
                if all((cx - o["cx"]) ** 2 + (cy - o["cy"]) ** 2 > 0.09 for o in objs):
                    break
            cat = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
            color = COLOR_NAMES[int(rng.integers(len(COLOR_NAMES)))]
            if cat == "face":
                color = ("yellow", "orange", "white")[int(rng.integers(3))]
            objs.append(
                {
                    "category": cat,
                    "color": color,
                    "cx": float(cx),
                    "cy": float(cy),
                    "r": float(rng.uniform(0.1, 0.2)),
                }
            )
        scenes.append(
            {
                "outdoor": outdoor,
                "horizon": float(rng.uniform(0.35, 0.7)),
                "bg_top": rng.uniform(0, 1, size=3).tolist(),
                "bg_bottom": rng.uniform(0, 1, size=3).tolist(),
                "objects": objs,
            }
        )
    return scenes


def render(scene: dict, size: int) -> np.ndarray:
    """Draw one scene as uint8 (size, size, 3)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy, xx = (yy + 0.5) / size, (xx + 0.5) / size
    img = np.empty((size, size, 3), np.float32)
    top, bottom = np.array(scene["bg_top"], np.float32), np.array(scene["bg_bottom"], np.float32)
    h = scene["horizon"]
    if scene["outdoor"]:
        sky_a, sky_b = np.array([0.45, 0.65, 0.95]), np.array([0.8, 0.9, 1.0])
        ground = 0.2 + 0.5 * bottom * np.array([0.6, 1.0, 0.5])
        t = np.clip(yy / h, 0, 1)[..., None]
        img[:] = (1 - t) * sky_a + t * sky_b
        img[yy >= h] = ground
        img[yy >= h] *= (0.75 + 0.25 * (1 - yy[yy >= h]))[:, None]
    else:
        wall = 0.35 + 0.45 * top
        floor = 0.15 + 0.4 * bottom
        t = yy[..., None]
        img[:] = wall * (1.1 - 0.3 * t)
        img[yy >= h + 0.15] = floor
    for o in scene["objects"]:
        col = np.array(PALETTE[o["color"]], np.float32) / 255
        cx, cy, r = o["cx"], o["cy"], o["r"]
        cat = o["category"]
        # draw inside the object's bounding box only (every shape stays within 1.3 r of its center)
        y0, y1 = max(0, int((cy - 1.3 * r) * size)), min(size, int((cy + 1.3 * r) * size) + 2)
        x0, x1 = max(0, int((cx - 1.3 * r) * size)), min(size, int((cx + 1.3 * r) * size) + 2)
        xs, ys, im = xx[y0:y1, x0:x1], yy[y0:y1, x0:x1], img[y0:y1, x0:x1]
        if cat == "circle":
            im[(xs - cx) ** 2 + (ys - cy) ** 2 < r * r] = col
        elif cat == "square":
            im[(np.abs(xs - cx) < r * 0.85) & (np.abs(ys - cy) < r * 0.85)] = col
        elif cat == "triangle":
            im[(ys < cy + r) & (ys > cy - r) & (np.abs(xs - cx) < (ys - (cy - r)) * 0.6)] = col
        elif cat == "face":
            im[(xs - cx) ** 2 + (ys - cy) ** 2 < r * r] = col
            for ex in (-0.35, 0.35):
                im[(xs - cx - ex * r) ** 2 + (ys - cy + 0.25 * r) ** 2 < (0.15 * r) ** 2] = 0.05
            im[(np.abs(xs - cx) < 0.4 * r) & (np.abs(ys - cy - 0.45 * r) < 0.07 * r + 0.5 / size)] = 0.3
        elif cat == "person":
            skin = np.array([0.95, 0.8, 0.65], np.float32)
            im[(xs - cx) ** 2 + (ys - cy + 0.75 * r) ** 2 < (0.3 * r) ** 2] = skin
            im[(np.abs(xs - cx) < 0.3 * r) & (ys > cy - 0.45 * r) & (ys < cy + 0.35 * r)] = col
            for lx in (-0.15, 0.15):
                im[
                    (np.abs(xs - cx - lx * r) < 0.08 * r + 0.5 / size) & (ys >= cy + 0.35 * r) & (ys < cy + r)
                ] = 0.1
        elif cat == "sign":
            box = (np.abs(xs - cx) < r) & (np.abs(ys - cy) < 0.6 * r)
            im[box] = col
            for k in range(3):
                ly = cy - 0.35 * r + k * 0.35 * r
                line = (np.abs(xs - cx) < 0.8 * r) & (np.abs(ys - ly) < 0.06 * r + 0.5 / size)
                im[line & box] = 0.05 if col.mean() > 0.4 else 0.95
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


def image_features(images: np.ndarray, chunk: int = 256) -> dict[str, np.ndarray]:
    """Encoding-model features on a FEATURE_GRID^2 grid: luminance, local contrast, red-green, blue-yellow."""
    n, s = images.shape[:2]
    b, g = s // FEATURE_GRID, FEATURE_GRID
    w = np.array([0.2125, 0.7154, 0.0721], np.float32)
    keys = ("lum", "con", "rg", "by")
    feats = {k: np.empty((n, g * g), np.float32) for k in keys}
    for i in range(0, n, chunk):
        x = images[i : i + chunk].astype(np.float32) / 255
        m = len(x)
        rgb = x.reshape(m, g, b, g, b, 3).mean(axis=(2, 4))  # block means per channel
        lum = x @ w
        lum2 = (lum * lum).reshape(m, g, b, g, b).mean(axis=(2, 4))
        mlum = rgb @ w
        feats["lum"][i : i + m] = mlum.reshape(m, -1)
        feats["con"][i : i + m] = np.sqrt(np.maximum(lum2 - mlum * mlum, 0)).reshape(m, -1)
        feats["rg"][i : i + m] = (rgb[..., 0] - rgb[..., 1]).reshape(m, -1)
        feats["by"][i : i + m] = (rgb[..., 2] - 0.5 * (rgb[..., 0] + rgb[..., 1])).reshape(m, -1)
    for k in keys:
        v = feats[k]
        feats[k] = (v - v.mean(0)) / (v.std() + 1e-6)
    return feats


# --------------------------------------------------------------------------- voxels


def make_rois(grid: tuple[int, int, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """ROI volumes (X, Y, Z) int16 with -1 outside the brain; plus 'brain' (bool) and 'ecc' per visual voxel."""
    u, v, w = np.meshgrid(*[(np.arange(n) + 0.5) / n for n in grid], indexing="ij")
    brain = ((u - 0.5) / 0.48) ** 2 + ((v - 0.5) / 0.5) ** 2 + ((w - 0.5) / 0.48) ** 2 < 1.0
    general = brain & (v < 0.42)
    d_pole = np.sqrt((u - 0.5) ** 2 + v**2 + (w - 0.5) ** 2)
    visual = general & (d_pole < np.quantile(d_pole[general], 0.55))
    rois = {name: np.where(brain, 0, -1).astype(np.int16) for name in layout.ROI_NAMES}
    rois["nsdgeneral"][general] = 1
    dv = d_pole[visual]
    edges = np.quantile(dv, [0.25, 0.5, 0.75])
    area = np.searchsorted(edges, dv)  # 0..3 -> V1..V4
    dorsal = w[visual] > 0.5
    label = np.where(area == 3, 7, 2 * area + 1 + dorsal).astype(np.int16)
    rois["prf-visualrois"][visual] = label
    rois["prf-eccrois"][visual] = 1 + rng.integers(0, 5, size=int(visual.sum())).astype(np.int16)
    higher = brain & (v < 0.6) & ~visual
    centers = {
        "floc-faces": (0.3, 0.4, 0.35),
        "floc-words": (0.7, 0.4, 0.35),
        "floc-places": (0.5, 0.45, 0.7),
        "floc-bodies": (0.3, 0.35, 0.7),
    }
    nlabels = {k: len(CTABS[k]) - 1 for k in centers}
    for name, (cu, cv, cw) in centers.items():
        d = np.sqrt((u - cu) ** 2 + (v - cv) ** 2 + (w - cw) ** 2)
        sel = higher & (d < 0.2)
        if not sel.any():
            sel = higher & (d <= d[higher].min())
        sub = np.clip(((v[sel] - v[sel].min()) / 0.2 * nlabels[name]).astype(int) + 1, 1, nlabels[name])
        rois[name][sel] = sub.astype(np.int16)
    rois["streams"] = streams_volume(rois, brain, v, w)
    rois_out = dict(rois)
    rois_out["brain"] = brain
    return rois_out


def streams_volume(
    rois: dict[str, np.ndarray], brain: np.ndarray, v: np.ndarray, w: np.ndarray
) -> np.ndarray:
    """NSD's `streams` labels from the other ROIs (no random draws): early = V1-V3, midventral = hV4,
    ventral = the category-selective floc voxels, the rest of nsdgeneral split into mid/outer lateral
    (w <= 0.5) and parietal (w > 0.5) by distance from the occipital pole."""
    out = np.where(brain, 0, -1).astype(np.int16)
    vis = rois["prf-visualrois"]
    floc = np.zeros(brain.shape, bool)
    for name in ("floc-faces", "floc-words", "floc-places", "floc-bodies"):
        floc |= rois[name] > 0
    rest = (rois["nsdgeneral"] > 0) & (vis <= 0) & ~floc
    mid = v < (np.median(v[rest]) if rest.any() else 0.0)
    dorsal = w > 0.5
    out[rest & mid & ~dorsal] = 3
    out[rest & mid & dorsal] = 4
    out[rest & ~mid & ~dorsal] = 6
    out[rest & ~mid & dorsal] = 7
    out[floc & (vis <= 0)] = 5
    out[vis == 7] = 2
    out[(vis >= 1) & (vis <= 6)] = 1
    return out


def voxel_model(rois: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Weights of the simulated encoding model for every brain voxel (C order over X, Y, Z)."""
    brain = rois["brain"]
    n = int(brain.sum())
    g = FEATURE_GRID
    general = rois["nsdgeneral"][brain] > 0
    vis = rois["prf-visualrois"][brain]
    area = np.select([vis >= 7, vis >= 5, vis >= 3, vis >= 1], [4, 3, 2, 1], 0)  # 0 = not retinotopic
    sigma = np.array([4.0, 1.0, 1.5, 2.2, 3.2], np.float32)[area]
    rf_x = rng.uniform(0, g, size=n).astype(np.float32)
    rf_y = rng.uniform(0, g, size=n).astype(np.float32)
    coef = np.zeros((n, 4), np.float32)  # lum, con, rg, by
    coef[:, 0] = rng.normal(0, 1, n)
    coef[:, 1] = np.abs(rng.normal(1, 0.3, n))
    coef[:, 2:] = rng.normal(0, 0.5, (n, 2))
    cats = np.zeros((n, 4), np.float32)  # face, body, words, place
    for j, name in enumerate(("floc-faces", "floc-bodies", "floc-words", "floc-places")):
        cats[rois[name][brain] > 0, j] = 2.0
    higher = general & (area == 0)
    cats[higher] += rng.normal(0, 0.4, (int(higher.sum()), 4)).astype(np.float32)
    retino_w = np.where(area > 0, 1.0, np.where(general, 0.4, 0.0)).astype(np.float32)
    gain = np.where(general | (cats.max(1) > 0), rng.uniform(0.8, 1.5, n), 0.0).astype(np.float32)
    return {
        "sigma": sigma, "rf_x": rf_x, "rf_y": rf_y, "coef": coef, "cats": cats,
        "retino_w": retino_w, "gain": gain, "area": area.astype(np.int8),
        "baseline": rng.normal(0.5, 0.5, n).astype(np.float32),
    }  # fmt: skip


def voxel_drive(model: dict[str, np.ndarray], feats: dict[str, np.ndarray], cats: np.ndarray) -> np.ndarray:
    """Noise-free response (n_images, n_voxels), z-scored per voxel, times the voxel's gain."""
    g = FEATURE_GRID
    gy, gx = np.mgrid[0:g, 0:g].astype(np.float32) + 0.5
    d2 = (gx.reshape(1, -1) - model["rf_x"][:, None]) ** 2 + (gy.reshape(1, -1) - model["rf_y"][:, None]) ** 2
    rf = np.exp(-d2 / (2 * model["sigma"][:, None] ** 2))
    rf /= rf.sum(1, keepdims=True)  # (n_vox, g*g)
    drive = np.zeros((cats.shape[0], rf.shape[0]), np.float32)
    for j, key in enumerate(("lum", "con", "rg", "by")):
        drive += (feats[key] @ rf.T) * (model["coef"][:, j] * model["retino_w"])[None]
    drive += cats @ model["cats"].T
    sd = drive.std(0)
    drive = (drive - drive.mean(0)) / np.where(sd > 0, sd, 1)
    return drive * model["gain"][None]


# --------------------------------------------------------------------------- writers


def _write_nifti(path: Path, data: np.ndarray) -> None:
    img = nib.Nifti1Image(data, np.diag([1.8, 1.8, 1.8, 1.0]))
    img.header.set_data_dtype(data.dtype)
    nib.save(img, str(path))


def _stim_info(design: dict[str, np.ndarray], sizes: SynthSizes, rng: np.random.Generator) -> pd.DataFrame:
    n = sizes.n_images
    mo = design["masterordering"]
    shared = np.zeros(n, bool)
    shared[design["sharedix"] - 1] = True
    coco_split = np.where(rng.random(n) < 0.05, "val2017", "train2017")
    cols: dict[str, object] = {
        "cocoId": coco_ids(n),
        "cocoSplit": coco_split,
        "cropBox": ["(0, 0, 0.1, 0.1)"] * n,
        "loss": np.round(rng.uniform(0, 0.2, n), 4),
        "nsdId": np.arange(n),
        "flagged": np.zeros(n, bool),
        "BOLD5000": np.zeros(n, bool),
        "shared1000": shared,
    }
    seen = np.zeros((layout.N_SUBJECTS, n), np.int64)
    reps = np.zeros((layout.N_SUBJECTS, 3, n), np.int64)
    for k in range(layout.N_SUBJECTS):
        ids = design["subjectim"][k, mo - 1] - 1
        seen[k, ids] = 1
        rep = pd.Series(mo).groupby(mo).cumcount().to_numpy()
        reps[k, rep, ids] = np.arange(mo.size) + 1  # 1-based global trial numbers
    for k in range(layout.N_SUBJECTS):
        cols[f"subject{k + 1}"] = seen[k]
    for k in range(layout.N_SUBJECTS):
        for r in range(3):
            cols[f"subject{k + 1}_rep{r}"] = reps[k, r]
    return pd.DataFrame(cols)


def coco_ids(n: int) -> np.ndarray:
    """Synthetic COCO ids: distinct, not equal to the NSD id (so code that confuses them fails)."""
    return 100_000 + 7 * np.arange(n) + 3


def _responses(subject: int, trials: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    n = len(trials)
    t = trials["global_trial"].to_numpy()
    within = t % layout.TRIALS_PER_SESSION
    run_sizes = np.array([63, 62] * (layout.RUNS_PER_SESSION // 2))
    run_starts = np.concatenate([[0], np.cumsum(run_sizes)[:-1]])
    run = np.searchsorted(run_starts, within, side="right")
    trial_in_run = within - run_starts[run - 1] + 1
    isold = (trials["rep"].to_numpy() > 0).astype(int)
    correct = (rng.random(n) < 0.8).astype(int)
    missing = (rng.random(n) < 0.01).astype(int)
    rt = np.round(rng.uniform(400, 1500, n), 1)
    rt[missing == 1] = np.nan
    first_seen = trials.groupby("tenk")["global_trial"].transform("min").to_numpy()
    prev = trials.groupby("tenk")["global_trial"].shift(1).to_numpy()
    return pd.DataFrame(
        {
            "SUBJECT": subject,
            "SESSION": trials["session"].to_numpy(),
            "RUN": run,
            "TRIAL": trial_in_run,
            "73KID": trials["nsd_id"].to_numpy() + 1,
            "10KID": trials["tenk"].to_numpy(),
            "TIME": np.round(737000 + t * 4.0 / 86400, 8),
            "ISOLD": isold,
            "ISCORRECT": correct,
            "RT": rt,
            "CHANGEMIND": np.zeros(n, int),
            "MEMORYRECENT": np.where(isold == 1, t - prev, np.nan),
            "MEMORYFIRST": np.where(isold == 1, t - first_seen, np.nan),
            "ISOLDCURRENT": isold,
            "ISCORRECTCURRENT": correct,
            "TOTAL1": 1 - missing,
            "TOTAL2": np.zeros(n, int),
            "BUTTON": np.where(missing == 1, np.nan, 1 + (rng.random(n) < 0.5)),
            "MISSINGDATA": missing,
        }
    )[RESPONSES_COLUMNS]


def _bd_order(trials: pd.DataFrame, legacy: int, shared: bool) -> tuple[np.ndarray, list[np.ndarray]]:
    """brain-diffuser's order: images in first-presentation order within the legacy sessions."""
    sel = trials[(trials["session"] <= legacy) & (trials["shared"] == shared)]
    order: dict[int, list[int]] = {}
    for nid, t in zip(sel["nsd_id"].to_numpy(), sel["global_trial"].to_numpy()):
        order.setdefault(int(nid), []).append(int(t))
    return np.array(list(order), np.int64), [np.array(v) for v in order.values()]


def synthesize(
    out: Path | str,
    seed: int = 0,
    *,
    overwrite: bool = False,
    progress: bool = False,
    **sizes,
) -> Path:
    """Write a synthetic NSD root at `out` (atomically: built in a temp folder, then renamed). Returns `out`.

    Keyword sizes override SynthSizes fields (sessions, shared, image_size, missing_shared, nifti_subjects,
    derivative_subjects, noise_sd, grids). An existing complete dataset with the same seed and sizes is
    kept as is; anything else at `out` needs overwrite=True.
    """
    out = Path(out).expanduser().resolve()
    if int(seed) < 0:
        raise UsageError(f"seed must be a non-negative integer (got {seed})")
    spec = SynthSizes(**sizes)
    spec.check()
    meta_path = out / layout.SYNTH_META
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            same = meta.get("seed") == seed and meta.get("sizes") == _jsonable(asdict(spec))
            if same and meta.get("version") == SYNTH_VERSION:
                return out
            if same:  # written by an older generator (e.g. without the streams ROI): rebuild it
                return synthesize(out, seed, overwrite=True, progress=progress, **sizes)
            raise UsageError(
                f"{out} holds a synthetic NSD with seed {meta.get('seed')} and other sizes or seed; "
                "pass --force / overwrite=True to replace it"
            )
        raise UsageError(
            f"{out} exists and is not a synthetic NSD; pass --force / overwrite=True to replace it"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(out, replace=overwrite) as tmp:
        _generate(tmp, seed, spec, progress)
    if not meta_path.is_file():
        raise UsageError(f"{out} exists and is not this synthetic NSD; pass --force / overwrite=True")
    return out


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


def _generate(root: Path, seed: int, spec: SynthSizes, progress: bool) -> None:
    rng = np.random.default_rng(seed)
    steps = ["design", "images", *[f"subj{s:02d}" for s in SYNTH_SUBJECTS], "derivatives"]
    with progress_bar(progress, len(steps), "synthetic NSD", transient=True) as advance:
        _generate_steps(root, seed, spec, rng, advance)


def _generate_steps(root: Path, seed: int, spec: SynthSizes, rng: np.random.Generator, step) -> None:
    def mk(rel: str) -> Path:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    design = make_design(spec, np.random.default_rng(rng.integers(2**63)))
    scipy.io.savemat(
        mk(layout.EXPDESIGN),
        {
            "masterordering": design["masterordering"][None, :].astype(np.float64),
            "subjectim": design["subjectim"].astype(np.float64),
            "sharedix": design["sharedix"][None, :].astype(np.float64),
        },
    )
    _stim_info(design, spec, np.random.default_rng(rng.integers(2**63))).to_csv(mk(layout.STIM_INFO))
    step()

    scenes = make_scenes(spec.n_images, np.random.default_rng(rng.integers(2**63)))
    images = np.stack([render(s, spec.image_size) for s in scenes])
    with h5py.File(mk(layout.STIMULI), "w") as f:
        f.create_dataset(
            layout.STIM_IMAGE_KEY,
            data=images,
            chunks=(1, *images.shape[1:]),
            compression="gzip",
            compression_opts=1,
        )
    caps = [captions_for(s) for s in scenes]
    _write_captions(root, mk, caps, spec.n_images, np.random.default_rng(rng.integers(2**63)))
    feats = image_features(images)
    cat_flags = np.array(
        [
            [
                any(o["category"] == "face" for o in s["objects"]),
                any(o["category"] == "person" for o in s["objects"]),
                any(o["category"] == "sign" for o in s["objects"]),
                s["outdoor"],
            ]
            for s in scenes
        ],
        np.float32,
    )
    cat_flags = (cat_flags - cat_flags.mean(0)) / (cat_flags.std(0) + 1e-6)
    step()

    truth: dict[str, np.ndarray] = {}
    for s in SYNTH_SUBJECTS:
        srng = np.random.default_rng(rng.integers(2**63))
        trials = trial_table(design, s)
        _responses(s, trials, srng).to_csv(mk(layout.responses(s)), sep="\t", index=False, na_rep="NaN")
        rois = make_rois(tuple(spec.grids[s]), srng)
        brain = rois.pop("brain")
        for name in layout.ROI_NAMES:
            _write_nifti(mk(layout.roi_file(s, name)), rois[name])
            mk(layout.ctab_file(s, name)).write_text("\n".join(CTABS[name]) + "\n")
        _write_nifti(mk(layout.brainmask_file(s)), brain.astype(np.int16))
        model = voxel_model(rois | {"brain": brain}, srng)
        drive = voxel_drive(model, feats, cat_flags)  # (n_images, n_brain)
        n_brain = int(brain.sum())
        n_sess = spec.sessions
        sess_off = srng.normal(0, 0.5, (n_sess, n_brain)).astype(np.float32)
        sess_gain = (1 + srng.normal(0, 0.1, (n_sess, n_brain))).astype(np.float32)
        ids = trials["nsd_id"].to_numpy()
        sess = trials["session"].to_numpy() - 1
        noise = srng.normal(0, spec.noise_sd, (len(trials), n_brain)).astype(np.float32)
        psc = model["baseline"][None] + sess_gain[sess] * drive[ids] + sess_off[sess] + noise
        raw = np.clip(np.rint(psc * layout.BETAS_SCALE), -32768, 32767).astype(
            np.int16
        )  # (n_trials, n_brain)
        bdir = mk(layout.betas_hdf5(s, 1)).parent
        bdir.mkdir(parents=True, exist_ok=True)
        for k in range(n_sess):
            vol = np.zeros((layout.TRIALS_PER_SESSION, *brain.shape), np.int16)
            vol[:, brain] = raw[k * layout.TRIALS_PER_SESSION : (k + 1) * layout.TRIALS_PER_SESSION]
            with h5py.File(root / layout.betas_hdf5(s, k + 1), "w") as f:
                f.create_dataset(
                    layout.BETAS_KEY, data=vol.transpose(0, 3, 2, 1), chunks=True, shuffle=True,
                    compression="gzip", compression_opts=1,
                )  # fmt: skip
            if s in spec.nifti_subjects:
                _write_nifti(
                    root / layout.betas_nifti(s, k + 1), np.ascontiguousarray(vol.transpose(1, 2, 3, 0))
                )
        gen = rois["nsdgeneral"][brain] > 0
        for key in ("rf_x", "rf_y", "sigma", "area", "gain", "coef", "cats"):
            truth[f"subj{s:02d}_{key}"] = model[key][gen]
        if s in spec.derivative_subjects:
            _write_derivatives(root, mk, s, trials, raw[:, gen], images, caps, spec)
        step()

    np.savez_compressed(mk(layout.SYNTH_TRUTH), **truth)
    meta = {
        "generator": "nsdbench.nsd.synth",
        "version": SYNTH_VERSION,
        "seed": seed,
        "sizes": _jsonable(asdict(spec)),
        "sessions": spec.sessions,
        "legacy_sessions": spec.legacy_sessions,
        "n_images": spec.n_images,
        "images_per_subject": spec.images_per_subject,
        "subjects": list(SYNTH_SUBJECTS),
        # nsd897 analogue: the real list removes 85 of 982 positions (8.7%); here the same fraction of the
        # synthetic nsd982-like set, at positions drawn with the seed (0-based, ascending-id order).
        "ss897_excluded_positions": _excluded_positions(design, spec, np.random.default_rng(seed + 897)),
        "noise_sd": spec.noise_sd,
        "feature_grid": FEATURE_GRID,
    }
    mk(layout.SYNTH_META).write_text(json.dumps(meta, indent=2) + "\n")
    step()


def _excluded_positions(
    design: dict[str, np.ndarray], spec: SynthSizes, rng: np.random.Generator
) -> list[int]:
    trials = trial_table(design, SYNTH_SUBJECTS[0])
    legacy = trials[(trials["session"] <= spec.legacy_sessions) & trials["shared"]]
    n = legacy["nsd_id"].nunique()
    k = max(1, round(n * 85 / 982))
    return sorted(int(p) for p in rng.choice(n, size=k, replace=False))


def _write_captions(root: Path, mk, caps: list[list[str]], n: int, rng: np.random.Generator) -> None:
    ids = coco_ids(n)
    # The stim-info csv's cocoSplit decides which json holds an image; reread it for consistency.
    split = pd.read_csv(root / layout.STIM_INFO, usecols=["cocoSplit"])["cocoSplit"].to_numpy()
    for name, tag in zip(layout.COCO_CAPTIONS, ("train2017", "val2017")):
        sel = np.flatnonzero(split == tag)
        doc = {
            "info": {"description": "nsdbench synthetic captions (COCO format)"},
            "images": [{"id": int(ids[i]), "file_name": f"{int(ids[i]):012d}.jpg"} for i in sel],
            "annotations": [
                {"image_id": int(ids[i]), "id": int(ids[i]) * 10 + j, "caption": c}
                for i in sel
                for j, c in enumerate(caps[i])
            ],
        }
        mk(f"{layout.ANNOTATIONS_DIR}/{name}").write_text(json.dumps(doc, separators=(",", ":")))


def _write_derivatives(root, mk, subject, trials, raw_general, images, caps, spec) -> None:
    """brain-diffuser processed_data (legacy sessions, first-presentation order) and MindEye2 betas."""
    legacy = spec.legacy_sessions
    for part, shared in (("train", False), ("test", True)):
        ids, groups = _bd_order(trials, legacy, shared)
        fmri = np.stack([raw_general[np.sort(g)].astype(np.float64).mean(0) for g in groups])
        np.save(mk(layout.bd_file("fmriavg_nsdgeneral", part, subject)), fmri)
        if part == "test":  # the train stimuli/captions are large and add nothing to the importer test
            np.save(mk(layout.bd_file("stim", part, subject)), images[ids])
            np.save(mk(layout.bd_file("cap", part, subject)), np.array([caps[i] for i in ids], dtype=str))
    # MindEye2-style: /300, then z-scored per voxel with statistics of the training (non-shared) trials only.
    x = raw_general.astype(np.float32) / layout.BETAS_SCALE
    train = ~trials["shared"].to_numpy()
    mu, sd = x[train].mean(0), x[train].std(0)
    with h5py.File(mk(layout.me2_betas(subject)), "w") as f:
        f.create_dataset("betas", data=((x - mu) / sd).astype(np.float32))
