"""ROI specifications by label: "nsdgeneral", "streams:early", "floc-faces:FFA-1", or a list of them.

A spec names an ROI volume (nsddata/ppdata/subjXX/func1pt8mm/roi/NAME.nii.gz) and optionally one label of
its ctab table; a bare name means every positive label. A list means the union of its members.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from nsdbench.errors import UsageError
from nsdbench.nsd import layout

RoiSpec = str | Sequence[str]
_NAME = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9_.-]*"
)  # a volume under roi/ (nsdgeneral, streams, Kastner2015, ...)


def parse_roi(spec: RoiSpec) -> tuple[tuple[str, str | None], ...]:
    """Pure: a spec -> ((volume name, label or None), ...), duplicates removed, order kept."""
    items = [spec] if isinstance(spec, str) else list(spec)
    if not items:
        raise UsageError(
            "ROI list is empty; expected e.g. 'nsdgeneral' or ['streams:early', 'streams:ventral']"
        )
    out: list[tuple[str, str | None]] = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise UsageError(f"ROI {item!r} is not a name like 'nsdgeneral' or 'streams:early'")
        name, _, label = item.strip().partition(":")
        if not _NAME.fullmatch(name):
            raise UsageError(
                f"ROI volume {name!r} in {item!r} is not a file name like {', '.join(layout.ROI_NAMES)}"
            )
        if _ and not label:
            raise UsageError(f"ROI {item!r} has an empty label after ':'")
        pair = (name, label or None)
        if pair not in out:
            out.append(pair)
    return tuple(out)


def roi_key(spec: RoiSpec) -> str:
    """Canonical text of a spec (cache keys, messages): members joined by '+'."""
    return "+".join(name if label is None else f"{name}:{label}" for name, label in parse_roi(spec))


def label_value(labels: dict[int, str], label: str, source: str) -> int:
    """The positive integer of a ctab label name; a one-line error listing the known names."""
    hits = [k for k, v in labels.items() if k > 0 and v == label]
    if not hits:
        known = ", ".join(v for k, v in sorted(labels.items()) if k > 0)
        raise UsageError(f"{source}: no label {label!r} (labels: {known})")
    return hits[0]
