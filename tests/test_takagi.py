"""The takagi2023 adapter with tiny weights: registration, variants and artifacts; features and fits checked
against independent computations and read back from the cache; the tiny VAE's pixel path carries the image;
the variants do what they say; outputs are deterministic per (id, sample) and independent of the batch.

Fast tests use subject 1 of the synthetic NSD cut to a few training and test images and 2 DDIM steps; the
CLI runs (end to end, signal against shuffled) are in test_takagi_runs.py, marked slow.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nsdbench.caches import ArrayCache
from nsdbench.methods import takagi_features as tf
from nsdbench.methods.adapter import Output, RunContext, TestItem
from nsdbench.methods.registry import create_method, get_method

N_TRAIN, N_TEST = 40, 4
FAST = {"steps": 2, "diffusion_batch": 2, "feature_batch": 16, "alphas": (1e-2, 1.0, 1e2), "cv": 3}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models are latency-bound: one intra-op thread is fastest on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def small(small_subject):
    """Subject 1 with its first N_TRAIN training and N_TEST test images."""
    return small_subject(N_TRAIN, N_TEST)


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("takagi-fit-cache")


def _method(variant=None, **overrides):
    return create_method("takagi2023", variant, {**FAST, **overrides}, weights_mode="tiny")


def _ready(data, cache_root, variant=None, **overrides):
    method = _method(variant, **overrides)
    ctx = RunContext(
        method="takagi2023", subject=1, split="nsd982", data=data, weights_mode="tiny",
        settings=method.settings, cache=ArrayCache(cache_root),
    )  # fmt: skip
    method.setup(ctx)
    return method, ctx, method.fit(data, ctx)


def _outputs(method, ctx, fitted, ids, sample=0) -> dict[int, Output]:
    items = [TestItem(int(n), sample, ctx.seed(int(n), sample)) for n in ids]
    return {o.nsd_id: o for o in method.reconstruct(items, fitted, ctx)}


@pytest.fixture(scope="module")
def full(small, cache_root):
    method, ctx, fitted = _ready(small, cache_root)
    return method, ctx, fitted, _outputs(method, ctx, fitted, small.test_ids)


def test_registered_with_variants_settings_and_artifacts():
    cls = get_method("takagi2023")
    assert cls.default_samples == 5
    assert set(cls.variants) == {"z-only", "c-only"}
    s = cls.Settings()
    assert (s.steps, s.strength, s.guidance, s.cv) == (50, 0.8, 5.0, 5)
    assert s.alphas == (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    assert (s.z_roi, s.c_roi) == ("streams:early", "streams:ventral")
    assert cls.artifacts_by_mode() == {"pretrained": ["stable-diffusion-v1-4"], "random": [], "tiny": []}
    assert not create_method("takagi2023", "z-only", {}).settings.use_c
    assert not create_method("takagi2023", "c-only", {}).settings.use_z


def test_pretrained_without_weights_names_the_fetch_command(small, tmp_path):
    from nsdbench.errors import NSDBenchError

    method = create_method("takagi2023", None, {}, weights_mode="pretrained")
    ctx = RunContext(method="takagi2023", subject=1, split="nsd982", data=small, weights_mode="pretrained")
    with pytest.raises(NSDBenchError, match="nsdbench weights fetch"):
        method.setup(ctx)


def test_pixel_path_carries_the_image_and_leaves_the_shared_vae_alone(small):
    from nsdbench.methods.components.sd_vae_pixel_path import wire_pixel_path
    from nsdbench.methods.components.stable_diffusion import load_sd14
    from nsdbench.weights import module_sha256

    sd = load_sd14("tiny")
    before = module_sha256(sd.vae)
    wired = wire_pixel_path(sd.vae)
    assert module_sha256(sd.vae) == before
    x = torch.from_numpy(tf.resize(small.images(small.train_ids[:8]), 32, tf.Image.Resampling.LANCZOS))

    def roundtrip_r(vae) -> float:
        with torch.no_grad():
            out = (vae.decode(vae.encode(x * 2 - 1).latent_dist.mean).sample / 2 + 0.5).clamp(0, 1)
        a, b = out.reshape(8, -1).numpy(), x.reshape(8, -1).numpy()
        return float(np.mean([np.corrcoef(a[i], b[i])[0, 1] for i in range(8)]))

    assert roundtrip_r(wired) > 0.6  # measured 0.86 on 32 training images
    assert abs(roundtrip_r(sd.vae)) < 0.3  # the random VAE alone carries none (measured 0.01)


def _closed_form(x_tr, y, x_te, alpha):
    xm, ym = x_tr.mean(0), y.mean(0)
    xc = x_tr - xm
    w = np.linalg.solve(xc.T @ xc + alpha * np.eye(x_tr.shape[1]), xc.T @ (y - ym))
    return (x_te - xm) @ w + ym


def test_features_and_fits_match_independent_computations_and_a_second_fit_reads_the_cache(
    small, cache_root, monkeypatch
):
    from nsdbench.methods.components.stable_diffusion import encode_prompts
    from nsdbench.methods.diffusion.img2img import encode_images

    method, _, fitted = _ready(small, cache_root, alphas=(10.0,))
    exts = {e.name: (e, roi) for e, roi in method.extractors(small)}
    assert set(exts) == {"z", "c"} and exts["z"][0].shape == (4, 16, 16)

    nid = small.train_ids[3]
    pixels = torch.from_numpy(tf.resize(small.images([nid]), 32, tf.Image.Resampling.LANCZOS))
    z = encode_images(method.stable_diffusion.vae, pixels, [tf.latent_generator(nid)]).numpy()[0]
    np.testing.assert_allclose(
        tf.training_features(exts["z"][0], [nid], 16, dataset=small.data_identity)[0], z, atol=1e-6
    )
    c = encode_prompts(method.stable_diffusion, small.captions([nid])[0]).numpy().mean(0)
    np.testing.assert_allclose(
        tf.training_features(exts["c"][0], [nid], 16, dataset=small.data_identity)[0], c, atol=1e-6
    )

    for name, (ext, roi) in exts.items():
        trials = small.single_trials("train", roi=roi)
        x_te = small.betas("test", roi=roi, normalize="none").astype(np.float64)
        x_tr = trials.betas.astype(np.float64)
        mean, std = x_tr.mean(0), x_tr.std(0)
        y = (
            tf.training_features(ext, small.train_ids, 16, dataset=small.data_identity)
            .reshape(N_TRAIN, -1)
            .astype(np.float64)
        )
        row = {n: i for i, n in enumerate(small.train_ids)}
        y_trials = y[[row[int(n)] for n in trials.nsd_ids]]
        want = _closed_form((x_tr - mean) / std, y_trials, (x_te - mean) / std, 10.0)
        got = getattr(fitted, name).reshape(N_TEST, -1)
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * np.abs(want).max(), err_msg=name)

    def refuse(*a, **k):
        raise AssertionError("a cached fit was recomputed")

    monkeypatch.setattr(tf, "training_features", refuse)
    monkeypatch.setattr(tf, "ridge_predictions", refuse)
    _, _, refit = _ready(small, cache_root, alphas=(10.0,))
    assert np.array_equal(refit.z, fitted.z) and np.array_equal(refit.c, fitted.c)


def test_outputs_are_deterministic_batch_independent_and_carry_the_decoded_z(full, small):
    method, ctx, fitted, outs = full
    assert set(outs) == set(small.test_ids)
    for o in outs.values():
        assert o.image.dtype == np.uint8 and o.image.shape == (32, 32, 3)
        assert o.extras["decoded_z.png"].shape == (32, 32, 3)
    one = small.test_ids[2]
    alone = _outputs(method, ctx, fitted, [one])[one]
    assert np.array_equal(alone.image, outs[one].image)
    other_sample = _outputs(method, ctx, fitted, [one], sample=1)[one]
    assert not np.array_equal(other_sample.image, outs[one].image)
    assert np.array_equal(other_sample.extras["decoded_z.png"], outs[one].extras["decoded_z.png"])


def test_z_only_outputs_the_decoded_z_image(full, small, cache_root):
    from nsdbench.methods.diffusion.img2img import decode_latents

    _, _, fitted_full, outs_full = full
    method, ctx, fitted = _ready(small, cache_root, "z-only")
    assert fitted.c is None and np.array_equal(fitted.z, fitted_full.z)
    outs = _outputs(method, ctx, fitted, small.test_ids)
    with torch.no_grad():
        direct = (
            decode_latents(method.stable_diffusion.vae, torch.from_numpy(fitted.z))
            .permute(0, 2, 3, 1)
            .numpy()
        )
    for i, n in enumerate(small.test_ids):
        assert np.array_equal(outs[n].image, outs_full[n].extras["decoded_z.png"])
        np.testing.assert_allclose(outs[n].image / 255.0, direct[i], atol=0.5 / 255 + 1e-6)


def test_c_only_samples_from_noise_and_ignores_z(full, small, cache_root):
    _, _, _, outs_full = full
    method, ctx, fitted = _ready(small, cache_root, "c-only")
    assert fitted.z is None
    outs = _outputs(method, ctx, fitted, small.test_ids)
    for n in small.test_ids:
        assert "decoded_z.png" not in outs[n].extras
        assert not np.array_equal(outs[n].image, outs_full[n].image)
    # from pure noise: the same c and generator give the same image whatever z would have been
    again = _outputs(method, ctx, fitted, small.test_ids[:1])
    assert np.array_equal(again[small.test_ids[0]].image, outs[small.test_ids[0]].image)
