"""The weights registry sees every artifact without running anything; `weights fetch --method NAME`."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from nsdbench import weights
from nsdbench.cli import main
from nsdbench.methods import registry
from nsdbench.methods.adapter import Method


@pytest.fixture
def fake_components(tmp_path: Path, monkeypatch):
    """A components package on sys.path whose modules (one in a sub-package) register artifacts at import."""
    pkg = tmp_path / "fakecomponents"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    body = """
        from nsdbench import weights
        weights.register(weights.Artifact(
            {name!r}, "test", "hf-snapshot", "org/{name}", subfolder="unet", variant="fp16",
            loader="diffusers", size_bytes={size}, used_by=("fake-method",)))
        """
    (pkg / "alpha.py").write_text(textwrap.dedent(body.format(name="test-alpha-unet", size=1500)))
    (pkg / "sub" / "beta.py").write_text(textwrap.dedent(body.format(name="test-beta-vae", size=None)))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(weights, "COMPONENT_PACKAGE", "fakecomponents")
    yield ["test-alpha-unet", "test-beta-vae"]
    for name in ("test-alpha-unet", "test-beta-vae"):
        weights.unregister(name)
    for mod in [m for m in sys.modules if m.startswith("fakecomponents")]:
        del sys.modules[mod]


def test_component_modules_are_discovered_and_listed(fake_components, capsys) -> None:
    mods = weights.artifact_modules()
    assert {"fakecomponents.alpha", "fakecomponents.sub.beta"} <= set(mods)
    assert set(weights.ARTIFACT_MODULES) <= set(mods)
    assert main(["weights", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(fake_components) <= set(rows) and "alexnet-imagenet1k-v1" in rows
    alpha = rows["test-alpha-unet"]
    assert (alpha["subfolder"], alpha["variant"], alpha["loader"], alpha["size_bytes"]) == (
        "unet", "fp16", "diffusers", 1500,
    )  # fmt: skip
    assert rows["test-beta-vae"]["size_bytes"] is None and rows["alexnet-imagenet1k-v1"]["cached"] is False


def test_the_real_components_package_is_walked() -> None:
    mods = weights.artifact_modules()
    assert "nsdbench.methods.components.clip_tokenizer" in mods


def _fake(name: str, asks: tuple[str, ...] = ()) -> type:
    """A registered Method class that loads `asks` (and nothing when empty)."""

    class Fake(Method):
        description = "test method"

        def required_artifacts(self) -> tuple[str, ...]:
            return asks

    Fake.name = name
    return Fake


@pytest.fixture
def fake_methods(fake_components):
    registry.register_method(_fake("fake-method"))
    registry.register_method(_fake("asking-method", asks=("test-beta-vae",)))
    registry.register_method(_fake("no-weights-method"))
    yield
    for name in ("fake-method", "asking-method", "no-weights-method"):
        registry.unregister_method(name)


def test_method_artifacts_asks_the_method_then_falls_back_to_used_by(fake_methods) -> None:
    assert [a.name for a in weights.method_artifacts("asking-method")] == ["test-beta-vae"]
    names = [a.name for a in weights.method_artifacts("fake-method")]  # nothing asked: used_by
    assert names == ["test-alpha-unet", "test-beta-vae"]
    assert weights.method_artifacts("no-weights-method") == []
    arts = [weights.get("test-alpha-unet"), weights.get("test-beta-vae")]
    assert weights.download_size(arts) == (1500, 1)


def test_fetch_method_shows_the_size_first_and_fetches_exactly_those(
    fake_methods, tmp_path: Path, monkeypatch, capsys
) -> None:
    src = tmp_path / "published.bin"
    src.write_bytes(b"\x01" * 2048)
    art = weights.Artifact(
        "test-method-file",
        "test",
        "url",
        src.as_uri(),
        "model.bin",
        size_bytes=2048,
        used_by=("file-method",),
    )
    registry.register_method(_fake("file-method"))
    with weights.temporarily_registered(art):
        try:
            assert main(["weights", "fetch", "--method", "file-method"]) == 0
            out = capsys.readouterr().out
            assert out.index("2.0 KB") < out.index("sha256=")
            assert "file-method: 1 artifacts (test-method-file)" in out
            assert weights.require("test-method-file").read_bytes() == src.read_bytes()
            assert main(["weights", "fetch", "--method", "no-weights-method"]) == 0
            assert "0 artifacts" in capsys.readouterr().out
            assert main(["weights", "fetch", "--method", "nope"]) == 2
        finally:
            registry.unregister_method("file-method")
            weights.remove("test-method-file")
