"""Where each NSD file lives relative to the dataset root (the public bucket's layout), and its conventions."""

from __future__ import annotations

from pathlib import Path

TRIALS_PER_SESSION = 750
N_SUBJECTS = 8  # per-subject arrays (subjectim, stim-info columns) always have 8 rows
DATA_SUBJECTS = (1, 2, 5, 7)  # the subjects who completed all 40 sessions
LEGACY_SESSIONS = 37  # sessions public before 2023-08 (nsd982 / nsd897 use these)
RUNS_PER_SESSION = 12

EXPDESIGN = "nsddata/experiments/nsd/nsd_expdesign.mat"
STIM_INFO = "nsddata/experiments/nsd/nsd_stim_info_merged.csv"
STIMULI = "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"
ANNOTATIONS_DIR = "nsddata_stimuli/stimuli/nsd/annotations"
COCO_CAPTIONS = ("captions_train2017.json", "captions_val2017.json")
# brain-diffuser / MindEye keep the curated caption array next to their code; we look in these places.
CURATED_CAPTIONS = (
    "COCO_73k_annots_curated.npy",
    "nsddata_stimuli/stimuli/nsd/annotations/COCO_73k_annots_curated.npy",
    "annots/COCO_73k_annots_curated.npy",
)
# Written only by the synthetic generator: its sizes, legacy-session cutoff and nsd897 rule.
SYNTH_META = "nsddata/nsdbench_synthetic.json"
SYNTH_TRUTH = "nsddata/nsdbench_synthetic_truth.npz"

STIM_IMAGE_KEY = "imgBrick"
BETAS_KEY = "betas"
BETAS_SCALE = 300.0  # int16 betas are percent signal change x 300

ROI_NAMES = (
    "nsdgeneral",
    "prf-visualrois",
    "prf-eccrois",
    "floc-faces",
    "floc-words",
    "floc-places",
    "floc-bodies",
    "streams",
)

# Derivatives written by published code (importers read them; the generator writes them too).
BD_PROCESSED = "derivatives/brain-diffuser/processed_data"
ME2_DIR = "derivatives/mindeye2"


def subj(subject: int) -> str:
    return f"subj{subject:02d}"


def responses(subject: int) -> str:
    return f"nsddata/ppdata/{subj(subject)}/behav/responses.tsv"


def betas_dir(subject: int) -> str:
    return f"nsddata_betas/ppdata/{subj(subject)}/func1pt8mm/betas_fithrf_GLMdenoise_RR"


def betas_hdf5(subject: int, session: int) -> str:
    return f"{betas_dir(subject)}/betas_session{session:02d}.hdf5"


def betas_nifti(subject: int, session: int) -> str:
    return f"{betas_dir(subject)}/betas_session{session:02d}.nii.gz"


def roi_file(subject: int, name: str) -> str:
    return f"nsddata/ppdata/{subj(subject)}/func1pt8mm/roi/{name}.nii.gz"


def brainmask_file(subject: int) -> str:
    return f"nsddata/ppdata/{subj(subject)}/func1pt8mm/brainmask.nii.gz"


def ctab_file(subject: int, name: str) -> str:
    return f"nsddata/freesurfer/{subj(subject)}/label/{name}.mgz.ctab"


def bd_file(kind: str, part: str, subject: int) -> str:
    """brain-diffuser processed_data file: kind in fmriavg_nsdgeneral | stim | cap; part in train | test."""
    return f"{BD_PROCESSED}/{subj(subject)}/nsd_{part}_{kind}_sub{subject}.npy"


def me2_betas(subject: int) -> str:
    return f"{ME2_DIR}/betas_all_{subj(subject)}_fp32_renorm.hdf5"


def find_curated_captions(root: Path) -> Path | None:
    for rel in CURATED_CAPTIONS:
        if (root / rel).is_file():
            return root / rel
    return None
