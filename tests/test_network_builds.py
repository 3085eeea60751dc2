"""Pretrained metric networks are built on a background thread while the first images are read,
decoded and resized and the pixel metrics run. The values are those of a build on the caller's
thread; the build draws nothing from the process's random state; the thread ends with the call."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from nsdbench import weights
from nsdbench.errors import NSDBenchError
from nsdbench.metrics import engine, metric_kinds, networks
from nsdbench.metrics.networks import FeatureNetwork, NetworkKey
from nsdbench.metrics.protocols import FeatureMetric, PixelMetric, Protocol, ResizeStep

B64 = (ResizeStep("pil", "bilinear", 64),)
PROTOCOL = Protocol(
    "test-builds",
    "0",
    "",
    "nsd982",
    "nsd-ascending",
    (
        PixelMetric("pixcorr", B64, B64, "rgb", "pearson"),
        FeatureMetric(
            "effnet", "efficientnet_b1", "IMAGENET1K_V1", "avgpool", B64, B64, "imagenet",
            statistic="correlation-distance",
        ),
        FeatureMetric("swav", "swav_resnet50", "800ep", "avgpool", B64, B64, "imagenet"),
    ),
)  # fmt: skip


@pytest.fixture
def published_files(tmp_path: Path, monkeypatch) -> Path:
    """Seeded random EfficientNet-B1 and SwAV files in the published key layouts (SwAV without its fc)."""
    monkeypatch.setenv("NSDBENCH_HOME", str(tmp_path))
    for network, artifact, prefix in (
        ("efficientnet_b1", "efficientnet-b1-imagenet1k-v1", ""),
        ("swav_resnet50", "swav-resnet50-800ep", "module."),
    ):
        net = FeatureNetwork(NetworkKey(network, "-", "random", "fp32", "cpu"))
        sd = {prefix + k: v for k, v in net.module.state_dict().items() if not k.startswith("fc.")}
        if network == "efficientnet_b1":
            sd.update({k: v for k, v in net.module.state_dict().items() if k.startswith("fc.")})
        path = weights.local_path(artifact)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(sd, path)
    networks.clear_cache()
    yield tmp_path
    networks.clear_cache()


def _score(ids: np.ndarray) -> engine.ScoreResult:
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 256, (len(ids), 48, 48, 3), dtype=np.uint8)
    rec = np.clip(gt.astype(int) + rng.integers(-50, 50, gt.shape), 0, 255).astype(np.uint8)
    opts = engine.ScoreOptions("pretrained", cache=False, batch_size=4)
    return engine.score_reconstructions(ids, gt, ids, np.zeros(len(ids), int), rec, PROTOCOL, opts)


def test_networks_build_in_the_background_with_the_same_values(published_files, monkeypatch) -> None:
    ids = np.arange(1, 12)
    built_on: list[str] = []
    real = networks.get_network

    def spy(*args, **kwargs):
        built_on.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(metric_kinds, "get_network", spy)
    background = _score(ids)
    assert built_on and all(name.startswith("nsdbench-networks") for name in built_on)
    assert not [t for t in threading.enumerate() if t.name.startswith("nsdbench-networks")]

    networks.clear_cache()
    built_on.clear()
    monkeypatch.setattr(metric_kinds.ScoringContext, "start_networks", lambda self, passes: None)
    here = _score(ids)
    assert built_on == [threading.current_thread().name] * 2
    assert background.per_sample.equals(here.per_sample)
    assert background.set_scores == here.set_scores


def test_a_pretrained_build_leaves_the_random_state_alone(published_files, monkeypatch) -> None:
    """A background build must not seed or fork the process's generator (another thread may be drawing
    from it); SwAV's missing classifier gets nn.Linear's initialization from a generator of its own, with
    the values the seeded global generator gave."""
    import zlib

    expected = torch.nn.Linear(2048, 1000)
    with weights.seeded(zlib.crc32(b"swav_resnet50")):
        expected.reset_parameters()

    def forbidden(*_a, **_k):
        raise AssertionError("a pretrained build touched the global random state")

    monkeypatch.setattr(torch, "manual_seed", forbidden)
    monkeypatch.setattr(torch.random, "manual_seed", forbidden)
    monkeypatch.setattr(torch.random, "fork_rng", forbidden)
    before = torch.random.get_rng_state()
    net = FeatureNetwork(NetworkKey("swav_resnet50", "800ep", "pretrained", "fp32", "cpu"))
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(net.module.fc.weight, expected.weight)
    assert torch.equal(net.module.fc.bias, expected.bias)


def test_a_missing_weights_file_fails_before_any_image(published_files) -> None:
    weights.local_path("swav-resnet50-800ep").unlink()
    with pytest.raises(NSDBenchError, match="swav-resnet50-800ep.*nsdbench weights fetch"):
        _score(np.arange(1, 5))
    assert not [t for t in threading.enumerate() if t.name.startswith("nsdbench-networks")]


def test_a_kept_hash_record_without_its_file_still_fails_at_once(published_files) -> None:
    """The recorded sha256 of a deleted file is no proof the file is there."""
    networks.pretrained_sha256("swav_resnet50", "800ep")  # writes the record
    weights.local_path("swav-resnet50-800ep").unlink()
    with pytest.raises(NSDBenchError, match="swav-resnet50-800ep.*nsdbench weights fetch"):
        networks.pretrained_sha256("swav_resnet50", "800ep")
