"""The brain-diffuser adapter with tiny weights: settings, variants and artifacts; fits checked against an
independent closed-form ridge and read back from the cache; batch-independent reconstruction with both
stages' extras; the ablations change exactly what they should.

Fast tests use subject 1 of the synthetic NSD cut to a few training and test images and 2 DDIM steps; the
CLI runs (end to end, signal against shuffled) are marked slow.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from nsdbench.caches import ArrayCache
from nsdbench.errors import UsageError
from nsdbench.methods import brain_diffuser_features as bdf
from nsdbench.methods.adapter import Output, RunContext, TestItem
from nsdbench.methods.registry import create_method, get_method

N_TRAIN, N_TEST = 40, 4
FAST = {"steps": 2, "diffusion_batch": 2, "feature_batch": 16}  # 1 DDIM step at strength 0.75


@pytest.fixture(scope="module")
def small(small_subject):
    """Subject 1 with its first N_TRAIN training and N_TEST test images."""
    return small_subject(N_TRAIN, N_TEST)


def _method(variant=None, **overrides):
    return create_method("brain-diffuser", variant, {**FAST, **overrides}, weights_mode="tiny")


def _ctx(data, method, cache_root) -> RunContext:
    return RunContext(
        method="brain-diffuser",
        subject=1,
        split="nsd982",
        data=data,
        weights_mode="tiny",
        settings=method.settings,
        cache=ArrayCache(cache_root),
    )


def _ready(small, cache_root, variant=None, **overrides):
    method = _method(variant, **overrides)
    ctx = _ctx(small, method, cache_root)
    method.setup(ctx)
    return method, ctx, method.fit(small, ctx)


def _outputs(method, ctx, fitted, ids, sample=0) -> dict[int, Output]:
    items = [TestItem(int(n), sample, ctx.seed(int(n), sample)) for n in ids]
    return {o.nsd_id: o for o in method.reconstruct(items, fitted, ctx)}


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("bd-fit-cache")


@pytest.fixture(scope="module")
def full(small, cache_root):
    """The default configuration, fitted, and its outputs for every small test image in one batch."""
    method, ctx, fitted = _ready(small, cache_root)
    return method, ctx, fitted, _outputs(method, ctx, fitted, small.test_ids)


def test_registered_with_variants_settings_and_artifacts():
    from nsdbench import weights

    cls = get_method("brain-diffuser")
    s = cls.Settings()
    assert (s.vdvae_alpha, s.vision_alpha, s.text_alpha) == (50_000, 60_000, 100_000)
    assert (s.steps, s.strength, s.guidance, s.mix, s.eta, s.postprocess) == (50, 0.75, 7.5, 0.6, 0.0, True)
    assert set(cls.variants) == {"vdvae-only", "no-vdvae", "no-text", "no-vision"}
    assert cls.artifacts_by_mode() == {
        "pretrained": ["vdvae-imagenet64", "versatile-diffusion"],
        "random": [],
        "tiny": [],
    }
    pre = {v: create_method("brain-diffuser", v).required_artifacts() for v in cls.variants}
    assert pre["vdvae-only"] == ("vdvae-imagenet64",) and pre["no-vdvae"] == ("versatile-diffusion",)
    assert [a.name for a in weights.method_artifacts("brain-diffuser")] == [
        "vdvae-imagenet64",
        "versatile-diffusion",
    ]
    with pytest.raises(UsageError, match="strength must be 1.0"):
        create_method("brain-diffuser", "no-vdvae", {"strength": 0.75})
    with pytest.raises(UsageError, match="needs use_vision or use_text"):
        create_method("brain-diffuser", "no-text", {"use_vision": "false"})
    with pytest.raises(UsageError, match="no setting 'alpha'"):
        create_method("brain-diffuser", None, {"alpha": 1})


def test_pretrained_without_weights_names_the_fetch_command(small, tmp_path):
    method = create_method("brain-diffuser", "vdvae-only", weights_mode="pretrained")
    with pytest.raises(Exception, match="nsdbench weights fetch vdvae-imagenet64"):
        method.setup(_ctx(small, method, tmp_path))


def _closed_form(x_train, y_train, x_test, alpha):
    """Ridge with intercept in float64 (dual form), then brain-diffuser's post-processing."""
    mx, my = x_train.mean(0), y_train.mean(0)
    xc, yc = x_train - mx, y_train - my
    w = xc.T @ np.linalg.solve(xc @ xc.T + alpha * np.eye(len(xc)), yc)
    pred = (x_test - mx) @ w + my
    sd = pred.std(0)
    z = np.divide(pred - pred.mean(0), sd, out=np.zeros_like(pred), where=sd > 0)
    return z * y_train.std(0) + my


def test_fits_match_an_independent_ridge_and_a_second_fit_reads_the_cache(
    full, small, cache_root, monkeypatch
):
    method, _, fitted, _ = full
    x_train = small.betas("train").astype(np.float64)
    x_test = small.betas("test").astype(np.float64)
    exts = {e.name: (e, a) for e, a in method.extractors(small)}
    assert set(exts) == set(fitted.predictions) == {"vdvae", "vision", "text"}
    for name, (ext, alpha) in exts.items():
        y = (
            bdf.training_features(ext, small.train_ids, 16, dataset=small.data_identity)
            .reshape(N_TRAIN, -1)
            .astype(np.float64)
        )
        want = _closed_form(x_train, y, x_test, alpha)
        got = fitted.predictions[name].reshape(N_TEST, -1)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max(), err_msg=name)

    # text features: the mean over each image's captions of VD's normalized CLIP-text tokens
    from nsdbench.methods.components.vd_clip_features import clip_text_tokens

    nid = small.train_ids[3]
    direct = clip_text_tokens(method.versatile_diffusion, small.captions([nid])[0]).numpy().mean(0)
    np.testing.assert_allclose(
        bdf.training_features(exts["text"][0], [nid], 16, dataset=small.data_identity)[0], direct, atol=1e-6
    )

    def refuse(*a, **k):
        raise AssertionError("a cached fit was recomputed")

    monkeypatch.setattr(bdf, "training_features", refuse)
    monkeypatch.setattr(bdf, "ridge_predictions", refuse)
    again = _method()
    ctx2 = _ctx(small, again, cache_root)
    again.setup(ctx2)
    refit = again.fit(small, ctx2)
    for name in fitted.predictions:
        assert np.array_equal(refit.predictions[name], fitted.predictions[name])


def test_reconstruct_is_independent_of_batch_composition_and_emits_both_stages(full, small):
    method, ctx, fitted, outs = full
    ids = list(small.test_ids)
    single = {}
    for nid in reversed(ids):
        single.update(_outputs(method, ctx, fitted, [nid]))
    assert sorted(outs) == sorted(single) == sorted(ids)
    for nid in ids:
        a, b = outs[nid], single[nid]
        assert a.image.shape == (32, 32, 3) and a.image.dtype == np.uint8  # tiny VD output size
        assert np.array_equal(a.image, b.image)
        assert set(a.extras) == {"stage1.png", "clip_vision.npy", "clip_text.npy"}
        assert a.extras["stage1.png"].shape == (64, 64, 3)
        assert a.extras["clip_vision.npy"].shape == (257, 32) and a.extras["clip_text.npy"].shape == (77, 32)
        for k in a.extras:
            assert np.array_equal(a.extras[k], b.extras[k])
        np.testing.assert_array_equal(a.extras["clip_vision.npy"], fitted.rows("vision", [nid])[0])
    other = _outputs(method, ctx, fitted, ids[:1], sample=1)
    assert not np.array_equal(other[ids[0]].image, outs[ids[0]].image)  # samples draw their own noise


def test_vdvae_only_is_stage_one_of_the_full_method(full, small, cache_root):
    _, _, _, outs = full
    method, ctx, fitted = _ready(small, cache_root, "vdvae-only")
    assert set(fitted.predictions) == {"vdvae"} and method.versatile_diffusion is None
    got = _outputs(method, ctx, fitted, small.test_ids)
    for nid, out in got.items():
        assert out.extras == {} and out.image.shape == (64, 64, 3)
        assert np.array_equal(out.image, outs[nid].extras["stage1.png"])  # same per-image generator draws


@pytest.mark.parametrize(
    ("variant", "dropped", "alone"), [("no-text", "text", 1.0), ("no-vision", "vision", 0.0)]
)
def test_ablated_context_is_not_used(full, small, cache_root, variant, dropped, alone):
    _, _, _, outs = full
    method, ctx, fitted = _ready(small, cache_root, variant)
    assert dropped not in fitted.predictions and method.vdvae is not None
    ablated = _outputs(method, ctx, fitted, small.test_ids)
    assert all(f"clip_{dropped}.npy" not in o.extras for o in ablated.values())
    # the same as the full method with all weight on the other context, whatever the dropped prediction
    one_sided, ctx1, fitted1 = _ready(small, cache_root, mix=alone)
    noisy = dict(fitted1.predictions)
    noisy[dropped] = np.random.default_rng(0).standard_normal(noisy[dropped].shape).astype(np.float32)
    reference = _outputs(one_sided, ctx1, dataclasses.replace(fitted1, predictions=noisy), small.test_ids)
    for nid, out in ablated.items():
        assert np.array_equal(out.image, reference[nid].image)
    assert any(not np.array_equal(out.image, outs[nid].image) for nid, out in ablated.items())


def test_no_vdvae_starts_from_noise(full, small, cache_root):
    _, _, _, outs = full
    method, ctx, fitted = _ready(small, cache_root, "no-vdvae")
    assert set(fitted.predictions) == {"vision", "text"} and method.vdvae is None
    got = _outputs(method, ctx, fitted, small.test_ids)
    assert all("stage1.png" not in o.extras for o in got.values())
    assert all(not np.array_equal(o.image, outs[n].image) for n, o in got.items())
