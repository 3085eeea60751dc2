"""The canonical encoding model on the synthetic NSD (tiny weights), its noise ceiling, brain targets and CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nsdbench import weights
from nsdbench.errors import DataError, WeightsMissing
from nsdbench.metrics import encoder as enc
from nsdbench.metrics import gnet8
from nsdbench.metrics.brain import brain_correlation
from nsdbench.metrics.guidance import load_guidance_encoder


def test_noise_ceiling_recovers_simulated_snr():
    rng = np.random.default_rng(0)
    n_img, n_vox, sig, noise = 400, 300, 0.8, 1.6  # ncsnr = 0.5
    signal = rng.standard_normal((n_img, n_vox)) * sig
    reps = np.where(np.arange(n_img) % 4 == 0, 2, 3)  # a mix of 2 and 3 repetitions
    rows, groups = [], []
    for i, r in enumerate(reps):
        groups.append(np.arange(len(rows), len(rows) + r))
        rows.extend(signal[i] + rng.standard_normal((r, n_vox)) * noise)
    ncsnr, nc = enc.noise_ceiling(np.asarray(rows), groups)
    assert abs(np.median(ncsnr) - 0.5) < 0.05
    inv_n = np.mean(1.0 / reps)
    np.testing.assert_allclose(nc, ncsnr**2 / (ncsnr**2 + inv_n))
    # literal formula: pooled within-image variance, total variance minus noise variance
    b = np.asarray(rows)
    within = sum(((b[g] - b[g].mean(0)) ** 2).sum(0) for g in groups) / sum(len(g) - 1 for g in groups)
    literal = np.sqrt(np.clip(b.var(0, ddof=1) - within, 0, None) / within)
    np.testing.assert_allclose(ncsnr, literal, rtol=1e-12)


def test_noise_ceiling_without_repetitions_is_nan():
    ncsnr, nc = enc.noise_ceiling(np.ones((3, 4)), [np.array([0]), np.array([1]), np.array([2])])
    assert np.isnan(ncsnr).all() and np.isnan(nc).all()


@pytest.fixture(scope="module")
def model(nsd):
    return enc.fit_encoder(nsd, 1, "nsd982", "tiny", progress=False)


def test_encoder_predicts_held_out_betas(model, nsd):
    acc = model.accuracy
    assert set(acc) == {"V1", "V2", "V3", "V4", "early", "higher_vis", "nsdgeneral"}
    # the simulator drives V1-V4 retinotopically from local luminance/contrast/colour
    for roi in ("V1", "V2", "V3", "V4", "early"):
        assert acc[roi]["median_r"] > 0.3, (roi, acc[roi])
    assert acc["nsdgeneral"]["mean_r"] > 0.2
    assert 0 < acc["early"]["frac_nc"] <= 1.5 and 0 < acc["early"]["mean_nc"] <= 1
    assert model.meta["smoke"] is True and model.meta["weights_mode"] == "tiny"
    assert model.r.shape == model.nc.shape == (model.meta["n_voxels"],)


def test_encoder_cache_hit_and_batch_independent_predictions(model, nsd):
    from nsdbench.nsd.splits import get_split

    again = enc.fit_encoder(nsd, 1, "nsd982", "tiny")
    assert again.path == model.path and again.meta["key"] == model.meta["key"]
    ids = list(get_split(nsd, "nsd982", 1).test_ids[:21])
    images = nsd.images(ids)
    full = again.predict(images)
    assert full.shape == (21, model.meta["n_voxels"]) and full.dtype == np.float32
    parts = np.concatenate([again.predict(images[:5]), again.predict(list(images[5:]))])
    np.testing.assert_array_equal(parts, full)
    np.testing.assert_array_equal(model.predict(images[[7]])[0], full[7])


def test_brain_correlation_of_ground_truth_beats_shuffled(model, nsd):
    target = enc.load_brain_target(nsd, 1, "nsd982", "tiny")
    ids = sorted(target.measured)
    assert len(ids) == len(target.measured) and target.info["encoder_key"] == model.meta["key"]
    images = nsd.images(ids)
    measured = target.measured_matrix(ids)
    gt = brain_correlation(target.predict(images), measured, target.rois)
    perm = np.roll(np.arange(len(ids)), 7)
    shuffled = brain_correlation(target.predict(images[perm]), measured, target.rois)
    for metric in ("bc_early", "bc_v1", "bc_nsdgeneral"):
        assert gt[metric].mean() > shuffled[metric].mean() + 0.1, metric


def test_published_gnet8_needs_its_weights(nsd):
    assert "gnet8-multisubject" in weights.artifacts()
    with pytest.raises(WeightsMissing, match="nsdbench weights fetch gnet8-multisubject"):
        gnet8.load_published_encoder("gnet8", 1, 320)
    with pytest.raises(WeightsMissing):
        enc.load_brain_target(nsd, 1, "nsd982", "pretrained", encoder="gnet8")


def test_gnet8_tiny_brain_target_plumbing(nsd):
    target = enc.load_brain_target(nsd, 1, "nsd982", "tiny", encoder="gnet8")
    ids = sorted(target.measured)[:20]
    images = nsd.images(ids)
    pred = target.predict(images)
    assert pred.shape == (20, len(target.rois["nsdgeneral"])) and np.isfinite(pred).all()
    np.testing.assert_array_equal(
        np.concatenate([target.predict(images[:3]), target.predict(images[3:])]), pred
    )
    assert set(target.brain_correlations(ids, images)) == {
        "bc_v1",
        "bc_v2",
        "bc_v3",
        "bc_v4",
        "bc_early",
        "bc_higher_vis",
        "bc_nsdgeneral",
    }


def test_gnet8_release_layout_loads_with_weights_only():
    """A checkpoint in the MindEye2 release layout (best_params.enc / best_params.fwrfs[subject] / numpy
    input_mean) loads through the registry path with torch.load(weights_only=True)."""
    import torch

    n_vox = 12
    trunk, readout = gnet8.gnet8_modules(
        gnet8.GNET8_TRUNK_WIDTH, gnet8.GNET8_PASS_THROUGH, np.full((1, 3, 1, 1), 0.4, np.float32), n_vox
    )
    ckpt = {
        "input_mean": np.full((1, 3, 1, 1), 0.4, np.float32),
        "best_params": {
            "enc": trunk.state_dict(),
            "fwrfs": {1: {k: v.numpy() for k, v in readout.state_dict().items()}},
        },
        "voxel_mask": {1: np.ones(n_vox, bool)},
    }
    path = weights.local_path("gnet8-multisubject")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    try:
        loaded = gnet8.GNet8Encoder(1, n_vox, "pretrained")
        for a, b in ((loaded.trunk, trunk), (loaded.readout, readout)):
            sa, sb = a.state_dict(), b.state_dict()
            assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
        with pytest.raises(DataError, match="predicts 12 voxels"):
            gnet8.GNet8Encoder(1, n_vox + 1, "pretrained")
    finally:
        weights.remove("gnet8-multisubject")


def test_cli_encoder_fit_and_show(model, synth_root, capsys):
    from nsdbench.cli import main

    assert (
        main(
            [
                "encoder",
                "fit",
                "--subject",
                "1",
                "--data",
                str(synth_root),
                "--weights",
                "tiny",
                "--split",
                "nsd982",
                "--json",
            ]
        )
        == 0
    )
    fitted = json.loads(capsys.readouterr().out)
    assert fitted["key"] == model.meta["key"]
    assert main(["encoder", "show", "--subject", "1", "--data", str(synth_root), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["accuracy"]["V1"]["median_r"] == pytest.approx(model.accuracy["V1"]["median_r"])
    assert main(["encoder", "show", "--subject", "1", "--data", str(synth_root)]) == 0
    text = capsys.readouterr().out
    assert "V1" in text and "fraction of NC" in text
    assert "noise ceiling R²" in text and "comparable with r², not r" in " ".join(text.split())
    assert main(["encoder", "show", "--subject", "2", "--data", str(synth_root)]) == 1
    err = capsys.readouterr().err
    assert "nsdbench encoder fit --subject 2" in err and len(err.strip().splitlines()) <= 2


def _nchw(images: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)


def test_guidance_encoder_matches_the_numpy_encoder(model, nsd):
    """Same numbers as EncodingModel.predict: to 1e-5 of the largest |prediction| in float32 and 1e-6 in
    float64 (the numpy encoder returns float32) at the encoder's input size; to 0.005 (antialiased bilinear
    vs PIL) for images it must resize."""
    import torch

    from nsdbench.metrics.guidance import GuidanceEncoder

    ids = list(nsd.trials(1)["nsd_id"].unique()[:19])
    images = nsd.images(ids)
    ref = model.predict(images).astype(np.float64)
    scale = np.abs(ref).max()
    g32 = load_guidance_encoder("nsdbench-encoder-v1", nsd, 1, weights_mode="tiny", device="cpu")
    assert isinstance(g32, GuidanceEncoder) and g32.identity.startswith(
        "nsdbench-encoder-v1/subj01/nsd982/tiny/"
    )
    assert model.meta["key"][:16] in g32.identity
    assert load_guidance_encoder("nsdbench-encoder-v1", nsd, 1, weights_mode="tiny", device="cpu") is g32
    out = g32.predict(_nchw(images))
    assert isinstance(out, torch.Tensor) and out.shape == (19, g32.n_voxels) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-5 * scale)
    g64 = load_guidance_encoder(
        "nsdbench-encoder-v1", nsd, 1, weights_mode="tiny", device="cpu", dtype="float64"
    )
    np.testing.assert_allclose(g64.predict(_nchw(images)).numpy(), ref, rtol=0, atol=1e-6 * scale)
    # float input in [0, 1] gives the same as uint8; batching does not change a result
    np.testing.assert_array_equal(g64.predict(_nchw(images).float() / 255), g64.predict(_nchw(images)))
    parts = torch.cat([g32.predict(_nchw(images[:4])), g32.predict(_nchw(images[4:]))])
    torch.testing.assert_close(parts, out, rtol=0, atol=0)
    # larger images are resized on the device (torch antialiased bilinear) vs PIL bilinear in numpy
    from PIL import Image

    big = np.stack(
        [np.asarray(Image.fromarray(im).resize((96, 96), Image.Resampling.NEAREST)) for im in images]
    )
    ref_big = model.predict(big).astype(np.float64)
    np.testing.assert_allclose(g64.predict(_nchw(big)).numpy(), ref_big, rtol=0, atol=0.005 * scale)


def test_guidance_encoder_rejects_bad_input_and_names(nsd):
    import torch

    from nsdbench.errors import UsageError

    g = load_guidance_encoder("nsdbench-encoder-v1", nsd, 1, weights_mode="tiny", device="cpu")
    with pytest.raises(UsageError, match="NCHW"):
        g.predict(torch.zeros(2, 64, 64, 3))
    with pytest.raises(UsageError, match="unknown guidance encoder 'alexnet'"):
        load_guidance_encoder("alexnet", nsd, 1, weights_mode="tiny", device="cpu")


def test_gnet8_guidance_encoder(nsd):
    with pytest.raises(WeightsMissing, match="nsdbench weights fetch gnet8-multisubject"):
        load_guidance_encoder("gnet8", nsd, 1, weights_mode="pretrained", device="cpu")
    g = load_guidance_encoder("gnet8", nsd, 1, weights_mode="tiny", device="cpu")
    assert g.identity.startswith("gnet8/subj01/tiny/")
    ids = list(nsd.trials(1)["nsd_id"].unique()[:5])
    images = nsd.images(ids)
    n_vox = int(nsd.roi_mask(1, "nsdgeneral").sum())
    ref = gnet8.load_published_encoder("gnet8", 1, n_vox, "tiny").predict(images)
    out = g.predict(_nchw(images)).numpy()
    assert out.shape == ref.shape == (5, n_vox)
    # the numpy path resizes 64 → 67 px with PIL Lanczos, this one with torch's antialiased bicubic
    r = np.corrcoef(out.ravel(), ref.ravel())[0, 1]
    assert r > 0.99, r
