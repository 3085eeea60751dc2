"""MindDiffuser: settings and variants, the loss against an independent computation, stage 2 lowering its
feature loss on test images, checkpoint resume identity, and a tiny end-to-end run through the CLI."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from nsdbench.errors import UsageError
from nsdbench.methods import minddiffuser as md
from nsdbench.methods.adapter import Checkpoint, RunContext, TestItem
from nsdbench.methods.registry import create_method, get_method, resolve_settings

torch.set_num_threads(1)

# fast sampler for tests: 10 DDIM steps at strength 0.7 = 7 UNet calls per pass
FAST = {"num_inference_steps": 10, "gradient_checkpointing": False}


def test_settings_defaults_variants_and_artifacts():
    cls = get_method("minddiffuser")
    s = resolve_settings(cls)
    assert (s.iterations, s.lr, s.text_tokens, s.cosine_weight) == (300, 0.01, 15, 0.1)
    assert s.layer_weights == (1.5, 1.2, 1.0, 1.0, 1.0, 1.0)
    assert resolve_settings(cls, "stage1").iterations == 0
    assert resolve_settings(cls, "published-noise").redraw_noise is True
    assert resolve_settings(cls, None, {"iterations": "2"}).iterations == 2
    with pytest.raises(UsageError, match="layer_weights needs 6 values"):
        resolve_settings(cls, None, {"layer_weights": "1,2"})
    with pytest.raises(UsageError, match="no setting 'steps'"):
        resolve_settings(cls, None, {"steps": "3"})
    assert create_method("minddiffuser").required_artifacts() == (
        "stable-diffusion-v1-4",
        "clip-vit-b-32-openai",
    )
    assert create_method("minddiffuser", weights_mode="tiny").required_artifacts() == ()
    s2 = resolve_settings(cls, None, {"iterations": "7", "lr": "0.5"})
    assert s2.decoding() == s.decoding()  # stage-2 settings never change the fitted decoders


def test_missing_clip_weights_name_the_artifact_and_the_fetch_command():
    from nsdbench.errors import WeightsMissing
    from nsdbench.methods.components.clip_vit_b32 import load_clip_b32

    with pytest.raises(WeightsMissing, match="nsdbench weights fetch clip-vit-b-32-openai"):
        load_clip_b32("pretrained", "cpu")


def test_pretrained_loading_reads_an_open_clip_vit_b32_checkpoint(tmp_path, monkeypatch):
    """The real loading code on a checkpoint open_clip writes itself (random weights, no download): same
    embedding as open_clip's encode_image, and the paper's 38400-d guidance layers."""
    import open_clip

    from nsdbench.methods import components
    from nsdbench.methods.components.clip_vit_b32 import CLIP_B32, load_clip_b32

    monkeypatch.setenv("NSDBENCH_HOME", str(tmp_path))
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).eval()
    folder = tmp_path / "weights" / CLIP_B32
    folder.mkdir(parents=True)
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    key = (CLIP_B32, "pretrained", "cpu", 0)
    try:
        clip = load_clip_b32("pretrained", "cpu")
        x = torch.rand(1, 3, 64, 64)
        with torch.no_grad():
            feats = clip.features(x)
            ref = model.encode_image(clip.preprocess(x))
        assert clip.feature_dims == (38400,) * 6 + (512,)
        assert [f.shape[1] for f in feats] == list(clip.feature_dims)
        torch.testing.assert_close(feats[-1], ref, rtol=0, atol=0)
    finally:
        components.release(key)


def test_layer_weights_and_loss_match_an_independent_computation():
    rng = np.random.default_rng(0)
    dims = [40] * 6
    gen = [rng.normal(size=(1, d)) for d in dims] + [rng.normal(size=(1, 8))]
    masks = [(rng.random(d) < 0.25).astype(np.float64) for d in dims]
    tgt = [rng.normal(size=(1, d)) * m for d, m in zip(dims, masks, strict=True)] + [rng.normal(size=(1, 8))]
    a = np.array([1.5, 1.2, 1, 1, 1, 1])
    inv = np.array([1 / np.sqrt((t**2).sum()) for t in tgt[:-1]])
    w_ref = a * inv / inv.sum()
    w = md.layer_weights(tgt[:-1], a)
    np.testing.assert_allclose(w, w_ref, rtol=1e-12)
    ref = sum(wi * np.mean((g * m - t) ** 2) for wi, g, m, t in zip(w_ref, gen, masks, tgt, strict=False))
    cos = (gen[-1] @ tgt[-1].T).item() / (np.linalg.norm(gen[-1]) * np.linalg.norm(tgt[-1]))
    ref += 0.1 * (1 - cos)
    t = lambda xs: [torch.from_numpy(x) for x in xs]
    got = md.structure_loss(t(gen), t(tgt), t(masks), w, 0.1)
    assert abs(float(got) - ref) < 1e-10


def test_top_fraction_and_column_correlation():
    scores = np.array([0.1, np.nan, 0.9, 0.5, 0.3, 0.7, 0.2, 0.8])
    np.testing.assert_array_equal(np.flatnonzero(md.top_fraction(scores, 0.25)), [2, 7])
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(30, 5)), rng.normal(size=(30, 5))
    b[:, 4] = 1.0
    r = md.column_correlation(a, b)
    np.testing.assert_allclose(r[:4], [np.corrcoef(a[:, i], b[:, i])[0, 1] for i in range(4)], rtol=1e-10)
    assert np.isnan(r[4])


def test_decode_selects_voxels_and_restores_the_target_scale():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(200, 30)).astype(np.float32)
    Y = np.stack([100 + 5 * X[:, 3], -2 * X[:, 7] + 0.01 * rng.normal(size=200)], 1)
    pred = md.decode(X[:150], Y[:150], X[150:], alpha=0.15, voxels=1)
    np.testing.assert_allclose(pred, Y[150:], rtol=0, atol=0.1)


@pytest.fixture(scope="module")
def fitted_run(nsd, tmp_path_factory):
    """A tiny MindDiffuser fitted on the synthetic NSD's subject 1 (fast sampler), and its context."""
    from nsdbench.methods.adapter import SubjectData
    from nsdbench.nsd.splits import get_split

    method = create_method("minddiffuser", overrides={**FAST, "iterations": 3}, weights_mode="tiny")
    data = SubjectData(nsd, 1, get_split(nsd, "nsd982", 1))
    ctx = RunContext(
        "minddiffuser", 1, "nsd982", data, weights_mode="tiny", settings=method.settings,
        checkpoint_dir=tmp_path_factory.mktemp("md-checkpoints"),
    )  # fmt: skip
    method.setup(ctx)
    fitted = method.fit(data, ctx)
    return method, ctx, fitted


def test_fit_decodes_every_feature_at_its_shape(fitted_run):
    method, ctx, fitted = fitted_run
    n = len(ctx.data.test_ids)
    assert fitted["c"].shape == (n, 15, 32) and fitted["z"].shape == (n, 4, 16, 16)
    dims = method.clip.feature_dims
    for k in range(6):
        assert fitted[f"clip{k}"].shape == (n, dims[k]) and fitted[f"mask{k}"].mean() == pytest.approx(
            0.25, abs=0.01
        )
        assert not fitted[f"clip{k}"][:, ~fitted[f"mask{k}"]].any()  # zero outside the selected features
    assert fitted["clip_final"].shape == (n, dims[-1])
    # token 0 (BOS) is the same for every caption: its decoded value is the training mean, identical per row
    assert np.ptp(fitted["c"][:, 0], axis=0).max() == 0


def test_stage2_lowers_its_feature_loss_on_every_test_image(fitted_run):
    method, ctx, fitted = fitted_run
    items = ctx.items(ctx.data.test_ids[:4])
    outs = list(method.reconstruct(items, fitted, replace(ctx, checkpoint_dir=None)))
    assert [(o.nsd_id, o.sample) for o in outs] == [(i.nsd_id, i.sample) for i in items]
    for o in outs:
        losses = o.extras["loss.json"]["loss"]
        assert len(losses) == 4 and losses[-1] < losses[0], (o.nsd_id, losses)
        assert o.image.shape == (32, 32, 3) and o.image.dtype == np.uint8
        assert o.extras["stage1.png"].shape == (32, 32, 3)
        json.dumps(o.extras["loss.json"], allow_nan=False)
    z_before = fitted["z"].copy()
    list(method.reconstruct(items[:1], fitted, replace(ctx, checkpoint_dir=None)))
    np.testing.assert_array_equal(fitted["z"], z_before)  # the optimizer works on a copy of the decoded z


def test_stage1_image_is_plain_img2img_from_the_decoded_latent(fitted_run):
    from nsdbench.methods.components.stable_diffusion import encode_prompts
    from nsdbench.methods.diffusion.img2img import Img2ImgSettings, img2img
    from nsdbench.methods.seeds import torch_generator

    method, ctx, fitted = fitted_run
    item = ctx.items(ctx.data.test_ids[:1])[0]
    _, stage1, _ = method.optimize(fitted, 0, item, None)
    cond = torch.from_numpy(fitted["c"][:1])
    with torch.inference_mode():
        ref = img2img(
            method.sd, cond, encode_prompts(method.sd, [""])[:, :15], [torch_generator(item.seed)],
            Img2ImgSettings(num_inference_steps=10, strength=0.7, guidance_scale=5.0),
            init_latents=torch.from_numpy(fitted["z"][:1]),
        )  # fmt: skip
    np.testing.assert_array_equal(stage1, md.to_uint8_image(ref))


class _Killed(Exception):
    pass


def test_a_killed_optimization_resumes_to_the_uninterrupted_result(fitted_run, tmp_path, monkeypatch):
    method, ctx, fitted = fitted_run
    item = TestItem(int(ctx.data.test_ids[1]), 0, ctx.seed(int(ctx.data.test_ids[1]), 0))
    method.settings = replace(method.settings, iterations=4, checkpoint_every=2)
    try:
        reference = method.optimize(fitted, 1, item, None)

        original = md.MindDiffuser.generate_image
        calls = {"n": 0}

        def dies_in_iteration_3(self, z, cond, uncond, it, iteration):
            if iteration == 3:
                raise _Killed
            calls["n"] += 1
            return original(self, z, cond, uncond, it, iteration)

        ckpt = Checkpoint(tmp_path / "item.npz")
        monkeypatch.setattr(md.MindDiffuser, "generate_image", dies_in_iteration_3)
        with pytest.raises(_Killed):
            method.optimize(fitted, 1, item, ckpt)
        assert int(ckpt.load()["iteration"]) == 2 and calls["n"] == 3
        monkeypatch.setattr(md.MindDiffuser, "generate_image", original)
        resumed = method.optimize(fitted, 1, item, ckpt)
    finally:
        method.settings = replace(method.settings, iterations=3, checkpoint_every=10)
    np.testing.assert_array_equal(resumed[0], reference[0])
    np.testing.assert_array_equal(resumed[1], reference[1])
    assert resumed[2] == reference[2]


@pytest.mark.slow
@pytest.mark.ci
def test_tiny_end_to_end_through_the_console_script(synth_root, tmp_path):
    from test_cli_usage import cli

    from nsdbench.leaderboards.store import Store

    db, out = tmp_path / "lb.duckdb", tmp_path / "run"
    sets = [
        x
        for k, v in {**FAST, "iterations": 2, "num_inference_steps": 4}.items()
        for x in ("--set", f"{k}={v}")
    ]
    code, stdout, stderr = cli(
        "run", "-m", "minddiffuser", "--subjects", "1", "--data", str(synth_root), "--weights", "tiny",
        "--device", "cpu", "--out", str(out), "--db", str(db), "--json", *sets, OMP_NUM_THREADS=1,
    )  # fmt: skip
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert doc["leaderboard_ids"]
    pngs = sorted(out.glob("subj01/*_0.png"))
    assert len(pngs) == 91 and len(list(out.glob("subj01/*.stage1.png"))) == 91
    curves = [json.loads(p.read_text())["loss"] for p in out.glob("subj01/*.loss.json")]
    assert len(curves) == 91 and all(len(c) == 3 for c in curves)
    assert len(Store(db).runs(include_smoke=True)) == 1  # the leaderboard row of this run


def test_gpu_bench_script_runs_tiny_on_cpu_and_extrapolates_as_stated(capsys):
    """scripts/gpu_bench_minddiffuser.py --tiny: two timed Adam iterations through the adapter's optimize,
    extrapolated to the published 300 and flagged so; the loss falls; a bad count is a usage error."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "gpu_bench_minddiffuser.py"
    spec = importlib.util.spec_from_file_location("gpu_bench_minddiffuser", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--tiny", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert (r["iterations_timed"], r["iterations_reported"], r["extrapolated"]) == (2, 300, True)
    assert r["seconds_per_iteration"] > 0 and r["final_pass_s"] > 0
    assert r["seconds_per_image"] == pytest.approx(r["final_pass_s"] + 300 * r["seconds_per_iteration"])
    assert r["loss_last"] < r["loss_first"]
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--tiny", "--iterations", "0"])
    assert exit_info.value.code == 2
