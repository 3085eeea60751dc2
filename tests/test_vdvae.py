"""VDVAE: published layout, equivalence with the published code on a reduced config, per-image seeding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nsdbench import weights
from nsdbench.errors import NSDBenchError, WeightsMissing
from nsdbench.methods.components import vdvae
from nsdbench.methods.components.vdvae_hparams import IMAGENET64, TINY, VDVAEConfig
from nsdbench.methods.components.vdvae_pixel_path import wire_pixel_path

DATA = Path(__file__).parent / "data" / "vdvae"

# The reduced configuration the fixture was produced with (tests/data/vdvae/README.md).
FIXTURE = VDVAEConfig(
    name="fixture32",
    image_size=32,
    width=16,
    zdim=4,
    enc_blocks="32x1,32d2,16x1,16d2,8x1,8d2,4x1,4d4,1x2",
    dec_blocks="1x2,4m1,4x1,8m4,8x1,16m8,16x1,32m16,32x1",
    n_latent_groups=5,
    num_mixtures=5,
)
TOL = 1e-5


class ReplayNoise:
    """Feeds the fixture's recorded draws in the order the model consumes them."""

    def __init__(
        self, normal_flat: np.ndarray, u_mix: np.ndarray | None = None, u_pixel: np.ndarray | None = None
    ):
        self.normal_flat = torch.from_numpy(normal_flat.astype(np.float32))
        self.offset = 0
        self.uniforms = [torch.from_numpy(u) for u in (u_mix, u_pixel) if u is not None]

    def normal(self, shape: tuple[int, ...]) -> torch.Tensor:
        size = int(np.prod(shape))
        block = self.normal_flat[:, self.offset : self.offset + size]
        self.offset += size
        return block.reshape(-1, *shape)

    def uniform(self, shape: tuple[int, ...], low: float, high: float) -> torch.Tensor:
        u = self.uniforms.pop(0)
        assert tuple(u.shape[1:]) == shape
        return u

    def exhausted(self) -> bool:
        return self.offset == self.normal_flat.shape[1] and not self.uniforms


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these tiny convolutions only lose time to thread hand-offs on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def fixture_io() -> dict[str, np.ndarray]:
    with np.load(DATA / "io.npz", allow_pickle=False) as f:
        return dict(f)


@pytest.fixture(scope="module")
def fixture_model() -> vdvae.VDVAE:
    with np.load(DATA / "weights.npz", allow_pickle=False) as f:
        sd = {k: torch.from_numpy(f[k].astype(np.float32)) for k in f.files}
    model = vdvae.build_vdvae(FIXTURE, device="meta")
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval()


@pytest.fixture(scope="module")
def tiny() -> vdvae.VDVAE:
    return vdvae.load_vdvae("tiny")


def gens(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_random_mode_layout_equals_published_checkpoint_manifest():
    model = vdvae.build_vdvae(vdvae.config_for("random"), device="meta")
    manifest = vdvae.published_manifest()
    assert len(manifest) == 2482
    assert list(vdvae.state_dict_manifest(model).items()) == list(manifest.items())
    assert vdvae.config_for("pretrained") == IMAGENET64


def test_brain_diffuser_latent_layout():
    # brain-diffuser's vdvae_reconstruct_images.py: per-group sizes of the 31 predicted groups
    published = [2**4] * 2 + [2**8] * 4 + [2**10] * 8 + [2**12] * 16 + [2**14]
    sizes = [c * h * w for c, h, w in IMAGENET64.latent_shapes()[: IMAGENET64.n_latent_groups]]
    assert sizes == published
    assert IMAGENET64.latent_dim() == 91168
    assert len(IMAGENET64.decoder_layers()) == 75


def test_preprocess_is_imagenet64_shift_and_scale(fixture_model):
    images = np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    x = vdvae.preprocess(fixture_model, images)
    expected = (images.astype(np.float64) - 115.92961967) / 69.37404
    assert x.dtype == torch.float32
    np.testing.assert_allclose(x.numpy(), expected, atol=1e-6)
    np.testing.assert_array_equal(
        vdvae.preprocess(fixture_model, images.astype(np.float32)).numpy(), x.numpy()
    )


def test_encode_reproduces_published_code(fixture_model, fixture_io):
    noise = ReplayNoise(fixture_io["enc_noise"])
    x = vdvae.preprocess(fixture_model, fixture_io["images"])
    groups = len(FIXTURE.decoder_layers())
    latents = vdvae.flatten_latents(vdvae.encode(fixture_model, x, noise, groups))
    assert noise.exhausted()
    np.testing.assert_allclose(latents.numpy(), fixture_io["latents"], rtol=0, atol=TOL)


@pytest.mark.parametrize("tag,temperature", [("t_none", None), ("t_0p5", 0.5)])
def test_decode_reproduces_published_code(fixture_model, fixture_io, tag, temperature):
    flat = torch.from_numpy(fixture_io["latents"][:, : FIXTURE.latent_dim()])
    latents = vdvae.unflatten_latents(FIXTURE, flat)
    noise = ReplayNoise(fixture_io["prior_noise"], fixture_io["u_mix"], fixture_io["u_pixel"])
    image = vdvae.decode(fixture_model, latents, noise, temperature)
    assert noise.exhausted()
    expected = fixture_io[f"image_{tag}"]
    assert 0.05 < float((np.abs(expected) < 1).mean())  # the fixture is not all clipped pixels
    np.testing.assert_allclose(image.numpy(), expected, rtol=0, atol=TOL)
    u8 = vdvae.to_uint8(image).numpy()
    off = u8.astype(int) - fixture_io[f"image_u8_{tag}"].astype(int)
    assert np.abs(off).max() <= 1 and np.count_nonzero(off) <= 2  # truncation at a bin edge may flip


def test_temperature_changes_only_prior_groups(fixture_io):
    assert not np.array_equal(fixture_io["image_t_none"], fixture_io["image_t_0p5"])


def test_tiny_encode_decode_shapes_and_determinism(tiny):
    images = np.random.default_rng(1).integers(0, 256, size=(3, 64, 64, 3), dtype=np.uint8)
    z = vdvae.encode_latents(tiny, images, gens([1, 2, 3]))
    assert z.shape == (3, TINY.latent_dim()) and z.dtype == torch.float32
    assert torch.equal(z, vdvae.encode_latents(tiny, images, gens([1, 2, 3])))
    assert not torch.equal(z[0], vdvae.encode_latents(tiny, images[:1], gens([9]))[0])
    mean = vdvae.encode_latents(tiny, images)
    assert torch.equal(mean, vdvae.encode_latents(tiny, images)) and not torch.equal(mean, z)
    out = vdvae.decode_latents(tiny, z, gens([4, 5, 6]))
    assert out.shape == (3, 64, 64, 3) and out.dtype == torch.uint8
    assert torch.equal(out, vdvae.decode_latents(tiny, z, gens([4, 5, 6])))
    assert not torch.equal(out[0], vdvae.decode_latents(tiny, z[:1], gens([7]))[0])


def test_tiny_batch_of_four_equals_one_at_a_time(tiny):
    """Batching reorders floating-point sums inside convolutions (measured: <= 5e-7), nothing else."""
    images = np.random.default_rng(2).integers(0, 256, size=(4, 64, 64, 3), dtype=np.uint8)
    seeds = [11, 12, 13, 14]
    batch = vdvae.encode_latents(tiny, images, gens(seeds))
    single = torch.cat(
        [vdvae.encode_latents(tiny, images[i : i + 1], gens([s])) for i, s in enumerate(seeds)]
    )
    torch.testing.assert_close(batch, single, rtol=0, atol=1e-5)

    def decoded(rows: slice, seeds: list[int]) -> torch.Tensor:
        latents = vdvae.unflatten_latents(TINY, batch[rows])
        return vdvae.decode(
            tiny, latents, vdvae.PerImageNoise(gens(seeds), torch.device("cpu"), torch.float32), 1.0
        )

    together = decoded(slice(0, 4), seeds)
    apart = torch.cat([decoded(slice(i, i + 1), [s]) for i, s in enumerate(seeds)])
    torch.testing.assert_close(together, apart, rtol=0, atol=1e-5)
    out = vdvae.decode_latents(tiny, batch, gens(seeds))
    one = torch.cat([vdvae.decode_latents(tiny, batch[i : i + 1], gens([s])) for i, s in enumerate(seeds)])
    assert (out.int() - one.int()).abs().max() <= 1 and (out != one).float().mean() < 1e-3


def test_tiny_latents_carry_the_image(tiny):
    """The pixel path: the last latent group holds the 32-px normalized image, decoding gives it back."""
    rng = np.random.default_rng(6)
    images = np.repeat(np.repeat(rng.integers(0, 256, size=(6, 8, 8, 3)), 8, 1), 8, 2).astype(np.uint8)
    z = vdvae.encode_latents(tiny, images, gens(range(6)))
    last = vdvae.unflatten_latents(TINY, z)[-1][:, :3]
    pooled = torch.nn.functional.avg_pool2d(
        torch.from_numpy((images - 115.92961967) / 69.37404).permute(0, 3, 1, 2), 2
    )
    gelu = torch.nn.functional.gelu
    expected = gelu(gelu(gelu(gelu(pooled.float() + 4.0)))) - 4.0  # four GELUs on the path, offset by 4
    torch.testing.assert_close(last, expected, rtol=0, atol=0.03)  # posterior std exp(-5) = 0.007
    out = vdvae.decode_latents(tiny, z, gens(range(10, 16))).numpy().reshape(6, -1).astype(float)
    corr = np.corrcoef(out, images.reshape(6, -1).astype(float))[:6, 6:]
    assert np.diag(corr).min() > 0.99 and np.abs(corr[~np.eye(6, dtype=bool)]).max() < 0.3
    assert np.abs(out - images.reshape(6, -1)).mean() < 6  # gray levels


def test_decode_rejects_latents_off_group_boundary(tiny):
    with pytest.raises(NSDBenchError, match="group boundary"):
        vdvae.decode_latents(tiny, torch.zeros(1, TINY.latent_dim() - 1), gens([0]))
    with pytest.raises(NSDBenchError, match="expects images"):
        vdvae.encode_latents(tiny, np.zeros((1, 32, 32, 3), np.uint8))


def test_load_once_and_mode_identity(tiny):
    assert vdvae.load_vdvae("tiny") is tiny
    rebuilt = wire_pixel_path(vdvae.build_vdvae(TINY, seed=vdvae.SEEDS["tiny"]))
    assert tiny.weights_sha256 == weights.module_sha256(rebuilt)
    assert not any(p.requires_grad for p in tiny.parameters())


def test_pretrained_missing_names_artifact_and_fetch_command():
    assert "vdvae-imagenet64" in weights.artifacts()
    assert weights.get("vdvae-imagenet64").used_by == ("brain-diffuser", "second-sight")
    with pytest.raises(WeightsMissing, match=r"vdvae-imagenet64.*nsdbench weights fetch vdvae-imagenet64"):
        vdvae.load_vdvae("pretrained")


def test_checkpoint_loader_strips_ddp_prefix_and_checks_layout(tmp_path, tiny):
    expected = vdvae.state_dict_manifest(tiny)
    path = tmp_path / "ckpt.th"
    torch.save({f"module.{k}": v for k, v in tiny.state_dict().items()}, path)
    loaded = vdvae.load_checkpoint(path, TINY, expected)
    assert weights.module_sha256(loaded) == tiny.weights_sha256
    sd = tiny.state_dict()
    sd.pop("decoder.gain")
    torch.save(sd, path)
    with pytest.raises(NSDBenchError, match=r"ckpt.th .*missing decoder.gain"):
        vdvae.load_checkpoint(path, TINY, expected)


def test_resize_matches_torchvision_on_pil_images():
    from PIL import Image
    from torchvision.transforms import functional as TF

    images = np.random.default_rng(3).integers(0, 256, size=(2, 100, 100, 3), dtype=np.uint8)
    ours = vdvae.resize_like_brain_diffuser(images)
    theirs = np.stack([np.asarray(TF.resize(Image.fromarray(im), (64, 64))) for im in images])
    assert ours.shape == (2, 64, 64, 3) and ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.slow
def test_random_mode_runs_at_imagenet64_size():
    model = vdvae.load_vdvae("random")
    images = np.random.default_rng(4).integers(0, 256, size=(1, 64, 64, 3), dtype=np.uint8)
    z = vdvae.encode_latents(model, images, gens([0]))
    assert z.shape == (1, 91168) and torch.isfinite(z).all()
    out = vdvae.decode_latents(model, z, gens([0]))
    assert out.shape == (1, 64, 64, 3) and out.dtype == torch.uint8


def test_float16_model_stays_close_to_float32(tiny):
    """Half precision changes a few mixture choices (measured: mean |diff| 0.03 gray levels), nothing more."""
    images = np.random.default_rng(5).integers(0, 256, size=(2, 64, 64, 3), dtype=np.uint8)
    z = vdvae.encode_latents(tiny, images, gens([1, 2]))
    half = vdvae.load_vdvae("tiny", dtype=torch.float16)
    torch.testing.assert_close(vdvae.encode_latents(half, images, gens([1, 2])), z, rtol=0, atol=0.05)
    diff = (
        vdvae.decode_latents(half, z, gens([3, 4])).float() - vdvae.decode_latents(tiny, z, gens([3, 4]))
    ).abs()
    assert diff.mean() < 0.25


def test_gpu_bench_script_runs_on_cpu_with_tiny_weights(capsys):
    import importlib.util
    import json

    path = Path(__file__).resolve().parents[1] / "scripts" / "gpu_bench_vdvae.py"
    spec = importlib.util.spec_from_file_location("gpu_bench_vdvae", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    argv = [
        "--weights",
        "tiny",
        "--device",
        "cpu",
        "--n",
        "2",
        "--batch",
        "2",
        "--dtypes",
        "float32",
        "--json",
    ]
    assert mod.main(argv) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {(r["stage"], r["batch"]) for r in doc["rows"]} == {
        ("encode", 1),
        ("encode", 2),
        ("decode", 1),
        ("decode", 2),
    }
