"""A pixel path through a random VDVAE, so that `tiny` runs carry image signal end to end.

With random weights decode(encode(x)) is unrelated to x, and a tiny brain-diffuser run could never beat a
shuffled baseline. `wire_pixel_path` keeps every random weight but reserves channels 0-2 of the running
state: the encoder copies the normalized image into them, the last latent group's posterior mean is that
image at its resolution (near-deterministic), the following groups leave the channels alone, and the output
head turns them back into pixel means. Everything else stays random and keeps exercising the whole network.
"""

from __future__ import annotations

import torch

from nsdbench.methods.components.vdvae_net import VDVAE

PIXELS = 3  # reserved state channels, one per color
OFFSET = 4.0  # keeps the carried values where GELU is close to the identity
POSTERIOR_LOG_STD = -5.0
PIXEL_LOG_SCALE = -4.0  # output logistics about 2 gray levels wide


def _zero_rows(conv: torch.nn.Conv2d, start: int, stop: int) -> None:
    conv.weight[start:stop] = 0.0
    conv.bias[start:stop] = 0.0


def _copy_rows(conv: torch.nn.Conv2d, out_start: int, in_start: int, gain: float = 1.0) -> None:
    """Rows out_start.. become `gain *` input channels in_start.. (centre tap), nothing else."""
    _zero_rows(conv, out_start, out_start + PIXELS)
    k = conv.weight.shape[-1] // 2
    for c in range(PIXELS):
        conv.weight[out_start + c, in_start + c, k, k] = gain


def wire_pixel_path(model: VDVAE) -> VDVAE:
    """Route the image through channels 0-2 and the last of the `n_latent_groups` groups (in place)."""
    cfg = model.cfg
    w, z, last = cfg.width, cfg.zdim, cfg.n_latent_groups - 1
    if min(z, cfg.bottleneck) < PIXELS:
        raise ValueError(f"VDVAE {cfg.name}: a pixel path needs zdim and bottleneck of at least {PIXELS}")
    with torch.no_grad():
        _copy_rows(model.encoder.in_conv, 0, 0)
        model.encoder.in_conv.bias[:PIXELS] = OFFSET
        for block in model.encoder.enc_blocks:
            _zero_rows(block.c4, 0, PIXELS)
        dec = model.decoder
        for bias in dec.bias_xs:
            bias[:, :PIXELS] = 0.0
        for i, block in enumerate(dec.dec_blocks):
            _zero_rows(block.prior.c4, 2 * z, 2 * z + PIXELS)  # the prior's state update
            _zero_rows(block.resnet.c4, 0, PIXELS)
            if i == last:
                _copy_rows(block.z_proj, 0, 0)
            else:
                _zero_rows(block.z_proj, 0, PIXELS)
        enc = dec.dec_blocks[last].enc  # input: [state (w), encoder activation (w)]
        _copy_rows(enc.c1, 0, w)
        _copy_rows(enc.c2, 0, 0)
        _copy_rows(enc.c3, 0, 0)
        _copy_rows(enc.c4, 0, 0)
        enc.c4.bias[:PIXELS] = -OFFSET
        _zero_rows(enc.c4, z, z + PIXELS)
        enc.c4.bias[z : z + PIXELS] = POSTERIOR_LOG_STD
        dec.gain[:, :PIXELS] = 1.0
        dec.bias[:, :PIXELS] = 0.0
        # output head: component means are the carried pixels mapped from (x + shift) * scale to [-1, 1]
        out, m = dec.out_net.out_conv, cfg.num_mixtures
        gain, bias = 1.0 / (cfg.scale * 127.5), (-cfg.shift - 127.5) / 127.5
        for c in range(PIXELS):
            base = m + 3 * m * c
            _zero_rows(out, base, base + 3 * m)
            out.weight[base : base + m, c] = gain
            out.bias[base : base + m] = bias
            out.bias[base + m : base + 2 * m] = PIXEL_LOG_SCALE
    return model
