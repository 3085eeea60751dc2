"""Metric networks in pretrained mode: the published file is loaded into a module allocated without
random initialization, with the key layouts of the published files (SwAV's `module.` prefix and its
unused heads). The files here hold seeded random weights written in those layouts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nsdbench import weights
from nsdbench.errors import NSDBenchError
from nsdbench.metrics.networks import FeatureNetwork, NetworkKey

CASES = [  # network, weights version, artifact, key prefix, keys the published file lacks
    ("efficientnet_b1", "IMAGENET1K_V1", "efficientnet-b1-imagenet1k-v1", "", ()),
    ("swav_resnet50", "800ep", "swav-resnet50-800ep", "module.", ("fc.weight", "fc.bias")),
]


@pytest.fixture
def private_home(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("NSDBENCH_HOME", str(tmp_path))
    return tmp_path


def _write_published_layout(
    network: str, artifact: str, prefix: str, lacks: tuple[str, ...]
) -> FeatureNetwork:
    """A random-mode network, saved as its artifact file in the published key layout."""
    random_net = FeatureNetwork(NetworkKey(network, "-", "random", "fp32", "cpu"))
    sd = {prefix + k: v for k, v in random_net.module.state_dict().items() if k not in lacks}
    if network == "swav_resnet50":  # the published checkpoint also holds its projection head and prototypes
        sd["module.projection_head.0.weight"] = torch.ones(4, 4)
        sd["module.prototypes.weight"] = torch.ones(3, 4)
    path = weights.local_path(artifact)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, path)
    return random_net


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_published_file_loads_into_an_uninitialized_module(case, private_home: Path) -> None:
    network, version, artifact, prefix, lacks = case
    random_net = _write_published_layout(network, artifact, prefix, lacks)
    net = FeatureNetwork(NetworkKey(network, version, "pretrained", "fp32", "cpu"))
    assert net.artifact == artifact
    assert net.sha256 == weights.sha256_path(weights.local_path(artifact))
    tensors = dict(net.module.state_dict())
    assert all(t.device.type == "cpu" and bool(torch.isfinite(t.float()).all()) for t in tensors.values())
    for k, v in random_net.module.state_dict().items():
        if k not in lacks:
            assert torch.equal(tensors[k], v), k
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    got = net.features(x, ("avgpool",))["avgpool"]
    assert torch.equal(got, random_net.features(x, ("avgpool",))["avgpool"])
    if lacks:  # the classifier the file lacks is seeded: the same on every load
        again = FeatureNetwork(NetworkKey(network, version, "pretrained", "fp32", "cpu"))
        assert torch.equal(again.module.fc.weight, net.module.fc.weight)


def test_a_file_without_backbone_keys_is_named_in_the_error(private_home: Path) -> None:
    _write_published_layout(
        "swav_resnet50", "swav-resnet50-800ep", "module.", ("fc.weight", "layer1.0.conv1.weight")
    )
    with pytest.raises(
        NSDBenchError, match=r"swav-resnet50-800ep.*lack backbone keys.*layer1\.0\.conv1\.weight"
    ):
        FeatureNetwork(NetworkKey("swav_resnet50", "800ep", "pretrained", "fp32", "cpu"))


def test_files_that_cannot_be_memory_mapped_are_read_whole(tmp_path: Path) -> None:
    """Legacy (pre-zip) files and zip files with compressed members load as before, mmap asked or not."""
    import zipfile

    sd = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4, dtype=torch.float16)}
    legacy = tmp_path / "legacy.pt"
    torch.save(sd, legacy, _use_new_zipfile_serialization=False)
    plain = tmp_path / "plain.pt"
    torch.save(sd, plain)
    deflated = tmp_path / "deflated.pt"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            dst.writestr(item.filename, src.read(item.filename))
    for path in (legacy, plain, deflated):
        for mmap in (True, False):
            got = weights.load_state_dict(path, mmap=mmap)
            assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd), (path, mmap)
