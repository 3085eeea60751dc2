"""The CLI vocabulary: options every command spells alike, and the cheap checks run before any work.

A bad path, subject, split or protocol is a usage error (exit 2) found before data is opened or generated.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from nsdbench import config
from nsdbench.errors import UsageError

if TYPE_CHECKING:
    from nsdbench.metrics.protocols import Protocol

SUBJECTS_HELP = "Comma-separated subjects, e.g. 1,2,5,7 (default: all with data)."
OUT_HELP = "Where to write."


def subjects_opt(help: str = SUBJECTS_HELP, default: str | None = None):
    """`--subjects/-s 1,2,5,7` wherever several subjects are allowed."""
    return typer.Option(default, "--subjects", "-s", help=help)


def subject_opt(help: str = "NSD subject (1, 2, 5, 7)."):
    """`--subject/-s N` for commands that work on exactly one subject."""
    return typer.Option(..., "--subject", "-s", help=help)


def out_opt(help: str = OUT_HELP):
    return typer.Option("--out", "-o", help=help)


def parse_subjects(value: str | None) -> tuple[int, ...] | None:
    """'1,2,5,7' → (1, 2, 5, 7), duplicates removed, ascending; None or '' → None (all with data)."""
    if value is None or value == "":
        return None
    try:
        subjects = tuple(sorted({int(x) for x in value.replace(" ", "").split(",") if x}))
    except ValueError:
        raise UsageError(
            f"--subjects {value!r}: expected comma-separated subject numbers, e.g. 1,2,5,7"
        ) from None
    if not subjects or min(subjects) < 1:
        raise UsageError(f"--subjects {value!r}: expected subject numbers >= 1")
    return subjects


def protocol_artifacts(proto: Protocol, brain: bool | None) -> list[str]:
    """The pretrained artifacts scoring under `proto` loads: its feature networks and, when brain
    correlation is required (brain=True), its brain metrics' encoder: a registered checkpoint (GNet8), else
    the feature network nsdbench's own encoder is fitted on. Auto (None) skips a missing one with a note."""
    from nsdbench import weights
    from nsdbench.metrics.networks import ARTIFACT_OF
    from nsdbench.metrics.protocols import BrainMetric

    names = []
    for metric in proto.metrics:
        key = (getattr(metric, "network", None), getattr(metric, "weights", None))
        if key in ARTIFACT_OF:
            names.append(ARTIFACT_OF[key])
    brain_metrics = [m for m in proto.metrics if isinstance(m, BrainMetric)]
    if brain and brain_metrics:
        from nsdbench.metrics.encoder import default_spec

        registered = [m.encoder_artifact for m in brain_metrics if m.encoder_artifact in weights.artifacts()]
        if registered:  # a published encoder checkpoint (GNet8)
            names.extend(registered)
        else:  # nsdbench's encoder, fitted on the feature network below
            spec = default_spec("pretrained")
            names.append(ARTIFACT_OF[(spec.network, spec.network_weights)])
    return list(dict.fromkeys(names))


def parse_protocols(value: str | None) -> list[str]:
    """'nsdbench-v1,mindeye' → both names, each checked against the shipped protocols (exit 2)."""
    from nsdbench.metrics.protocols import PROTOCOLS, get_protocol

    if value is None or not value.strip():
        return []
    if value.strip() == "all":  # every shipped protocol (its current version)
        return list(PROTOCOLS)
    names = list(dict.fromkeys(p.strip() for p in value.split(",") if p.strip()))
    for name in names:
        get_protocol(name)
    return names


def check_split(name: str) -> str:
    from nsdbench.nsd.splits import SPLITS

    if name not in SPLITS:
        raise UsageError(f"--split: unknown split {name!r}; expected one of {', '.join(SPLITS)}")
    return name


def check_data(flag: str | None) -> str | None:
    """The `--data` value in effect (flag > NSDBENCH_DATA > config); a missing folder is a usage error."""
    value = config.get("data", flag)
    if value is None or str(value) in ("", "synthetic"):
        return flag
    path = Path(str(value)).expanduser()
    if not path.is_dir():
        where = "--data" if flag is not None else "NSDBENCH_DATA/config 'data'"
        raise UsageError(f"{where} {value}: no such NSD root folder (or use --data synthetic)")
    return flag


def check_exists(path: Path, what: str) -> Path:
    """A path that is not there at all is a usage error; a link that leads nowhere (dangling, a loop) is
    there, and the submission reader refuses it as an invalid file (exit 3)."""
    if not os.path.lexists(Path(path).expanduser()):
        raise UsageError(f"{what} {path} does not exist")
    return Path(path).expanduser()


def check_subjects_in(subjects: tuple[int, ...] | None, nsd) -> None:
    """Every requested subject has data in this NSD root (else exit 2, naming the available ones)."""
    available = [int(s) for s in nsd.subjects]
    missing = [s for s in subjects or () if s not in available]
    if missing:
        raise UsageError(
            f"--subjects: subject {missing[0]} has no data in {nsd.root} "
            f"(available: {','.join(map(str, available))})"
        )
