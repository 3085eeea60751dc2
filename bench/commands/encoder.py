"""`nsdbench encoder fit|show`: the canonical encoding model behind the brain-correlation metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from nsdbench import config
from nsdbench.commands.options import check_data, check_split, check_subjects_in, subject_opt
from nsdbench.devices import resolve_device
from nsdbench.errors import NSDBenchError

out = Console()


def _data_root(flag: str | None) -> Path:
    value = config.get("data", flag)
    if value is None or str(value) == "synthetic":
        from nsdbench.nsd.loader import synthetic_root

        return synthetic_root()
    return Path(value).expanduser()


def _print_summary(meta: dict[str, Any]) -> None:
    smoke = " [yellow](smoke: not for publication)[/]" if meta.get("smoke") else ""
    out.print(
        f"encoder {meta['spec']['name']} · subject {meta['subject']} · split {meta['split']} · "
        f"weights {meta['weights_mode']}{smoke}"
    )
    out.print(
        f"features {meta['n_features']} ({meta['network']}) · train {meta['n_train']} images · "
        f"test {meta['n_test']} images / {meta['n_test_trials']} trials · {meta['n_voxels']} voxels · "
        f"median alpha {meta['alpha_median']:g}"
    )
    table = Table(title="held-out accuracy (test split, repetition-averaged betas)")
    for col in ("ROI", "voxels", "mean r", "median r", "noise ceiling R²", "fraction of NC"):
        table.add_column(col, justify="left" if col == "ROI" else "right")
    for roi, acc in meta["accuracy"].items():
        table.add_row(
            roi,
            str(acc["voxels"]),
            f"{acc['mean_r']:.3f}",
            f"{acc['median_r']:.3f}",
            f"{acc['mean_nc']:.3f}",
            f"{acc['frac_nc']:.3f}",
        )
    out.print(table)
    out.print(
        "r: Pearson correlation per voxel. The noise ceiling is a fraction of variance (R²), comparable with "
        "r², not r; fraction of NC = Σ max(r, 0)² / Σ NC.",
        highlight=False,
    )
    if "path" in meta:
        out.print(f"[dim]{meta['path']}[/]")


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help="The encoding model behind brain correlation (fit, show accuracy).", no_args_is_help=True
    )

    @group.command("fit")
    def fit(
        subject: int = subject_opt(),
        data: str = typer.Option(None, "--data", help="NSD root, or 'synthetic' (default: config)."),
        split: str = typer.Option(None, "--split", help="Test split whose training images fit it."),
        weights_mode: str = typer.Option(None, "--weights", help="pretrained | random | tiny."),
        device: str = typer.Option(None, "--device", help="cpu, cuda, cuda:1 … (default: auto)."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    ) -> None:
        """Fit (or load from the cache) the canonical encoder of one subject and report its accuracy."""
        from nsdbench import weights
        from nsdbench.metrics.encoder import default_spec, fit_encoder
        from nsdbench.metrics.networks import ARTIFACT_OF
        from nsdbench.nsd import open_nsd

        split_name = check_split(str(config.get("split", split)))
        mode = weights.check_mode(str(config.get("weights", weights_mode)))
        data = check_data(data)
        dev = resolve_device(config.get("device", device))
        if mode == "pretrained":
            spec = default_spec(mode)
            weights.require_all([ARTIFACT_OF[(spec.network, spec.network_weights)]])
        nsd = open_nsd(data)
        check_subjects_in((subject,), nsd)
        model = fit_encoder(nsd, subject, split_name, mode, device=dev)
        meta = dict(model.meta, path=str(model.path) if model.path else None)
        if as_json:
            print(json.dumps(meta, indent=2, sort_keys=True))
        else:
            _print_summary(meta)

    @group.command("show")
    def show(
        subject: int = subject_opt(),
        data: str = typer.Option(None, "--data", help="NSD root, or 'synthetic' (default: config)."),
        split: str = typer.Option(None, "--split", help="Only encoders fit for this split."),
        weights_mode: str = typer.Option(None, "--weights", help="Only encoders with these weights."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    ) -> None:
        """Show the stored held-out accuracy of the newest cached encoder (fits nothing)."""
        from nsdbench.metrics.encoder import find_fitted

        if split is not None:
            check_split(split)
        root = _data_root(check_data(data))
        found = find_fitted(subject, split, weights_mode, data_root=root)
        if not found:
            what = " ".join(f"--{k} {v}" for k, v in (("split", split), ("weights", weights_mode)) if v)
            raise NSDBenchError(
                f"no fitted encoder for subject {subject} on {root}{' (' + what + ')' if what else ''}; run "
                f"`nsdbench encoder fit --subject {subject}{' ' + what if what else ''}`"
            )
        if as_json:
            print(json.dumps(found[0], indent=2, sort_keys=True))
        else:
            _print_summary(found[0])

    app.add_typer(group, name="encoder")
