"""RealFusion in-process (the demo app, benchmarks): the `ns-train realfusion` configuration, trained by a
plain loop that reports progress and can be stopped between steps."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from nerfstudio.engine.callbacks import TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.engine.optimizers import Optimizers
from nerfstudio.engine.trainer import TrainerConfig

from onelook.data.image_dataparser import write_prepared_object
from onelook.data.object_image import ObjectImage
from onelook.device import resolve_device
from onelook.guidance.prior import DiffusionPrior
from onelook.guidance.prior_settings import PriorSettings, read_prior_settings
from onelook.guidance.textual_inversion import invert_steps
from onelook.realfusion.result import RealFusionResult


@dataclass
class Quality:
    """Sizes of one RealFusion run."""

    iterations: int
    inversion_steps: int
    image_size: int  # reference crop
    prior_view_size: int  # random views rendered for the prior
    samples: int  # coarse and again fine samples per ray
    rays: int  # reference rays per step
    mesh_resolution: int
    inversion_accumulation: int = 4  # images averaged per textual-inversion step


# "preview" shows the whole flow in seconds; "quick" fits a CPU demo; "standard" and "high" are GPU-sized (the
# released code: 5000 iterations, 96 px views).
QUALITY = {
    "preview": Quality(10, 5, 32, 16, 16, 256, 32, inversion_accumulation=1),
    "quick": Quality(300, 100, 64, 32, 24, 1024, 64, inversion_accumulation=1),
    "standard": Quality(2000, 1000, 128, 64, 48, 4096, 128),
    "high": Quality(5000, 3000, 128, 96, 64, 4096, 256),
}


@dataclass
class TrainingUpdate:
    """Where a RealFusion run is: its stage, the step within it, and (when done) the result."""

    stage: str
    step: int
    total: int
    result: RealFusionResult | None = None


def train_realfusion(
    image: Path | ObjectImage,
    out: Path,
    quality: Quality,
    sd_model: str,
    embedding: Path | None = None,
    object_fraction: float = 0.75,
    seed: int = 0,
    device: str | None = None,
    report_every: int = 1,
    prior: DiffusionPrior | None = None,
    model_options: dict[str, Any] | None = None,
    datamanager_options: dict[str, Any] | None = None,
) -> Iterator[TrainingUpdate]:
    """Trains on one photo (a file, or an `ObjectImage` already prepared at `quality.image_size`); yields
    progress at every textual-inversion step and every `report_every` training steps and, last, the result.
    `prior` replaces `sd_model` (any `DiffusionPrior`). `model_options` and `datamanager_options` set fields
    of `ns-train realfusion`'s model and datamanager configs by name, after the quality's and the settings
    `sd_model`'s folder recommends (`onelook.guidance.prior_settings`) (e.g. `{"class_word": "mug"}`,
    `{"sds_loss_weight": 0.0}`: the reference view alone, with no prior loaded).

    Stopping the iteration stops the work. `out` receives the prepared crop, mask and learned embedding.
    """
    device = resolve_device(device)
    torch.manual_seed(seed)
    config = realfusion_config(
        image,
        out,
        quality,
        sd_model,
        embedding=embedding,
        object_fraction=object_fraction,
        seed=seed,
        device=device,
        prior=prior,
        model_options=model_options,
        datamanager_options=datamanager_options,
    )
    model, datamanager = config.pipeline.model, config.pipeline.datamanager

    yield TrainingUpdate("preparing", 0, quality.iterations)
    pipeline = config.pipeline.setup(device=device, test_mode="val")
    if prior is not None:
        pipeline.model.use_prior(prior)
    if model.sds_loss_weight > 0:  # the reference view alone needs no prior
        yield from _prepare_prior(pipeline.model, quality, seed, Path(out))
    optimizers = Optimizers(config.optimizers, pipeline.get_param_groups())
    callbacks = pipeline.get_training_callbacks(
        TrainingCallbackAttributes(optimizers=optimizers, grad_scaler=None, pipeline=pipeline, trainer=None)
    )
    pipeline.train()
    for step in range(quality.iterations):
        for callback in callbacks:
            callback.run_callback_at_location(step, TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
        optimizers.zero_grad_all()  # before the losses: the prior view back-propagates while they are computed
        _, loss_dict, _ = pipeline.get_train_loss_dict(step)
        sum(loss_dict.values()).backward()
        optimizers.optimizer_step_all()
        optimizers.scheduler_step_all(step)
        if step % report_every == 0:
            yield TrainingUpdate("training", step, quality.iterations)
    result = RealFusionResult.from_model(pipeline.model, datamanager.dataparser)
    yield TrainingUpdate("done", quality.iterations, quality.iterations, result)


def realfusion_config(
    image: Path | ObjectImage,
    out: Path,
    quality: Quality,
    sd_model: str,
    *,
    embedding: Path | None = None,
    object_fraction: float = 0.75,
    seed: int = 0,
    device: str = "cpu",
    prior: DiffusionPrior | None = None,
    model_options: dict[str, Any] | None = None,
    datamanager_options: dict[str, Any] | None = None,
) -> TrainerConfig:
    """`ns-train realfusion`'s config for `train_realfusion`'s arguments: the quality's sizes, then the settings
    `sd_model`'s folder recommends (unless `prior` stands in for it), then the caller's options."""
    from onelook.configs import realfusion_method

    config = copy.deepcopy(realfusion_method.config)
    config.machine.device_type = "cuda" if device.startswith("cuda") else "cpu"
    datamanager = config.pipeline.datamanager
    if isinstance(image, ObjectImage):
        datamanager.data, datamanager.dataparser.prepared = write_prepared_object(image, Path(out) / "object"), True
    else:
        datamanager.data = Path(image)
    datamanager.dataparser.image_size = quality.image_size
    datamanager.dataparser.object_fraction = object_fraction
    datamanager.dataparser.cache_dir = Path(out)
    datamanager.prior_view_size = quality.prior_view_size
    datamanager.train_num_rays_per_batch = quality.rays
    datamanager.seed = seed
    model = config.pipeline.model
    model.sd_model, model.embedding, model.inversion_steps = sd_model, embedding, quality.inversion_steps
    model.inversion_accumulation = quality.inversion_accumulation
    model.num_coarse_samples = model.num_fine_samples = quality.samples
    model.albedo_steps = min(model.albedo_steps, quality.iterations // 5)
    model.coarse_to_fine_step = min(model.coarse_to_fine_step, quality.iterations // 2)
    if device == "cpu":
        model.implementation = "torch"
    # The prior folder's own settings (a prior trained here is not distilled as SD 1.5 is), then the caller's.
    recommended = read_prior_settings(sd_model) if prior is None else PriorSettings()
    for target, defaults, options in (
        (model, recommended.model, model_options),
        (datamanager, recommended.datamanager, datamanager_options),
    ):
        for source in (defaults, options or {}):
            check_options(target, source)
            for name, value in source.items():
                setattr(target, name, value)
    return config


def check_options(config: object, options: dict[str, Any]) -> None:
    """Refuses, naming them all, the `options` that `config` (a config or its class) has no field for."""
    unknown = sorted(name for name in options if not hasattr(config, name))
    if unknown:
        kind = config if isinstance(config, type) else type(config)
        raise ValueError(f"{kind.__name__} has no options {unknown}")


def _prepare_prior(model, quality: Quality, seed: int, out: Path) -> Iterator[TrainingUpdate]:
    """Loads the prior and the prompts; learns the object's word first (reporting every step) unless the
    config gives an embedding or a class word."""
    yield TrainingUpdate("loading the diffusion model", 0, quality.iterations)
    if model.config.embedding is None and model.config.class_word is None:
        for step, learned in invert_steps(
            model.diffusion_model(),
            model.reference_on_white(),
            quality.inversion_steps,
            gradient_accumulation=quality.inversion_accumulation,
            seed=seed,
            show_progress=False,
        ):
            if learned is None:
                yield TrainingUpdate("learning the object's word (textual inversion)", step, quality.inversion_steps)
            else:
                model.config.embedding = learned.save(out / "embedding.safetensors")
    model.prior()
