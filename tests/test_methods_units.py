"""Unit tests of the method machinery: seeds, registry, derangements, resizing, library argmax, fit cache."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import pearsonr

from nsdbench.errors import UsageError
from nsdbench.methods import baselines, registry
from nsdbench.methods.adapter import Method
from nsdbench.methods.seeds import image_seed, torch_generator
from nsdbench.nsd.subject import zscore_with_train


def test_image_seed_is_the_documented_sha256():
    key = "nsdbench-seed-v1|7|ridge-pixels|2|1234|3"
    expected = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") >> 1
    assert image_seed(7, "ridge-pixels", 2, 1234, 3) == expected
    assert 0 <= expected < 2**63


def test_image_seed_differs_per_key_and_is_stable_across_processes():
    keys = [
        (0, "m", 1, 10, 0),
        (1, "m", 1, 10, 0),
        (0, "n", 1, 10, 0),
        (0, "m", 2, 10, 0),
        (0, "m", 1, 11, 0),
        (0, "m", 1, 10, 1),
    ]
    seeds = [image_seed(*k) for k in keys]
    assert len(set(seeds)) == len(seeds)
    # Python's hash() is salted per process; ours must not be
    code = "from nsdbench.methods.seeds import image_seed; print(image_seed(0, 'm', 1, 10, 0))"
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PATH": ""},
    )
    assert int(other.stdout) == seeds[0]


def test_torch_generator_reproducible():
    import torch

    a = torch.randn(5, generator=torch_generator(image_seed(0, "m", 1, 2, 0)))
    b = torch.randn(5, generator=torch_generator(image_seed(0, "m", 1, 2, 0)))
    assert torch.equal(a, b)


@pytest.mark.parametrize("n", [2, 3, 10, 101])
def test_random_derangement_has_no_fixed_point_and_is_a_permutation(n):
    for seed in range(20):
        perm = baselines.random_derangement(n, np.random.default_rng(seed))
        assert sorted(perm.tolist()) == list(range(n))
        assert not np.any(perm == np.arange(n))


def test_random_derangement_needs_two():
    with pytest.raises(ValueError):
        baselines.random_derangement(1, np.random.default_rng(0))


def test_rowwise_correlation_argmax_matches_literal_pearson_loop():
    rng = np.random.default_rng(0)
    pred = rng.normal(size=(57, 30)).astype(np.float32)
    measured = rng.normal(size=(6, 30))
    measured[2] = pred[41] * 3 + 1  # perfect correlation with row 41
    got = baselines.rowwise_correlation_argmax(pred, measured, block=8)  # several blocks
    expected = [int(np.argmax([pearsonr(p, m)[0] for p in pred])) for m in measured]
    assert got.tolist() == expected
    assert got[2] == 41


def test_rowwise_correlation_argmax_ties_and_constant_rows():
    pred = np.array([[1.0, 1, 1, 1], [0, 1, 2, 3], [0, 1, 2, 3]])
    measured = np.array([[0.0, 2, 4, 6]])
    assert baselines.rowwise_correlation_argmax(pred, measured).tolist() == [1]  # constant row never wins


def test_downsample_is_area_average_and_upsample_keeps_range():
    img = np.zeros((4, 4, 3), np.uint8)
    img[:2, :2] = 255
    small = baselines.downsample(img[None], 2)[0]
    np.testing.assert_allclose(small[..., 0], [[1.0, 0.0], [0.0, 0.0]], atol=1e-6)
    up = baselines.upsample(baselines.to_uint8(small), 8)
    assert up.shape == (8, 8, 3) and up.dtype == np.uint8


def test_to_uint8_clips_and_rounds():
    assert baselines.to_uint8(np.array([-0.5, 0.0, 0.5, 1.0, 2.0])).tolist() == [0, 0, 128, 255, 255]


def test_zscore_with_train_uses_train_statistics():
    rng = np.random.default_rng(1)
    train, test = rng.normal(3, 2, size=(50, 4)), rng.normal(size=(5, 4))
    train[:, 1] = 7.0  # constant column
    zt, zs = zscore_with_train(train, test)
    np.testing.assert_allclose(zt[:, 0].mean(), 0, atol=1e-6)
    np.testing.assert_allclose(zt[:, 0].std(), 1, atol=1e-5)
    np.testing.assert_allclose(zs[:, 2], (test[:, 2] - train[:, 2].mean()) / train[:, 2].std(), rtol=1e-5)
    assert np.all(zt[:, 1] == 0)


def test_registry_lists_baselines_and_they_implement_the_protocol():
    names = [m.name for m in registry.list_methods()]
    for name in ("ground-truth", "shuffled", "ridge-pixels", "best-library-image"):
        assert name in names
        cls = registry.get_method(name)
        assert issubclass(cls, Method) and cls.name == name


def test_unknown_method_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown method 'nope'.*ground-truth"):
        registry.get_method("nope")


def test_resolve_settings_variants_and_overrides():
    m = registry.get_method("ridge-pixels")
    assert registry.resolve_settings(m).size == 32
    assert registry.resolve_settings(m, "16px").size == 16
    assert registry.resolve_settings(m, "16px", {"size": 8}).size == 8  # explicit beats the variant
    with pytest.raises(UsageError, match="no variant"):
        registry.resolve_settings(m, "nope")
    with pytest.raises(UsageError, match="no setting 'nope'"):
        registry.resolve_settings(m, None, {"nope": 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        registry.resolve_settings(m).size = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("key", "text", "value"),
    [
        ("size", "64", 64),
        ("size", " 7 ", 7),
        ("roi", "streams:early", "streams:early"),
        ("alphas", "1,10.5", (1.0, 10.5)),
        ("alphas", "[1e3]", (1000.0,)),
        ("per_target", "true", True),
        ("per_target", "0", False),
    ],
)
def test_set_values_are_parsed_by_the_settings_types(key, text, value):
    m = registry.get_method("ridge-pixels")
    got = getattr(registry.resolve_settings(m, None, registry.parse_assignments([f"{key}={text}"])), key)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize(
    ("key", "text", "message"),
    [
        ("size", "3.5", "setting size expects int, got '3.5'"),
        ("size", "big", "setting size expects int, got 'big'"),
        ("alphas", "1,x", "setting alphas expects"),
        ("per_target", "maybe", "setting per_target expects bool, got 'maybe'"),
    ],
)
def test_set_type_errors_are_one_line(key, text, message):
    m = registry.get_method("ridge-pixels")
    with pytest.raises(UsageError, match=message) as info:
        registry.resolve_settings(m, None, {key: text})
    assert len(str(info.value).splitlines()) == 1


def test_a_settings_class_must_be_a_frozen_dataclass():
    from nsdbench.methods.adapter import Method as Base

    @dataclasses.dataclass
    class Loose:
        x: int = 1

    class Bad(Base):
        name = "bad-settings"
        Settings = Loose

    with pytest.raises(TypeError, match="frozen dataclass"):
        registry.register_method(Bad)


def test_entry_point_plugin_is_discovered(tmp_path, monkeypatch):
    pkg = tmp_path / "nsdb_plugin_demo.py"
    pkg.write_text(
        "from nsdbench.methods.baselines import GroundTruth\n"
        "class Demo(GroundTruth):\n"
        "    name = 'plugin-demo'\n"
    )
    dist = tmp_path / "nsdb_plugin_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: nsdb-plugin-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[nsdbench.methods]\nplugin-demo = nsdb_plugin_demo:Demo\nbroken = nsdb_plugin_demo:DoesNotExist\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.list_methods()
    with registry.scoped_registry(rediscover=True):
        assert registry.get_method("plugin-demo").name == "plugin-demo"
        assert "entry point" in registry.method_source("plugin-demo")
        with pytest.raises(UsageError, match="broken.*failed to load"):
            registry.get_method("broken")
    with pytest.raises(UsageError):
        registry.get_method("plugin-demo")  # gone with the block


def test_methods_cli_list_and_show(capsys):
    import json

    from nsdbench.cli import main

    assert main(["methods", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["ridge-pixels"]["variants"]["16px"] == {"size": 16}
    assert rows["shuffled"]["source"] == "builtin"
    assert main(["methods", "show", "best-library-image", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert "Second Sight" in shown["paper"] and shown["default_samples"] == 1
    assert shown["defaults"] == {"encoder": "nsdbench-encoder-v1", "library_batch": 64}
    assert shown["setting_types"] == {"encoder": "str", "library_batch": "int"}
    assert set(shown["required_artifacts"]) == {"pretrained", "random", "tiny"}
    assert rows["best-library-image"]["required_artifacts"] == shown["required_artifacts"]
    assert rows["ground-truth"]["reads_ground_truth"] and not rows["ridge-pixels"]["reads_ground_truth"]
    assert main(["methods", "show", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown method 'nope'" in err and len(err.splitlines()) == 1


def test_subject_data_never_hands_out_test_images(nsd):
    from nsdbench.errors import NSDBenchError
    from nsdbench.methods.adapter import SubjectData
    from nsdbench.nsd.splits import get_split

    data = SubjectData(nsd, 1, get_split(nsd, "nsd982", 1))
    train_id, test_id = data.train_ids[0], data.test_ids[3]
    np.testing.assert_array_equal(data.images([train_id]), nsd.images([train_id]))
    with pytest.raises(NSDBenchError, match=f"test NSD id {test_id} \\(nsd982\\)"):
        data.images([train_id, test_id])
    assert not hasattr(data, "ground_truth_images")  # test stimuli come only through ctx.ground_truth


def test_methods_show_lists_artifacts_per_weights_mode(scoped_methods, monkeypatch, capsys):
    """A method whose artifacts depend on its weights mode and settings shows them per mode."""
    from nsdbench.cli import main
    from nsdbench.methods.adapter import Method as Base

    @dataclasses.dataclass(frozen=True)
    class S:
        refiner: bool = False

    class Artifacty(Base):
        name = "test-artifacty"
        description = "needs weights in pretrained mode only"
        Settings = S

        def required_artifacts(self):
            if self.weights_mode != "pretrained":
                return ()
            return ("sd-v1-4",) + (("sd-refiner",) if self.settings.refiner else ())

    registry.register_method(Artifacty, source="test")
    assert main(["methods", "show", "test-artifacty", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [a["name"] for a in shown["required_artifacts"]["pretrained"]] == ["sd-v1-4"]
    assert shown["required_artifacts"]["tiny"] == [] and shown["required_artifacts"]["random"] == []
    inst = registry.create_method("test-artifacty", None, {"refiner": "true"}, weights_mode="pretrained")
    assert inst.required_artifacts() == ("sd-v1-4", "sd-refiner")
    assert main(["methods", "list", "--json"]) == 0
    assert "test-artifacty" in {r["name"] for r in json.loads(capsys.readouterr().out)}


def test_best_library_fit_key_names_the_device_type_and_dtype():
    """The library predictions differ by device type and dtype, so the fit cache key must too; device
    indices of one type share a fit."""
    from nsdbench.methods.adapter import RunContext

    m = baselines.BestLibraryImage(weights_mode="tiny")
    lib, measured = np.arange(5, dtype=np.int64), np.ones((2, 3))

    def key(device: str, dtype: str = "float32") -> str:
        ctx = RunContext("best-library-image", 1, "nsd982", None, device=device, dtype=dtype)
        return m.fit_key(1, ctx, "enc", lib, measured)

    assert key("cpu") != key("cuda") != key("mps") != key("cpu")
    assert key("cuda:0") == key("cuda:1") == key("cuda")
    assert key("cuda", "float16") != key("cuda")
