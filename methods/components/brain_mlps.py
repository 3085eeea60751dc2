"""Second Sight's two small brain models (reesekneeland/Second-Sight src/model_zoo.py): the CLIP-embedding ->
betas MLP of the hybrid guidance encoder and the betas denoising autoencoder, with seeded, deterministic
training as published (Adam, summed MSE, early stopping on the last 15% of the training images)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

# src/model_zoo.py CLIPEncoderModel: 1024 -> 15000 -> 15000 -> voxels, ReLU between
PUBLISHED_CLIP_HIDDEN = (15000, 15000)
# src/model_zoo.py AutoEncoderModel: voxels -> 5000 -> 1000 -> 500 -> 1000 -> 5000 -> voxels, ReLU between
PUBLISHED_AE_WIDTHS = (5000, 1000, 500)
TINY_CLIP_HIDDEN = (128, 128)
TINY_AE_WIDTHS = (64, 32, 16)


@dataclass(frozen=True)
class Training:
    """Optimizer and stopping rule of one model: Adam at `lr`, summed MSE over batches of `batch_size`,
    at most `max_epochs`, stop after `patience` epochs without a lower validation loss, keep the best."""

    lr: float
    batch_size: int
    max_epochs: int
    patience: int = 5
    val_fraction: float = 0.15
    seed: int = 0


# src/clip_encoder.py CLIPEncoder defaults (lr 1e-5, batch 750, 200 epochs, patience 5)
PUBLISHED_CLIP_TRAINING = Training(lr=1e-5, batch_size=750, max_epochs=200)
# src/autoencoder.py AutoEncoder defaults (lr 1e-5, batch 64, 200 epochs, patience 5)
PUBLISHED_AE_TRAINING = Training(lr=1e-5, batch_size=64, max_epochs=200)
# tiny mode: a few seconds on a CPU core (lr raised so that the few epochs move the weights)
TINY_TRAINING = Training(lr=1e-3, batch_size=64, max_epochs=40)


def mlp(widths: Sequence[int], seed: int) -> torch.nn.Sequential:
    """Linear layers between consecutive `widths` with ReLU between them (none after the last), float32,
    initialized by torch's default rule from a private generator seeded with `seed`."""
    layers: list[torch.nn.Module] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for k in range(len(widths) - 1):
            layers.append(torch.nn.Linear(int(widths[k]), int(widths[k + 1])))
            if k < len(widths) - 2:
                layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def clip_betas_widths(dim: int, n_voxels: int, hidden: Sequence[int]) -> tuple[int, ...]:
    """Layer widths of the CLIP -> betas MLP."""
    return (int(dim), *map(int, hidden), int(n_voxels))


def autoencoder_widths(n_voxels: int, widths: Sequence[int]) -> tuple[int, ...]:
    """Layer widths of the betas autoencoder: the encoder widths, then mirrored back to the voxels."""
    w = tuple(map(int, widths))
    return (int(n_voxels), *w, *reversed(w[:-1]), int(n_voxels))


def validation_mask(groups: np.ndarray, fraction: float) -> np.ndarray:
    """Rows whose group (NSD id) is among the highest-numbered `fraction` of the distinct ids: the published
    loader keeps the first int(0.85 n) training images in nsdId order for training (src/utils.py load_nsd)."""
    ids = np.unique(groups)
    n_train = int(len(ids) * (1.0 - fraction))
    if n_train in (0, len(ids)):
        return np.zeros(len(groups), bool)
    return np.isin(groups, ids[n_train:])


def train(
    model: torch.nn.Module, x: np.ndarray, y: np.ndarray, groups: np.ndarray, training: Training, device: str
) -> tuple[torch.nn.Module, list[float]]:
    """Fit `model` to map rows of x to rows of y; returns the model at its best validation loss (on `device`,
    eval mode) and the validation loss (summed MSE per row) after every epoch. Deterministic on CPU."""
    model = model.to(device)
    val = validation_mask(np.asarray(groups), training.val_fraction)
    xt = torch.as_tensor(np.asarray(x, np.float32), device=device)
    yt = torch.as_tensor(np.asarray(y, np.float32), device=device)
    x_tr, y_tr, x_va, y_va = xt[~val], yt[~val], xt[val], yt[val]
    opt = torch.optim.Adam(model.parameters(), lr=training.lr)
    gen = torch.Generator().manual_seed(int(training.seed))
    best, best_state, stale, history = float("inf"), None, 0, []
    for _ in range(training.max_epochs):
        model.train()
        order = torch.randperm(len(x_tr), generator=gen).to(device)
        for s in range(0, len(order), training.batch_size):
            idx = order[s : s + training.batch_size]
            loss = torch.nn.functional.mse_loss(model(x_tr[idx]), y_tr[idx], reduction="sum")
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            check_x, check_y = (x_va, y_va) if len(x_va) else (x_tr, y_tr)
            vloss = float(torch.nn.functional.mse_loss(model(check_x), check_y, reduction="sum")) / len(
                check_x
            )
        history.append(vloss)
        if vloss < best:
            best, stale = vloss, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= training.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.eval(), history


def state_arrays(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """The model's weights as numpy arrays (for the npz fit cache: no pickle)."""
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def load_arrays(model: torch.nn.Module, arrays: dict[str, np.ndarray], device: str) -> torch.nn.Module:
    """The model with weights from `state_arrays`, on `device`, in eval mode."""
    model.load_state_dict({k: torch.as_tensor(np.asarray(arrays[k])) for k in model.state_dict()})
    return model.to(device).eval()


def fit_cached(
    name: str,
    widths: Sequence[int],
    training: Training,
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    cache,
    device: str,
) -> tuple[torch.nn.Module, str]:
    """Train (or load from `cache`, a ArrayCache, keyed by the content of every input) one MLP; returns it and
    its key (the content hash, for the guidance encoder's identity)."""
    from nsdbench.caches import ArrayCache

    key = ArrayCache.key(
        {
            "model": name,
            "widths": list(widths),
            "training": asdict(training),
            "device": torch.device(device).type,
        },
        np.asarray(x, np.float32),
        np.asarray(y, np.float32),
        np.asarray(groups, np.int64),
    )
    model = mlp(widths, training.seed)

    def build() -> dict[str, np.ndarray]:
        fitted, history = train(model, x, y, groups, training, device)
        return {**state_arrays(fitted), "_val_loss": np.asarray(history, np.float64)}

    arrays = cache.get_or_compute(key, build) if cache is not None else build()
    return load_arrays(model, arrays, device), key
