"""Device resolution, one rule for every command and library call: what 'auto', 'cuda' and 'cuda:N' mean here."""

from __future__ import annotations

import os

from nsdbench.errors import UsageError


def resolve_device(device: str | None = "auto", require_available: bool = True) -> str:
    """'auto' (or None) -> 'cuda' when a GPU is visible, else 'cpu'; a bare 'cuda' under torchrun/accelerate
    (LOCAL_RANK set) -> 'cuda:LOCAL_RANK', so each process of a node uses its own GPU. With
    `require_available`, a device torch cannot name, or CUDA on a machine without it, is a usage error."""
    import torch

    device = "auto" if device in (None, "") else str(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    local_rank = os.environ.get("LOCAL_RANK", "")
    if device == "cuda" and local_rank.isdigit():
        device = f"cuda:{int(local_rank)}"
    if not require_available:
        return device
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise UsageError(f"--device: unknown device {device!r}; expected cpu, cuda, cuda:N or auto") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine (use cpu or auto)")
    return device


def device_type(device: str | None) -> str:
    """'cuda:1' -> 'cuda'; 'auto' -> what resolve_device picks here."""
    return resolve_device(device, require_available=False).split(":")[0]
