"""LOLNeRF as a nerfstudio model: GLO latents + a latent-conditioned NeRF, split into foreground and background.

Per ray: the latent of its image (camera metadata `latent_idx`), or an explicit `latent` in the ray bundle's
metadata (fitting a new photo), or for the viewer's cameras the one its controls choose (`ViewerLatent`);
foreground samples inside the scene sphere, coarse then importance (PDF) samples evaluated by one foreground
field; background samples in a shell behind the sphere, evaluated by a smaller background field;
colour = foreground + (1 - foreground opacity) * background.
Losses: RGB, mask on the foreground opacity, hard surface on the foreground weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.model_components.ray_samplers import UniformSampler
from nerfstudio.model_components.renderers import AccumulationRenderer, DepthRenderer, RGBRenderer
from nerfstudio.models.base_model import Model, ModelConfig
from nerfstudio.utils import colormaps
from torch import Tensor
from torchmetrics.functional import peak_signal_noise_ratio, structural_similarity_index_measure

from onelook.data.crop import DEFAULT_CROP_SCALE
from onelook.field_components.latent_table import LatentTable
from onelook.fields.lolnerf_field import LOLNeRFField
from onelook.model_components.losses import hard_surface_loss, mask_loss
from onelook.model_components.sampling import SphereSampler, sphere_interval  # noqa: F401 - sphere_interval's old home
from onelook.model_components.viewer_latent import ViewerLatent


class CropSettings(NamedTuple):
    """The training photos' crop: the keypoints' spread times `scale` is the crop's side, which was resized to
    `size` pixels, where the camera's focal length was `focal` pixels."""

    scale: float
    focal: float
    size: int


@dataclass
class LOLNeRFModelConfig(ModelConfig):
    _target: type = field(default_factory=lambda: LOLNeRFModel)
    enable_collider: bool = False
    """Off: the model intersects rays with its own scene sphere."""
    latent_dim: int = 256
    """Size of each image's latent code (the paper leaves it open; 256 as suggested for faces)."""
    latent_init_std: float = 0.01
    """Standard deviation of the latent codes at the start (GLO: small, so that codes start near each other)."""
    num_layers: int = 8
    """Layers of the foreground MLP (the latent joins at the input and at the skip layer)."""
    width: int = 256
    """Width of the foreground MLP."""
    num_frequencies: int = 10
    """Positional-encoding frequencies of the 3D position."""
    background_layers: int = 4
    """Layers of the latent-conditioned background MLP."""
    background_width: int = 128
    """Width of the background MLP."""
    num_coarse_samples: int = 64
    """Uniform samples per ray in the foreground sphere (they only place the fine samples)."""
    num_fine_samples: int = 64
    """Importance samples per ray, drawn from the coarse pass's weights."""
    num_background_samples: int = 32
    """Samples per ray in the background shell."""
    background_depth: float = 2.0
    """Thickness of the background shell behind the foreground sphere."""
    mask_loss_weight: float = 1.0
    """Weight of the mask loss (foreground opacity against the segmentation mask)."""
    hard_surface_loss_weight: float = 0.1
    """Weight of the hard-surface loss on the foreground weights (pushes them to 0 or 1)."""
    hard_surface_start_step: int = 500
    """The hard-surface loss waits until a rough shape exists, else it can freeze an empty scene."""


class LOLNeRFModel(Model):
    config: LOLNeRFModelConfig

    def populate_modules(self) -> None:
        super().populate_modules()
        cfg = self.config
        # The foreground lives in the sphere inscribed in the scene box.
        self.scene_radius = float(self.scene_box.aabb.abs().max())
        metadata = self.kwargs.get("metadata", {})
        num_latents = int(metadata.get("num_latents", self.num_train_data))
        # What fitting a new photo needs, saved with the weights so that a run loads without its dataset.
        keypoints = torch.as_tensor(metadata.get("canonical_keypoints", torch.zeros(0, 3)), dtype=torch.float32)
        self.register_buffer("canonical_keypoints", keypoints.reshape(-1, 3))
        crop = [
            metadata.get("crop_scale", DEFAULT_CROP_SCALE),
            metadata.get("crop_focal", 0.0),
            metadata.get("crop_size", 0),
        ]
        self.register_buffer("crop_settings", torch.tensor(crop, dtype=torch.float32))  # scale, focal px, size px
        self.register_buffer("scene_radius_buffer", torch.tensor(self.scene_radius))
        self.latents = LatentTable(num_latents, cfg.latent_dim, cfg.latent_init_std)
        self.viewer_latent = ViewerLatent(num_latents)
        self.foreground = LOLNeRFField(
            cfg.latent_dim,
            cfg.num_layers,
            cfg.width,
            (cfg.num_layers // 2,),
            cfg.num_frequencies,
            self.scene_radius,
        )
        self.background = LOLNeRFField(
            cfg.latent_dim,
            cfg.background_layers,
            cfg.background_width,
            (),
            cfg.num_frequencies // 2,
            self.scene_radius + cfg.background_depth,
        )
        self.sampler = SphereSampler(self.scene_radius, cfg.num_coarse_samples, cfg.num_fine_samples)
        self.sampler_background = UniformSampler(num_samples=cfg.num_background_samples)
        self.renderer_rgb = RGBRenderer(background_color="black")  # black: what is left is composited below
        self.renderer_accumulation = AccumulationRenderer()
        self.renderer_depth = DepthRenderer(method="expected")
        self.step = 0

    @property
    def crop(self) -> CropSettings:
        """How the training photos were cropped (saved with the weights as the buffer `crop_settings`)."""
        scale, focal, size = self.crop_settings.tolist()
        return CropSettings(scale, focal, int(size))

    @staticmethod
    def num_train_data_from_state(state: dict) -> int:
        return state["latents.embedding.weight"].shape[0]

    @staticmethod
    def metadata_from_state(state: dict) -> dict:
        """The constructor's metadata, recovered from a checkpoint (see `onelook.runs.load_run`)."""
        scale, focal, size = state["crop_settings"].tolist()
        return {
            "num_latents": state["latents.embedding.weight"].shape[0],
            "canonical_keypoints": state["canonical_keypoints"],
            "crop_scale": scale,
            "crop_focal": focal,
            "crop_size": int(size),
        }

    def get_param_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        return {
            "fields": list(self.foreground.parameters()) + list(self.background.parameters()),
            "latents": list(self.latents.parameters()),
        }

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes):
        def set_step(step: int) -> None:
            self.step = step

        return [TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], set_step)]

    def latents_for(self, ray_bundle: RayBundle) -> Tensor:
        """Each ray's latent: explicit in metadata, else looked up by its image's latent index; rays of a camera
        that belongs to no image (the viewer's) take the latent the viewer's controls choose."""
        metadata = ray_bundle.metadata or {}
        if "latent" in metadata:
            return metadata["latent"]
        if "latent_idx" in metadata:
            return self.latents(metadata["latent_idx"])
        return self.viewer_latent.latent(self.latents).expand(len(ray_bundle), -1)

    def get_outputs(self, ray_bundle: RayBundle) -> dict[str, Tensor]:
        latent = self.latents_for(ray_bundle)
        ray_bundle.metadata = {**(ray_bundle.metadata or {}), "latent": latent}
        fine = self.sampler(ray_bundle, lambda samples: self.foreground.get_density(samples)[0])
        density, features = self.foreground.get_density(fine)
        weights = fine.get_weights(density)
        rgb_foreground = self.renderer_rgb(rgb=self.foreground.rgb_from(features), weights=weights)
        accumulation = self.renderer_accumulation(weights)

        shell = RayBundle(
            origins=ray_bundle.origins,
            directions=ray_bundle.directions,
            pixel_area=ray_bundle.pixel_area,
            camera_indices=ray_bundle.camera_indices,
            nears=ray_bundle.fars,
            fars=ray_bundle.fars + self.config.background_depth,
            metadata=ray_bundle.metadata,
        )
        back = self.sampler_background(shell)
        density_b, features_b = self.background.get_density(back)
        rgb_background = self.renderer_rgb(
            rgb=self.background.rgb_from(features_b), weights=back.get_weights(density_b)
        )
        return {
            "rgb": rgb_foreground + (1.0 - accumulation) * rgb_background,
            "rgb_foreground": rgb_foreground,
            "rgb_background": rgb_background,
            "accumulation": accumulation,
            "depth": self.renderer_depth(weights, fine),  # along the ray, normalised by the opacity
            "weights": weights,
        }

    def get_metrics_dict(self, outputs, batch) -> dict[str, Tensor]:
        image = batch["image"].to(self.device)[..., :3]
        return {"psnr": peak_signal_noise_ratio(outputs["rgb"], image, data_range=1.0)}

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> dict[str, Tensor]:
        cfg = self.config
        image = batch["image"].to(self.device)[..., :3]
        loss = {"rgb_loss": F.mse_loss(outputs["rgb"], image)}
        if "mask" in batch and cfg.mask_loss_weight > 0:
            loss["mask_loss"] = cfg.mask_loss_weight * mask_loss(outputs["accumulation"], batch["mask"].to(self.device))
        if self.training and self.step >= cfg.hard_surface_start_step and cfg.hard_surface_loss_weight > 0:
            loss["hard_surface_loss"] = cfg.hard_surface_loss_weight * hard_surface_loss(outputs["weights"])
        return loss

    def get_image_metrics_and_images(self, outputs, batch) -> tuple[dict[str, float], dict[str, Tensor]]:
        image = batch["image"].to(self.device)[..., :3]
        rgb = outputs["rgb"].clamp(0.0, 1.0)
        pred, gt = rgb.permute(2, 0, 1)[None], image.permute(2, 0, 1)[None]
        metrics = {
            "psnr": float(peak_signal_noise_ratio(pred, gt, data_range=1.0)),
            "ssim": float(structural_similarity_index_measure(pred, gt, data_range=1.0)),
        }
        images = {
            "img": torch.cat([image, rgb], dim=1),
            "accumulation": colormaps.apply_colormap(outputs["accumulation"]),
            "depth": colormaps.apply_depth_colormap(outputs["depth"], accumulation=outputs["accumulation"]),
        }
        return metrics, images
