"""Network passes of the metrics: what one pass is (FeaturePass), the chunk size per network and device,
and ChunkedForward, which feeds a network fixed-size zero-padded chunks so that an image's features never
depend on how the caller batched its images."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

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

# Networks whose chunks run on the CPU with one intra-op thread each, several chunks side by side: their
# CPU features are then the same whatever the machine's core count, and they are the features of the
# former 2-thread pass, bit for bit (CLIP's work is GEMMs split over output rows, and ATen's fp16 kernels run
# the attention products on one thread anyway, so one chunk per core is 10-15 % faster per image).
# The convolutional networks are left out: oneDNN's convolutions round differently with 1 and 2 threads.
# tests/test_side_by_side_chunks.py checks the claims. At most MAX_SIDE_BY_SIDE chunks run at once (memory).
CPU_SIDE_BY_SIDE = frozenset({"clip_vit_l14"})
MAX_SIDE_BY_SIDE = 16

T = TypeVar("T")


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
        part = {
            **asdict(self),
            "layers": sorted(layers),
            "mode": mode,
            "forward_batch": forward_batch,
            "device_type": device_type,
            "torch": torch.__version__,
        }
        if one_thread_per_chunk(device_type, self.network):  # not features of a many-thread pass
            part["threads_per_chunk"] = 1
        return part


def feature_pass(m: FeatureMetric, chain: Chain, version: str, device: str) -> FeaturePass:
    """The pass a metric needs on `device`. TF32 flags change CUDA kernels only, so elsewhere they are
    left out of the pass's identity: protocols that differ in them alone share one pass."""
    cuda = device_type(device) == "cuda"
    return FeaturePass(
        m.network, version, m.precision, m.normalize, chain, m.tf32 and cuda, bool(m.tf32_conv) and cuda
    )


def one_thread_per_chunk(device: str, network: str) -> bool:
    """Whether `network`'s chunks run with one intra-op thread each on `device` (CPU_SIDE_BY_SIDE)."""
    return device_type(device) == "cpu" and network in CPU_SIDE_BY_SIDE


def side_by_side_chunks(device: str, network: str) -> int:
    """How many chunks of `network` run at once on `device`: one per intra-op thread (at most
    MAX_SIDE_BY_SIDE) for the networks of CPU_SIDE_BY_SIDE on the CPU, else 1."""
    if not one_thread_per_chunk(device, network):
        return 1
    return max(1, min(torch.get_num_threads(), MAX_SIDE_BY_SIDE))


def run_one_thread_each(fn: Callable[[torch.Tensor], T], chunks: Sequence[torch.Tensor]) -> list[T]:
    """fn over each chunk with one intra-op thread, the chunks side by side on threads of their own (a
    single chunk on the caller's thread); the caller's thread count is restored afterwards."""
    threads = torch.get_num_threads()

    def job(x: torch.Tensor) -> T:
        torch.set_num_threads(1)  # this thread's own OpenMP setting
        return fn(x)

    try:
        if len(chunks) <= 1:
            return [job(x) for x in chunks]
        with ThreadPoolExecutor(len(chunks), thread_name_prefix="nsdbench-forward") as pool:
            return list(pool.map(job, chunks))
    finally:
        torch.set_num_threads(threads)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ChunkedForward:
    """Collects images for one pass and runs the network on fixed-size, zero-padded chunks (on the CPU,
    several chunks at once for the networks of CPU_SIDE_BY_SIDE)."""

    def __init__(
        self,
        net: FeatureNetwork,
        layers: tuple[str, ...],
        chunk: int,
        fp: FeaturePass,
        timings: Timings | None,
    ) -> None:
        self.net, self.layers, self.chunk, self.fp, self.timings = net, layers, chunk, fp, timings
        self.one_thread = one_thread_per_chunk(net.key.device, fp.network)
        self.side_by_side = side_by_side_chunks(net.key.device, fp.network)
        self.buffer: list[torch.Tensor] = []
        self.n_buffered = 0
        self.out: dict[str, list[torch.Tensor]] = {layer: [] for layer in layers}

    def push(self, x: torch.Tensor) -> None:
        if not x.shape[0]:
            return
        self.buffer.append(x)
        self.n_buffered += x.shape[0]
        ready = self.n_buffered // (self.chunk * self.side_by_side) * self.side_by_side
        if ready:
            self._run(ready)

    def _take(self, n_chunks: int) -> list[tuple[torch.Tensor, int]]:
        """The next n_chunks chunks off the buffer, each zero-padded to the chunk size, with how many
        images each holds."""
        x = torch.cat(self.buffer)
        taken, rest = x[: n_chunks * self.chunk], x[n_chunks * self.chunk :]
        self.buffer = [rest] if rest.shape[0] else []
        self.n_buffered = rest.shape[0]
        chunks = []
        for head in taken.split(self.chunk):
            n = head.shape[0]
            if n < self.chunk:
                head = torch.cat([head, head.new_zeros((self.chunk - n, *head.shape[1:]))])
            # contiguous NCHW like a DataLoader batch (not the channels-last strides of the HWC->CHW permute)
            chunks.append((normalize(to_float(head, torch.float32), self.fp.normalize).contiguous(), n))
        return chunks

    def _forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.net.features(x, self.layers)

    def _run(self, n_chunks: int) -> None:
        chunks = self._take(n_chunks)
        device = chunks[0][0].device
        sync(device)
        t0 = time.perf_counter()
        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = self.fp.tf32
        torch.backends.cudnn.allow_tf32 = self.fp.tf32_conv
        try:
            xs = [x for x, _ in chunks]
            if self.one_thread:
                feats = []
                for i in range(0, len(xs), self.side_by_side):
                    feats += run_one_thread_each(self._forward, xs[i : i + self.side_by_side])
            else:
                feats = [self._forward(x) for x in xs]
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
        sync(device)
        add(self.timings, f"forward:{self.fp.network}", time.perf_counter() - t0)
        for (_, n), f in zip(chunks, feats):
            for layer in self.layers:
                self.out[layer].append(f[layer][:n])

    def finish(self) -> dict[str, torch.Tensor]:
        """{layer: (N, D) float32} in push order."""
        if self.n_buffered:
            self._run(-(-self.n_buffered // self.chunk))
        return {layer: torch.cat(v) for layer, v in self.out.items()}
