"""Stable Diffusion components and samplers, offline with tiny seeded components: equivalence with diffusers'
own pipelines, batch independence, gradients through the sampler, published configurations."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from nsdbench import weights
from nsdbench.errors import WeightsMissing
from nsdbench.methods.components import stable_diffusion as sd
from nsdbench.methods.diffusion.img2img import Img2ImgSettings, decode_latents, img2img, img2img_latents
from nsdbench.methods.diffusion.unclip import UnclipSettings, image_embeddings, unclip_img2img

# Tiny fp32 components: reordered float sums (batched vs per-image VAE encodes inside diffusers) move images
# in [0, 1] by ~1e-6; anything algorithmic (a wrong timestep, noise order or guidance) moves them by > 1e-2.
PIPELINE_TOL = 1e-5
BATCH_TOL = 1e-5
SEEDS = (11, 12, 13)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny convolutions are ~20x slower when two torch threads fight other processes for 2 cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gens(seeds=SEEDS) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.fixture(scope="module")
def sd14():
    return sd.load_sd14("tiny")


@pytest.fixture(scope="module")
def unclip():
    return sd.load_unclip("tiny")


@pytest.fixture(scope="module")
def prompts(sd14):
    return sd.encode_prompts(sd14, ["a red car", "two dogs on grass", "a house"]), sd.encode_prompts(
        sd14, [""] * 3
    )


@pytest.fixture(scope="module")
def unclip_inputs(unclip):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 40, 48, 3), dtype=np.uint8)
    pe = sd.encode_prompts(unclip, ["a red car", "two dogs on grass", "a house"])
    return image_embeddings(unclip, images), pe, sd.encode_prompts(unclip, [""] * 3)


def init_images(n=3) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def sd_pipeline(c):
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline(
        vae=c.vae,
        text_encoder=c.text_encoder,
        tokenizer=c.tokenizer,
        unet=c.unet,
        scheduler=type(c.scheduler).from_config(c.scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def unclip_pipeline(c, scheduler=None):
    from diffusers import StableUnCLIPImg2ImgPipeline

    pipe = StableUnCLIPImg2ImgPipeline(
        feature_extractor=c.feature_extractor,
        image_encoder=c.image_encoder,
        image_normalizer=c.image_normalizer,
        image_noising_scheduler=c.image_noising_scheduler,
        tokenizer=c.tokenizer,
        text_encoder=c.text_encoder,
        unet=c.unet,
        scheduler=scheduler or type(c.scheduler).from_config(c.scheduler.config),
        vae=c.vae,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("strength", [0.8, 1.0])
def test_img2img_equals_diffusers_pipeline(sd14, prompts, strength):
    pe, ne = prompts
    images = init_images()
    ref = sd_pipeline(sd14)(
        prompt_embeds=pe,
        negative_prompt_embeds=ne,
        image=images,
        strength=strength,
        guidance_scale=5.0,
        num_inference_steps=10,
        generator=gens(),
        output_type="pt",
    ).images
    with torch.inference_mode():
        ours = img2img(sd14, pe, ne, gens(), Img2ImgSettings(10, strength, 5.0), init_images=images)
    assert ours.shape == ref.shape == (3, 3, 32, 32)
    assert ref.std() > 0.05  # a non-degenerate image, so the comparison means something
    assert (ours - ref).abs().max().item() < PIPELINE_TOL


def test_ldm_noise_offset_matches_compvis_img2img_arithmetic(sd14, prompts):
    """CompVis: ddim_timesteps = range(0, 1000, 20) + 1, t_enc = int(0.8 * 50) = 40, noised with
    alphas_cumprod[ddim_timesteps[40]] = [801], then decoded from ddim_timesteps[39] = 781 down."""
    from nsdbench.methods.diffusion.ddim import ddim_schedule, strength_timesteps
    from nsdbench.methods.diffusion.img2img import noise_timestep

    ddim_timesteps = np.arange(0, 1000, 1000 // 50) + 1
    schedule = ddim_schedule(sd14.scheduler, 50)
    timesteps = strength_timesteps(schedule, 0.8)
    assert timesteps == tuple(int(t) for t in ddim_timesteps[:40][::-1])
    assert noise_timestep(schedule, timesteps, ldm_noise_offset=True) == ddim_timesteps[40] == 801
    assert noise_timestep(schedule, timesteps, ldm_noise_offset=False) == 781
    with pytest.raises(ValueError, match="strength < 1"):
        noise_timestep(schedule, strength_timesteps(schedule, 1.0), ldm_noise_offset=True)
    pe, ne = prompts
    with torch.inference_mode():
        a = img2img(sd14, pe, ne, gens(), Img2ImgSettings(4, 0.5, 5.0), init_images=init_images())
        b = img2img(
            sd14,
            pe,
            ne,
            gens(),
            Img2ImgSettings(4, 0.5, 5.0, ldm_noise_offset=True),
            init_images=init_images(),
        )
    assert (a - b).abs().max() > 1e-4


def test_img2img_is_deterministic_and_uses_its_inputs(sd14, prompts):
    pe, ne = prompts
    run = lambda seeds, strength=0.8: img2img(
        sd14, pe, ne, gens(seeds), Img2ImgSettings(4, strength, 5.0), init_images=init_images()
    )
    with torch.inference_mode():
        a, b, other = run(SEEDS), run(SEEDS), run((1, 2, 3))
    assert torch.equal(a, b)
    assert (a - other).abs().max() > 1e-3


def test_img2img_batch_of_one_equals_batch_of_three(sd14, prompts):
    pe, ne = prompts
    images = init_images()
    settings = Img2ImgSettings(6, 0.8, 5.0)
    with torch.inference_mode():
        batch = img2img(sd14, pe, ne, gens(), settings, init_images=images)
        singles = torch.cat(
            [
                img2img(
                    sd14,
                    pe[i : i + 1],
                    ne[i : i + 1],
                    gens(SEEDS[i : i + 1]),
                    settings,
                    init_images=images[i : i + 1],
                )
                for i in range(3)
            ]
        )
    diff = (batch - singles).abs().max().item()
    print(f"img2img batch 3 vs batch 1: max |difference| = {diff:.3g}")
    assert diff < BATCH_TOL


def test_unclip_strength_one_equals_diffusers_pipeline(unclip, unclip_inputs):
    emb, pe, ne = unclip_inputs
    ref = unclip_pipeline(unclip)(
        image_embeds=emb,
        prompt_embeds=pe,
        negative_prompt_embeds=ne,
        noise_level=100,
        guidance_scale=5.0,
        num_inference_steps=10,
        generator=gens(),
        output_type="pt",
    ).images
    with torch.inference_mode():
        ours = unclip_img2img(unclip, emb, pe, ne, gens(), UnclipSettings(10, 1.0, 5.0, noise_level=100))
    assert ours.shape == ref.shape == (3, 3, 32, 32)
    assert ref.std() > 0.05
    assert (ours - ref).abs().max().item() < PIPELINE_TOL


def test_unclip_partial_strength_equals_pipeline_on_truncated_schedule(unclip, unclip_inputs):
    """Strength 0.6 of 10 steps: the stock pipeline run from our noised init latent over its last 6 DDIM
    timesteps (diffusers' own add_noise and scheduler) gives the same images."""
    from diffusers import DDIMScheduler

    emb, pe, ne = unclip_inputs
    init = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(5))

    class Truncated(DDIMScheduler):
        def set_timesteps(self, num_inference_steps, device=None):
            super().set_timesteps(num_inference_steps, device)
            self.timesteps = self.timesteps[num_inference_steps - int(num_inference_steps * 0.6) :]

    scheduler = Truncated.from_config(unclip.scheduler.config)
    generators = gens()
    for g in generators:  # the pipeline draws the embedding noise first; the latent noise comes next
        torch.randn((1, emb.shape[1]), generator=g)
    noise = torch.cat([torch.randn((1, 4, 16, 16), generator=g) for g in generators])
    scheduler.set_timesteps(10)
    start = unclip_pipeline(unclip).scheduler.add_noise(init, noise, scheduler.timesteps[:1])
    ref = unclip_pipeline(unclip, scheduler)(
        image_embeds=emb,
        prompt_embeds=pe,
        negative_prompt_embeds=ne,
        noise_level=50,
        guidance_scale=5.0,
        num_inference_steps=10,
        generator=gens(),
        latents=start,
        output_type="pt",
    ).images
    with torch.inference_mode():
        ours = unclip_img2img(
            unclip, emb, pe, ne, gens(), UnclipSettings(10, 0.6, 5.0, 50), init_latents=init
        )
        full = unclip_img2img(
            unclip, emb, pe, ne, gens(), UnclipSettings(10, 1.0, 5.0, 50), init_latents=init
        )
    assert (ours - ref).abs().max().item() < PIPELINE_TOL
    assert (ours - full).abs().max().item() > 1e-3  # the init latent matters below strength 1


def test_unclip_batch_of_one_equals_batch_of_three(unclip, unclip_inputs):
    emb, pe, ne = unclip_inputs
    settings = UnclipSettings(6, 0.7, 5.0, noise_level=30)
    images = init_images()
    with torch.inference_mode():
        batch = unclip_img2img(unclip, emb, pe, ne, gens(), settings, init_images=images)
        singles = torch.cat(
            [
                unclip_img2img(
                    unclip,
                    emb[i : i + 1],
                    pe[i : i + 1],
                    ne[i : i + 1],
                    gens(SEEDS[i : i + 1]),
                    settings,
                    init_images=images[i : i + 1],
                )
                for i in range(3)
            ]
        )
    diff = (batch - singles).abs().max().item()
    print(f"unCLIP batch 3 vs batch 1: max |difference| = {diff:.3g}")
    assert diff < BATCH_TOL


def test_image_embeddings_equal_the_pipelines_encoder(unclip, unclip_inputs):
    from PIL import Image

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 40, 48, 3), dtype=np.uint8)
    ours = image_embeddings(unclip, images, batch_size=2)
    pipe = unclip_pipeline(unclip)  # what its _encode_image does with a PIL image, before noising
    with torch.no_grad():
        ref = torch.cat(
            [
                pipe.image_encoder(
                    pipe.feature_extractor(images=Image.fromarray(im), return_tensors="pt").pixel_values
                ).image_embeds
                for im in images
            ]
        )
    assert ours.shape == (3, 32)
    assert (ours - ref).abs().max().item() < 1e-5
    assert (ours - unclip_inputs[0]).abs().max().item() < 1e-5  # batches of 2 vs one of 3


@pytest.mark.parametrize("checkpointed", [False, True])
def test_gradients_reach_the_init_latent(prompts, checkpointed):
    """Float64 tiny components, 2 DDIM steps: the autograd directional derivative of the mean output pixel
    with respect to the init latent equals a central finite difference (relative 1e-5)."""
    c = sd.load_sd14("tiny", dtype=torch.float64)
    pe, ne = (p.double() for p in prompts)
    settings = Img2ImgSettings(2, 1.0, 5.0, gradient_checkpointing=checkpointed)
    z = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    direction = torch.randn(z.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def f(latent):
        return img2img(c, pe, ne, gens(), settings, init_latents=latent).mean()

    z.requires_grad_(True)
    f(z).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().max() > 0
    h = 1e-4
    with torch.no_grad():
        numeric = (f(z + h * direction) - f(z - h * direction)) / (2 * h)
    analytic = (z.grad * direction).sum()
    assert abs(analytic.item() - numeric.item()) <= 1e-5 * abs(numeric.item()) + 1e-9


def test_latents_and_decoding_compose(sd14, prompts):
    pe, ne = prompts
    with torch.inference_mode():
        lat = img2img_latents(sd14, pe, ne, gens(), Img2ImgSettings(3, 0.8, 5.0), init_images=init_images())
        img = img2img(sd14, pe, ne, gens(), Img2ImgSettings(3, 0.8, 5.0), init_images=init_images())
        assert torch.equal(decode_latents(sd14.vae, lat, batch_size=16), img)
        chunked = decode_latents(sd14.vae, lat, batch_size=1)
    assert (chunked - img).abs().max().item() < BATCH_TOL


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _meta(model: str, part: str, cls) -> torch.nn.Module:
    return sd.build_random(part, cls, sd.component_config(model, part, "random"), 0, torch.device("meta"))


def test_random_mode_configs_build_the_published_architectures():
    """Parameter counts on the meta device: UNet/VAE against the published totals (SD 1.x UNet 859,520,964;
    SD 2.x UNet 865,910,724 plus the unCLIP class-embedding MLP 2048->1280->1280; KL-f8 VAE 83,653,863),
    the CLIP encoders against open_clip's own ViT-L-14 / ViT-H-14 built from its shipped configs."""
    import open_clip
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPVisionModelWithProjection

    def openclip_text(name: str, drop_last_layer: bool) -> int:
        with torch.device("meta"):
            m = open_clip.create_model(name, pretrained=None, device="meta")
        text = sum(p.numel() for n, p in m.named_parameters() if not n.startswith("visual"))
        text -= m.text_projection.numel() + m.logit_scale.numel()  # CLIPTextModel has neither
        if drop_last_layer:  # SD 2.x keeps OpenCLIP's text tower up to its penultimate layer
            text -= _count(m.transformer.resblocks[-1])
        return text, _count(m.visual)

    class_mlp = (2048 * 1280 + 1280) + (1280 * 1280 + 1280)
    assert _count(_meta(sd.SD14, "unet", UNet2DConditionModel)) == 859_520_964
    assert _count(_meta(sd.UNCLIP, "unet", UNet2DConditionModel)) == 865_910_724 + class_mlp
    assert _count(_meta(sd.SD14, "vae", AutoencoderKL)) == 83_653_863
    assert _count(_meta(sd.UNCLIP, "vae", AutoencoderKL)) == 83_653_863
    l_text, _ = openclip_text("ViT-L-14", drop_last_layer=False)
    assert _count(_meta(sd.SD14, "text_encoder", CLIPTextModel)) == l_text == 123_060_480
    h_text, h_visual = openclip_text("ViT-H-14", drop_last_layer=True)
    assert _count(_meta(sd.UNCLIP, "text_encoder", CLIPTextModel)) == h_text
    assert _count(_meta(sd.UNCLIP, "image_encoder", CLIPVisionModelWithProjection)) == h_visual
    assert sd.published_config(sd.UNCLIP, "image_encoder")["projection_dim"] == 1024


def test_tiny_components_are_loaded_once_and_seeded(sd14):
    assert sd.load_sd14("tiny") is sd14
    other_seed = sd.load_sd14("tiny", seed=1)
    assert other_seed is not sd14
    w = lambda c: next(c.unet.parameters())
    assert not torch.equal(w(other_seed), w(sd14))
    from nsdbench.methods.components import release_all

    release_all()
    rebuilt = sd.load_sd14("tiny")
    assert rebuilt is not sd14
    for a, b in zip(rebuilt.unet.parameters(), sd14.unet.parameters(), strict=True):
        assert torch.equal(a, b)


def test_pretrained_mode_without_weights_names_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("NSDBENCH_HOME", str(tmp_path))
    for load, name in (
        (sd.load_sd14, "stable-diffusion-v1-4"),
        (sd.load_unclip, "stable-diffusion-2-1-unclip"),
    ):
        with pytest.raises(WeightsMissing, match=f"nsdbench weights fetch {name}"):
            load("pretrained")


def test_artifacts_are_registered():
    a = weights.get("stable-diffusion-v1-4")
    b = weights.get("stable-diffusion-2-1-unclip")
    assert (a.kind, a.source) == ("hf-snapshot", "CompVis/stable-diffusion-v1-4")
    assert (b.kind, b.source) == ("hf-snapshot", "stabilityai/stable-diffusion-2-1-unclip")
    assert "takagi2023" in a.used_by and "second-sight" in b.used_by
    assert not any(p.endswith(".ckpt") for p in b.allow_patterns)  # the 5 GB LDM checkpoints are not needed


def _script(name: str):
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["gpu_bench_sd14", "gpu_bench_unclip"])
def test_gpu_bench_scripts_run_tiny_on_cpu(name, capsys):
    import json

    assert _script(name).main(["--tiny", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["batched_s"] > 0 and report["one_at_a_time_s"] > 0 and report["max_abs_diff"] < BATCH_TOL


def _write_snapshot(components, root: Path, parts: tuple[str, ...]) -> None:
    for part in parts:
        getattr(components, part).save_pretrained(root / part)


def test_pretrained_mode_reads_a_local_snapshot(tmp_path, monkeypatch, sd14, unclip):
    """A Hub-layout snapshot (here: the tiny components saved with save_pretrained) under
    NSDBENCH_HOME/weights/<artifact> loads offline into the same weights and the same images."""
    from nsdbench.methods.components import release_all

    monkeypatch.setenv("NSDBENCH_HOME", str(tmp_path))
    weights_root = tmp_path / "weights"
    _write_snapshot(sd14, weights_root / sd.SD14, ("unet", "vae", "text_encoder", "tokenizer", "scheduler"))
    _write_snapshot(
        unclip,
        weights_root / sd.UNCLIP,
        (
            "unet",
            "vae",
            "text_encoder",
            "tokenizer",
            "scheduler",
            "image_encoder",
            "feature_extractor",
            "image_normalizer",
            "image_noising_scheduler",
        ),
    )
    try:
        loaded = sd.load_sd14("pretrained")
        loaded_unclip = sd.load_unclip("pretrained")
        for ours, ref in ((loaded, sd14), (loaded_unclip, unclip)):
            for part in ("unet", "vae", "text_encoder", "image_encoder", "image_normalizer"):
                if hasattr(ref, part):
                    a, b = getattr(ours, part).state_dict(), getattr(ref, part).state_dict()
                    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
            assert ours.scheduler.config.prediction_type == ref.scheduler.config.prediction_type
            assert torch.equal(sd.encode_prompts(ours, ["a house"]), sd.encode_prompts(ref, ["a house"]))
        assert loaded_unclip.feature_extractor.crop_size == unclip.feature_extractor.crop_size
    finally:
        release_all()


def test_samplers_reject_inconsistent_inputs(sd14, unclip, prompts, unclip_inputs):
    pe, ne = prompts
    with pytest.raises(ValueError, match="exactly one of init_images and init_latents"):
        img2img(sd14, pe, ne, gens(), Img2ImgSettings(2))
    with pytest.raises(ValueError, match="3 init images need 3 generators"):
        img2img(sd14, pe, ne, gens(SEEDS[:2]), Img2ImgSettings(2), init_images=init_images())
    with pytest.raises(ValueError, match="strength must be in"):
        img2img(sd14, pe, ne, gens(), Img2ImgSettings(2, strength=0.0), init_images=init_images())
    emb, upe, une = unclip_inputs
    with pytest.raises(ValueError, match="needs init images or init latents"):
        unclip_img2img(unclip, emb, upe, une, gens(), UnclipSettings(2, strength=0.5))
    with pytest.raises(ValueError, match="3 image embeddings need 3 generators"):
        unclip_img2img(unclip, emb, upe[:2], une, gens(), UnclipSettings(2))
    with pytest.raises(Exception, match="unknown weights mode 'huge'"):
        sd.load_sd14("huge")
