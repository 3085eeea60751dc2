"""Versatile Diffusion components and nsdbench's dual-guided img2img loop, offline with tiny random weights.

Equivalence is against diffusers' own VersatileDiffusionDualGuidedPipeline driven with the same
components: a test-only shim returns the given embeddings from its prompt encoders, `latents=` hands it
the same start, and for img2img its scheduler's timesteps are truncated as diffusers' img2img truncates
them. Compared: the decoded float images in [0, 1] (before nsdbench's uint8 conversion)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nsdbench.methods.components.vd_clip_features import (
    clip_text_tokens,
    clip_vision_tokens,
    unconditional_tokens,
)
from nsdbench.methods.components.versatile_diffusion import build_models, load_components
from nsdbench.methods.diffusion.versatile import (
    DualGuidedSettings,
    decode,
    denoise,
    dual_guided_img2img,
    initial_latents,
    schedule,
)

EQUIVALENCE_ATOL = 1e-5  # float32 on the CPU, identical operation order: differences are rounding only
BATCH_ATOL = 1e-4  # batch 4 vs 4 × batch 1 (measured max |Δ| about 1e-6 in tiny mode)
FAST = {"steps": 10, "guidance": 7.5, "mix": 0.6, "eta": 0.0}  # 7 denoising steps at strength 0.75


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models are latency-bound: one intra-op thread is fastest, and on a shared CPU far faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def vd():
    return load_components("tiny")


@pytest.fixture(scope="module")
def inputs(vd):
    """Four init images at the output size, their CLIP-vision tokens, four captions' CLIP-text tokens."""
    rng = np.random.default_rng(0)
    size = vd.image_size
    images = rng.integers(0, 256, (4, size, size, 3), dtype=np.uint8)
    text = clip_text_tokens(vd, ["a cat on a mat", "two dogs", "a red bus", "a bowl of fruit"])
    return images, clip_vision_tokens(vd, images), text


def _generators(seeds) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def _pipeline(vd, vision, text, monkeypatch, truncate_to: int | None = None):
    """diffusers' dual-guided pipeline over the same components, its prompt encoders shimmed to return
    [unconditional; conditional] of the given embeddings."""
    from diffusers import VersatileDiffusionDualGuidedPipeline

    pipe = VersatileDiffusionDualGuidedPipeline(
        tokenizer=vd.tokenizer,
        image_feature_extractor=vd.image_processor,
        text_encoder=vd.text_encoder,
        image_encoder=vd.image_encoder,
        image_unet=vd.unet,
        text_unet=None,
        vae=vd.vae,
        scheduler=vd.scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
    uncond_text, uncond_vision = unconditional_tokens(vd)
    n = len(vision)
    monkeypatch.setattr(
        pipe, "_encode_text_prompt", lambda *a: torch.cat([uncond_text.expand(n, -1, -1), text])
    )
    monkeypatch.setattr(
        pipe, "_encode_image_prompt", lambda *a: torch.cat([uncond_vision.expand(n, -1, -1), vision])
    )
    if truncate_to is not None:
        original = vd.scheduler.set_timesteps

        def truncated(num_inference_steps, device=None):
            original(num_inference_steps, device=device)
            vd.scheduler.timesteps = vd.scheduler.timesteps[-truncate_to:]

        monkeypatch.setattr(vd.scheduler, "set_timesteps", truncated)
    return pipe


def _run_pipeline(pipe, vd, n, latents, settings):
    from PIL import Image

    blank = Image.new("RGB", (vd.image_size, vd.image_size))
    out = pipe(
        prompt=["shimmed"] * n,
        image=[blank] * n,
        text_to_image_strength=1.0 - settings.mix,
        height=vd.image_size,
        width=vd.image_size,
        num_inference_steps=settings.steps,
        guidance_scale=settings.guidance,
        eta=settings.eta,
        latents=latents.clone(),
        output_type="np",
    )
    return torch.from_numpy(out.images)


def _ours(vd, images, vision, text, seeds, settings):
    gens = _generators(seeds)
    latents, timesteps = initial_latents(vd, images, gens, settings)
    return decode(vd, denoise(vd, latents, timesteps, vision, text, gens, settings))


def test_strength_one_equals_diffusers_dual_guided_pipeline(vd, inputs, monkeypatch):
    """Pure text/image-guided sampling (the pipeline's own mode) from the same start noise."""
    _, vision, text = inputs
    settings = DualGuidedSettings(strength=1.0, **FAST)
    ours = _ours(vd, None, vision, text, range(4), settings)
    start, _ = initial_latents(vd, None, _generators(range(4)), settings)
    theirs = _run_pipeline(_pipeline(vd, vision, text, monkeypatch), vd, 4, start, settings)
    assert theirs.shape == ours.shape == (4, vd.image_size, vd.image_size, 3)
    print(f"strength 1.0 vs diffusers pipeline: max |diff| = {(ours - theirs).abs().max():.3g}")
    assert torch.allclose(ours, theirs, rtol=0, atol=EQUIVALENCE_ATOL), (ours - theirs).abs().max()
    assert ours.std() > 0.01  # not a constant image


def test_strength_075_equals_pipeline_with_img2img_truncated_timesteps(vd, inputs, monkeypatch):
    """img2img: the start latent is built here independently with diffusers' own pieces (VaeImageProcessor,
    the posterior's sample, randn_tensor, img2img's get_timesteps, add_noise); the pipeline then runs
    over the truncated timesteps. nsdbench's loop with noise_timestep="img2img" must match."""
    from diffusers import StableDiffusionImg2ImgPipeline
    from diffusers.image_processor import VaeImageProcessor
    from diffusers.utils.torch_utils import randn_tensor
    from PIL import Image

    images, vision, text = inputs
    settings = DualGuidedSettings(strength=0.75, noise_timestep="img2img", **FAST)
    ours = _ours(vd, images, vision, text, range(10, 14), settings)

    vd.scheduler.set_timesteps(settings.steps)
    timesteps, n_steps = StableDiffusionImg2ImgPipeline.get_timesteps(
        SimpleNamespace(scheduler=vd.scheduler), settings.steps, settings.strength, "cpu"
    )
    assert n_steps == settings.denoising_steps == 7
    gens = _generators(range(10, 14))
    pixels = VaeImageProcessor(vae_scale_factor=vd.vae_scale_factor).preprocess(
        [Image.fromarray(im) for im in images]
    )
    x0 = vd.vae.encode(pixels).latent_dist.sample(gens) * vd.vae.config.scaling_factor
    noise = randn_tensor(x0.shape, generator=gens, dtype=x0.dtype)
    start = vd.scheduler.add_noise(x0, noise, timesteps[:1].repeat(4))
    pipe = _pipeline(vd, vision, text, monkeypatch, truncate_to=n_steps)
    theirs = _run_pipeline(pipe, vd, 4, start, settings)
    print(f"strength 0.75 vs diffusers pipeline: max |diff| = {(ours - theirs).abs().max():.3g}")
    assert torch.allclose(ours, theirs, rtol=0, atol=EQUIVALENCE_ATOL), (ours - theirs).abs().max()


def test_published_schedule_noises_one_ddim_step_above_the_first_denoising_step(vd, inputs):
    """50 steps at strength 0.75: 37 DDIM steps from t=721 down to 1; the published sampler noises the init
    latent to t=741 (ᾱ from the scaled-linear betas, computed here in float64), img2img to t=721."""
    published = DualGuidedSettings()
    timesteps, noise_t = schedule(vd, published)
    assert published.denoising_steps == 37 and len(timesteps) == 37
    assert timesteps.tolist() == list(range(721, 0, -20)) and int(noise_t) == 741
    assert int(schedule(vd, DualGuidedSettings(noise_timestep="img2img"))[1]) == 721

    images = inputs[0][:2]
    latents, _ = initial_latents(vd, images, _generators([5, 6]), published)
    gens = _generators([5, 6])
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    dist = vd.vae.encode(pixels).latent_dist
    eps = torch.stack([torch.randn(dist.mean.shape[1:], generator=g) for g in gens])
    noise = torch.stack([torch.randn(dist.mean.shape[1:], generator=g) for g in gens])
    x0 = ((dist.mean + dist.std * eps) * 0.18215).double()
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    abar = np.cumprod(1.0 - betas)[741]
    expected = np.sqrt(abar) * x0 + np.sqrt(1.0 - abar) * noise.double()
    assert torch.allclose(latents.double(), expected, rtol=0, atol=1e-5)


def test_batch_of_four_equals_four_batches_of_one(vd, inputs):
    """Per-image CPU generators: an image does not depend on its batch beyond floating-point reordering."""
    images, vision, text = inputs
    settings = DualGuidedSettings(**FAST)
    seeds = [101, 102, 103, 104]
    together = _ours(vd, images, vision, text, seeds, settings)
    alone = torch.cat(
        [
            _ours(vd, images[i : i + 1], vision[i : i + 1], text[i : i + 1], seeds[i : i + 1], settings)
            for i in range(4)
        ]
    )
    diff = (together - alone).abs().max().item()
    print(f"batch 4 vs 4 x batch 1, tiny mode: max |diff| = {diff:.3g}")
    assert diff < BATCH_ATOL
    different_seed = _ours(vd, images[:1], vision[:1], text[:1], [999], settings)
    assert (different_seed - alone[:1]).abs().max() > 100 * BATCH_ATOL  # the seed matters


def test_same_seed_same_bytes(vd, inputs):
    images, vision, text = inputs
    settings = DualGuidedSettings(**FAST)
    a = dual_guided_img2img(vd, images[:2], vision[:2], text[:2], _generators([1, 2]), settings)
    b = dual_guided_img2img(vd, images[:2], vision[:2], text[:2], _generators([1, 2]), settings)
    assert a.dtype == np.uint8 and a.shape == (2, vd.image_size, vd.image_size, 3)
    assert np.array_equal(a, b)


def test_init_images_of_any_size_are_upsampled_bicubic(vd, inputs):
    """The stage-1 image (64 px in the published pipeline) is resized to the output size first."""
    images, vision, text = inputs
    small = images[:1, ::4, ::4]
    out = dual_guided_img2img(vd, small, vision[:1], text[:1], _generators([3]), DualGuidedSettings(**FAST))
    assert out.shape == (1, vd.image_size, vd.image_size, 3)


def test_mix_weighs_vision_against_text(vd, inputs):
    """mix=1 ignores the text context entirely; mix=0.6 does not."""
    images, vision, text = inputs
    other_text = clip_text_tokens(vd, ["something else entirely"])
    run = lambda t, mix: _ours(vd, images[:1], vision[:1], t, [7], DualGuidedSettings(**{**FAST, "mix": mix}))
    assert torch.equal(run(text[:1], 1.0), run(other_text, 1.0))
    assert (run(text[:1], 0.6) - run(other_text, 0.6)).abs().max() > 1e-4


def test_clip_tokens_equal_the_pipelines_own_encoders(vd, inputs):
    """Feature extractors against diffusers' _encode_text_prompt / _encode_image_prompt (VD's normalization:
    projected tokens over the norm of the projected pooled embedding; class token of unit norm)."""
    from diffusers import VersatileDiffusionDualGuidedPipeline
    from PIL import Image

    images, vision, text = inputs
    pipe = VersatileDiffusionDualGuidedPipeline(
        tokenizer=vd.tokenizer,
        image_feature_extractor=vd.image_processor,
        text_encoder=vd.text_encoder,
        image_encoder=vd.image_encoder,
        image_unet=vd.unet,
        text_unet=None,
        vae=vd.vae,
        scheduler=vd.scheduler,
    )
    captions = ["a cat on a mat", "two dogs", "a red bus", "a bowl of fruit"]
    theirs_text = pipe._encode_text_prompt(captions, vd.device, 1, False)
    theirs_vision = pipe._encode_image_prompt([Image.fromarray(im) for im in images], vd.device, 1, False)
    assert vision.shape == (4, 257, 32) and text.shape == (4, 77, 32)
    assert torch.allclose(text, theirs_text, atol=1e-6)
    assert torch.allclose(vision, theirs_vision, atol=1e-6)
    assert torch.allclose(vision[:, 0].norm(dim=-1), torch.ones(4), atol=1e-5)
    ids = vd.tokenizer(captions, padding="max_length", max_length=77, return_tensors="pt").input_ids
    eot = ids.argmax(-1)  # the end-of-text id is the tiny vocabulary's largest
    assert torch.allclose(text[torch.arange(4), eot].norm(dim=-1), torch.ones(4), atol=1e-5)
    uncond_text, uncond_vision = unconditional_tokens(vd)
    assert torch.allclose(uncond_text, clip_text_tokens(vd, [""]))
    gray = np.full((1, 32, 32, 3), 127, np.uint8)  # VD's zero image in [-1, 1] space, as CLIP receives it
    assert torch.allclose(uncond_vision, clip_vision_tokens(vd, gray))


def test_brain_diffuser_clip_pixels_resize_and_truncate():
    """The published feature path: 425-px stimuli -> 512 px; the [-1, 1] float round trip truncates some
    levels by one (1 -> 0, never more than one, 0 and 255 kept)."""
    from nsdbench.methods.components.vd_clip_features import brain_diffuser_clip_pixels

    levels = np.tile(np.arange(256, dtype=np.uint8), (512 * 512 * 3) // 256).reshape(1, 512, 512, 3)
    out = brain_diffuser_clip_pixels(levels)
    drop = levels.astype(int) - out.astype(int)
    assert out.shape == levels.shape and set(np.unique(drop)) == {0, 1}
    first = out.reshape(-1)[:256]  # the 256 levels in order
    assert first[0] == 0 and first[255] == 255 and first[1] == 0
    assert brain_diffuser_clip_pixels(levels[:, :425, :425]).shape == (1, 512, 512, 3)


def test_bad_inputs_are_one_line_errors(vd, inputs):
    images, vision, text = inputs
    with pytest.raises(ValueError, match="vision tokens"):
        dual_guided_img2img(vd, images[:2], vision[:2, :10], text[:2], _generators([1, 2]))
    with pytest.raises(ValueError, match="uint8"):
        clip_vision_tokens(vd, images.astype(np.float32))
    with pytest.raises(ValueError, match="strength"):
        DualGuidedSettings(strength=0.0)
    with pytest.raises(ValueError, match="no denoising step"):
        DualGuidedSettings(steps=1, strength=0.5)


def test_pretrained_without_weights_names_the_fetch_command():
    from nsdbench.errors import WeightsMissing

    with pytest.raises(WeightsMissing, match="nsdbench weights fetch versatile-diffusion"):
        load_components("pretrained")


def test_artifact_is_registered_with_the_dual_guided_folders():
    from nsdbench import weights

    art = weights.get("versatile-diffusion")
    assert art.kind == "hf-snapshot" and art.source == "shi-labs/versatile-diffusion"
    assert art.used_by == ("brain-diffuser",)
    for folder in ("image_unet", "text_unet", "vae", "text_encoder", "image_encoder", "tokenizer"):
        assert f"{folder}/*" in art.allow_patterns


def test_random_mode_configs_have_the_published_parameter_counts():
    """Built on the meta device (no memory, no init). Expected counts are the published models' own:
    SD-1.x-shaped UNet 859,520,964; KL-f8 VAE 83,653,863; CLIP ViT-L/14 text 123,060,480 + 768×768
    projection; vision 303,179,776 + 1024×768 projection. The dual UNet adds the text UNet's attention
    blocks, which have the image UNet's shapes."""
    from diffusers import VersatileDiffusionDualGuidedPipeline
    from diffusers.models import Transformer2DModel

    def count(module):
        return sum(p.numel() for p in module.parameters())

    with torch.device("meta"):
        models = build_models("random")
        attention = sum(count(m) for m in models["image_unet"].modules() if isinstance(m, Transformer2DModel))
        assert count(models["image_unet"]) == 859_520_964
        assert count(models["vae"]) == 83_653_863
        assert count(models["text_encoder"]) == 123_060_480 + 768 * 768
        assert count(models["image_encoder"]) == 303_179_776 + 1024 * 768
        pipe = VersatileDiffusionDualGuidedPipeline(
            tokenizer=None, image_feature_extractor=None, scheduler=None, **models
        )
    assert count(pipe.image_unet) == 859_520_964 + attention
    assert models["image_encoder"].config.image_size // models["image_encoder"].config.patch_size == 16  # 257


def test_pretrained_loads_a_versatile_diffusion_snapshot_offline(vd, inputs, tmp_path, monkeypatch):
    """A snapshot laid out as shi-labs/versatile-diffusion (VersatileDiffusionPipeline.save_pretrained of
    tiny seeded models) loads through the pretrained path, dual attention merged by the pipeline, and
    samples exactly as the same models built in tiny mode."""
    from diffusers import DDIMScheduler, VersatileDiffusionPipeline
    from transformers import CLIPImageProcessor

    from nsdbench.methods.components import release_all
    from nsdbench.methods.components.clip_tokenizer import tiny_clip_tokenizer
    from nsdbench.methods.components.versatile_diffusion import load_config, strip_class

    models = build_models("tiny")
    VersatileDiffusionPipeline(
        tokenizer=tiny_clip_tokenizer(),
        image_feature_extractor=CLIPImageProcessor(
            **strip_class(load_config("image_feature_extractor", "tiny"))
        ),
        scheduler=DDIMScheduler.from_config(strip_class(load_config("scheduler", "tiny"))),
        **models,
    ).save_pretrained(tmp_path / "weights" / "versatile-diffusion")
    monkeypatch.setenv("NSDBENCH_HOME", str(tmp_path))
    try:
        loaded = load_components("pretrained")
        images, vision, text = inputs
        settings = DualGuidedSettings(**FAST)
        a = dual_guided_img2img(loaded, images[:2], vision[:2], text[:2], _generators([4, 5]), settings)
        b = dual_guided_img2img(vd, images[:2], vision[:2], text[:2], _generators([4, 5]), settings)
        assert np.array_equal(a, b)
    finally:
        release_all()


def test_gpu_bench_script_runs_tiny_on_the_cpu(capsys):
    """scripts/gpu_bench_brain_diffuser.py end to end with --tiny (its full-size run needs a GPU)."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "gpu_bench_brain_diffuser.py"
    spec = importlib.util.spec_from_file_location("gpu_bench_brain_diffuser", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    argv = ["--tiny", "--device", "cpu", "--images", "2", "--reference-images", "2", "--batch-size", "2"]
    assert script.main([*argv, "--steps", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["mode"] == "tiny" and result["denoising_steps"] == 3 and result["image_size"] == 32
    assert result["batched_images_per_s"] > 0 and result["reference_images_per_s"] > 0
    assert result["max_abs_uint8_diff_batched_vs_batch1"] <= 1
