"""Sampling pixels from VDVAE's output head: a per-pixel mixture of discretized logistics (PixelCNN++ style)."""

from __future__ import annotations

import torch

UNIFORM_LOW, UNIFORM_HIGH = 1e-5, 1.0 - 1e-5  # open interval of the uniform draws, as published


def sample_dmol(
    logits: torch.Tensor, num_mixtures: int, u_mix: torch.Tensor, u_pixel: torch.Tensor
) -> torch.Tensor:
    """Image (N, H, W, 3) in [-1, 1] from head logits (N, H, W, 10 * num_mixtures).

    `u_mix` (N, H, W, num_mixtures) picks a component by the Gumbel-max trick; `u_pixel` (N, H, W, 3) draws
    from the chosen logistic; green and blue are linear in the already drawn channels (coefficients tanh'd).
    """
    n, h, w, _ = logits.shape
    m = num_mixtures
    weights = logits[..., :m]
    params = logits[..., m:].reshape(n, h, w, 3, 3 * m)
    choice = torch.argmax(weights - torch.log(-torch.log(u_mix)), dim=3)
    index = choice.view(n, h, w, 1, 1).expand(n, h, w, 3, 1)

    def pick(part: torch.Tensor) -> torch.Tensor:
        return torch.gather(part, 4, index).squeeze(4)

    means = pick(params[..., :m])
    log_scales = torch.clamp_min(pick(params[..., m : 2 * m]), -7.0)
    coeffs = pick(torch.tanh(params[..., 2 * m : 3 * m]))
    x = means + torch.exp(log_scales) * (torch.log(u_pixel) - torch.log(1.0 - u_pixel))
    r = torch.clamp(x[..., 0], -1.0, 1.0)
    g = torch.clamp(x[..., 1] + coeffs[..., 0] * r, -1.0, 1.0)
    b = torch.clamp(x[..., 2] + coeffs[..., 1] * r + coeffs[..., 2] * g, -1.0, 1.0)
    return torch.stack([r, g, b], dim=3)


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8 as published: (x + 1) * 127.5, clipped to [0, 255], truncated."""
    return ((image.float() + 1.0) * 127.5).clamp(0.0, 255.0).to(torch.uint8)
