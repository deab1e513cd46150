"""RealFusion with a tiny Stable Diffusion built here: SDS, textual inversion, training, export, bad inputs."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from onelook.data.images import ImageError
from onelook.data.object_image import prepare_object_image
from onelook.guidance.stable_diffusion import PriorUnavailableError, StableDiffusionPrior
from onelook.guidance.textual_inversion import LearnedToken, denoising_loss, invert

# Sizes that let the whole method run on a CPU in seconds (with the tiny prior's 16 px images).
TINY = [
    "--pipeline.model.implementation",
    "torch",
    "--pipeline.model.log2-hashmap-size",
    "12",
    "--pipeline.model.max-res",
    "128",
    "--pipeline.model.num-coarse-samples",
    "16",
    "--pipeline.model.num-fine-samples",
    "16",
    "--pipeline.datamanager.prior-view-size",
    "16",
    "--pipeline.model.prior-view-chunk",
    "100",  # the 256-ray prior view in three chunks: two-pass rendering through nerfstudio's trainer
    "--pipeline.datamanager.train-num-rays-per-batch",
    "256",
    "--pipeline.model.coarse-to-fine-step",
    "2",
    "--pipeline.model.albedo-steps",
    "2",
    "--pipeline.model.eval-num-rays-per-chunk",
    "1024",
]


@pytest.fixture(scope="module")
def prior(tiny_sd):
    return StableDiffusionPrior.load(tiny_sd, device="cpu")


def test_sds_gradient_is_weighted_noise_residual(prior):
    torch.manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, requires_grad=True)
    text, uncond = prior.encode_prompts(["a photo of a cup"]), prior.encode_prompts([""])
    out = prior.sds_on_latents(latents, text, uncond, guidance_scale=7.5, generator=torch.Generator().manual_seed(3))
    (grad,) = torch.autograd.grad(out.loss, latents)
    # Recompute w(t) (eps_hat - eps) independently, drawing t and eps from the same seed.
    generator = torch.Generator().manual_seed(3)
    t = torch.randint(20, 981, (1,), generator=generator)
    assert int(t) == out.timestep
    noise = torch.randn(latents.shape, generator=generator)
    alpha_bar = prior.scheduler.alphas_cumprod[t].float()
    noisy = alpha_bar.sqrt() * latents.detach() + (1 - alpha_bar).sqrt() * noise
    with torch.no_grad():
        eps_text = prior.unet(noisy, t, encoder_hidden_states=text).sample
        eps_uncond = prior.unet(noisy, t, encoder_hidden_states=uncond).sample
    expected = (1 - alpha_bar) * (eps_uncond + 7.5 * (eps_text - eps_uncond) - noise)
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-5)


def test_pixel_space_sds_pulls_the_pixels_towards_the_decoded_prediction(prior):
    rgb = torch.rand(1, 3, 20, 20, requires_grad=True)
    text, uncond = prior.encode_prompts(["a photo of a cup"]), prior.encode_prompts([""])
    torch.manual_seed(0)  # the VAE's posterior sample
    out = prior.sds(rgb, text, uncond, 7.5, generator=torch.Generator().manual_seed(3), pixel_space=True)
    (grad,) = torch.autograd.grad(out.loss, rgb)
    torch.manual_seed(0)
    with torch.no_grad():
        latents = prior.encode_images(rgb).float()
        generator = torch.Generator().manual_seed(3)
        target, weight, t = prior.denoised_target(latents, text, uncond, 7.5, (0.02, 0.98), generator)
        target_rgb = prior.decode_latents(target)
    assert t == out.timestep and target_rgb.shape == (1, 3, prior.image_size, prior.image_size)
    torch.testing.assert_close(out.target_rgb, target_rgb)
    assert out.weight == pytest.approx(float(weight))
    assert 0 <= target_rgb.min() and target_rgb.max() <= 1
    resized = torch.nn.functional.interpolate(rgb, size=target_rgb.shape[-2:], mode="bilinear", align_corners=False)
    (expected,) = torch.autograd.grad(resized, rgb, weight * (resized.detach() - target_rgb))
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)


def test_the_silhouette_loss_clears_a_pale_fog_that_colour_cannot():
    """A pale haze on a plain background looks like the background: pulling its colour towards a target that
    shows the background there barely moves its opacity, the silhouette loss does; where the target shows the
    object, opacity is pulled up; inside the dead zone a target reads as background, half-way beyond it as
    half opaque. The background is the target's own border colour, whatever it is."""
    from onelook.model_components.losses import silhouette_loss

    for background_colour in ([1.0, 1.0, 1.0], [0.2, 0.5, 0.3]):
        background = torch.tensor(background_colour)[None, :, None, None].expand(1, 3, 8, 8)
        target = background.clone()
        target[..., 2:6, 4:7] = torch.tensor([0.8, 0.1, 0.1])[:, None, None]  # an object inside the frame
        inside = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
        inside[..., 2:6, 4:7] = True
        fog_colour = background * 0.9 + 0.1 * torch.tensor([0.5, 0.5, 0.5])[None, :, None, None]
        accumulation = torch.full((1, 1, 8, 8), 0.3, requires_grad=True)
        rgb = accumulation * fog_colour + (1 - accumulation) * background
        (colour_grad,) = torch.autograd.grad(torch.mean((rgb - target) ** 2), accumulation)
        (grad,) = torch.autograd.grad(silhouette_loss(accumulation, target), accumulation)
        assert (grad[~inside] > 0).all() and (grad[inside] < 0).all()  # descent lowers the haze, raises the object
        assert grad[~inside].abs().min() > 100 * colour_grad[~inside].abs().max()
        assert silhouette_loss(inside.float(), target) == 0
        for offset, silhouette in ((0.05, 0.0), (0.15, 0.5)):
            faint = target.clone()
            faint[inside.expand_as(target)] = (background + offset)[inside.expand_as(target)]
            assert silhouette_loss(silhouette * inside.float(), faint) == pytest.approx(0, abs=1e-10)
            assert silhouette_loss((silhouette + 0.2) * inside.float(), faint) == pytest.approx(
                0.04 * 12 / 64, rel=1e-4
            )


def test_the_silhouette_needs_the_pixel_space_target(object_photo, tmp_path):
    from onelook.configs import realfusion_method

    config = copy.deepcopy(realfusion_method.config)
    config.pipeline.datamanager.data = object_photo
    config.pipeline.datamanager.dataparser.cache_dir = tmp_path
    config.pipeline.model.prior_silhouette_weight = 1.0
    with pytest.raises(ValueError, match="needs sds_pixel_space"):
        config.pipeline.setup(device="cpu", test_mode="val")


def test_sds_reaches_the_rendered_pixels(prior):
    rgb = torch.rand(1, 3, 20, 20, requires_grad=True)
    text, uncond = prior.encode_prompts(["x"]), prior.encode_prompts([""])
    prior.sds(rgb, text, uncond).loss.backward()
    assert rgb.grad is not None and rgb.grad.abs().sum() > 0


def test_textual_inversion_learns_only_the_new_word(tiny_sd, object_photo, tmp_path):
    prior = StableDiffusionPrior.load(tiny_sd, device="cpu")  # its own copy: inversion changes the tokenizer
    image = prepare_object_image(object_photo, size=32).on_white()

    def loss_on_image(token: str) -> float:
        """The same timesteps, noise and VAE samples every time (the VAE samples from the global generator)."""
        images = torch.as_tensor(image, dtype=torch.float32).permute(2, 0, 1)[None] / 255.0
        gen = torch.Generator().manual_seed(11)
        torch.manual_seed(0)
        with torch.no_grad():
            return float(
                np.mean([denoising_loss(prior, images, [f"a photo of a {token}"], gen).item() for _ in range(16)])
            )

    prior.add_token("<cup>", initializer="object")
    before = prior.text_encoder.get_input_embeddings().weight.detach().clone()
    start = loss_on_image("<cup>")
    learned = invert(prior, image, steps=60, token="<cup>", learning_rate=5e-2, show_progress=False)
    after = prior.text_encoder.get_input_embeddings().weight.detach()
    token_id = prior.tokenizer.convert_tokens_to_ids("<cup>")
    changed = (after != before).any(dim=1)
    assert changed.nonzero().flatten().tolist() == [token_id]
    assert loss_on_image("<cup>") < start
    path = learned.save(tmp_path / "cup.safetensors")
    loaded = LearnedToken.load(path)
    assert loaded.token == "<cup>" and loaded.base_model == str(tiny_sd)
    torch.testing.assert_close(loaded.embedding, after[token_id])


@pytest.fixture(scope="module")
def prior_fp16(tiny_sd):
    """The fp16 path users run on a GPU (fp16 convolutions run on the CPU too, slowly)."""
    return StableDiffusionPrior.load(tiny_sd, device="cpu", half_precision=True)


def test_fp16_textual_inversion_stays_finite_and_changes_only_the_new_row(prior_fp16, object_photo):
    image = prepare_object_image(object_photo, size=32).on_white()
    table = prior_fp16.text_encoder.get_input_embeddings().weight
    assert table.dtype == torch.float16
    prior_fp16.add_token("<cup16>", initializer="object")
    before = table.detach().clone()
    learned = invert(prior_fp16, image, steps=8, token="<cup16>", show_progress=False)
    assert learned.embedding.dtype == torch.float32 and torch.isfinite(learned.embedding).all()
    token_id = prior_fp16.tokenizer.convert_tokens_to_ids("<cup16>")
    changed = (table.detach() != before).any(dim=1)
    assert changed.nonzero().flatten().tolist() == [token_id]
    assert torch.isfinite(table[token_id]).all()


def test_fp16_sds_gradients_are_finite(prior_fp16):
    rgb = torch.rand(2, 3, 20, 20, requires_grad=True)
    text, uncond = prior_fp16.encode_prompts(["a cup, front view", "a cup, back view"]), prior_fp16.encode_prompts([""])
    prior_fp16.sds(rgb, text, uncond, generator=torch.Generator().manual_seed(1)).loss.backward()
    assert torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0


def test_a_non_finite_prior_stops_score_distillation_with_a_clear_error(tiny_sd):
    broken = StableDiffusionPrior.load(tiny_sd, device="cpu")
    with torch.no_grad():
        broken.unet.conv_out.bias.fill_(float("inf"))  # an overflowing UNet, as fp16 can give
    latents = torch.randn(1, 4, 8, 8, requires_grad=True)
    text = broken.encode_prompts(["x"])
    with pytest.raises(FloatingPointError, match="non-finite gradient"):
        broken.sds_on_latents(latents, text, text)


def test_sds_with_a_batch_of_views_and_one_prompt_each(prior):
    generator = torch.Generator().manual_seed(5)
    latents = torch.randn(3, 4, 8, 8, requires_grad=True)
    text = prior.encode_prompts(["front view", "side view", "back view"])
    uncond = prior.encode_prompts([""])
    out = prior.sds_on_latents(latents, text, uncond, guidance_scale=10.0, generator=generator)
    (grad,) = torch.autograd.grad(out.loss, latents)
    generator = torch.Generator().manual_seed(5)
    t = torch.randint(20, 981, (1,), generator=generator)
    noise = torch.randn(latents.shape, generator=generator)
    alpha_bar = prior.scheduler.alphas_cumprod[t].float()
    noisy = alpha_bar.sqrt() * latents.detach() + (1 - alpha_bar).sqrt() * noise
    with torch.no_grad():
        eps_text = prior.unet(noisy, t.expand(3), encoder_hidden_states=text).sample
        eps_uncond = prior.unet(noisy, t.expand(3), encoder_hidden_states=uncond.expand(3, -1, -1)).sample
    expected = (1 - alpha_bar) * (eps_uncond + 10.0 * (eps_text - eps_uncond) - noise) / 3
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def v_prediction_sd(tiny_sd, tmp_path_factory):
    """The tiny model as a v-prediction one (what SD 2.x 768 is)."""
    import json
    import shutil

    folder = tmp_path_factory.mktemp("v-sd") / "model"
    shutil.copytree(tiny_sd, folder)
    config_path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config["prediction_type"] = "v_prediction"
    config_path.write_text(json.dumps(config))
    return folder


def test_v_prediction_models_give_epsilon_as_the_scheduler_defines_it(v_prediction_sd):
    prior = StableDiffusionPrior.load(v_prediction_sd, device="cpu")
    assert prior.prediction_type == "v_prediction"
    generator = torch.Generator().manual_seed(2)
    latents, noise = torch.randn(1, 4, 8, 8, generator=generator), torch.randn(1, 4, 8, 8, generator=generator)
    t = torch.tensor([700])
    noisy = prior.add_noise(latents, noise, t)
    text = prior.encode_prompts(["x"])
    with torch.no_grad():
        eps = prior.predict_noise(noisy, t, text)
        v = prior.unet(noisy, t, encoder_hidden_states=text).sample
    # diffusers' own reading of a v output: the clean sample it implies, hence the noise.
    x0 = prior.scheduler.step(v, int(t), noisy).pred_original_sample
    alpha_bar = prior.scheduler.alphas_cumprod[t]
    torch.testing.assert_close(eps, (noisy - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt(), rtol=1e-4, atol=1e-4)
    # Textual inversion trains it on its own target (v), not on epsilon.
    torch.testing.assert_close(
        prior.training_target(latents, noise, t), prior.scheduler.get_velocity(latents, noise, t)
    )


def test_an_unsupported_prediction_type_is_refused(v_prediction_sd, tmp_path):
    import json
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(v_prediction_sd, folder)
    config_path = folder / "scheduler" / "scheduler_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "prediction_type": "sample"}))
    with pytest.raises(ValueError, match="prediction_type 'sample' is not supported"):
        StableDiffusionPrior.load(folder, device="cpu")


def test_the_learned_word_loads_in_diffusers_and_back(tiny_sd, tmp_path):
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    word = LearnedToken("<mug>", torch.randn(32), str(tiny_sd))
    path = word.save(tmp_path / "mug.safetensors")
    pipeline = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None, requires_safety_checker=False)
    pipeline.load_textual_inversion(str(path))
    token_id = pipeline.tokenizer.convert_tokens_to_ids("<mug>")
    torch.testing.assert_close(pipeline.text_encoder.get_input_embeddings().weight[token_id], word.embedding)
    # diffusers' own training script writes learned_embeds.safetensors as {token: (1, D)}.
    save_file({"<toy>": torch.ones(1, 32)}, str(tmp_path / "learned_embeds.safetensors"))
    loaded = LearnedToken.load(tmp_path / "learned_embeds.safetensors")
    assert loaded.token == "<toy>" and loaded.embedding.shape == (32,)


def test_a_home_relative_model_folder_is_expanded(tiny_sd, monkeypatch):
    monkeypatch.setenv("HOME", str(tiny_sd.parent))
    assert StableDiffusionPrior.load(f"~/{tiny_sd.name}", device="cpu").source == str(tiny_sd)


def test_inversion_learns_from_a_full_resolution_crop_and_accumulates_four_images(tiny_sd, tmp_path):
    from skimage import data

    from onelook.data.image_dataparser import INVERSION_IMAGE_SIZE, ObjectImageDataParserConfig

    rgb = data.coffee()  # 400 x 600: a photo with more detail than a small crop keeps
    yy, xx = np.mgrid[0 : rgb.shape[0], 0 : rgb.shape[1]]
    alpha = ((((xx - 300) / 200) ** 2 + ((yy - 200) / 160) ** 2) <= 1).astype(np.uint8) * 255
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "cup.png")
    parser = ObjectImageDataParserConfig(data=tmp_path / "cup.png", image_size=32, cache_dir=tmp_path / "cache")
    metadata = parser.setup().get_dataparser_outputs("train").metadata
    inversion = np.asarray(Image.open(metadata["inversion_path"]))
    assert inversion.shape == (INVERSION_IMAGE_SIZE, INVERSION_IMAGE_SIZE, 3)
    crop, mask = (np.asarray(Image.open(metadata[key])) for key in ("image_path", "mask_path"))
    small_on_white = np.where(mask[..., None] > 127, crop, 255).astype(np.uint8)
    upscaled = np.asarray(Image.fromarray(small_on_white).resize(inversion.shape[:2], Image.Resampling.BILINEAR))

    def detail(image: np.ndarray) -> float:  # energy of the finest differences
        return float(np.abs(np.diff(image.astype(float), axis=1)).mean())

    assert detail(inversion) > 2 * detail(upscaled)  # the photo's own detail, not a blurred small crop
    prior = StableDiffusionPrior.load(tiny_sd, device="cpu")
    calls = []
    hook = prior.unet.register_forward_hook(lambda *_: calls.append(1))
    invert(prior, inversion, steps=3, show_progress=False)
    hook.remove()
    assert len(calls) == 3 * 4


@pytest.fixture(scope="module")
def realfusion_pipeline(object_photo, tmp_path_factory):
    from onelook.configs import realfusion_method

    config = copy.deepcopy(realfusion_method.config)
    config.pipeline.datamanager.data = object_photo
    config.pipeline.datamanager.dataparser.image_size = 32
    config.pipeline.datamanager.dataparser.cache_dir = tmp_path_factory.mktemp("cache")
    config.pipeline.datamanager.train_num_rays_per_batch = 512
    model = config.pipeline.model
    model.implementation, model.log2_hashmap_size, model.max_res = "torch", 14, 256
    model.num_coarse_samples = model.num_fine_samples = 32
    model.sds_loss_weight = 0.0  # reference view only
    model.coarse_to_fine_step = 0
    torch.manual_seed(0)
    return config.pipeline.setup(device="cpu", test_mode="val")


@pytest.mark.slow
def test_reference_view_alone_reconstructs_the_input(realfusion_pipeline):
    pipeline = realfusion_pipeline
    model = pipeline.model
    groups = model.get_param_groups()
    optimizer = torch.optim.Adam(
        [{"params": groups["grid"], "lr": 1e-2}, {"params": groups["mlp"], "lr": 1e-3}], betas=(0.9, 0.99), eps=1e-15
    )
    model.train()
    for step in range(250):
        optimizer.zero_grad()
        _, loss_dict, _ = pipeline.get_train_loss_dict(step)
        sum(loss_dict.values()).backward()
        optimizer.step()
    model.eval()
    camera = pipeline.datamanager.train_dataset.cameras[0:1]
    outputs = model.get_outputs_for_camera(camera)
    batch = pipeline.datamanager.train_dataset[0]
    image, mask = batch["image"][..., :3], batch["mask"][..., 0]
    error = ((outputs["rgb"] - image) ** 2)[mask].mean()
    psnr = -10 * torch.log10(error)
    assert psnr > 20.0, f"reference view PSNR inside the mask {psnr:.1f} dB"
    assert (outputs["accumulation"][..., 0][mask] > 0.5).float().mean() > 0.9


def test_normals_at_the_surface_are_the_true_normals_of_a_hard_sphere(object_photo, tmp_path):
    """The field made a hard sphere (its MLP silenced, its central blob sharpened): normals at each ray's
    expected surface point, and the deferred shading with them, agree with the sphere's true normals and with
    normals composited from every sample."""
    from onelook.configs import realfusion_method

    config = copy.deepcopy(realfusion_method.config)
    config.pipeline.datamanager.data = object_photo
    config.pipeline.datamanager.dataparser.image_size = 48
    config.pipeline.datamanager.dataparser.cache_dir = tmp_path
    model = config.pipeline.model
    model.implementation, model.log2_hashmap_size, model.max_res = "torch", 12, 128
    model.num_coarse_samples = model.num_fine_samples = 48
    pipeline = config.pipeline.setup(device="cpu", test_mode="val")
    model = pipeline.model.eval()
    field = model.field
    torch.nn.init.zeros_(field.mlp.layers[-1].weight)
    torch.nn.init.zeros_(field.mlp.layers[-1].bias)
    radius = 0.3  # raw density 400 exp(-r^2 / 2 0.2^2) - 400 exp(-0.3^2 / 2 0.2^2): positive inside, steep at r
    field.blob_density = 400.0
    field.mlp.layers[-1].bias.data[0] = -400.0 * np.exp(-(radius**2) / (2 * field.blob_radius**2))
    bundle = pipeline.datamanager.train_dataset.cameras[0:1].generate_rays(camera_indices=0, keep_shape=False)
    light = torch.nn.functional.normalize(torch.tensor([0.3, -1.0, 0.5]), dim=0)
    with torch.no_grad():
        samples = model.place_samples(bundle)
        rendered = {}
        for where in ("surface", "samples"):
            model.config.normals = where
            rendered[where] = model.render_samples(samples, "lambertian", normals=True, light=light)
    origins, directions = bundle.origins, torch.nn.functional.normalize(bundle.directions, dim=-1)
    b = (origins * directions).sum(-1)
    hit = b**2 - (origins.square().sum(-1) - radius**2)
    inside = hit > 0.02  # rays that meet the sphere away from its rim
    true_normals = torch.nn.functional.normalize(origins + (-b - hit.clamp(min=0).sqrt())[:, None] * directions, dim=-1)
    assert inside.sum() > 50
    for where, out in rendered.items():
        assert (out["accumulation"][inside] > 0.99).all(), where
        cosine = (torch.nn.functional.normalize(out["normals"][inside], dim=-1) * true_normals[inside]).sum(-1)
        assert np.degrees(np.arccos(cosine.clamp(max=1.0).min().item())) < 5.0, where
    lambert = 0.5 * (0.1 + 0.9 * (true_normals[inside] @ light).clamp(min=0))[:, None]  # albedo 0.5 (logits 0)
    for out in rendered.values():
        torch.testing.assert_close(out["rgb"][inside], lambert.expand(-1, 3), atol=0.03, rtol=0)


@pytest.mark.parametrize("density_bias, fog", [(0.0, True), (-3.0, False), (-6.0, False)])
def test_the_untrained_field_is_a_fog_unless_its_density_is_biased_down(density_bias, fog):
    """Untrained, the field's log-density is about 0 everywhere: at `density_bias` 0 (the released code) a chord
    of the scene 0.6 from its centre is over 70% opaque, a fog the losses must clear; biased down it is nearly
    empty, while the central blob still stops most of a ray through the centre and keeps a surface to export
    (a short run's mesh is that blob)."""
    from onelook.export.mesh import SURFACE_DENSITY
    from onelook.fields.realfusion_field import RealFusionField

    torch.manual_seed(0)
    field = RealFusionField(implementation="torch", log2_hashmap_size=12, max_res=128, density_bias=density_bias)
    along = torch.linspace(-0.9, 0.9, 512)[:, None]

    def opacity(offset: float) -> float:
        points = torch.cat([along, torch.full_like(along, offset), torch.zeros_like(along)], dim=-1)
        with torch.no_grad():
            density, _ = field.query(points)
        return float(1 - torch.exp(-density.sum() * 1.8 / len(along)))

    assert opacity(0.0) > 0.75
    assert (opacity(0.6) > 0.7) if fog else (opacity(0.6) < 0.15)
    with torch.no_grad():
        centre_density, _ = field.query(torch.zeros(1, 3))
    assert float(centre_density) > 5 * SURFACE_DENSITY


def _small_pipeline(tiny_sd, object_photo, tmp_path, **model_options):
    """`ns-train realfusion`'s pipeline at test sizes (32 px photo, 16 px random views, 12 + 12 samples), its
    prior loaded, in training mode; `model_options` set model config fields."""
    from onelook.configs import realfusion_method

    config = copy.deepcopy(realfusion_method.config)
    config.pipeline.datamanager.data = object_photo
    config.pipeline.datamanager.dataparser.image_size = 32
    config.pipeline.datamanager.dataparser.cache_dir = tmp_path
    config.pipeline.datamanager.prior_view_size = 16
    config.pipeline.datamanager.train_num_rays_per_batch = 64
    model = config.pipeline.model
    model.implementation, model.log2_hashmap_size, model.max_res = "torch", 12, 128
    model.num_coarse_samples = model.num_fine_samples = 12
    model.sd_model, model.inversion_steps, model.inversion_accumulation = str(tiny_sd), 1, 1
    model.albedo_steps, model.coarse_to_fine_step = 0, 0
    for name, value in model_options.items():
        setattr(model, name, value)
    pipeline = config.pipeline.setup(device="cpu", test_mode="val")
    pipeline.model.prior()
    pipeline.model.train()
    return pipeline


@pytest.mark.parametrize("background, shading", [("network", "albedo"), ("white", "albedo"), ("white", "textureless")])
def test_an_empty_scene_shows_the_prior_the_configured_background(tiny_sd, object_photo, tmp_path, background, shading):
    """The random view the prior scores, of a scene with no density: the background network's colours, or pure
    white for a prior that only saw objects on white (`prior_view_background`), in colour whatever the shading."""
    from types import SimpleNamespace

    pipeline = _small_pipeline(tiny_sd, object_photo, tmp_path, prior_view_background=background)
    model = pipeline.model
    model._rng = SimpleNamespace(choices=lambda *_: [shading])  # the model's draw of a shading, made for it
    with torch.no_grad():  # no density anywhere: the MLP's density output pinned far below zero
        model.field.mlp.layers[-1].weight[0].zero_()
        model.field.mlp.layers[-1].bias[0] = -50.0
        model.field.blob_density = 0.0
    diffusion, scored = model.prior()[0], []
    sds = diffusion.sds

    def recording_sds(rgb, *args, **kwargs):  # the real score distillation, keeping the view it was given
        scored.append(rgb.detach().clone())
        return sds(rgb, *args, **kwargs)

    diffusion.sds = recording_sds
    ray_bundle, batch = pipeline.datamanager.next_train(0)
    losses = model.get_loss_dict(model(ray_bundle), batch)
    (view,) = scored
    directions = batch["prior_camera"].generate_rays(camera_indices=0, keep_shape=False).directions
    with torch.no_grad():
        network = model.field.background_rgb(directions).reshape(16, 16, 3).permute(2, 0, 1)[None]
    expected = torch.ones_like(view) if background == "white" else network
    assert torch.allclose(view, expected, atol=1e-5)
    assert (network - 1).abs().max() > 0.05  # the two backgrounds differ, so the test tells them apart
    sum(losses.values()).backward()
    untouched = all(p.grad is None for p in model.field.background.parameters())
    assert untouched == (background == "white")


@pytest.mark.parametrize(
    "shading, normals, silhouette",
    [
        ("albedo", "surface", False),
        ("albedo", "surface", True),
        ("textureless", "surface", False),
        ("lambertian", "surface", False),
        ("lambertian", "samples", False),
    ],
)
def test_two_pass_prior_view_gives_the_one_pass_gradients(
    tiny_sd, object_photo, tmp_path, shading, normals, silhouette
):
    """The prior view rendered without gradients, scored, then re-rendered in uneven chunks: every parameter's
    gradient (prior view and reference view together) equals the one-graph rendering's, in every shading,
    wherever the normals are taken, and with the pixel-space target's silhouette loss."""
    from types import SimpleNamespace

    pipeline = _small_pipeline(
        tiny_sd,
        object_photo,
        tmp_path,
        normals=normals,
        sds_pixel_space=silhouette,
        prior_silhouette_weight=1.0 if silhouette else 0.0,
    )
    model = pipeline.model
    model.sampler.eval()  # no jitter: both renderings place the same samples
    ray_bundle, batch = pipeline.datamanager.next_train(0)

    def gradients(chunk: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        model.config.prior_view_chunk = chunk
        model._rng = SimpleNamespace(choices=lambda *_: [shading])  # the model's draw of a shading, made for it
        torch.manual_seed(2)  # the same light, timestep and noise
        model.zero_grad(set_to_none=True)
        losses = model.get_loss_dict(model(ray_bundle), batch)
        sum(losses.values()).backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        return grads, {name: value.item() for name, value in losses.items()}

    one_pass, one_pass_losses = gradients(0)
    two_pass, two_pass_losses = gradients(100)  # 256 rays: chunks of 100, 100 and 56
    assert "sds_loss" in one_pass_losses and one_pass_losses == pytest.approx(two_pass_losses, rel=1e-5)
    assert ("prior_silhouette_loss" in one_pass_losses) == silhouette
    assert one_pass.keys() == two_pass.keys() and any(name.startswith("field.encoding") for name in one_pass)
    # Equal up to float32 rounding, which batch sizes change: 1e-6 relative for albedo. Shaded views go through
    # finite-difference normals, normalised even where the density is nearly flat (empty space) and passed
    # through the ReLU of the Lambertian term, so rounding moves their gradients by up to 0.3% in either
    # rendering (two chunkings of the same view differ from each other as much); dropping a chunk moves them
    # by tens of percent.
    tolerance = 1e-4 if shading == "albedo" else 1e-2
    for name, grad in one_pass.items():
        assert (two_pass[name] - grad).norm() <= tolerance * grad.norm() + 1e-12, name


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["False", "True"])
def test_ns_train_realfusion_end_to_end_and_export(ns_train, tiny_sd, object_photo, tmp_path, precision):
    """No embedding given: textual inversion runs first; then training, then `onelook export`; with the
    diffusion model in fp32 and in fp16 (as on a GPU)."""
    from onelook.cli import main
    from onelook.runs import load_run_config

    result = ns_train.train(
        "realfusion",
        object_photo,
        tmp_path / "runs",
        *("--pipeline.model.sd-model", str(tiny_sd), "--pipeline.model.inversion-steps", "3"),
        *("--pipeline.model.half-precision", precision, *TINY),
        *("onelook-image", "--cache-dir", str(tmp_path / "cache")),  # the dataparser's options follow its name
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((tmp_path / "cache").rglob("embedding.safetensors"))
    run = next((tmp_path / "runs").rglob("config.yml")).parent
    assert load_run_config(run / "config.yml").method_name == "realfusion"  # onelook's safe loader reads it
    out = tmp_path / "export"
    assert main(["export", str(run), "--out", str(out), "--frames", "4", "--mesh-resolution", "32"]) == 0
    for name in ("mesh.glb", "mesh.obj", "mesh.ply", "turntable.mp4", "depth.png", "normals.png", "view.png"):
        assert (out / name).stat().st_size > 0, name
    import trimesh

    assert len(trimesh.load(out / "mesh.ply", force="mesh").faces) > 50
    if precision == "False":
        check_a_tiny_cuda_nn_run_is_refused_clearly(run, tmp_path)


def check_a_tiny_cuda_nn_run_is_refused_clearly(run: Path, tmp_path: Path) -> None:
    """The same run as a GPU with tiny-cuda-nn writes it (its hash grid under `tcnn_encoding.params`, flat):
    without tiny-cuda-nn it is refused, naming the cause and the way out."""
    import shutil

    from nerfstudio.utils.external import TCNN_EXISTS

    from onelook.realfusion.result import RealFusionResult

    if TCNN_EXISTS:
        pytest.skip("tiny-cuda-nn is installed: such a run loads")
    gpu_run = tmp_path / "gpu-run"
    shutil.copytree(run, gpu_run)
    checkpoint = next(gpu_run.rglob("step-*.ckpt"))
    saved = torch.load(checkpoint, weights_only=False)  # our own test file
    table = saved["pipeline"].pop("_model.field.encoding.hash_table")
    saved["pipeline"]["_model.field.encoding.tcnn_encoding.params"] = table.flatten()
    torch.save(saved, checkpoint)
    with pytest.raises(ValueError, match="trained with tiny-cuda-nn's hash grid, which is not installed here"):
        RealFusionResult.from_run(gpu_run, device="cpu")


def test_missing_weights_fail_before_anything_is_written(ns_train, object_photo, tmp_path):
    result = ns_train.train("realfusion", object_photo, tmp_path / "runs", env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode != 0
    assert "--pipeline.model.sd-model SD_FOLDER" in result.stderr + result.stdout
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("content", [b"", b"\x80\x04K\x01.", b"not safetensors at all, a text file"])
def test_an_embedding_that_is_not_safetensors_is_named(tmp_path, content):
    from onelook.guidance.textual_inversion import LearnedToken

    (tmp_path / "word.safetensors").write_bytes(content)  # the second one is a pickle: never unpickled
    with pytest.raises(ValueError, match="word.safetensors is not a safetensors file"):
        LearnedToken.load(tmp_path / "word.safetensors")


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(PriorUnavailableError, match="folder not found"):
        StableDiffusionPrior.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PriorUnavailableError, match="no unet"):
        StableDiffusionPrior.load(tmp_path / "empty")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: Image.new("RGB", (128, 128), (200, 30, 30)).save(p), "single flat colour"),
        (lambda p: Image.new("RGB", (12, 12), (200, 30, 30)).save(p), "too small"),
        (lambda p: p.write_bytes(b"<html>not an image</html>"), "not an image"),
    ],
)
def test_bad_photos_fail_clearly(tmp_path, make, message):
    path = tmp_path / "photo.png"
    make(path)
    with pytest.raises(ImageError, match=message):
        prepare_object_image(path)


def test_alpha_mask_is_used_and_object_centred(object_photo):
    prepared = prepare_object_image(object_photo, size=64, object_fraction=0.75)
    assert prepared.mask_source == "alpha"
    ys, xs = np.nonzero(prepared.mask)
    assert abs(xs.mean() - 32) < 2 and abs(ys.mean() - 32) < 2
    assert (xs.max() - xs.min() + 1) == pytest.approx(48, abs=2)  # 75% of the side


def test_grabcut_finds_an_object_on_a_plain_background():
    from skimage import data

    rgb = np.full((120, 160, 3), 235, np.uint8)
    cup = np.asarray(Image.fromarray(data.coffee()).resize((80, 60)))
    rgb[30:90, 40:120] = cup
    prepared = prepare_object_image(rgb, size=64)
    assert prepared.mask_source == "grabcut"
    assert 0.2 < prepared.mask.mean() < 0.7


def test_prior_views_cover_the_upper_hemisphere_with_matching_prompts():
    from onelook.data.prior_views import sample_prior_camera, view_label

    assert [view_label(10, 0), view_label(90, 0), view_label(90, 180), view_label(90, -90), view_label(170, 0)] == [
        "overhead", "front", "back", "side", "bottom",
    ]  # fmt: skip
    rng = np.random.default_rng(0)
    for _ in range(50):
        camera, label = sample_prior_camera(rng, 16)
        position = camera.camera_to_worlds[0, :, 3].numpy()
        assert 1.0 <= np.linalg.norm(position) <= 1.5
        polar = np.degrees(np.arccos(position[2] / np.linalg.norm(position)))
        assert polar <= 120.0 + 1e-4
        azimuth = np.degrees(np.arctan2(position[0], -position[1]))
        assert label == view_label(polar, azimuth)
        # The camera looks at the object's centre.
        forward = -camera.camera_to_worlds[0, :, 2].numpy()
        np.testing.assert_allclose(forward, -position / np.linalg.norm(position), atol=1e-5)
