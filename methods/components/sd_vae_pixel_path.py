"""A pixel path through Stable Diffusion's tiny random VAE, so that `tiny` takagi2023 runs carry image signal.

With random weights decode(encode(x)) is unrelated to x (Pearson r ~ 0.01 on the synthetic NSD), so a tiny
run could never beat the shuffled baseline. `wire_pixel_path` keeps every random weight but reserves a few
channels of the residual streams: the encoder copies (R, G, B, gray) into channels 0-3, the residual blocks,
attentions and downsamplers leave them alone (downsampling averages 2x2), and the latent posterior mean is
that image at latent resolution (each image standardized by its output GroupNorm, which holds exactly those
four channels), with a near-zero posterior std. The decoder carries (R, R, G, G, B, B) through its last stage
(GroupNorm groups of two) and its output conv averages the pairs back into RGB. Everything else stays random
and keeps exercising the whole network.
"""

from __future__ import annotations

import copy

import torch

OFFSET = 8.0  # keeps carried values where SiLU is close to the identity
POSTERIOR_LOGVAR = -10.0  # posterior std about 0.007
OUTPUT_GAIN = 0.5  # standardized carried values -> decoder output in about [-1, 1]


def _zero_rows(layer: torch.nn.Module, rows: range) -> None:
    layer.weight[list(rows)] = 0.0
    if layer.bias is not None:
        layer.bias[list(rows)] = 0.0


def _route(conv: torch.nn.Conv2d, sources: list[int], gain: float = 1.0) -> None:
    """Output channel i becomes `gain *` input channel sources[i] (centre tap), nothing else."""
    _zero_rows(conv, range(len(sources)))
    k = conv.weight.shape[-1] // 2
    for out, src in enumerate(sources):
        conv.weight[out, src, k, k] = gain


def _keep_residual(module: torch.nn.Module, n: int) -> None:
    """Residual blocks and attentions add nothing to channels 0..n-1; shortcut convs copy them."""
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D

    for sub in module.modules():
        if isinstance(sub, ResnetBlock2D):
            _zero_rows(sub.conv2, range(n))
            if sub.conv_shortcut is not None:
                _route(sub.conv_shortcut, list(range(n)))
        elif isinstance(sub, Attention):
            _zero_rows(sub.to_out[0], range(n))


def _check(vae) -> None:
    cfg = vae.config
    if (
        list(cfg.block_out_channels) != [16, 32]
        or cfg.latent_channels != 4
        or cfg.norm_num_groups != 8
        or cfg.layers_per_block != 1
    ):
        raise ValueError("the SD VAE pixel path is wired for nsdbench's tiny VAE configuration only")


def wire_pixel_path(vae):
    """A copy of the tiny AutoencoderKL with the pixel path wired in (the given VAE is left unchanged)."""
    _check(vae)
    vae = copy.deepcopy(vae)
    enc, dec = vae.encoder, vae.decoder
    with torch.no_grad():
        _route(enc.conv_in, [0, 1, 2, 0])
        enc.conv_in.weight[3, :, 1, 1] = 1.0 / 3.0  # gray
        _keep_residual(enc, 4)
        for block in enc.down_blocks:
            for down in block.downsamplers or []:
                _zero_rows(down.conv, range(4))
                for c in range(4):  # stride 2, padded right/bottom: taps (0..1, 0..1) are the 2x2 block
                    down.conv.weight[c, c, :2, :2] = 0.25
        enc.conv_norm_out.weight[:4] = 1.0
        enc.conv_norm_out.bias[:4] = OFFSET
        _route(enc.conv_out, [0, 1, 2, 3])
        enc.conv_out.bias[:4] = -OFFSET
        enc.conv_out.weight[4:8] = 0.0
        enc.conv_out.bias[4:8] = POSTERIOR_LOGVAR
        _route(vae.quant_conv, list(range(8)))
        _route(vae.post_quant_conv, [0, 1, 2, 3])

        _route(dec.conv_in, [0, 1, 2, 3])
        _keep_residual(dec.mid_block, 4)
        up0, up1 = dec.up_blocks
        _keep_residual(up0, 4)
        for up in up0.upsamplers or []:
            _route(up.conv, [0, 1, 2, 3])
        pairs = [0, 0, 1, 1, 2, 2]
        first = up1.resnets[0]
        _zero_rows(first.conv2, range(6))
        _route(first.conv_shortcut, pairs)
        for block in up1.resnets[1:]:
            _zero_rows(block.conv2, range(6))
        dec.conv_norm_out.weight[:6] = 1.0
        dec.conv_norm_out.bias[:6] = OFFSET
        _route(dec.conv_out, [0, 2, 4], OUTPUT_GAIN / 2)
        for c in range(3):
            dec.conv_out.weight[c, 2 * c + 1, 1, 1] = OUTPUT_GAIN / 2
        dec.conv_out.bias[:] = -OUTPUT_GAIN * OFFSET
    return vae
