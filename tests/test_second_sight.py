"""second-sight, stochastic-search and clip-decoding-only (methods/second_sight.py, second_sight_search.py):
schedules against literal formulas, the search's monotone progress and exact resume with tiny unCLIP
components, and the CLI end to end (slow)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nsdbench.methods import search_math as sm

# ---------------------------------------------------------------------------------------------- pure math


def test_second_sight_schedules_equal_the_published_formulas():
    for i in range(6):
        lam = 0.92 - 0.3 * ((i + 1) / 6) ** 3
        assert sm.second_sight_strength(i, 6) == pytest.approx(lam, abs=1e-15)
        assert sm.second_sight_momentum(i, 6) == pytest.approx(0.2 * ((i + 1) / 6) ** 2, abs=1e-15)
        assert sm.branch_size(lam, 25) == max(10, int(25 * lam))
    # the literal values of the published run: λ from 0.9186 to 0.62, n_b from 22 down to 15
    assert [sm.branch_size(sm.second_sight_strength(i, 6), 25) for i in range(6)] == [22, 22, 22, 20, 18, 15]
    assert sm.second_sight_strength(5, 6) == pytest.approx(0.62)
    assert sm.branch_size(0.1, 25) == 10  # the floor


def test_ccn_strength_falls_cubically_from_one_to_point_six():
    vals = [sm.cubic_decay(i, 10) for i in range(10)]
    assert vals[0] == 1.0 and vals[-1] == pytest.approx(0.6)
    for i, v in enumerate(vals):
        assert v == pytest.approx(1.0 - 0.4 * (i / 9) ** 3, abs=1e-15)
    assert all(a >= b for a, b in itertools.pairwise(vals))


def test_slerp_follows_the_great_circle():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 16)), rng.normal(size=(5, 16))
    ta, tb = torch.as_tensor(a), torch.as_tensor(b)
    np.testing.assert_allclose(sm.slerp(ta, tb, 0.0).numpy(), a, atol=1e-12)
    np.testing.assert_allclose(sm.slerp(ta, tb, 1.0).numpy(), b, atol=1e-12)
    t = 0.3
    ua = a / np.linalg.norm(a, axis=1, keepdims=True)
    ub = b / np.linalg.norm(b, axis=1, keepdims=True)
    theta = np.arccos(np.sum(ua * ub, axis=1, keepdims=True))
    direction = (np.sin((1 - t) * theta) * ua + np.sin(t * theta) * ub) / np.sin(theta)
    norm = (1 - t) * np.linalg.norm(a, axis=1, keepdims=True) + t * np.linalg.norm(b, axis=1, keepdims=True)
    np.testing.assert_allclose(sm.slerp(ta, tb, t).numpy(), direction * norm, rtol=1e-10)
    np.testing.assert_allclose(sm.slerp(ta, ta, 0.5).numpy(), a, rtol=1e-10)  # parallel: no NaN


def test_library_ranking_equals_numpy_corrcoef():
    from nsdbench.methods.second_sight_search import rank_library

    rng = np.random.default_rng(1)
    pred, measured = (
        rng.normal(size=(300, 40)).astype(np.float32),
        rng.normal(size=(7, 40)).astype(np.float32),
    )
    mask = rng.random(40) < 0.5
    for m in (None, mask):
        p = pred if m is None else pred[:, m]
        q = measured if m is None else measured[:, m]
        r = np.corrcoef(np.concatenate([p, q]).astype(np.float64))[: len(p), len(p) :]
        expected = np.argsort(-r, axis=0, kind="stable")[:5].T
        np.testing.assert_array_equal(rank_library(pred, measured, 5, "cpu", mask=m, block=64), expected)
    np.testing.assert_allclose(
        sm.pearson_rows(torch.as_tensor(pred[:3]), torch.as_tensor(measured[0])).numpy(),
        [np.corrcoef(pred[j], measured[0])[0, 1] for j in range(3)],
        rtol=1e-9,
    )


def test_library_ranking_over_repetitions_is_the_mean_r():
    from nsdbench.methods.second_sight_search import rank_library

    rng = np.random.default_rng(4)
    preds = [rng.normal(size=(200, 30)) for _ in range(2)]
    n_reps = np.array([3, 1, 2])
    reps = np.zeros((3, 3, 30))
    for t, n in enumerate(n_reps):
        reps[t, :n] = rng.normal(size=(n, 30))
    literal = np.array([[np.mean([np.mean([np.corrcoef(p[i], reps[t, r])[0, 1] for p in preds])
                                  for r in range(n_reps[t])]) for t in range(3)] for i in range(200)])  # fmt: skip
    expected = np.argsort(-literal, axis=0, kind="stable")[:4].T
    np.testing.assert_array_equal(rank_library(preds, reps, 4, "cpu", block=64, n_reps=n_reps), expected)
    # the zero padding is never scored: the 2-D form on the single rows agrees
    single = rank_library(preds, reps[[1], 0], 4, "cpu")
    np.testing.assert_array_equal(single[0], expected[1])


def test_repetition_score_is_the_mean_r_over_repetitions():
    rng = np.random.default_rng(2)
    pred, reps = rng.normal(size=(6, 30)), rng.normal(size=(3, 30))
    literal = [np.mean([np.corrcoef(p, r)[0, 1] for r in reps]) for p in pred]
    got = sm.mean_pearson(torch.as_tensor(pred), torch.as_tensor(reps)).numpy()
    np.testing.assert_allclose(got, literal, atol=1e-12)


def test_search_targets_are_the_test_repetitions(nsd, nsdbench_home):
    from dataclasses import replace

    from nsdbench.methods.adapter import SubjectData
    from nsdbench.methods.second_sight_search import SecondSightSettings, measured_betas, search_targets
    from nsdbench.nsd.splits import get_split

    data = SubjectData(nsd, 1, get_split(nsd, "nsd982", 1))
    base = SecondSightSettings(autoencoder=False)
    got = search_targets(data, None, base, None, None)
    trials = data.single_trials("test", "nsdgeneral", normalize="session-zscore")
    for t, n in enumerate(data.test_ids):
        want = trials.betas[trials.nsd_ids == n]
        assert got["n_reps"][t] == len(want) >= 1
        np.testing.assert_array_equal(got["targets"][t, : len(want)], want)
    avg = search_targets(data, None, replace(base, score_target="average"), None, None)
    np.testing.assert_array_equal(avg["targets"][:, 0], measured_betas(data))
    assert np.all(avg["n_reps"] == 1)


def test_candidate_seeds_are_distinct_and_stable():
    seeds = {sm.candidate_seed(7, "second-sight", i, j) for i in range(6) for j in range(30)}
    assert len(seeds) == 180 and all(0 <= s < 2**63 for s in seeds)
    assert sm.candidate_seed(7, "second-sight", 2, 3) == sm.candidate_seed(7, "second-sight", 2, 3)


# ---------------------------------------------------------------------------------------------- the search


class PixelEncoder:
    """A small real encoding model: 8x8 area-averaged pixels through a fixed seeded linear readout."""

    def __init__(self, n_voxels: int) -> None:
        g = torch.Generator().manual_seed(3)
        self.n_voxels = n_voxels
        self.identity = "test-pixel-encoder"
        self.w = torch.randn(3 * 8 * 8, n_voxels, generator=g, dtype=torch.float64)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        x = images.double() / 255 if images.dtype == torch.uint8 else images.double()
        return torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1) @ self.w


@pytest.fixture(scope="module")
def tiny_search(nsd):
    """Tiny unCLIP, two measured test patterns of the synthetic NSD and the pieces a search needs."""
    from nsdbench.methods.adapter import SubjectData
    from nsdbench.methods.second_sight_search import SecondSightSettings, UnclipSampler, measured_betas
    from nsdbench.nsd.splits import get_split

    data = SubjectData(nsd, 1, get_split(nsd, "nsd982", 1))
    settings = SecondSightSettings(iterations=3, search_samples=8, num_inference_steps=3, unet_batch=16)
    gen = UnclipSampler("tiny", "cpu", settings)
    measured = measured_betas(data)[:2]
    rng = np.random.default_rng(0)
    c0 = rng.normal(size=(2, gen.components.image_encoder.config.projection_dim)).astype(np.float32)
    z0 = rng.integers(0, 256, size=(2, 64, 64, 3), dtype=np.uint8)
    return data, settings, gen, PixelEncoder(measured.shape[1]), measured, c0, z0


def test_best_image_never_gets_worse_and_scores_are_the_images(tiny_search):
    from nsdbench.methods.adapter import TestItem
    from nsdbench.methods.second_sight_search import initial_state, second_sight_iteration

    data, settings, gen, enc, measured, c0, z0 = tiny_search
    for row in range(2):
        target = torch.as_tensor(measured[row])
        state = initial_state(c0[row], settings.branches, gen.image_size)
        item = TestItem(int(data.test_ids[row]), 0, 1000 + row)
        for i in range(settings.iterations):
            state = second_sight_iteration(state, i, z0[row], target, item, settings, gen, enc)
        assert state.done == 3 and len(state.trace_images) == 3
        assert np.all(np.diff(state.trace_scores) >= 0), state.trace_scores  # best distribution's mean
        rescored = sm.pearson_rows(
            enc.predict(torch.as_tensor(state.trace_images).permute(0, 3, 1, 2)), target
        )
        np.testing.assert_allclose(rescored.numpy(), state.trace_image_scores, atol=1e-9)
        best = sm.pearson_rows(
            enc.predict(torch.as_tensor(state.best_image[None]).permute(0, 3, 1, 2)), target
        )
        assert float(best[0]) == pytest.approx(float(state.best_score), abs=1e-9)
        assert float(state.best_mean) == pytest.approx(float(state.trace_scores[-1]))
        assert float(state.best_score) >= float(state.best_mean) - 1e-12  # the best of its distribution
        assert state.seed_c.shape == (settings.branches, c0.shape[1]) and np.all(np.isfinite(state.seed_c))
        np.testing.assert_allclose(state.seed_c, gen.embed(state.seed_images), rtol=1e-5, atol=1e-6)


def chosen_series(
    data, settings, gen, enc, keep_best: bool, first: int | None = None
) -> dict[int, np.ndarray]:
    """Per test image of the subject: the guidance encoder's brain correlation of the chosen image after each
    iteration, recomputed from the images themselves (not from the search's own bookkeeping); `first`: only
    the subject's first test images."""
    from dataclasses import replace

    from nsdbench.methods.adapter import TestItem
    from nsdbench.methods.second_sight_search import initial_state, measured_betas, second_sight_iteration

    settings = replace(settings, keep_best=keep_best)
    measured = measured_betas(data)
    rng = np.random.default_rng(11)
    dim = gen.components.image_encoder.config.projection_dim
    out = {}
    for row, nsd_id in enumerate(data.test_ids[:first]):
        target = torch.as_tensor(measured[row])
        c0 = rng.normal(size=dim).astype(np.float32)
        z0 = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
        state = initial_state(c0, settings.branches, gen.image_size)
        item = TestItem(int(nsd_id), 0, 500 + row)
        for i in range(settings.iterations):
            state = second_sight_iteration(state, i, z0, target, item, settings, gen, enc)
        images = torch.as_tensor(state.trace_images).permute(0, 3, 1, 2)
        rescored = sm.pearson_rows(enc.predict(images), target).numpy()
        np.testing.assert_allclose(rescored, state.trace_image_scores, atol=1e-9)
        out[int(nsd_id)] = rescored
    return out


def falls(series: dict[int, np.ndarray]) -> list[int]:
    """Test ids whose chosen image scores lower after some iteration than before it."""
    return [n for n, s in series.items() if np.any(np.diff(s) < 0)]


def test_chosen_image_never_falls_with_keep_best_on_every_test_image(tiny_search):
    """keep_best: the chosen image's brain correlation never decreases, on every test image of the subject.
    The same check on the published rule (best image of the best distribution) finds a fall on this data,
    so the check can fail."""
    data, settings, gen, enc, *_ = tiny_search
    assert len(data.test_ids) >= 8
    kept = chosen_series(data, settings, gen, enc, keep_best=True)
    assert set(kept) == {int(n) for n in data.test_ids}
    assert falls(kept) == [], {n: kept[n] for n in falls(kept)}
    published = chosen_series(data, settings, gen, enc, keep_best=False, first=24)
    assert falls(published), "the published rule never fell here: the check above shows nothing"


def test_first_iteration_is_one_distribution_and_branches_follow_the_schedule(tiny_search, monkeypatch):
    from nsdbench.methods import second_sight_search as ss
    from nsdbench.methods.adapter import TestItem

    data, settings, gen, enc, measured, c0, z0 = tiny_search
    calls = []
    real = gen.sample

    def spy(c, seeds, strength, **kw):
        calls.append((c.detach().float().cpu().numpy(), float(strength)))
        return real(c, seeds, strength, **kw)

    monkeypatch.setattr(gen, "sample", spy)
    target = torch.as_tensor(measured[0])
    item = TestItem(int(data.test_ids[0]), 0, 7)
    state = ss.initial_state(c0[0], settings.branches, gen.image_size)
    state = ss.second_sight_iteration(state, 0, z0[0], target, item, settings, gen, enc)
    c_after_0, seeds_after_0 = state.prev_c.copy(), state.seed_c.copy()
    state = ss.second_sight_iteration(state, 1, z0[0], target, item, settings, gen, enc)
    (c_first, lam0), (c_second, lam1) = calls
    assert len(c_first) == settings.search_samples  # iteration 0: every sample from (c0, z0)
    np.testing.assert_allclose(c_first, np.repeat(c0[:1], len(c_first), 0), rtol=1e-6, atol=1e-6)
    assert lam0 == pytest.approx(0.92 - 0.3 * (1 / 3) ** 3) and lam1 == pytest.approx(
        0.92 - 0.3 * (2 / 3) ** 3
    )
    n_b = sm.branch_size(lam1, settings.search_samples // settings.branches, settings.branch_floor)
    # iteration 0's best image is its top seed, so the released code adds a fifth branch from it with c_i
    assert len(c_second) == (settings.branches + 1) * n_b
    gamma = 0.2 * (2 / 3) ** 2
    ci = torch.as_tensor(c_after_0, dtype=torch.float64)
    seeds = torch.as_tensor(seeds_after_0, dtype=torch.float64)
    want = sm.slerp(ci.expand_as(seeds), sm.slerp(ci.expand_as(seeds), seeds, gamma), gamma)
    np.testing.assert_allclose(c_second[: settings.branches * n_b : n_b], want.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(c_second[-1], c_after_0, rtol=1e-5, atol=1e-5)  # slerp(c_i, c_i) = c_i


def test_hybrid_prediction_and_library_score_are_the_literal_averages():
    from nsdbench.methods.hybrid_encoder import (
        HybridEncoder,
        hybrid_correlation_matrix,
        hybrid_prediction,
    )

    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(7, 40)), rng.normal(size=(7, 40))
    measured = rng.normal(size=(3, 40))
    np.testing.assert_allclose(
        hybrid_prediction([torch.as_tensor(a), torch.as_tensor(b)]).numpy(), (a + b) / 2
    )
    lit = np.array([[(np.corrcoef(a[i], m)[0, 1] + np.corrcoef(b[i], m)[0, 1]) / 2 for m in measured]
                    for i in range(7)])  # fmt: skip
    got = hybrid_correlation_matrix([torch.as_tensor(a), torch.as_tensor(b)], torch.as_tensor(measured))
    np.testing.assert_allclose(got.numpy(), lit, atol=1e-12)

    class Fixed:
        def __init__(self, w: np.ndarray, name: str) -> None:
            self.w, self.identity, self.n_voxels = torch.as_tensor(w), name, w.shape[1]

        def predict(self, images: torch.Tensor) -> torch.Tensor:
            return images.double().flatten(1) @ self.w

    images = torch.as_tensor(rng.integers(0, 256, size=(5, 3, 2, 2)), dtype=torch.uint8)
    wa, wb = rng.normal(size=(12, 40)), rng.normal(size=(12, 40))
    hybrid = HybridEncoder([Fixed(wa, "a"), Fixed(wb, "b")])
    x = images.double().flatten(1).numpy()
    target = torch.as_tensor(measured[0])
    score = sm.pearson_rows(hybrid.predict(images), target).numpy()
    lit = [np.corrcoef((x[i] @ wa + x[i] @ wb) / 2, measured[0])[0, 1] for i in range(5)]
    np.testing.assert_allclose(score, lit, atol=1e-12)
    assert hybrid.identity == "hybrid(a + b)" and hybrid.identities == ("a", "b")


def test_clip_betas_ridge_predicts_its_training_targets_from_images(tiny_search, nsdbench_home):
    from nsdbench import ridge
    from nsdbench.methods.hybrid_encoder import HybridEncoder
    from nsdbench.methods.second_sight_search import clip_betas_ridge, library_embeddings, nchw

    data, settings, gen, enc, measured, _, _ = tiny_search
    clip = clip_betas_ridge(data, gen, "tiny", settings.clip_encoder_alphas)
    assert clip.n_voxels == measured.shape[1] and clip.identity.startswith("clip-betas-ridge/")
    ids = list(data.train_ids[:3])
    x = library_embeddings(gen, data, data.train_ids, "tiny")
    y = np.asarray(data.betas("train", "nsdgeneral", normalize="session-zscore"), np.float64)
    alpha = float(clip.model.alpha[0])
    direct = ridge.fit_predict(x, y, x[:3], ridge.RidgeSettings(alpha=alpha, dtype="float64"))
    from_images = clip.predict(nchw(data.images(ids))).numpy()
    np.testing.assert_allclose(from_images, direct, rtol=1e-4, atol=1e-4)
    hybrid = HybridEncoder([enc, clip])
    images = nchw(data.images(ids))
    np.testing.assert_allclose(
        hybrid.predict(images).numpy(), (enc.predict(images).numpy() + from_images) / 2, atol=1e-9
    )


def test_resume_after_a_kill_equals_an_uninterrupted_search(tiny_search, tmp_path, monkeypatch):
    from nsdbench.methods import second_sight_search as ss
    from nsdbench.methods.adapter import RunContext, TestItem
    from nsdbench.methods.second_sight import SecondSight

    data, settings, gen, enc, measured, c0, z0 = tiny_search
    method = SecondSight(settings, weights_mode="tiny")  # encoder given in `fitted`
    method.gen = gen
    fitted = {
        "arrays": {"measured": measured, "c0": c0, "z0_image": z0},
        "row": {int(data.test_ids[0]): 0},
        "encoder": enc,
    }
    item = TestItem(int(data.test_ids[0]), 0, 42)

    def ctx(folder: str) -> RunContext:
        return RunContext(
            "second-sight", 1, "nsd982", data, weights_mode="tiny", checkpoint_dir=tmp_path / folder
        )

    whole = method.search(item, fitted, ctx("a"))

    real, calls = ss.second_sight_iteration, []

    def killed_after_two(*args, **kw):
        calls.append(args[1])
        if len(calls) == 3:
            raise KeyboardInterrupt  # the job is preempted during its third iteration
        return real(*args, **kw)

    monkeypatch.setattr(ss, "second_sight_iteration", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        method.search(item, fitted, ctx("b"))
    assert int(ctx("b").checkpoint(item).load()["done"]) == 2
    calls.clear()
    resumed = method.search(item, fitted, ctx("b"))
    assert calls == [2]  # only the missing iteration ran
    for key, value in whole.arrays().items():
        np.testing.assert_array_equal(resumed.arrays()[key], value, err_msg=key)


def test_a_checkpoint_from_before_top_image_is_ignored_and_the_image_starts_over(
    tiny_search, tmp_path, monkeypatch
):
    """A checkpoint written before `top_image`/`top_score` existed counts as damaged: no KeyError, every
    iteration runs again and the result equals a search from scratch."""
    from nsdbench.methods import second_sight_search as ss
    from nsdbench.methods.adapter import RunContext, TestItem
    from nsdbench.methods.second_sight import SecondSight

    data, settings, gen, enc, measured, c0, z0 = tiny_search
    method = SecondSight(settings, weights_mode="tiny")
    method.gen = gen
    fitted = {
        "arrays": {"measured": measured, "c0": c0, "z0_image": z0},
        "row": {int(data.test_ids[0]): 0},
        "encoder": enc,
    }
    item = TestItem(int(data.test_ids[0]), 0, 42)
    ctx = RunContext("second-sight", 1, "nsd982", data, weights_mode="tiny", checkpoint_dir=tmp_path)
    whole = method.search(item, fitted, RunContext("second-sight", 1, "nsd982", data, weights_mode="tiny"))
    old = {k: v for k, v in whole.arrays().items() if k not in ("top_image", "top_score")}
    old["done"] = np.asarray(1)
    ctx.checkpoint(item).save(old)
    real, calls = ss.second_sight_iteration, []

    def counted(*args, **kw):
        calls.append(args[1])
        return real(*args, **kw)

    monkeypatch.setattr(ss, "second_sight_iteration", counted)
    again = method.search(item, fitted, ctx)
    assert calls == list(range(settings.iterations))
    for key, value in whole.arrays().items():
        np.testing.assert_array_equal(again.arrays()[key], value, err_msg=key)


def test_stochastic_search_keeps_its_best_image(tiny_search):
    from nsdbench.methods.adapter import TestItem
    from nsdbench.methods.second_sight_search import (
        StochasticSearchSettings,
        initial_state,
        stochastic_iteration,
    )

    data, _, gen, enc, measured, c0, _ = tiny_search
    s = StochasticSearchSettings(iterations=3, search_samples=4, seeds=2, num_inference_steps=3)
    target = torch.as_tensor(measured[0])
    state = initial_state(c0[0], 0, gen.image_size)
    for i in range(s.iterations):
        state = stochastic_iteration(
            state, i, c0[0], target, TestItem(int(data.test_ids[0]), 0, 5), s, gen, enc
        )
    assert np.all(np.diff(state.trace_scores) >= 0)
    np.testing.assert_array_equal(state.best_image, state.trace_images[-1])


def test_hybrid_guided_search_never_lowers_its_best_distribution(tiny_search, nsdbench_home):
    from nsdbench.methods.adapter import TestItem
    from nsdbench.methods.hybrid_encoder import HybridEncoder
    from nsdbench.methods.second_sight_search import clip_betas_encoder, initial_state, second_sight_iteration

    data, settings, gen, enc, measured, c0, z0 = tiny_search
    hybrid = HybridEncoder([enc, clip_betas_encoder(data, gen, "tiny", settings)])  # the published MLP
    target = torch.as_tensor(measured[1])
    state = initial_state(c0[1], settings.branches, gen.image_size)
    for i in range(settings.iterations):
        state = second_sight_iteration(state, i, z0[1], target, TestItem(1, 0, 77), settings, gen, hybrid)
    assert np.all(np.diff(state.trace_scores) >= 0), state.trace_scores
    images = torch.as_tensor(state.trace_images).permute(0, 3, 1, 2)
    literal = [
        np.corrcoef((enc.predict(images[k : k + 1])[0].numpy() + hybrid.parts[1].predict(images[k : k + 1])[0].numpy()) / 2,
                    measured[1])[0, 1]
        for k in range(len(images))
    ]  # fmt: skip
    np.testing.assert_allclose(state.trace_image_scores, literal, atol=1e-6)


def test_methods_show_names_the_source_of_each_published_default(capsys):
    from nsdbench.cli import main

    assert main(["methods", "show", "second-sight", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    d, help_ = shown["defaults"], shown["setting_help"]
    assert (d["num_inference_steps"], d["guidance_scale"], d["noise_level"]) == (50, 10.0, 0)
    assert (d["iterations"], d["search_samples"], d["branches"]) == (6, 100, 4)
    assert d["negative_prompt"] == "text, caption" and d["hybrid"] is True and d["keep_seeds"] is False
    for key in (
        "num_inference_steps",
        "iterations",
        "search_samples",
        "branches",
        "negative_prompt",
        "hybrid",
    ):
        assert ".py" in help_[key], key


# ---------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
@pytest.mark.parametrize(
    "method",
    [
        pytest.param("second-sight", marks=pytest.mark.ci),
        "second-sight:decoded-z0",
        "stochastic-search",
        "clip-decoding-only",
    ],
)
def test_tiny_end_to_end_through_the_console_script(method, nsd, nsdbench_home, tmp_path):
    out = tmp_path / "run"
    exe = Path(sys.executable).with_name("nsdbench")
    method, _, variant = method.partition(":")
    sets = {"second-sight": ["--set", "iterations=2", "--set", "search_samples=8"],
            "stochastic-search": ["--set", "iterations=2", "--set", "search_samples=4"],
            "clip-decoding-only": []}[method]  # fmt: skip
    cmd = [str(exe), "run", "--method", method, "--subjects", "1", "--data", "synthetic", "--weights", "tiny",
           "--device", "cpu", "--shard-size", "2", "--shard", "0/50", "--no-ingest", "--out", str(out), *sets,
           *(["--variant", variant] if variant else [])]  # fmt: skip
    env = {**os.environ, "NSDBENCH_HOME": str(nsdbench_home)}
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    pngs = sorted((out / "subj01").glob("*_0.png"))
    assert len(pngs) == 2
    from PIL import Image

    for png in pngs:
        assert Image.open(png).size == (nsd.image_size, nsd.image_size)
        if method != "clip-decoding-only":
            trace = json.loads(png.with_suffix(".search.json").read_text())[
                "best_brain_correlation_per_iteration"
            ]
            assert len(trace) == 2 and trace[1] >= trace[0]
            assert png.with_suffix(".iter1.png").is_file()
