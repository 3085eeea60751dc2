"""Second Sight's "hybrid" encoding model: an image encoder (GNet8) and a CLIP-embedding -> betas model whose
outputs are averaged (paper §2 / App. B.5; reesekneeland/Second-Sight src/stochastic_search.py `predict`,
src/library_assembler.py `rankCoco`). The CLIP model is the published MLP (methods/components/brain_mlps.py)
or nsdbench's ridge, both fitted on the training split."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from nsdbench.methods import search_math


def hybrid_prediction(preds: Sequence[torch.Tensor]) -> torch.Tensor:
    """The hybrid β': the element-wise mean of the encoders' predictions (N, V), float64 (as published)."""
    return torch.stack([p.double() for p in preds]).mean(0)


def hybrid_correlation_matrix(preds: Sequence[torch.Tensor], measured: torch.Tensor) -> torch.Tensor:
    """Library score (L, T): the mean over encoders of each encoder's Pearson r with the measured rows, as the
    published library assembler averages its models' scores."""
    return torch.stack([search_math.correlation_matrix(p, measured) for p in preds]).mean(0)


class ClipBetasEncoder:
    """Betas predicted from an image's OpenCLIP ViT-H/14 embedding by a model fitted on the training split:
    the published 3-layer MLP (`predict_fn` a torch module) or nsdbench's ridge (a RidgeModel's predict)."""

    def __init__(
        self,
        predict_fn: Callable[[np.ndarray], Any],
        n_voxels: int,
        embed: Callable[[np.ndarray], np.ndarray],
        identity: str,
    ) -> None:
        self.predict_fn = predict_fn
        self.embed = embed
        self.identity = identity
        self.n_voxels = int(n_voxels)

    def predict_embeddings(self, embeds: np.ndarray) -> torch.Tensor:
        """Predicted betas (N, V) float64 on the CPU from CLIP embeddings (N, dim)."""
        out = self.predict_fn(np.asarray(embeds))
        return torch.as_tensor(np.asarray(out) if not isinstance(out, torch.Tensor) else out).double().cpu()

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Predicted betas (N, V) of uint8 images (N, 3, H, W), on the images' device."""
        pixels = images.permute(0, 2, 3, 1).cpu().numpy()
        return self.predict_embeddings(self.embed(pixels)).to(images.device)


def ridge_predictor(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    """A RidgeModel as a function of CLIP embeddings (float64)."""
    return lambda e: model.predict(np.asarray(e, np.float64), progress=False)


def torch_predictor(module: torch.nn.Module) -> Callable[[np.ndarray], torch.Tensor]:
    """A torch module (float32, on its device) as a function of CLIP embeddings, without gradients."""
    device = next(module.parameters()).device

    def predict(e: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return module(torch.as_tensor(np.asarray(e, np.float32), device=device))

    return predict


class HybridEncoder:
    """The average of several guidance encoders' predictions; its identity names every part."""

    def __init__(self, parts: Sequence[Any]) -> None:
        if not parts:
            raise ValueError("a hybrid encoder needs at least one part")
        self.parts = tuple(parts)
        self.n_voxels = int(self.parts[0].n_voxels)
        for p in self.parts:
            if int(p.n_voxels) != self.n_voxels:
                raise ValueError(
                    f"hybrid encoder: {p.identity} predicts {p.n_voxels} voxels, not {self.n_voxels}"
                )
        self.identities = tuple(str(p.identity) for p in self.parts)
        self.identity = "hybrid(" + " + ".join(self.identities) + ")"

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Mean prediction (N, V) of the parts, on the first part's device."""
        preds = [p.predict(images) for p in self.parts]
        device = preds[0].device
        return hybrid_prediction([p.to(device) for p in preds])
