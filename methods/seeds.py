"""Per-image seeds: a stable hash of (base seed, method, subject, nsd_id, sample).

A reconstruction's randomness depends only on which image it is, never on batch size, shard count or
the order in which images are generated. The hash is sha256 (not Python's salted `hash`), so seeds are
identical across processes, machines and Python versions.
"""

from __future__ import annotations

import hashlib

import numpy as np

SEED_BITS = 63  # fits in a signed int64 (numpy, torch.Generator.manual_seed)


def image_seed(base_seed: int, method: str, subject: int, nsd_id: int, sample: int) -> int:
    """The seed of one reconstruction: sha256 of the five keys, first 63 bits as a non-negative int."""
    key = f"nsdbench-seed-v1|{int(base_seed)}|{method}|{int(subject)}|{int(nsd_id)}|{int(sample)}"
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - SEED_BITS)


def numpy_rng(seed: int) -> np.random.Generator:
    """A NumPy generator for one image (PCG64 seeded from the image seed)."""
    return np.random.default_rng(seed)


def torch_generator(seed: int, device: str = "cpu"):
    """A torch.Generator for one image, on `device` (samplers draw their noise from it)."""
    import torch

    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen
