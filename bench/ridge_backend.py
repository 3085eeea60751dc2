"""Backend array operations for the ridge solvers: himalaya backends plus the few ops they lack.

himalaya's backend modules ("numpy", "torch", "torch_cuda") give asarray / to_numpy / eigh / matmul;
Cholesky solves, batched solves and top-k are dispatched here on the backend's name.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import numpy as np

from nsdbench.errors import UsageError

BACKENDS: tuple[str, ...] = ("auto", "numpy", "torch", "torch_cuda")


def resolve_backend_name(name: str) -> str:
    """ "auto" → torch_cuda when a GPU is visible, else numpy (on a CPU numpy's BLAS computes X @ X.T with
    a symmetric rank-k update, about twice as fast as torch's general matmul)."""
    if name not in BACKENDS:
        raise UsageError(f"unknown ridge backend {name!r}; expected one of {', '.join(BACKENDS)}")
    if name != "auto":
        return name
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return "numpy"
    return "torch_cuda" if torch.cuda.is_available() else "numpy"


def get_backend(name: str) -> ModuleType:
    """The himalaya backend module for `name`, without touching himalaya's global backend."""
    resolved = resolve_backend_name(name)
    try:
        module = importlib.import_module(f"himalaya.backend.{resolved}")
    except (ImportError, RuntimeError, OSError) as exc:  # e.g. torch_cuda without a GPU
        raise UsageError(f"ridge backend {resolved!r} is not available on this machine: {exc}") from None
    return module


def is_torch(b: ModuleType) -> bool:
    return b.name.startswith("torch")


def asarray(b: ModuleType, x: Any, dtype: str) -> Any:
    """Copy/convert to the backend's array type and dtype (on the backend's device)."""
    if is_torch(b):
        import torch

        if isinstance(x, np.ndarray) and not x.flags.writeable:
            x = np.array(x)  # torch.as_tensor warns on read-only memmaps
        device = "cuda" if b.name == "torch_cuda" else "cpu"
        return torch.as_tensor(x, dtype=getattr(torch, dtype), device=device)
    return np.ascontiguousarray(x, dtype=dtype)


def to_numpy(b: ModuleType, x: Any) -> np.ndarray:
    return b.to_numpy(x)


def eye(b: ModuleType, n: int, like: Any) -> Any:
    if is_torch(b):
        import torch

        return torch.eye(n, dtype=like.dtype, device=like.device)
    return np.eye(n, dtype=like.dtype)


def add_diag(b: ModuleType, a: Any, value: float) -> Any:
    """a + value * I (a new array; `a` is left unchanged)."""
    out = a.clone() if is_torch(b) else np.array(a)
    out.diagonal().add_(value) if is_torch(b) else np.fill_diagonal(out, np.diagonal(out) + value)
    return out


def transpose(b: ModuleType, x: Any) -> Any:
    return x.T


def contiguous(b: ModuleType, x: Any) -> Any:
    return x.contiguous() if is_torch(b) else np.ascontiguousarray(x)


def spd_solve(b: ModuleType, a: Any, rhs: Any) -> Any:
    """Solve a @ x = rhs for symmetric positive definite `a` (Cholesky; LU if not numerically PD)."""
    if is_torch(b):
        import torch

        chol, info = torch.linalg.cholesky_ex(a)
        if int(info) == 0:
            return torch.cholesky_solve(rhs, chol)
        return torch.linalg.solve(a, rhs)
    import scipy.linalg

    try:
        factor = scipy.linalg.cho_factor(a, lower=True, check_finite=False)
        return scipy.linalg.cho_solve(factor, rhs, check_finite=False)
    except np.linalg.LinAlgError:
        return scipy.linalg.solve(a, rhs, assume_a="sym", check_finite=False)


def batched_spd_solve(b: ModuleType, a: Any, rhs: Any) -> Any:
    """Solve a[i] @ x[i] = rhs[i] for a (m, k, k) stack and rhs (m, k); returns (m, k)."""
    if is_torch(b):
        import torch

        chol, info = torch.linalg.cholesky_ex(a)
        if bool((info == 0).all()):
            return torch.cholesky_solve(rhs[..., None], chol)[..., 0]
        return torch.linalg.solve(a, rhs[..., None])[..., 0]
    return np.linalg.solve(a, rhs[..., None])[..., 0]


def eigh(b: ModuleType, a: Any) -> tuple[Any, Any]:
    """Eigenvalues (clipped at 0: the inputs are Gram matrices) and eigenvectors of a symmetric matrix."""
    values, vectors = b.eigh(a)
    if is_torch(b):
        values = values.clamp(min=0)
    else:
        values = np.clip(values, 0, None)
    return values, vectors


def topk_abs_sorted(b: ModuleType, c: Any, k: int) -> Any:
    """Row indices of the k largest |c| in each column of c (p, t), ascending within a column: (k, t)."""
    if is_torch(b):
        import torch

        idx = torch.topk(c.abs(), k, dim=0, sorted=False).indices
        return torch.sort(idx, dim=0).values
    idx = np.argpartition(-np.abs(c), k - 1, axis=0)[:k]
    return np.sort(idx, axis=0)


def arange(b: ModuleType, n: int, like: Any) -> Any:
    if is_torch(b):
        import torch

        return torch.arange(n, device=like.device)
    return np.arange(n)


def zeros(b: ModuleType, shape: tuple[int, ...], like: Any) -> Any:
    if is_torch(b):
        import torch

        return torch.zeros(shape, dtype=like.dtype, device=like.device)
    return np.zeros(shape, dtype=like.dtype)


def index_array(b: ModuleType, idx: np.ndarray, like: Any) -> Any:
    if is_torch(b):
        import torch

        return torch.as_tensor(idx, dtype=torch.long, device=like.device)
    return np.asarray(idx, dtype=np.int64)


def all_finite(b: ModuleType, x: Any) -> bool:
    if is_torch(b):
        import torch

        return bool(torch.isfinite(x).all())
    return bool(np.isfinite(x).all())


def first_nonfinite(x: np.ndarray) -> tuple[int, ...]:
    bad = np.argwhere(~np.isfinite(x))
    return tuple(int(v) for v in bad[0]) if len(bad) else ()
