"""MindEye's CLIP in fp16 as OpenAI's clip package runs it, on a tiny random open_clip ViT: which tensors
are fp16, LayerNorm computed in fp32 and cast back (exact), and the whole tower against a float32
computation of the same mixed rule (relative deviation < 5e-3, the fp16 activation rounding)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from nsdbench.metrics.networks import get_network

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _weights_like_openai(module: nn.Module) -> dict[str, torch.dtype]:
    return {k: p.dtype for k, p in module.named_parameters()}


@pytest.mark.parametrize("device", DEVICES)
def test_openai_fp16_rule(device):
    net = get_network("clip_vit_l14", "-", "tiny", "fp16-openai", device)
    dtypes = _weights_like_openai(net.module)
    layernorm = {
        f"{mn}.{pn}"
        for mn, m in net.module.named_modules()
        if isinstance(m, nn.LayerNorm)
        for pn, _ in m.named_parameters()
    }
    for name, dt in dtypes.items():
        fp32 = name in layernorm or name in ("class_embedding", "positional_embedding")
        assert dt == (torch.float32 if fp32 else torch.float16), name
    assert dtypes["proj"] == torch.float16 and dtypes["ln_post.weight"] == torch.float32

    # every LayerNorm: fp16 in, computed in fp32 with fp32 weights, cast back to fp16 (bit-exact)
    seen = []

    def check(m, inputs, out):
        (x,) = inputs
        want = nn.functional.layer_norm(x.float(), m.normalized_shape, m.weight, m.bias, m.eps).half()
        assert x.dtype == out.dtype == torch.float16 and torch.equal(out, want)
        seen.append(m)

    handles = [m.register_forward_hook(check) for m in net.module.modules() if isinstance(m, nn.LayerNorm)]
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(device)
    try:
        y = net.features(x, ("visual",))["visual"]
    finally:
        for h in handles:
            h.remove()
    assert len(seen) == len(handles) >= 5

    # float32 computation of the same rule: fp16-rounded conv/linear/attention/proj weights, fp32 LayerNorm
    ref = copy.deepcopy(get_network("clip_vit_l14", "-", "tiny", "fp32", device).module)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if dtypes[name] == torch.float16:
                p.copy_(p.half().float())
        want = ref(x.half().float())
    rel = ((y - want).abs().max() / want.abs().max()).item()
    assert 0 < rel < 5e-3, rel
