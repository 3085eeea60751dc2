"""Brain metrics under each protocol's encoder: GNet8 on MindEye2's 256-px ToPILImage input with
per-session z-scores, GNet8 on the reconstruction as saved with Second Sight's all-session z-scores,
checked per image against a literal computation (tolerance 1e-9); the CLI's --encoder and the
missing-checkpoint message."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torchvision.transforms as T

from nsdbench.cli import main
from nsdbench.errors import UsageError, WeightsMissing
from nsdbench.metrics import encoder as enc
from nsdbench.metrics import engine
from nsdbench.metrics.brain import BRAIN_ROIS, BrainTarget, measured_betas, pearson_rows
from nsdbench.metrics.protocols import BrainMetric, get_protocol
from nsdbench.nsd.splits import get_split, split_betas
from nsdbench.scoring import brain_target


def _brain_only(name: str):
    p = get_protocol(name)
    return dataclasses.replace(p, metrics=tuple(m for m in p.metrics if isinstance(m, BrainMetric)))


def test_all_sessions_zscore_is_per_voxel_over_every_trial(nsd):
    sp = get_split(nsd, "nsd982", 1)
    raw = np.asarray(nsd.betas(1, sessions=sp.sessions, normalize="none"), np.float64)
    rows = nsd.trial_rows(1, sp.sessions)
    z = (raw - raw.mean(0)) / raw.std(0)
    want = np.stack([z[[rows[t] for t in group]].mean(0) for group in sp.test_trials])
    got = measured_betas(nsd, sp, "all-sessions-zscore")
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    session = measured_betas(nsd, sp, "session-zscore")
    np.testing.assert_array_equal(session, split_betas(nsd, sp, "test", normalize="session-zscore"))
    assert np.abs(session - got).max() > 1e-3
    with pytest.raises(UsageError, match="beta normalization 'x'"):
        measured_betas(nsd, sp, "x")


def test_engine_uses_the_encoder_and_betas_each_protocol_names(nsd):
    sp = get_split(nsd, "nsd982", 1)
    ids = np.array(sp.test_ids[:10])
    gt = nsd.images(ids.tolist())
    rng = np.random.default_rng(5)
    rec = np.clip(gt[:, ::3, ::3].astype(int) + rng.integers(-60, 60, gt[:, ::3, ::3].shape), 0, 255).astype(
        np.uint8
    )
    target = enc.load_brain_target(nsd, 1, "nsd982", "tiny", encoder="gnet8")  # session z-scores
    assert (target.encoder_name, target.beta_normalization) == ("gnet8", "session-zscore")
    gnet = target.encoder
    out = engine.score_reconstructions_by_protocol(
        ids,
        gt,
        ids,
        np.zeros(len(ids), int),
        rec,
        [_brain_only("mindeye"), _brain_only("second-sight-2023")],
        engine.ScoreOptions("tiny", cache=False),
        brain=target,
    )
    rois = target.rois
    # MindEye2: the 256-px reconstruction (torch bilinear, no antialias) through ToPILImage, then GNet8
    x = torch.from_numpy(rec).permute(0, 3, 1, 2).float() / 255
    small = T.Resize((256, 256), antialias=False)(x)
    pil = [np.asarray(T.ToPILImage()(im)) for im in small]
    pred_me = gnet.predict(pil)
    meas_me = np.stack([target.measured[int(i)] for i in ids])
    # Second Sight: the reconstruction as saved, betas z-scored over all sessions
    pred_ss = gnet.predict(list(rec))
    meas_ss = measured_betas(nsd, sp, "all-sessions-zscore")[: len(ids)]
    for name, pred, meas in (("mindeye", pred_me, meas_me), ("second-sight-2023", pred_ss, meas_ss)):
        res = out[name]
        ps = res.per_sample
        for metric in res.set_scores:
            want = pearson_rows(pred[:, rois[BRAIN_ROIS[metric]]], meas[:, rois[BRAIN_ROIS[metric]]])
            got = ps[ps["metric"] == metric].sort_values("nsd_id")["value"].to_numpy()
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-9, err_msg=f"{name} {metric}")
        assert res.provenance["brain"]["encoders"][0]["encoder"] == "gnet8"
    assert (
        out["second-sight-2023"].provenance["brain"]["encoders"][0]["beta_normalization"]
        == "all-sessions-zscore"
    )
    # a target that cannot provide the named encoder is an error, not a silent substitution
    fixed = BrainTarget(gnet, target.measured, target.rois)
    with pytest.raises(UsageError, match="protocol needs gnet8"):
        engine.score_reconstructions(
            ids,
            gt,
            ids,
            np.zeros(len(ids), int),
            rec,
            _brain_only("mindeye"),
            engine.ScoreOptions("tiny", cache=False),
            brain=fixed,
        )


def test_brain_target_for_the_protocol_and_missing_gnet8(nsd):
    me = get_protocol("mindeye")
    target, note = brain_target(nsd, 1, "nsd982", "tiny", None, me)
    assert note == "" and target.encoder_name == "gnet8"
    with pytest.raises(WeightsMissing, match="nsdbench weights fetch gnet8-multisubject"):
        brain_target(nsd, 1, "nsd982", "pretrained", True, me)
    target, note = brain_target(nsd, 1, "nsd982", "pretrained", None, me)
    assert target is None and "nsdbench weights fetch gnet8-multisubject" in note and "\n" not in note
    assert brain_target(nsd, 1, "nsd982", "pretrained", False, me) == (
        None,
        "brain correlation off (--no-brain)",
    )


def test_cli_encoder_only_where_the_protocol_allows_a_choice(tmp_path, capsys):
    assert main(["score", str(tmp_path / "none"), "--protocol", "mindeye", "--encoder", "nsdbench"]) == 2
    assert "fixes its brain encoder to gnet8" in capsys.readouterr().err
    assert main(["score", str(tmp_path / "none"), "--protocol", "nsdbench-v1", "--encoder", "x"]) == 2
