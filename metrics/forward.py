"""Network passes of the metrics: what one pass is (FeaturePass), the chunk size per network and device,
and ChunkedForward, which feeds a network fixed-size zero-padded chunks so that an image's features never
depend on how the caller batched its images."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from nsdbench.metrics.networks import FeatureNetwork, normalize
from nsdbench.metrics.protocols import Chain, FeatureMetric
from nsdbench.metrics.resize import to_float
from nsdbench.stage_times import Timings, add

# Images per forward chunk, per device type and network: part of a result's identity (recorded in the
# provenance and the feature-cache key). CPU: 8 for every network (the values the golden file holds);
# CUDA: as large as a 16 GB GPU holds at full size.
FORWARD_BATCH: dict[str, dict[str, int]] = {
    "cpu": {},
    "cuda": {
        "alexnet": 256,
        "inception_v3": 128,
        "clip_vit_l14": 64,
        "efficientnet_b1": 128,
        "swav_resnet50": 128,
    },
}
DEFAULT_FORWARD_BATCH = {"cpu": 8, "cuda": 64}  # networks not in the table, and the brain encoders


def device_type(device: str) -> str:
    """The device's own type ('cuda:1' -> 'cuda', 'mps' -> 'mps'): features are cached per type."""
    return str(device).split(":")[0]


def forward_batch(device: str, network: str | None = None) -> int:
    """The fixed chunk size of `network` (None: the brain encoders' buffering) on `device`; device types
    without a table of their own (mps) use the CPU's."""
    kind = device_type(device) if device_type(device) in FORWARD_BATCH else "cpu"
    return FORWARD_BATCH[kind].get(network or "", DEFAULT_FORWARD_BATCH[kind])


def batches_match(provenance: Mapping[str, Any], device: str) -> bool:
    """True when a score's recorded chunk sizes (feature networks and brain encoders) are those `device`
    uses now: scores computed with other chunk sizes are recomputed, never mixed with new ones."""
    nets, brain = provenance.get("forward_batch"), provenance.get("brain_forward_batch")
    if nets is None and brain is None:
        return False
    if not isinstance(nets, Mapping):  # files written before brain_forward_batch: the brain encoders'
        nets, brain = {}, nets if brain is None else brain
    return all(int(b) == forward_batch(device, n) for n, b in nets.items()) and (
        brain is None or int(brain) == forward_batch(device)
    )


@dataclass(frozen=True)
class FeaturePass:
    """One network forward pass over one side (gt or rec) with one preprocessing."""

    network: str
    weights: str
    precision: str
    normalize: str
    chain: Chain
    tf32: bool = False
    tf32_conv: bool = False

    def part(self, layers: Sequence[str], mode: str, forward_batch: int, device_type: str) -> dict[str, Any]:
        """The pass as the feature cache keys it."""
        return {
            **asdict(self),
            "layers": sorted(layers),
            "mode": mode,
            "forward_batch": forward_batch,
            "device_type": device_type,
            "torch": torch.__version__,
        }


def feature_pass(m: FeatureMetric, chain: Chain, version: str, device: str) -> FeaturePass:
    """The pass a metric needs on `device`. TF32 flags change CUDA kernels only, so elsewhere they are
    left out of the pass's identity: protocols that differ in them alone share one pass."""
    cuda = device_type(device) == "cuda"
    return FeaturePass(
        m.network, version, m.precision, m.normalize, chain, m.tf32 and cuda, bool(m.tf32_conv) and cuda
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ChunkedForward:
    """Collects images for one pass and runs the network on fixed-size, zero-padded chunks."""

    def __init__(
        self,
        net: FeatureNetwork,
        layers: tuple[str, ...],
        chunk: int,
        fp: FeaturePass,
        timings: Timings | None,
    ) -> None:
        self.net, self.layers, self.chunk, self.fp, self.timings = net, layers, chunk, fp, timings
        self.buffer: list[torch.Tensor] = []
        self.n_buffered = 0
        self.out: dict[str, list[torch.Tensor]] = {layer: [] for layer in layers}

    def push(self, x: torch.Tensor) -> None:
        if not x.shape[0]:
            return
        self.buffer.append(x)
        self.n_buffered += x.shape[0]
        while self.n_buffered >= self.chunk:
            self._run(self.chunk)

    def _run(self, n: int) -> None:
        x = torch.cat(self.buffer)
        head, rest = x[:n], x[n:]
        self.buffer = [rest] if rest.shape[0] else []
        self.n_buffered = rest.shape[0]
        if head.shape[0] < self.chunk:
            pad = head.new_zeros((self.chunk - head.shape[0], *head.shape[1:]))
            head = torch.cat([head, pad])
        # contiguous NCHW like a DataLoader batch (not the channels-last strides of the HWC->CHW permute)
        x = normalize(to_float(head, torch.float32), self.fp.normalize).contiguous()
        sync(x.device)
        t0 = time.perf_counter()
        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = self.fp.tf32
        torch.backends.cudnn.allow_tf32 = self.fp.tf32_conv
        try:
            feats = self.net.features(x, self.layers)
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
        sync(x.device)
        add(self.timings, f"forward:{self.fp.network}", time.perf_counter() - t0)
        for layer in self.layers:
            self.out[layer].append(feats[layer][:n])

    def finish(self) -> dict[str, torch.Tensor]:
        """{layer: (N, D) float32} in push order."""
        if self.n_buffered:
            self._run(self.n_buffered)
        return {layer: torch.cat(v) for layer, v in self.out.items()}
