"""Second Sight's CLIP -> betas MLP and betas autoencoder: published shapes, seeded deterministic training,
the content-hash cache, and signal on the synthetic NSD (held-out betas against a shuffled control)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nsdbench.methods.components import brain_mlps as bm


def test_published_widths_and_parameter_counts():
    widths = bm.clip_betas_widths(1024, 15724, bm.PUBLISHED_CLIP_HIDDEN)
    assert widths == (1024, 15000, 15000, 15724)
    with torch.device("meta"):  # the published size without allocating it
        n = sum(p.numel() for p in bm.mlp(widths, 0).parameters())
    assert n == 1024 * 15000 + 15000 + 15000 * 15000 + 15000 + 15000 * 15724 + 15724
    ae = bm.autoencoder_widths(15724, bm.PUBLISHED_AE_WIDTHS)
    assert ae == (15724, 5000, 1000, 500, 1000, 5000, 15724)
    model = bm.mlp(bm.autoencoder_widths(40, bm.TINY_AE_WIDTHS), 0)
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Linear", "ReLU"] * 5 + ["Linear"]  # ReLU between layers, none after the last


def test_validation_holds_out_the_highest_ids_as_published():
    groups = np.array([5, 1, 9, 3, 7, 1, 9, 2, 8, 4, 6, 10, 0])
    val = bm.validation_mask(groups, 0.15)
    ids = np.unique(groups)  # 11 ids: int(11 * 0.85) = 9 train, the two highest held out
    assert set(groups[val]) == set(ids[9:]) == {9, 10}
    assert val.sum() == 3


def _toy(seed: int = 0):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(60), 3)
    x_img = rng.normal(size=(60, 8)).astype(np.float32)
    w = rng.normal(size=(8, 20)).astype(np.float32)
    y = (np.tanh(x_img) @ w)[groups] + 0.5 * rng.normal(size=(180, 20)).astype(np.float32)
    return x_img[groups], y, groups


def test_training_is_deterministic_and_seeded():
    x, y, g = _toy()
    t = bm.Training(lr=1e-2, batch_size=32, max_epochs=6)
    a, ha = bm.train(bm.mlp((8, 16, 20), 3), x, y, g, t, "cpu")
    b, hb = bm.train(bm.mlp((8, 16, 20), 3), x, y, g, t, "cpu")
    assert ha == hb
    for (ka, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(va, vb), ka
    c, _ = bm.train(bm.mlp((8, 16, 20), 4), x, y, g, t, "cpu")
    assert not torch.equal(a[0].weight, c[0].weight)
    assert min(ha) < ha[0]  # it learns


def test_early_stopping_keeps_the_best_epoch():
    x, y, g = _toy(1)
    t = bm.Training(lr=0.5, batch_size=8, max_epochs=30, patience=2)  # too high a rate: validation rises
    model, history = bm.train(bm.mlp((8, 64, 20), 0), x, y, g, t, "cpu")
    assert len(history) < 30
    val = bm.validation_mask(g, t.val_fraction)
    with torch.no_grad():
        loss = float(torch.nn.functional.mse_loss(model(torch.as_tensor(x[val])), torch.as_tensor(y[val]),
                                                  reduction="sum")) / val.sum()  # fmt: skip
    assert loss == pytest.approx(min(history), rel=1e-5)


def test_fit_is_cached_by_content(tmp_path, monkeypatch):
    from nsdbench.caches import ArrayCache

    x, y, g = _toy()
    cache = ArrayCache(tmp_path)
    t = bm.Training(lr=1e-2, batch_size=32, max_epochs=3)
    m1, k1 = bm.fit_cached("toy", (8, 16, 20), t, x, y, g, cache, "cpu")

    def boom(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(bm, "train", boom)
    m2, k2 = bm.fit_cached("toy", (8, 16, 20), t, x, y, g, cache, "cpu")
    assert k1 == k2
    assert all(
        torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True)
    )
    with pytest.raises(AssertionError, match="trained again"):
        bm.fit_cached("toy", (8, 16, 20), t, x, y + 1, g, cache, "cpu")


@pytest.fixture(scope="module")
def tiny_clip(nsd):
    from nsdbench.methods.adapter import SubjectData
    from nsdbench.methods.second_sight_search import SecondSightSettings, UnclipSampler
    from nsdbench.nsd.splits import get_split

    data = SubjectData(nsd, 1, get_split(nsd, "nsd982", 1))
    return data, UnclipSampler("tiny", "cpu", SecondSightSettings(num_inference_steps=2))


def held_out_r(pred: np.ndarray, actual: np.ndarray) -> tuple[float, float]:
    """Mean per-image Pearson r of predictions with their own betas, and with another image's (a shift)."""
    own = [np.corrcoef(p, a)[0, 1] for p, a in zip(pred, actual, strict=True)]
    other = [np.corrcoef(p, a)[0, 1] for p, a in zip(pred, np.roll(actual, 1, axis=0), strict=True)]
    return float(np.mean(own)), float(np.mean(other))


def test_clip_mlp_predicts_held_out_betas_better_than_shuffled(tiny_clip, nsdbench_home):
    from nsdbench.methods.second_sight_search import library_embeddings, mlp_training

    data, gen = tiny_clip
    trials = data.single_trials("train", "nsdgeneral", normalize="session-zscore")
    ids = np.unique(trials.nsd_ids)
    held = ids[-len(ids) // 5 :]  # the last fifth of the training images, never seen by the MLP
    fit = ~np.isin(trials.nsd_ids, held)
    emb = library_embeddings(gen, data, ids, "tiny")
    x = emb[np.searchsorted(ids, trials.nsd_ids)]
    widths = bm.clip_betas_widths(x.shape[1], trials.betas.shape[1], bm.TINY_CLIP_HIDDEN)
    model, _ = bm.train(bm.mlp(widths, 0), x[fit], trials.betas[fit], trials.nsd_ids[fit],
                        mlp_training("tiny", bm.PUBLISHED_CLIP_TRAINING, 0), "cpu")  # fmt: skip
    actual = np.stack([trials.betas[trials.nsd_ids == n].mean(0) for n in held])
    with torch.no_grad():
        pred = model(torch.as_tensor(emb[np.searchsorted(ids, held)])).numpy()
    own, shuffled = held_out_r(pred, actual)
    print(f"clip mlp held-out r {own:.3f} vs shuffled {shuffled:.3f}")
    assert own > shuffled + 0.05 and own > 0.05, (own, shuffled)


def test_second_sight_mlp_encoder_and_autoencoder_in_tiny_mode(tiny_clip, nsdbench_home, tmp_path):
    """clip_betas_mlp trains on every training trial (cached); the autoencoder's denoised held-in trials
    correlate with the encoder's predictions for their images better than with another image's."""
    from nsdbench.caches import ArrayCache
    from nsdbench.methods.adapter import RunContext
    from nsdbench.methods.second_sight_search import SecondSightSettings, betas_autoencoder, clip_betas_mlp

    data, gen = tiny_clip
    cache = ArrayCache(tmp_path)
    enc = clip_betas_mlp(data, gen, "tiny", (), cache, "cpu", 0)
    assert enc.identity.startswith("clip-betas-mlp/") and enc.n_voxels == data.betas("train").shape[1]
    again = clip_betas_mlp(data, gen, "tiny", (), cache, "cpu", 0)
    assert again.identity == enc.identity
    ids = list(data.train_ids[:4])
    from nsdbench.methods.second_sight_search import nchw

    np.testing.assert_array_equal(enc.predict(nchw(data.images(ids))).numpy(),
                                  again.predict(nchw(data.images(ids))).numpy())  # fmt: skip
    ctx = RunContext("second-sight", 1, "nsd982", data, weights_mode="tiny", cache=cache)
    denoise = betas_autoencoder(data, ctx, SecondSightSettings(), enc, gen)
    trials = data.single_trials("train", "nsdgeneral", normalize="session-zscore")
    some = np.unique(trials.nsd_ids)[:30]
    rows = np.stack([trials.betas[trials.nsd_ids == n][0] for n in some])
    target = enc.predict(nchw(data.images(list(some)))).numpy()
    own, shuffled = held_out_r(denoise(rows), target)
    print(f"autoencoder r {own:.3f} vs shuffled {shuffled:.3f}")
    assert own > shuffled, (own, shuffled)
