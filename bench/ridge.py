"""Ridge regression for every decoder (voxels → features) and for the encoding model (features → voxels).

One solver on himalaya backends (numpy / torch / torch_cuda):
- the X side is prepared once for all targets: in the dual (kernel) form when voxels > samples, else the
  primal form; with a fixed alpha as one projector P (W = P @ Yc), with CV alphas as an eigendecomposition;
- targets stream through in chunks, so 197,376 CLIP-vision targets never need the full weight matrix in
  memory (weights go to a memory-mapped .npy, or are never formed at all by `fit_predict`);
- with the same alpha and intercept setting it equals `sklearn.linear_model.Ridge` (which brain-diffuser
  calls once per token: the per-token loop is the same as one multi-target fit).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from nsdbench import config, ridge_backend
from nsdbench.caches import ArrayCache, EntryWriter
from nsdbench.errors import DataError, UsageError
from nsdbench.progress import progress_bar

__all__ = [
    "RidgeModel",
    "RidgeSettings",
    "fit_predict",
    "fit_ridge",
    "kfold_indices",
    "rescale_to_training_moments",
]

Solver = Literal["auto", "primal", "dual"]


@dataclass(frozen=True)
class RidgeSettings:
    """How to fit: a fixed `alpha`, or `alphas` chosen by `cv`-fold CV (per target or one shared).

    selection = k > 0 keeps, per target, the k features most correlated with it (|Pearson r| on the training
    data) before fitting (fastl2lir / MindDiffuser style; fixed alpha only; k >= n_features means all).
    chunk_size is the number of targets read and transferred at once (a multiple of TARGET_BLOCK); it bounds
    memory and never changes the result.
    """

    alpha: float = 1.0
    alphas: tuple[float, ...] = ()
    cv: int = 5
    per_target: bool = True
    fit_intercept: bool = True
    selection: int = 0
    dtype: Literal["float32", "float64"] = "float64"
    backend: str = "auto"
    chunk_size: int = 4096
    solver: Solver = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))
        if self.dtype not in ("float32", "float64"):
            raise UsageError(f"ridge dtype must be float32 or float64, got {self.dtype!r}")
        if self.solver not in ("auto", "primal", "dual"):
            raise UsageError(f"ridge solver must be auto, primal or dual, got {self.solver!r}")
        if not self.alphas and not self.alpha > 0:
            raise UsageError(f"ridge alpha must be > 0, got {self.alpha}")
        if any(not a > 0 for a in self.alphas):
            raise UsageError(f"ridge alphas must all be > 0, got {self.alphas}")
        if self.alphas and self.cv < 2:
            raise UsageError(f"ridge cv must be >= 2 folds to choose alphas, got {self.cv}")
        if self.chunk_size < 1:
            raise UsageError(f"ridge chunk_size must be >= 1, got {self.chunk_size}")
        if self.selection < 0:
            raise UsageError(f"ridge selection must be >= 0, got {self.selection}")
        if self.selection and self.alphas:
            raise UsageError("ridge feature selection works with a fixed alpha only, not with CV alphas")
        ridge_backend.resolve_backend_name(self.backend)

    @property
    def uses_cv(self) -> bool:
        return bool(self.alphas)

    def identity(self) -> dict[str, Any]:
        """Everything that can change the fitted numbers (chunk_size cannot; the resolved backend can)."""
        d = asdict(self)
        d.pop("chunk_size")
        d["backend"] = ridge_backend.resolve_backend_name(self.backend)
        if not self.alphas:
            d.pop("cv")
            d.pop("per_target")
        else:
            d.pop("alpha")
        return d


@dataclass(frozen=True, eq=False)
class RidgeModel:
    """A fitted multi-target ridge: predictions = X @ W + intercept (W possibly sparse per target)."""

    coef: np.ndarray  # (n_features, n_targets), or (k, n_targets) with `index` (feature selection)
    intercept: np.ndarray  # (n_targets,)
    alpha: np.ndarray  # (n_targets,) the alpha used for each target
    settings: RidgeSettings
    n_features: int
    target_shape: tuple[int, ...]
    index: np.ndarray | None = None  # (k, n_targets) selected feature ids per target
    cv_score: np.ndarray | None = None  # (n_alphas, n_targets) mean CV R² per candidate alpha
    key: str | None = None
    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_targets(self) -> int:
        return int(self.intercept.shape[0])

    def predict(self, X: Any, chunk_size: int | None = None, progress: bool | None = None) -> np.ndarray:
        """Predictions (n, *target_shape) for new samples, streaming weights in target chunks."""
        X = _check_matrix(X, "X")
        if X.shape[1] != self.n_features:
            raise UsageError(
                f"ridge predict: X has {X.shape[1]} features (voxels) but the model was fit on {self.n_features}"
            )
        with single_threaded_if(X.shape[0] * X.shape[1] * self.n_targets <= 1e9):
            return self._predict(X, chunk_size, progress)

    def _predict(self, X: np.ndarray, chunk_size: int | None, progress: bool | None) -> np.ndarray:
        b = ridge_backend.get_backend(self.settings.backend)
        dt = self.settings.dtype
        Xb = ridge_backend.asarray(b, X, dt)
        out = np.empty((X.shape[0], self.n_targets), dtype=dt)
        dense = self._dense_blocks(b, dt) if self.index is None else None
        for chunk in _progress_chunks(
            self.n_targets, chunk_size or self.settings.chunk_size, "ridge predict", progress
        ):
            if dense is not None:
                for sl, _ in _blocks(chunk):
                    W, c = dense[sl.start // TARGET_BLOCK]
                    out[:, sl] = ridge_backend.to_numpy(b, Xb @ W + c)
                continue
            coef = ridge_backend.asarray(b, self.coef[:, chunk], dt)
            index = None if self.index is None else ridge_backend.index_array(b, self.index[:, chunk], Xb)
            for sl, rel in _blocks(chunk):
                if index is None:
                    W = ridge_backend.contiguous(b, coef[:, rel])
                else:
                    W = _dense_from_selected(b, coef[:, rel], index[:, rel], self.n_features)
                out[:, sl] = ridge_backend.to_numpy(
                    b, Xb @ W + ridge_backend.asarray(b, self.intercept[sl], dt)
                )
        return out.reshape((X.shape[0], *self.target_shape))

    def _dense_blocks(self, b, dt: str) -> list[tuple[Any, Any]]:
        """(W, intercept) per aligned TARGET_BLOCK of targets, contiguous on the backend: made on the first
        predict and kept, so later calls only multiply (same block shapes, hence the same numbers)."""
        key = (b.name, dt)
        cached = self.__dict__.get("_dense_cache")
        if cached is None or cached[0] != key:
            blocks = []
            for s in range(0, self.n_targets, TARGET_BLOCK):
                e = min(s + TARGET_BLOCK, self.n_targets)
                W = ridge_backend.contiguous(b, ridge_backend.asarray(b, self.coef[:, s:e], dt))
                blocks.append((W, ridge_backend.asarray(b, self.intercept[s:e], dt)))
            cached = (key, blocks)
            object.__setattr__(self, "_dense_cache", cached)
        return cached[1]


# ----------------------------------------------------------------------------------------------- inputs


def _check_matrix(X: Any, name: str) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2:
        raise UsageError(f"ridge: {name} must be 2-D (samples, features); got shape {X.shape}")
    if not np.issubdtype(X.dtype, np.number) or np.iscomplexobj(X):
        raise UsageError(f"ridge: {name} must hold real numbers; got dtype {X.dtype}")
    if X.size and not np.isfinite(X).all():
        r, c = ridge_backend.first_nonfinite(X)
        raise DataError(
            f"ridge: {name} has a non-finite value (NaN/inf) at sample {r}, feature {c}; "
            f"expected finite betas/features"
        )
    return X


def _check_targets(Y: Any, n: int) -> tuple[np.ndarray, tuple[int, ...]]:
    Y = np.asarray(Y)
    if Y.ndim == 0:
        raise UsageError("ridge: Y must have one row per sample; got a scalar")
    if Y.shape[0] != n:
        raise UsageError(
            f"ridge: X has {n} rows (samples) but Y has {Y.shape[0]}; expected one target row per sample"
        )
    if not np.issubdtype(Y.dtype, np.number) or np.iscomplexobj(Y):
        raise UsageError(f"ridge: Y must hold real numbers; got dtype {Y.dtype}")
    target_shape = tuple(Y.shape[1:])
    return Y.reshape(n, -1), target_shape


def _check_fit_inputs(X: Any, Y: Any, settings: RidgeSettings):
    if not isinstance(settings, RidgeSettings):
        raise UsageError(f"ridge: settings must be a RidgeSettings, got {type(settings).__name__}")
    X = _check_matrix(X, "X")
    Y2, target_shape = _check_targets(Y, X.shape[0])
    n = X.shape[0]
    if n < 2:
        raise DataError(f"ridge: need at least 2 training samples to fit, got {n}")
    if settings.uses_cv and n < 2 * settings.cv:
        raise DataError(
            f"ridge: {settings.cv}-fold CV needs at least {2 * settings.cv} training samples, got {n}"
        )
    if Y2.shape[1] == 0:
        raise UsageError("ridge: Y has no targets")
    return X, Y2, target_shape


def _target_block(b, Y2: np.ndarray, sl: slice, dt: str):
    block = Y2[:, sl]
    Yb = ridge_backend.asarray(b, block, dt)
    if not ridge_backend.all_finite(b, Yb):
        r, c = ridge_backend.first_nonfinite(np.asarray(block))
        raise DataError(
            f"ridge: Y has a non-finite value (NaN/inf) at sample {r}, target {sl.start + c}; "
            f"expected finite targets"
        )
    return Yb


def kfold_indices(n: int, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Contiguous K-fold splits, as sklearn.model_selection.KFold(k) without shuffling."""
    sizes = np.full(k, n // k)
    sizes[: n % k] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    idx = np.arange(n)
    return [
        (np.concatenate([idx[: bounds[i]], idx[bounds[i + 1] :]]), idx[bounds[i] : bounds[i + 1]])
        for i in range(k)
    ]


TARGET_BLOCK = 512
"""Targets are computed in fixed, aligned blocks of this many columns, so results never depend on
chunk_size (a BLAS call's rounding can depend on its shape); chunk_size rounds up to a multiple of it."""


def _blocks(sl: slice) -> Iterator[tuple[slice, slice]]:
    """(global slice, slice relative to `sl`) of each aligned compute block inside the chunk `sl`."""
    for s in range(sl.start, sl.stop, TARGET_BLOCK):
        e = min(s + TARGET_BLOCK, sl.stop)
        yield slice(s, e), slice(s - sl.start, e - sl.start)


def _progress_chunks(n_targets: int, chunk: int, description: str, enabled: bool | None) -> Iterator[slice]:
    chunk = -(-chunk // TARGET_BLOCK) * TARGET_BLOCK
    starts = range(0, n_targets, chunk)
    show = (sys.stderr.isatty() if enabled is None else enabled) and len(starts) > 1
    with progress_bar(show, n_targets, description) as advance:
        for s in starts:
            sl = slice(s, min(s + chunk, n_targets))
            yield sl
            advance(sl.stop - sl.start)


# ------------------------------------------------------------------------------------------- X side


class _Design:
    """Everything that depends on X only, computed once and shared by all target chunks."""

    def __init__(self, b, X: np.ndarray, settings: RidgeSettings):
        self.b = b
        self.s = settings
        dt = settings.dtype
        Xb = ridge_backend.asarray(b, X, dt)
        self.n, self.p = Xb.shape
        self.x_mean = Xb.mean(0) if settings.fit_intercept else ridge_backend.zeros(b, (self.p,), Xb)
        self.Xc = Xb - self.x_mean
        form = settings.solver
        if form == "auto":
            form = "dual" if self.p > self.n else "primal"
        self.form = form
        # The Gram matrix (dual) or the covariance (primal): computed once for every target and fold.
        self.gram = self.Xc @ self.Xc.T if form == "dual" else self.Xc.T @ self.Xc
        self._projector: dict[float, Any] = {}
        self._eigen: tuple[Any, Any, Any] | None = None

    def center_test(self, X_test: np.ndarray):
        return ridge_backend.asarray(self.b, X_test, self.s.dtype) - self.x_mean

    def test_map(self, alpha: float, Xt):
        """M (m, n) with predictions = M @ Yc + mean for centered test samples Xt (m, p), one alpha."""
        b = self.b
        A = ridge_backend.add_diag(b, self.gram, alpha)
        if self.form == "dual":  # Kt (K + aI)^-1 with Kt = Xt Xc^T: no (n, p) solve needed
            Kt = Xt @ self.Xc.T
            return ridge_backend.contiguous(
                b, ridge_backend.spd_solve(b, A, ridge_backend.contiguous(b, Kt.T)).T
            )
        return Xt @ self.projector(alpha)

    def projector(self, alpha: float):
        """P (p, n) with W = P @ Yc for one alpha (Cholesky solve)."""
        if alpha not in self._projector:
            b = self.b
            A = ridge_backend.add_diag(b, self.gram, alpha)
            if self.form == "dual":
                P = ridge_backend.contiguous(b, ridge_backend.spd_solve(b, A, self.Xc).T)  # Xc^T (K + aI)^-1
            else:
                P = ridge_backend.spd_solve(
                    b, A, ridge_backend.contiguous(b, self.Xc.T)
                )  # (Xc^T Xc + aI)^-1 Xc^T
            self._projector[alpha] = P
        return self._projector[alpha]

    def eigen(self):
        """(B (p, r), s (r,), R (r, n)) with W(alpha) = B @ diag(1 / (s + alpha)) @ R @ Yc."""
        if self._eigen is None:
            b = self.b
            s, V = ridge_backend.eigh(b, self.gram)
            if self.form == "dual":
                self._eigen = (self.Xc.T @ V, s, ridge_backend.contiguous(b, V.T))
            else:
                self._eigen = (V, s, ridge_backend.contiguous(b, (self.Xc @ V).T))
        return self._eigen

    def folds(self) -> list[tuple[Any, Any, Any, Any, Any]]:
        """Per CV fold: (train idx, val idx, Q (n_val, r), s (r,), R (r, n_train)); validation predictions
        for alpha are Q @ diag(1 / (s + alpha)) @ R @ Y_train_centered. Derived from the one Gram matrix."""
        b = self.b
        out = []
        for tr_np, va_np in kfold_indices(self.n, self.s.cv):
            tr = ridge_backend.index_array(b, tr_np, self.Xc)
            va = ridge_backend.index_array(b, va_np, self.Xc)
            if self.form == "dual":
                G = self.gram[tr][:, tr]
                H = self.gram[va][:, tr]
                if self.s.fit_intercept:  # center both blocks on the fold's training mean
                    m = G.mean(1)
                    g = m.mean()
                    G = G - m[:, None] - m[None, :] + g
                    H = H - H.mean(1)[:, None] - m[None, :] + g
                s, U = ridge_backend.eigh(b, G)
                out.append((tr, va, H @ U, s, ridge_backend.contiguous(b, U.T)))
            else:
                Xtr = self.Xc[tr]
                Xva = self.Xc[va]
                C = self.gram - Xva.T @ Xva
                if self.s.fit_intercept:
                    mu = Xtr.mean(0)
                    C = C - len(tr_np) * (mu[:, None] * mu[None, :])
                    Xtr = Xtr - mu
                    Xva = Xva - mu
                s, V = ridge_backend.eigh(b, C)
                out.append((tr, va, Xva @ V, s, ridge_backend.contiguous(b, (Xtr @ V).T)))
        return out


def _center_targets(b, Yb, fit_intercept: bool):
    if fit_intercept:
        mean = Yb.mean(0)
        return Yb - mean, mean
    return Yb, ridge_backend.zeros(b, (Yb.shape[1],), Yb)


def _cv_scores_chunk(design: _Design, folds, Yb, alphas: tuple[float, ...]) -> np.ndarray:
    """Mean R² over folds for each alpha and target of this chunk: (n_alphas, t)."""
    b = design.b
    total = None
    for tr, va, Q, s, R in folds:
        Ytr, ymean = _center_targets(b, Yb[tr], design.s.fit_intercept)
        Yva = Yb[va]
        ss_tot = ((Yva - Yva.mean(0)) ** 2).sum(0)
        Z = R @ Ytr
        rows = []
        for a in alphas:
            pred = Q @ (Z / (s + a)[:, None]) + ymean
            ss_res = ((Yva - pred) ** 2).sum(0)
            valid = ss_tot > 0
            r2 = (
                1 - ss_res / (ss_tot + ~valid)
            ) * valid  # constant validation targets score 0 for every alpha
            rows.append(ridge_backend.to_numpy(b, r2))
        scores = np.stack(rows).astype(np.float64)
        total = scores if total is None else total + scores
    return total / len(folds)


def _dense_from_selected(b, w, idx, p: int):
    """Scatter per-target selected weights (k, t) at rows idx (k, t) into a dense (p, t) block."""
    t = w.shape[1]
    W = ridge_backend.zeros(b, (p, t), w)
    cols = ridge_backend.arange(b, t, w)
    W[
        idx,
        cols[None, :].expand(idx.shape) if ridge_backend.is_torch(b) else np.broadcast_to(cols, idx.shape),
    ] = w
    return W


def _selected_chunk(design: _Design, Yc, alpha: float, k: int, xtx):
    """Per-target top-k |corr| feature selection and ridge on those features: (weights (k,t), idx (k,t))."""
    b = design.b
    Xc = design.Xc
    XtY = Xc.T @ Yc  # (p, t)
    # Pearson r of every feature with every target (centered even when the fit has no intercept)
    n = Xc.shape[0]
    mx = Xc.mean(0)
    my = Yc.mean(0)
    cov = XtY - n * (mx[:, None] * my[None, :])
    xvar = (xtx.diagonal() if ridge_backend.is_torch(b) else np.diagonal(xtx)) - n * mx**2
    xnorm = (xvar * (xvar > 0)) ** 0.5
    ynorm = (((Yc - my) ** 2).sum(0)) ** 0.5
    tiny = 1e-12
    corr = cov / ((xnorm[:, None] + tiny) * (ynorm[None, :] + tiny))
    corr = corr * (xnorm[:, None] > tiny * (xnorm.max() + tiny))  # constant features are never selected
    idx = ridge_backend.topk_abs_sorted(b, corr, k)  # (k, t)
    t = Yc.shape[1]
    out = ridge_backend.zeros(b, (k, t), Yc)
    step = max(1, int(2**24 // max(1, k * k)))  # bound the (m, k, k) stack to ~16M elements
    cols = ridge_backend.arange(b, t, Yc)
    for s0 in range(0, t, step):
        sel = idx[:, s0 : s0 + step].T  # (m, k)
        A = xtx[sel[:, :, None], sel[:, None, :]] + alpha * ridge_backend.eye(b, k, Yc)[None]
        rhs = XtY[sel, cols[s0 : s0 + step, None]]  # (m, k)
        out[:, s0 : s0 + step] = ridge_backend.batched_spd_solve(b, A, rhs).T
    return out, idx


# -------------------------------------------------------------------------------------------- fitting


def _choose_alphas(design: _Design, Y2: np.ndarray, progress: bool | None) -> tuple[np.ndarray, np.ndarray]:
    """CV: (alpha per target (t,), mean CV R² (n_alphas, t))."""
    s = design.s
    folds = design.folds()
    t = Y2.shape[1]
    scores = np.empty((len(s.alphas), t))
    for sl in _progress_chunks(t, s.chunk_size, "ridge CV", progress):
        Ychunk = _target_block(design.b, Y2, sl, s.dtype)
        for gl, rel in _blocks(sl):
            scores[:, gl] = _cv_scores_chunk(
                design, folds, ridge_backend.contiguous(design.b, Ychunk[:, rel]), s.alphas
            )
    alphas = np.asarray(s.alphas)
    if s.per_target:
        chosen = alphas[np.argmax(scores, axis=0)]
    else:
        chosen = np.full(t, alphas[int(np.argmax(scores.mean(1)))])
    return chosen, scores


@dataclass
class _SolverPrep:
    """What every target block needs, prepared once: the selection inputs, the fixed-alpha projector /
    test map, or the eigendecomposition for per-target alphas."""

    alpha: np.ndarray  # (t,)
    shared: bool  # one alpha for all targets
    k: int = 0  # features selected per target (0: all)
    xtx: Any = None  # (p, p) for selection
    Xt: Any = None  # centered test samples (m, p) or None
    M: Any = None  # (m, n) test map (fixed alpha, predictions only)
    P: Any = None  # (p, n) projector (fixed alpha, weights)
    eig: tuple[Any, Any, Any] | None = None  # (B, s, R) for per-target alphas
    XtB: Any = None  # (m, r) test samples in the eigenbasis


def _blas_threads_for(n: int, p: int):
    """Single-threaded BLAS/torch for a small fit (work ~ min(n,p)·max(n,p)²)."""
    return single_threaded_if(min(n, p) * max(n, p) ** 2 <= 2e9)


@contextmanager
def single_threaded_if(small: bool) -> Iterator[None]:
    """Run small problems on one thread: they gain nothing from threads and slow down many-fold when a
    shared CPU is oversubscribed (spinning BLAS/OpenMP workers)."""
    if not small:
        yield
        return
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(before)


def _run(
    X, Y2, settings: RidgeSettings, X_test, sink, progress: bool | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Shared driver: prepares X once, streams target chunks, hands each block's result to `sink`."""
    with _blas_threads_for(*X.shape):
        return _run_inner(X, Y2, settings, X_test, sink, progress)


def _run_inner(X, Y2, settings, X_test, sink, progress) -> tuple[np.ndarray, np.ndarray | None]:
    b = ridge_backend.get_backend(settings.backend)
    design = _Design(b, X, settings)
    t = Y2.shape[1]
    cv_score = None
    if settings.uses_cv:
        alpha_t, cv_score = _choose_alphas(design, Y2, progress)
        shared = not settings.per_target
    else:
        alpha_t = np.full(t, float(settings.alpha))
        shared = True
    plan = _SolverPrep(
        alpha=alpha_t, shared=shared, k=settings.selection if 0 < settings.selection < design.p else 0
    )
    plan.Xt = design.center_test(X_test) if X_test is not None else None
    if plan.k:
        plan.xtx = design.gram if design.form == "primal" else design.Xc.T @ design.Xc
    elif shared:
        if plan.Xt is not None and not sink.wants_weights:
            plan.M = design.test_map(float(alpha_t[0]), plan.Xt)
        else:
            plan.P = design.projector(float(alpha_t[0]))
    else:
        plan.eig = design.eigen()
        plan.XtB = plan.Xt @ plan.eig[0] if plan.Xt is not None else None

    for chunk in _progress_chunks(t, settings.chunk_size, "ridge fit", progress):
        Ychunk = _target_block(b, Y2, chunk, settings.dtype)
        for sl, rel in _blocks(chunk):
            _solve_block(design, plan, sl, ridge_backend.contiguous(b, Ychunk[:, rel]), sink)
    return alpha_t, cv_score


def _solve_block(design: _Design, plan: _SolverPrep, sl: slice, Yblock, sink) -> None:
    """One aligned block of targets: weights (or test predictions) handed to `sink`."""
    b = design.b
    Yc, ymean = _center_targets(b, Yblock, design.s.fit_intercept)
    predict_only = plan.Xt is not None and not sink.wants_weights
    if plan.k:
        w, idx = _selected_chunk(design, Yc, float(plan.alpha[0]), plan.k, plan.xtx)
        pred = None
        if plan.Xt is not None:
            pred = plan.Xt @ _dense_from_selected(b, w, idx, design.p) + ymean
        sink(sl, w=w, idx=idx, intercept=ymean - (design.x_mean[idx] * w).sum(0), pred=pred)
        return
    if plan.shared:
        if predict_only:
            sink(sl, pred=plan.M @ Yc + ymean)
            return
        W = plan.P @ Yc
    else:
        B, s, R = plan.eig
        Z = (R @ Yc) / (s[:, None] + ridge_backend.asarray(b, plan.alpha[sl], design.s.dtype)[None, :])
        if predict_only:
            sink(sl, pred=plan.XtB @ Z + ymean)
            return
        W = B @ Z
    sink(sl, w=W, intercept=ymean - design.x_mean @ W, pred=None)


class _ModelSink:
    wants_weights = True

    def __init__(self, b, p: int, t: int, k: int, dtype: str, writer: EntryWriter | None):
        self.b = b
        rows = k or p
        if writer is not None:
            self.coef = writer.open_array("coef", (rows, t), dtype)
            self.index = writer.open_array("index", (k, t), "int64") if k else None
        else:
            self.coef = np.empty((rows, t), dtype=dtype)
            self.index = np.empty((k, t), dtype=np.int64) if k else None
        self.intercept = np.empty(t, dtype=dtype)

    def __call__(self, sl: slice, w, intercept, idx=None, pred=None) -> None:
        self.coef[:, sl] = ridge_backend.to_numpy(self.b, w)
        self.intercept[sl] = ridge_backend.to_numpy(self.b, intercept)
        if idx is not None:
            self.index[:, sl] = ridge_backend.to_numpy(self.b, idx)


class _PredSink:
    wants_weights = False

    def __init__(self, b, n_test: int, t: int, dtype: str):
        self.b = b
        self.pred = np.empty((n_test, t), dtype=dtype)

    def __call__(self, sl: slice, pred, **_: Any) -> None:
        self.pred[:, sl] = ridge_backend.to_numpy(self.b, pred)


def _cache_meta(settings: RidgeSettings, kind: str) -> dict[str, Any]:
    return {"kind": kind, "settings": settings.identity()}


def ridge_cache() -> ArrayCache:
    """Fitted ridge models and predictions: NSDBENCH_HOME/cache/ridge."""
    return ArrayCache(config.cache_dir("ridge"))


def fit_ridge(
    X: Any,
    Y: Any,
    settings: RidgeSettings | None = None,
    *,
    cache: bool = True,
    progress: bool | None = None,
) -> RidgeModel:
    """Fit ridge from X (n, p) to Y (n, ...) — cached on disk by a content hash of (X, Y, settings).

    With cache=True the weights stream into a memory-mapped .npy under the cache folder, so they never
    need to fit in memory; a later call with the same inputs reads them back instead of refitting.
    """
    settings = settings or RidgeSettings()
    X, Y2, target_shape = _check_fit_inputs(X, Y, settings)
    k = settings.selection if 0 < settings.selection < X.shape[1] else 0
    meta = {
        "kind": "model",
        "settings": asdict(settings),
        "identity": settings.identity(),
        "n_samples": int(X.shape[0]),
        "n_features": int(X.shape[1]),
        "target_shape": list(target_shape),
    }
    if not cache:
        b = ridge_backend.get_backend(settings.backend)
        sink = _ModelSink(b, X.shape[1], Y2.shape[1], k, settings.dtype, None)
        alpha_t, cv_score = _run(X, Y2, settings, None, sink, progress)
        return RidgeModel(
            coef=sink.coef,
            intercept=sink.intercept,
            alpha=alpha_t,
            settings=settings,
            n_features=int(X.shape[1]),
            target_shape=target_shape,
            index=sink.index,
            cv_score=cv_score,
            meta=meta,
        )
    store = ridge_cache()
    key = store.key(X, Y2, _cache_meta(settings, "model"))
    hit = store.read(key, mmap=True)
    if hit is not None:
        return _model_from_entry(hit.meta, hit.arrays, settings, key, hit.folder)
    b = ridge_backend.get_backend(settings.backend)
    with store.writing(key, meta) as writer:
        sink = _ModelSink(b, X.shape[1], Y2.shape[1], k, settings.dtype, writer)
        alpha_t, cv_score = _run(X, Y2, settings, None, sink, progress)
        writer.save_array("intercept", sink.intercept)
        writer.save_array("alpha", alpha_t)
        if cv_score is not None:
            writer.save_array("cv_score", cv_score)
        if isinstance(sink.coef, np.memmap):
            sink.coef.flush()
        del sink.coef
    hit = store.read(key, mmap=True)
    if hit is None:  # pragma: no cover - the entry was just written
        raise DataError(f"ridge cache entry {store.entry_dir(key)} vanished after writing")
    return _model_from_entry(hit.meta, hit.arrays, settings, key, hit.folder)


def _model_from_entry(
    meta: dict[str, Any], arrays: dict[str, np.ndarray], settings: RidgeSettings, key: str, folder: Path
) -> RidgeModel:
    return RidgeModel(
        coef=arrays["coef"],
        intercept=np.asarray(arrays["intercept"]),
        alpha=np.asarray(arrays["alpha"]),
        settings=settings,
        n_features=int(meta["n_features"]),
        target_shape=tuple(meta["target_shape"]),
        index=arrays.get("index"),
        cv_score=None if "cv_score" not in arrays else np.asarray(arrays["cv_score"]),
        key=key,
        path=folder,
        meta=meta,
    )


def fit_predict(
    X_train: Any,
    Y_train: Any,
    X_test: Any,
    settings: RidgeSettings | None = None,
    *,
    cache: bool = False,
    progress: bool | None = None,
) -> np.ndarray:
    """Predictions for X_test (m, *target_shape) without ever forming the weights.

    With a fixed alpha this is M @ Yc + mean with M = X_test_c @ P (m, n), so each target costs m·n
    multiply-adds whatever the number of voxels. cache=True stores the predictions by content hash.
    """
    settings = settings or RidgeSettings()
    X_train, Y2, target_shape = _check_fit_inputs(X_train, Y_train, settings)
    X_test = _check_matrix(X_test, "X_test")
    if X_test.shape[1] != X_train.shape[1]:
        raise UsageError(
            f"ridge: X_test has {X_test.shape[1]} features (voxels) but X_train has {X_train.shape[1]}"
        )
    store = ridge_cache() if cache else None
    key = store.key(X_train, Y2, X_test, _cache_meta(settings, "predictions")) if store is not None else None
    if store is not None and key is not None:
        hit = store.read(key, mmap=True)
        if hit is not None:
            return np.array(hit.arrays["pred"]).reshape((X_test.shape[0], *target_shape))
    b = ridge_backend.get_backend(settings.backend)
    sink = _PredSink(b, X_test.shape[0], Y2.shape[1], settings.dtype)
    _run(X_train, Y2, settings, X_test, sink, progress)
    if store is not None and key is not None:
        meta = {"kind": "predictions", "settings": asdict(settings), "identity": settings.identity()}
        store.save(key, {"pred": sink.pred}, meta)
    return sink.pred.reshape((X_test.shape[0], *target_shape))


# ------------------------------------------------------------------------------------ post-processing


def target_moments(Y: Any, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Per-target mean and std (ddof=0) in float64, a chunk of targets at a time."""
    Y = np.asarray(Y)
    Y2 = Y.reshape(Y.shape[0], -1)
    mean = np.empty(Y2.shape[1])
    std = np.empty(Y2.shape[1])
    for s in range(0, Y2.shape[1], chunk):
        block = np.asarray(Y2[:, s : s + chunk], dtype=np.float64)
        mean[s : s + chunk] = block.mean(0)
        std[s : s + chunk] = block.std(0)
    return mean.reshape(Y.shape[1:]), std.reshape(Y.shape[1:])


def rescale_to_training_moments(
    pred: Any,
    train_targets: Any = None,
    *,
    train_mean: Any = None,
    train_std: Any = None,
) -> np.ndarray:
    """brain-diffuser's rescaling: z-score each predicted target across the test set, then give it the
    training targets' mean and std (both ddof=0). Makes a prediction depend on the whole test batch.

    A target whose predictions are constant over the test set gets the training mean (the reference
    code would produce NaN there).
    """
    pred = np.asarray(pred)
    if train_targets is not None:
        train_mean, train_std = target_moments(train_targets)
    if train_mean is None or train_std is None:
        raise UsageError("rescale_to_training_moments needs train_targets or both train_mean and train_std")
    train_mean = np.asarray(train_mean, dtype=np.float64)
    train_std = np.asarray(train_std, dtype=np.float64)
    if pred.shape[1:] != train_mean.shape or train_std.shape != train_mean.shape:
        raise UsageError(
            f"rescale_to_training_moments: predictions have target shape {pred.shape[1:]} but the training "
            f"targets have {train_mean.shape}"
        )
    if pred.shape[0] < 2:
        raise DataError(
            f"rescale_to_training_moments z-scores across the test set and needs at least 2 predictions, "
            f"got {pred.shape[0]}"
        )
    p64 = pred.astype(np.float64)
    mu = p64.mean(0)
    sd = p64.std(0)
    z = np.divide(p64 - mu, sd, out=np.zeros_like(p64), where=sd > 0)
    return (z * train_std + train_mean).astype(
        pred.dtype if np.issubdtype(pred.dtype, np.floating) else np.float64
    )
