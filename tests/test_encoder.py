"""The canonical encoding model on the synthetic NSD (tiny weights), its noise ceiling, brain targets and CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from nsdbench import weights
from nsdbench.errors import WeightsMissing
from nsdbench.metrics import encoder as enc
from nsdbench.metrics.brain import brain_correlation


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
        enc.load_published_encoder("gnet8", 1)
    with pytest.raises(WeightsMissing):
        enc.load_brain_target(nsd, 1, "nsd982", "tiny", encoder="gnet8")


def test_cli_encoder_fit_and_show(model, synth_root, capsys):
    from nsdbench.cli import main

    assert main(["encoder", "fit", "--subject", "1", "--data", str(synth_root), "--weights", "tiny",
                 "--split", "nsd982", "--json"]) == 0
    fitted = json.loads(capsys.readouterr().out)
    assert fitted["key"] == model.meta["key"]
    assert main(["encoder", "show", "--subject", "1", "--data", str(synth_root), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["accuracy"]["V1"]["median_r"] == pytest.approx(model.accuracy["V1"]["median_r"])
    assert main(["encoder", "show", "--subject", "1", "--data", str(synth_root)]) == 0
    text = capsys.readouterr().out
    assert "V1" in text and "fraction of NC" in text
    assert main(["encoder", "show", "--subject", "2", "--data", str(synth_root)]) == 1
    err = capsys.readouterr().err
    assert "nsdbench encoder fit --subject 2" in err and len(err.strip().splitlines()) <= 2
