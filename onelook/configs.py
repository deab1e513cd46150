"""nerfstudio method registrations (entry-point group `nerfstudio.method_configs`).

`ns-train lolnerf` is sized for a GPU and 128-256 px data; `ns-train lolnerf-small` trains a 64 px synthetic
category on two CPU cores in minutes (`--machine.device-type cpu`). Both take `--data` from `onelook prepare`.
"""

from __future__ import annotations

from dataclasses import dataclass

from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig
from nerfstudio.data.pixel_samplers import PixelSamplerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig
from nerfstudio.plugins.types import MethodSpecification

from onelook.data.dataparser import OnelookDataParserConfig
from onelook.data.image_dataparser import ObjectImageDataParserConfig
from onelook.data.prior_views import PriorViewDataManagerConfig
from onelook.models.lolnerf import LOLNeRFModelConfig
from onelook.models.realfusion import RealFusionModelConfig

# LOLNeRF's datasets (FFHQ: 70,000 photos) do not fit in memory as float images: see the datamanager below.
IMAGES_IN_MEMORY = 1000
IMAGE_SUBSET_STEPS = 250


def _adam(lr: float, decay_steps: int | None = None) -> dict:
    """Adam with nerfstudio's eps for NeRFs; with `decay_steps`, the rate decays exponentially to lr/10 over them."""
    scheduler = (
        None if decay_steps is None else ExponentialDecaySchedulerConfig(lr_final=lr / 10, max_steps=decay_steps)
    )
    return {"optimizer": AdamOptimizerConfig(lr=lr, eps=1e-15), "scheduler": scheduler}


def _lolnerf_trainer(
    method_name: str, model: LOLNeRFModelConfig, rays: int, iterations: int, field_lr: float, latent_lr: float
) -> TrainerConfig:
    return TrainerConfig(
        method_name=method_name,
        max_num_iterations=iterations,
        steps_per_eval_batch=500,
        steps_per_eval_image=2000,
        steps_per_eval_all_images=1_000_000,
        steps_per_save=2000,
        save_only_latest_checkpoint=True,
        mixed_precision=False,
        pipeline=VanillaPipelineConfig(
            datamanager=VanillaDataManagerConfig(
                dataparser=OnelookDataParserConfig(),
                train_num_rays_per_batch=rays,
                eval_num_rays_per_batch=rays,
                # Sample every pixel, not just the masked ones: the mask supervises the foreground opacity.
                pixel_sampler=PixelSamplerConfig(ignore_mask=True),
                # Memory flat in the number of photos: rays come from IMAGES_IN_MEMORY images at a time (all of
                # a smaller dataset), a new random subset every IMAGE_SUBSET_STEPS steps; evaluation rays (every
                # eighth photo) likewise from a tenth as many.
                train_num_images_to_sample_from=IMAGES_IN_MEMORY,
                train_num_times_to_repeat_images=IMAGE_SUBSET_STEPS,
                eval_num_images_to_sample_from=IMAGES_IN_MEMORY // 10,
                eval_num_times_to_repeat_images=10,
            ),
            model=model,
        ),
        optimizers={"fields": _adam(field_lr, iterations), "latents": _adam(latent_lr, iterations)},
        viewer=ViewerConfig(quit_on_train_completion=True),
        vis="tensorboard",
    )


lolnerf_method = MethodSpecification(
    config=_lolnerf_trainer(
        "lolnerf",
        LOLNeRFModelConfig(eval_num_rays_per_chunk=4096),
        rays=4096,
        iterations=200_000,
        field_lr=5e-4,
        latent_lr=1e-3,
    ),
    description="LOLNeRF: a category's 3D structure from single views (GLO latents + NeRF), GPU-sized.",
)

lolnerf_small_method = MethodSpecification(
    config=_lolnerf_trainer(
        "lolnerf-small",
        LOLNeRFModelConfig(
            latent_dim=64,
            num_layers=4,
            width=128,
            num_frequencies=6,
            background_layers=2,
            background_width=64,
            num_coarse_samples=24,
            num_fine_samples=24,
            num_background_samples=8,
            hard_surface_start_step=300,
            eval_num_rays_per_chunk=4096,
        ),
        rays=1024,
        iterations=7000,
        field_lr=1e-3,
        latent_lr=2e-3,
    ),
    description="LOLNeRF, small: sized for 64 px data on a CPU (--machine.device-type cpu).",
)


@dataclass
class RealFusionTrainerConfig(TrainerConfig):
    """Checks that the diffusion model can be loaded before ns-train writes anything."""

    def save_config(self) -> None:
        from onelook.guidance.stable_diffusion import check_available

        check_available(self.pipeline.model.sd_model)
        super().save_config()


realfusion_method = MethodSpecification(
    config=RealFusionTrainerConfig(
        method_name="realfusion",
        max_num_iterations=5000,
        steps_per_eval_batch=500,
        steps_per_eval_image=500,
        steps_per_eval_all_images=1_000_000,
        steps_per_save=1000,
        save_only_latest_checkpoint=True,
        # The diffusion model runs in its own precision, the hash grid in fp32; and the prior view back-propagates
        # while its losses are computed (two passes), where a gradient scaler would not scale it.
        mixed_precision=False,
        pipeline=VanillaPipelineConfig(
            datamanager=PriorViewDataManagerConfig(
                dataparser=ObjectImageDataParserConfig(),
                train_num_rays_per_batch=4096,
                eval_num_rays_per_batch=4096,
                pixel_sampler=PixelSamplerConfig(ignore_mask=True),
            ),
            model=RealFusionModelConfig(eval_num_rays_per_chunk=4096),
        ),
        optimizers={"grid": _adam(1e-2), "mlp": _adam(1e-3)},
        viewer=ViewerConfig(quit_on_train_completion=True),
        vis="tensorboard",
    ),
    description="RealFusion: 360-degree reconstruction of any object from one photo with a Stable Diffusion prior.",
)
