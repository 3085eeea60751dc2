"""`nsdbench data synth|info|import-brain-diffuser|import-mindeye2` and `nsdbench splits show`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from nsdbench.commands.options import (
    check_data,
    check_exists,
    check_split,
    check_subjects_in,
    parse_subjects,
    subject_opt,
    subjects_opt,
)
from nsdbench.commands.score import writable
from nsdbench.errors import NSDBenchError, UsageError
from nsdbench.terminal import print_whole

out = Console()
err = Console(stderr=True)

DATA_HELP = "NSD root, or 'synthetic' (default: NSDBENCH_DATA, else the synthetic NSD in NSDBENCH_HOME)."


def _open(data: str | None):
    """Open the NSD root after the cheap check: a missing folder is a usage error (exit 2)."""
    from nsdbench.nsd import open_nsd

    return open_nsd(check_data(data))


def describe(nsd) -> dict:
    """Everything `data info` prints: subjects, sessions, voxel counts, split sizes."""
    from nsdbench.nsd import layout
    from nsdbench.nsd.splits import SPLITS, get_split

    doc: dict = {
        "root": str(nsd.root),
        "synthetic": nsd.is_synthetic,
        "n_images": nsd.n_images,
        "image_size": nsd.image_size,
        "shared_images": int(nsd.shared_ids.size),
        "design_sessions": int(nsd.design["masterordering"].size // layout.TRIALS_PER_SESSION),
        "legacy_sessions": nsd.legacy_sessions,
        "subjects": {},
    }
    if nsd.is_synthetic:
        doc["seed"] = nsd.synthetic_meta.get("seed")
    for s in nsd.subjects:
        sessions = nsd.sessions(s)
        entry: dict = {
            "sessions": len(sessions),
            "trials": len(nsd.trials(s)),
            "betas_sessions": nsd.betas_sessions(s),
        }
        try:
            general = nsd.roi_mask(s, "nsdgeneral")
            entry["grid"] = list(general.shape)
            entry["voxels"] = {k: int(v.sum()) for k, v in nsd.roi_voxel_masks(s).items()}
        except NSDBenchError as exc:
            entry["voxels_error"] = str(exc)
        splits = {}
        for name in SPLITS:
            try:
                sp = get_split(nsd, name, s)
                splits[name] = {
                    "test_images": len(sp.test_ids),
                    "test_trials": sp.n_test_trials,
                    "train_images": len(sp.train_ids),
                    "sessions": [sp.sessions[0], sp.sessions[-1]],
                }
            except NSDBenchError as exc:
                splits[name] = {"error": str(exc)}
        entry["splits"] = splits
        doc["subjects"][str(s)] = entry
    return doc


def split_doc(split, order: str) -> dict:
    ids = split.order(order)
    trials = dict(zip(split.test_ids, split.test_trials))
    return {
        "name": split.name,
        "subject": split.subject,
        "sessions": list(split.sessions),
        "order": order,
        "n_test": len(split.test_ids),
        "n_test_trials": split.n_test_trials,
        "n_train": len(split.train_ids),
        "test_ids": list(ids),
        "test_trials": [list(trials[i]) for i in ids],
        "train_ids": list(split.train_order(order)),
    }


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(
        help="The NSD data layer: synthetic NSD, dataset summary, derivative importers.", no_args_is_help=True
    )

    @data_app.command("synth")
    def synth(
        out_dir: str = typer.Option(
            None, "--out", "-o", help="Folder to write (default: NSDBENCH_HOME/synthetic-nsd)."
        ),
        seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same dataset."),
        force: bool = typer.Option(False, "--force", help="Replace an existing dataset at --out."),
        sessions: int = typer.Option(
            None, "--sessions", help="Sessions per subject (default 3; 250 images each)."
        ),
        image_size: int = typer.Option(
            None, "--image-size", help="Image side in pixels (multiple of 16; default 64)."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    ) -> None:
        """Write a small synthetic NSD with the real layout (seconds, ~30 MB)."""
        from nsdbench.nsd.loader import synthetic_root
        from nsdbench.nsd.synth import synthesize

        if seed < 0:
            raise UsageError(f"--seed must be >= 0 (got {seed})")
        target = writable(Path(out_dir), "--out") if out_dir else synthetic_root()
        sizes = {k: v for k, v in (("sessions", sessions), ("image_size", image_size)) if v is not None}
        path = synthesize(target, seed=seed, overwrite=force, progress=not as_json, **sizes)
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        if as_json:
            print(json.dumps({"root": str(path), "seed": seed, "bytes": size}))
        else:
            out.print(f"synthetic NSD (seed {seed}) in {path} ({size / 1e6:.1f} MB)")

    @data_app.command("info")
    def info(
        data: str = typer.Option(None, "--data", help=DATA_HELP),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    ) -> None:
        """Subjects, sessions, voxel counts and split sizes of an NSD root."""
        doc = describe(_open(data))
        if as_json:
            print(json.dumps(doc, indent=2))
            return
        kind = "synthetic NSD" if doc["synthetic"] else "NSD"
        out.print(
            f"{kind} at {doc['root']}: {doc['n_images']} images ({doc['image_size']} px), "
            f"{doc['shared_images']} shared, {doc['design_sessions']} sessions in the design "
            f"(legacy 1..{doc['legacy_sessions']})"
        )
        table = Table()
        for col in ("subj", "sessions", "grid", "nsdgeneral", "V1/V2/V3/V4", "nsd982", "nsd897", "nsd1000"):
            table.add_column(col)

        def fmt(sp: dict) -> str:
            return "n/a" if "error" in sp else f"{sp['test_images']}/{sp['test_trials']}/{sp['train_images']}"

        for s, e in doc["subjects"].items():
            vox = e.get("voxels", {})
            table.add_row(
                s,
                f"{e['sessions']} ({len(e['betas_sessions'])} betas)",
                "x".join(map(str, e.get("grid", []))) or "?",
                str(vox.get("nsdgeneral", "?")),
                "/".join(str(vox.get(k, "?")) for k in ("V1", "V2", "V3", "V4")),
                *(fmt(e["splits"][n]) for n in ("nsd982", "nsd897", "nsd1000")),
            )
        print_whole(table)  # never squeeze a cell, in a terminal or piped
        out.print("splits: test images / test trials / train images")

    @data_app.command("import-brain-diffuser")
    def import_bd(
        folder: str = typer.Argument(
            ..., help="brain-diffuser processed_data folder (or its subjSS subfolder)."
        ),
        subject: int = subject_opt(),
        data: str = typer.Option(None, "--data", help=DATA_HELP),
        save: str = typer.Option(
            None, "--out", "-o", help="Write an .npz keyed by NSD id (ascending order)."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    ) -> None:
        """Check brain-diffuser's averaged betas against NSD and key them by NSD id."""
        from nsdbench.nsd.importers import import_brain_diffuser

        check_exists(Path(folder), "brain-diffuser folder")
        if save:
            writable(Path(save), "--out")
        nsd = _open(data)
        imp = import_brain_diffuser(nsd, folder, subject)
        doc = {
            "subject": subject,
            "folder": str(imp.folder),
            "train": imp.train_betas.shape,
            "test": imp.test_betas.shape,
        }
        doc["agreement"] = _compare_bd(nsd, imp)
        if save:
            tid, tx = imp.ascending("test")
            rid, rx = imp.ascending("train")
            np.savez(save, test_ids=np.array(tid), test_betas=tx, train_ids=np.array(rid), train_betas=rx)
            doc["out"] = str(save)
        _emit(doc, as_json)

    @data_app.command("import-mindeye2")
    def import_me2(
        path: str = typer.Argument(..., help="betas_all_subj0S_fp32_renorm.hdf5 (or its folder)."),
        subject: int = subject_opt(),
        data: str = typer.Option(None, "--data", help=DATA_HELP),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    ) -> None:
        """Check a MindEye2 betas file against NSD (trials x nsdgeneral voxels) and cache it as float32."""
        from nsdbench.nsd.importers import import_mindeye2

        check_exists(Path(path), "MindEye2 betas")
        nsd = _open(data)
        x = import_mindeye2(nsd, path, subject)
        doc = {"subject": subject, "path": str(path), "shape": list(x.shape), "sessions": x.shape[0] // 750}
        _emit(doc, as_json)

    @data_app.command("cache")
    def cache(
        data: str = typer.Option(None, "--data", help=DATA_HELP),
        subjects: str = subjects_opt(),
        roi: str = typer.Option("nsdgeneral", "--roi", help="ROI volume whose voxels (> 0) are kept."),
        normalize: str = typer.Option("none", "--normalize", help="none or session-zscore."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    ) -> None:
        """Read every session's betas once into the float32 cache (later loads are memory-mapped)."""
        import time

        subj = parse_subjects(subjects)
        nsd = _open(data)
        check_subjects_in(subj, nsd)
        todo = list(subj) if subj else nsd.subjects
        rows = []
        for s in todo:
            t0 = time.perf_counter()
            x = nsd.betas(
                s, sessions=nsd.betas_sessions(s), roi=roi, normalize=normalize, progress=not as_json
            )
            rows.append(
                {
                    "subject": s,
                    "shape": list(x.shape),
                    "file": str(x.filename),
                    "seconds": time.perf_counter() - t0,
                }
            )
        if as_json:
            print(json.dumps(rows))
        else:
            for r in rows:
                out.print(
                    f"subj{r['subject']:02d}: {r['shape'][0]} trials x {r['shape'][1]} voxels ({r['seconds']:.2f} s) -> {r['file']}"
                )

    app.add_typer(data_app, name="data")

    splits_app = typer.Typer(help="The fixed test splits nsd982 / nsd897 / nsd1000.", no_args_is_help=True)

    @splits_app.command("show")
    def show(
        name: str = typer.Argument(..., help="nsd982, nsd897 or nsd1000."),
        subject: int = subject_opt(),
        data: str = typer.Option(None, "--data", help=DATA_HELP),
        order: str = typer.Option("nsd-ascending", "--order", help="nsd-ascending or first-presentation."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    ) -> None:
        """The split's test ids (with their trials) and training-set size for one subject."""
        from nsdbench.nsd.splits import get_split

        check_split(name)
        if order not in ("nsd-ascending", "first-presentation"):
            raise UsageError(f"--order: expected nsd-ascending or first-presentation, got {order!r}")
        nsd = _open(data)
        check_subjects_in((subject,), nsd)
        split = get_split(nsd, name, subject)
        doc = split_doc(split, order)
        if as_json:
            print(json.dumps(doc))
            return
        out.print(
            f"{doc['name']} subject {subject}: sessions {doc['sessions'][0]}..{doc['sessions'][-1]}, "
            f"{doc['n_test']} test images ({doc['n_test_trials']} trials), {doc['n_train']} train images; "
            f"order {order}"
        )
        out.print(" ".join(str(i) for i in doc["test_ids"]), soft_wrap=True)

    app.add_typer(splits_app, name="splits")


def _compare_bd(nsd, imp) -> dict:
    """Largest difference from nsdbench's own averaged betas, when the raw betas are present."""
    from nsdbench.nsd.splits import get_split, split_betas

    split = get_split(nsd, "nsd982", imp.subject)
    if set(split.sessions) - set(nsd.betas_sessions(imp.subject)):
        return {"checked": False, "reason": "raw betas not present"}
    _, x = imp.ascending("test")
    ref = split_betas(nsd, split, "test")
    return {"checked": True, "test_max_abs_diff": float(np.abs(x - ref).max())}


def _emit(doc: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(doc, default=list))
    else:
        for k, v in doc.items():
            out.print(f"{k}: {v}")
