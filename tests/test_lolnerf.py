"""LOLNeRF's losses, latent routing and training steps, on a pipeline built directly (no ns-train start-up)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from onelook.model_components.losses import HARD_SURFACE_OFFSET, hard_surface_loss, mask_loss


def test_hard_surface_loss_values_and_gradients():
    w = torch.tensor([0.0, 0.5, 1.0], requires_grad=True)
    per_sample = [hard_surface_loss(w[i : i + 1]) for i in range(3)]
    assert per_sample[0].item() == pytest.approx(0.0, abs=1e-7)
    assert per_sample[2].item() == pytest.approx(0.0, abs=1e-7)
    assert per_sample[1].item() == pytest.approx(0.5 - math.log(2.0) + HARD_SURFACE_OFFSET, abs=1e-6)
    assert HARD_SURFACE_OFFSET == pytest.approx(0.31326165795326233)
    grads = [torch.autograd.grad(v, w)[0][i].item() for i, v in enumerate(per_sample)]
    # Minima at 0 and 1 (flat there, and the clamp holds weights inside [0, 1]); a maximum at 0.5.
    assert grads == pytest.approx([0.0, 0.0, 0.0], abs=1e-7)
    # Inside (0, 1) the gradient is (e^-w - e^-(1-w)) / (e^-w + e^-(1-w)): towards the nearer of 0 and 1.
    near = torch.tensor([0.01, 0.3, 0.7, 0.99], requires_grad=True)
    (grad,) = torch.autograd.grad(hard_surface_loss(near) * 4, near)
    a, b = torch.exp(-near.detach()), torch.exp(-(1 - near.detach()))
    torch.testing.assert_close(grad, (a - b) / (a + b))
    assert grad[0] > 0.45 and grad[3] < -0.45


def test_mask_loss():
    acc = torch.tensor([[0.0], [1.0], [0.5]])
    assert mask_loss(acc, torch.tensor([[False], [True], [True]])).item() == pytest.approx(0.25 / 3)


@pytest.fixture(scope="module")
def pipeline(synth_dataset):
    from onelook.configs import lolnerf_small_method

    config = copy.deepcopy(lolnerf_small_method.config)  # setup writes into configs: keep the registered one clean
    config.pipeline.datamanager.data = synth_dataset
    config.pipeline.datamanager.train_num_rays_per_batch = 256
    torch.manual_seed(0)
    return config.pipeline.setup(device="cpu", test_mode="val")


def test_latents_are_routed_per_image(pipeline):
    model = pipeline.model
    with torch.no_grad():
        model.latents.embedding.weight[3] += 1.0
    cameras = pipeline.datamanager.train_dataset.cameras
    bundle_a = cameras.generate_rays(camera_indices=3, keep_shape=False)
    bundle_b = cameras.generate_rays(camera_indices=4, keep_shape=False)
    assert torch.equal(model.latents_for(bundle_a)[0], model.latents.embedding.weight[3])
    assert torch.equal(model.latents_for(bundle_b)[0], model.latents.embedding.weight[4])
    # Evaluation cameras carry their training latent index; nerfstudio renders them as camera 0.
    eval_cameras = pipeline.datamanager.eval_dataset.cameras
    second = eval_cameras[1:2]
    bundle = second.generate_rays(camera_indices=0, keep_shape=False)
    expected = int(second.metadata["latent_idx"][0, 0])
    assert expected != 0
    assert torch.equal(model.latents_for(bundle)[0], model.latents.embedding.weight[expected])
    with torch.no_grad():
        model.latents.embedding.weight[3] -= 1.0


def test_training_steps_lower_the_loss(pipeline):
    model = pipeline.model
    groups = model.get_param_groups()
    assert set(groups) == {"fields", "latents"}
    optimizer = torch.optim.Adam([{"params": groups["fields"], "lr": 2e-3}, {"params": groups["latents"], "lr": 5e-3}])
    model.train()
    losses = []
    for step in range(40):
        _, loss_dict, _ = pipeline.get_train_loss_dict(step)
        loss = sum(loss_dict.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert {"rgb_loss", "mask_loss"} <= set(loss_dict)
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_evaluation_renders_whole_images(pipeline):
    model = pipeline.model
    model.eval()
    camera = pipeline.datamanager.eval_dataset.cameras[0:1]
    outputs = model.get_outputs_for_camera(camera)
    assert outputs["rgb"].shape == (64, 64, 3) and outputs["depth"].shape == (64, 64, 1)
    batch = pipeline.datamanager.eval_dataset[0]
    metrics, images = model.get_image_metrics_and_images(outputs, batch)
    assert set(metrics) == {"psnr", "ssim"} and math.isfinite(metrics["psnr"])
    assert images["img"].shape == (64, 128, 3)


def test_rays_come_from_a_rotating_subset_of_images_with_their_own_latents(synth_dataset):
    """At scale only `train_num_images_to_sample_from` images are held in memory, a new subset every
    `train_num_times_to_repeat_images` steps: every ray still carries its own image's pixels and latent."""
    from onelook.configs import lolnerf_small_method

    config = copy.deepcopy(lolnerf_small_method.config)
    datamanager_config = config.pipeline.datamanager
    assert datamanager_config.train_num_images_to_sample_from > 0 < datamanager_config.eval_num_images_to_sample_from
    config.pipeline.datamanager.data = synth_dataset
    config.pipeline.datamanager.train_num_rays_per_batch = 256
    config.pipeline.datamanager.train_num_images_to_sample_from = 8
    config.pipeline.datamanager.train_num_times_to_repeat_images = 3
    torch.manual_seed(0)
    pipeline = config.pipeline.setup(device="cpu", test_mode="val")
    datamanager, model = pipeline.datamanager, pipeline.model
    assert datamanager.train_image_dataloader.cached_collated_batch is None  # not every image is held
    dataset = datamanager.train_dataset
    with torch.no_grad():
        model.latents.embedding.weight.copy_(torch.arange(len(dataset), dtype=torch.float32)[:, None])
    subsets = []
    for step in range(9):
        bundle, batch = datamanager.next_train(step)
        images = batch["indices"][:, 0]
        assert len(images.unique()) <= 8
        subsets.append(frozenset(images.tolist()))
        # The ray's pixel is its image's, and its latent is its image's latent.
        for ray in range(0, len(images), 37):
            image, y, x = batch["indices"][ray].tolist()
            torch.testing.assert_close(batch["image"][ray, :3], dataset[image]["image"][y, x, :3])
        assert torch.equal(model.latents_for(bundle)[:, 0], bundle.camera_indices[:, 0].float())
    assert subsets[0] | subsets[1] | subsets[2] != subsets[3] | subsets[4] | subsets[5]  # a new subset
    assert len(frozenset().union(*subsets)) > 8


def test_the_viewer_shows_the_latent_its_controls_choose(pipeline):
    """Cameras of no training image (the viewer's) take the latent chosen in the viewer's panel, which
    nerfstudio's viewer finds on the pipeline."""
    from nerfstudio.cameras.cameras import Cameras
    from nerfstudio.viewer.utils import parse_object
    from nerfstudio.viewer.viewer_elements import ViewerElement

    model = pipeline.model
    names = {element.name for _, element in parse_object(pipeline, ViewerElement, "Custom Elements")}
    assert {"Latent", "Training image", "Truncation"} <= names
    training = pipeline.datamanager.train_dataset.cameras[5:6]
    viewer_camera = Cameras(
        camera_to_worlds=training.camera_to_worlds, fx=training.fx, fy=training.fy, cx=training.cx, cy=training.cy
    )
    bundle = viewer_camera.generate_rays(camera_indices=0, keep_shape=False)
    table, controls = model.latents.embedding.weight, model.viewer_latent
    mean = table.mean(dim=0)
    controls.image.value, controls.truncation.value = 7, 1.0
    torch.testing.assert_close(model.latents_for(bundle), table[7].expand(len(bundle), -1))
    controls.truncation.value = 0.5
    torch.testing.assert_close(model.latents_for(bundle)[0], mean + 0.5 * (table[7] - mean))
    controls.source.value = "mean"
    torch.testing.assert_close(model.latents_for(bundle)[0], mean)
    controls.source.value, controls.truncation.value, controls.image.value = "training image", 1.0, 0
    # A training image's own rays keep their own latent whatever the controls say.
    own = training.generate_rays(camera_indices=0, keep_shape=False)
    torch.testing.assert_close(model.latents_for(own)[0], table[5])
