"""Configuration precedence and the weights registry (offline: a file:// URL stands in for a download)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from nsdbench import config, weights
from nsdbench.cli import main
from nsdbench.errors import UsageError, WeightsMissing


def test_precedence_flag_over_env_over_toml_over_default(tmp_path: Path, monkeypatch) -> None:
    toml = tmp_path / "nsdbench.toml"
    toml.write_text('[nsdbench]\nprotocol = "from-toml"\nsplit = "from-toml"\n')
    monkeypatch.setenv("NSDBENCH_CONFIG", str(toml))
    monkeypatch.setenv("NSDBENCH_PROTOCOL", "from-env")
    assert config.get("protocol", "from-flag") == "from-flag"
    assert config.get("protocol") == "from-env"
    assert config.get("split") == "from-toml"
    assert config.get("seed") == config.DEFAULTS["seed"]


def test_home_and_default_db_follow_nsdbench_home(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("NSDBENCH_HOME", str(tmp_path / "h"))
    assert config.home() == (tmp_path / "h").resolve()
    assert config.default_db() == (tmp_path / "h").resolve() / "leaderboard.duckdb"
    assert config.default_db(tmp_path / "x.duckdb") == tmp_path / "x.duckdb"


@pytest.fixture()
def local_artifact(tmp_path: Path, monkeypatch):
    """A registered artifact whose 'published' file is a local state dict reached through file://."""
    src = tmp_path / "published" / "tiny.pth"
    src.parent.mkdir()
    torch.save({"w": torch.arange(6, dtype=torch.float32)}, src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    art = weights.Artifact(
        "test-tiny-state-dict", "a test artifact", "url", src.as_uri(), "tiny.pth", sha256=digest
    )
    with weights.temporarily_registered(art):
        yield art
        weights.remove(art.name)


def test_missing_artifact_names_itself_and_the_fetch_command(local_artifact) -> None:
    with pytest.raises(WeightsMissing) as err:
        weights.require(local_artifact.name)
    msg = str(err.value)
    assert local_artifact.name in msg and f"nsdbench weights fetch {local_artifact.name}" in msg
    assert "\n" not in msg


def test_fetch_records_sha256_and_verify_detects_tampering(local_artifact, capsys) -> None:
    assert main(["weights", "fetch", local_artifact.name]) == 0
    path = weights.require(local_artifact.name)
    assert weights.recorded_sha256(local_artifact.name) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert weights.load_state_dict(path)["w"].tolist() == [0, 1, 2, 3, 4, 5]
    assert main(["weights", "verify", local_artifact.name]) == 0
    path.write_bytes(path.read_bytes() + b"x")
    assert main(["weights", "verify", local_artifact.name]) == 1
    assert "mismatch" in capsys.readouterr().err.lower()


def test_verify_without_a_published_hash_compares_with_the_fetch_record(local_artifact, monkeypatch) -> None:
    unpublished = weights.Artifact(**{**local_artifact.__dict__, "sha256": None})
    with weights.temporarily_registered(unpublished):
        assert main(["weights", "fetch", unpublished.name]) == 0
        path = weights.require(unpublished.name)
        assert weights.verify(unpublished.name)[0]
        path.write_bytes(path.read_bytes() + b"x")
        assert not weights.verify(unpublished.name)[0]


def test_folder_hash_ignores_hub_download_metadata_and_partial_files(tmp_path: Path) -> None:
    snap = tmp_path / "snapshot"
    (snap / "unet").mkdir(parents=True)
    (snap / "unet" / "model.safetensors").write_bytes(b"weights")
    before = weights.sha256_path(snap)
    (snap / ".cache" / "huggingface" / "download").mkdir(parents=True)
    (snap / ".cache" / "huggingface" / "download" / "model.metadata").write_text("etag\n1733131313.0")
    (snap / "unet" / "other.safetensors.part").write_bytes(b"half")
    assert weights.sha256_path(snap) == before
    (snap / "unet" / "model.safetensors").write_bytes(b"weightz")
    assert weights.sha256_path(snap) != before


def test_list_json_shows_the_metric_networks(capsys) -> None:
    assert main(["weights", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    for name in (
        "alexnet-imagenet1k-v1",
        "inception-v3-imagenet1k-v1",
        "clip-vit-l-14-openai",
        "swav-resnet50-800ep",
    ):
        assert name in rows and rows[name]["cached"] is False


def test_modes_and_seeded_builds() -> None:
    with pytest.raises(UsageError):
        weights.check_mode("huge")
    assert weights.is_smoke("tiny") and weights.is_smoke("random") and not weights.is_smoke("pretrained")
    before = torch.random.get_rng_state()
    with weights.seeded(3):
        a = torch.nn.Linear(4, 4)
    with weights.seeded(3):
        b = torch.nn.Linear(4, 4)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's RNG is untouched
    assert weights.module_sha256(a) == weights.module_sha256(b)
    with weights.seeded(4):
        c = torch.nn.Linear(4, 4)
    assert weights.module_sha256(a) != weights.module_sha256(c)


def test_unknown_artifact_is_a_usage_error() -> None:
    assert main(["weights", "verify", "no-such-artifact"]) == 2
