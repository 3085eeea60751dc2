"""Deterministic DDIM (eta 0) as pure tensor functions, so samplers can be batched and differentiated."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers.utils.torch_utils import randn_tensor


@dataclass(frozen=True)
class DDIMSchedule:
    """The timesteps of one sampling run and the cumulative alphas they index (float32, on the CPU)."""

    timesteps: tuple[int, ...]
    alphas_cumprod: torch.Tensor
    final_alpha_cumprod: torch.Tensor
    step_size: int
    prediction_type: str

    def alpha(self, t: int) -> torch.Tensor:
        return self.alphas_cumprod[t] if t >= 0 else self.final_alpha_cumprod


def ddim_schedule(scheduler, num_inference_steps: int) -> DDIMSchedule:
    """The schedule a diffusers DDIMScheduler (config only; never mutated) uses for `num_inference_steps`."""
    fresh = type(scheduler).from_config(scheduler.config)
    fresh.set_timesteps(num_inference_steps)
    cfg = fresh.config
    if cfg.thresholding or cfg.clip_sample:
        raise ValueError("nsdbench's DDIM sampler expects clip_sample=False and thresholding=False")
    return DDIMSchedule(
        timesteps=tuple(int(t) for t in fresh.timesteps),
        alphas_cumprod=fresh.alphas_cumprod,
        final_alpha_cumprod=fresh.final_alpha_cumprod,
        step_size=cfg.num_train_timesteps // num_inference_steps,
        prediction_type=cfg.prediction_type,
    )


def strength_timesteps(schedule: DDIMSchedule, strength: float) -> tuple[int, ...]:
    """The last int(steps * strength) timesteps: img2img starts from the init latent noised to the first."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    n = len(schedule.timesteps)
    keep = min(int(n * strength), n)
    return schedule.timesteps[n - keep :]


def add_noise(x0: torch.Tensor, noise: torch.Tensor, alpha_cumprod: torch.Tensor) -> torch.Tensor:
    """q(x_t | x_0) at one timestep, computed in the sample's dtype (as diffusers' add_noise does)."""
    a = alpha_cumprod.to(device=x0.device, dtype=x0.dtype)
    return a**0.5 * x0 + (1 - a) ** 0.5 * noise


def ddim_step(
    sample: torch.Tensor, model_output: torch.Tensor, t: int, schedule: DDIMSchedule
) -> torch.Tensor:
    """One eta-0 DDIM update x_t -> x_{t-step} for an epsilon- or v-predicting model."""
    a_t = schedule.alpha(t)
    a_prev = schedule.alpha(t - schedule.step_size)
    b_t = 1 - a_t
    if schedule.prediction_type == "epsilon":
        x0 = (sample - b_t**0.5 * model_output) / a_t**0.5
        eps = model_output
    elif schedule.prediction_type == "v_prediction":
        x0 = a_t**0.5 * sample - b_t**0.5 * model_output
        eps = a_t**0.5 * model_output + b_t**0.5 * sample
    else:
        raise ValueError(f"unsupported prediction type {schedule.prediction_type!r}")
    return a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps


def guide(noise_pred: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance on a [unconditional; conditional] batch."""
    uncond, cond = noise_pred.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


def randn_per_image(
    shape: Sequence[int], generators: Sequence[torch.Generator], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """One standard-normal draw of `shape` per image, each from its own generator (CPU generators give the
    same numbers on every device), stacked on the batch axis."""
    return torch.cat([randn_tensor((1, *shape), generator=g, device=device, dtype=dtype) for g in generators])
