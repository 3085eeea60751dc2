"""The VDVAE network (Child 2021) with the parameter names and shapes of OpenAI's published checkpoints.

Module attribute names (encoder.enc_blocks.N.c1, decoder.dec_blocks.N.prior.c4, decoder.bias_xs.N, ...)
are the state-dict layout of `imagenet64-iter-1600000-model-ema.th`; do not rename them.
All randomness comes in through a `Noise` source so that callers control it per image.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from nsdbench.methods.components.vdvae_hparams import VDVAEConfig


class Noise(Protocol):
    """Source of the standard-normal and uniform draws a VDVAE pass consumes, batch-first."""

    def normal(self, shape: tuple[int, ...]) -> torch.Tensor: ...

    def uniform(self, shape: tuple[int, ...], low: float, high: float) -> torch.Tensor: ...


def _conv(c_in: int, c_out: int, kernel: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel, 1, kernel // 2)


class Block(nn.Module):
    """Bottleneck residual unit: four GELU-preceded convolutions (1x1, 3x3, 3x3, 1x1), optional pooling."""

    def __init__(
        self, c_in: int, c_mid: int, c_out: int, *, residual: bool, spatial: bool, down: int | None = None
    ):
        super().__init__()
        k = 3 if spatial else 1  # 3x3 kernels only above 2x2 resolution
        self.c1 = _conv(c_in, c_mid, 1)
        self.c2 = _conv(c_mid, c_mid, k)
        self.c3 = _conv(c_mid, c_mid, k)
        self.c4 = _conv(c_mid, c_out, 1)
        self.residual = residual
        self.down = down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for conv in (self.c1, self.c2, self.c3, self.c4):
            h = conv(F.gelu(h))
        out = x + h if self.residual else h
        if self.down is not None:
            out = F.avg_pool2d(out, kernel_size=self.down, stride=self.down)
        return out


class Encoder(nn.Module):
    """Bottom-up pass: image (N, H, W, 3), already shifted and scaled, -> last activation at each resolution."""

    def __init__(self, cfg: VDVAEConfig):
        super().__init__()
        self.in_conv = _conv(cfg.image_channels, cfg.width, 3)
        self.enc_blocks = nn.ModuleList(
            Block(cfg.width, cfg.bottleneck, cfg.width, residual=True, spatial=res > 2, down=down)
            for res, down in cfg.encoder_layers()
        )

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        x = self.in_conv(x.permute(0, 3, 1, 2).contiguous())
        acts = {x.shape[2]: x}
        for block in self.enc_blocks:
            x = block(x)
            acts[x.shape[2]] = x
        return acts


class DecBlock(nn.Module):
    """One top-down group: prior and posterior over a (zdim, res, res) latent, then a residual update."""

    def __init__(self, cfg: VDVAEConfig, res: int, mixin: int | None):
        super().__init__()
        w, mid, z, spatial = cfg.width, cfg.bottleneck, cfg.zdim, res > 2
        self.res, self.mixin, self.zdim, self.width = res, mixin, z, w
        self.enc = Block(2 * w, mid, 2 * z, residual=False, spatial=spatial)
        self.prior = Block(w, mid, 2 * z + w, residual=False, spatial=spatial)
        self.z_proj = _conv(z, w, 1)
        self.resnet = Block(w, mid, w, residual=True, spatial=spatial)

    def state_in(self, xs: dict[int, torch.Tensor], ref: torch.Tensor) -> torch.Tensor:
        """This resolution's running state (zeros where none yet) plus the upsampled mixed-in state."""
        n = ref.shape[0]
        x = xs.get(self.res)
        if x is None:
            x = ref.new_zeros(n, self.width, self.res, self.res)
        elif x.shape[0] != n:
            x = x.expand(n, -1, -1, -1)
        if self.mixin is not None:
            x = x + F.interpolate(xs[self.mixin][:, : x.shape[1]], scale_factor=self.res // self.mixin)
        return x

    def prior_split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats = self.prior(x)
        z = self.zdim
        return feats[:, :z], feats[:, z : 2 * z], feats[:, 2 * z :]

    def finish(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.resnet(x + self.z_proj(z))

    def posterior_step(
        self, x: torch.Tensor, acts: torch.Tensor, noise: Noise
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample z from q(z | x, encoder activation); returns (z, new state)."""
        q_mean, q_logstd = self.enc(torch.cat([x, acts], dim=1)).chunk(2, dim=1)
        _, _, x_prior = self.prior_split(x)
        eps = noise.normal(tuple(q_mean.shape[1:])).to(q_mean)
        z = torch.exp(q_logstd) * eps + q_mean
        return z, self.finish(x + x_prior, z)

    def prior_step(
        self, x: torch.Tensor, z: torch.Tensor | None, noise: Noise, temperature: float | None
    ) -> torch.Tensor:
        """Use the given z, or sample it from p(z | x) with its std scaled by `temperature`; new state."""
        p_mean, p_logstd, x_prior = self.prior_split(x)
        if z is None:
            if temperature is not None:
                p_logstd = p_logstd + math.log(temperature)
            eps = noise.normal(tuple(p_mean.shape[1:])).to(p_mean)
            z = torch.exp(p_logstd) * eps + p_mean
        return self.finish(x + x_prior, z.to(x))


class DmolNet(nn.Module):
    """Output head: per-pixel parameters of a mixture of discretized logistics."""

    def __init__(self, cfg: VDVAEConfig):
        super().__init__()
        self.out_conv = nn.Conv2d(cfg.width, cfg.num_mixtures * 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_conv(x).permute(0, 2, 3, 1)


class Decoder(nn.Module):
    def __init__(self, cfg: VDVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.dec_blocks = nn.ModuleList(DecBlock(cfg, res, mixin) for res, mixin in cfg.decoder_layers())
        self.bias_xs = nn.ParameterList(
            nn.Parameter(torch.zeros(1, cfg.width, res, res))
            for res in cfg.resolutions()
            if res <= cfg.no_bias_above
        )
        self.out_net = DmolNet(cfg)
        self.gain = nn.Parameter(torch.ones(1, cfg.width, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, cfg.width, 1, 1))

    def initial_states(self) -> dict[int, torch.Tensor]:
        return {b.shape[2]: b for b in self.bias_xs}

    def posterior_latents(
        self, acts: dict[int, torch.Tensor], groups: int, noise: Noise
    ) -> list[torch.Tensor]:
        """Latents of the first `groups` groups sampled from the posterior given encoder activations."""
        xs = self.initial_states()
        latents = []
        for block in self.dec_blocks[:groups]:
            ref = acts[block.res]
            z, xs[block.res] = block.posterior_step(block.state_in(xs, ref), ref, noise)
            latents.append(z)
        return latents

    def from_latents(
        self, n: int, latents: list[torch.Tensor], noise: Noise, temperature: float | None
    ) -> torch.Tensor:
        """Top-down pass with the given latents for the first groups and prior samples for the rest; returns
        the output head's logits (N, H, W, num_mixtures * 10)."""
        ref = self.gain.new_empty(n, 0)
        xs = {res: b.expand(n, -1, -1, -1) for res, b in self.initial_states().items()}
        for i, block in enumerate(self.dec_blocks):
            z = latents[i] if i < len(latents) else None
            xs[block.res] = block.prior_step(block.state_in(xs, ref), z, noise, temperature)
        top = self.cfg.image_size
        return self.out_net(xs[top] * self.gain + self.bias)


class VDVAE(nn.Module):
    """Encoder and decoder; `state_dict()` matches the published checkpoints for the same hyperparameters."""

    def __init__(self, cfg: VDVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)


def init_like_published(model: VDVAE) -> VDVAE:
    """The published initialization on top of torch's default conv init: zero conv biases, zero last
    prior conv, and the last conv of every residual path and z_proj scaled by 1/sqrt(number of blocks)."""
    n_enc, n_dec = len(model.encoder.enc_blocks), len(model.decoder.dec_blocks)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.bias.zero_()
        for block in model.encoder.enc_blocks:
            block.c4.weight.mul_(np.sqrt(1 / n_enc))
        for block in model.decoder.dec_blocks:
            block.prior.c4.weight.zero_()
            block.z_proj.weight.mul_(np.sqrt(1 / n_dec))
            block.resnet.c4.weight.mul_(np.sqrt(1 / n_dec))
    return model
