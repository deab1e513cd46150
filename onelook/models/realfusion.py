"""RealFusion as a nerfstudio model: a hash-grid NeRF fitted to one photo and pushed by score distillation.

Each training step:
- reference view: rays of the photo from its own camera; RGB loss on the foreground, mask loss on opacity;
- prior view: a whole image from a random camera (batch["prior_camera"]), shaded (albedo, textureless or
  Lambertian), composited on the background network (or white), scored by Stable Diffusion (SDS) with the
  view-dependent prompt "a high-resolution DSLR image of a <token>, <view> view"; regularised by normal
  smoothness (rendered normals against their blurred copy), orientation and opacity entropy.
The diffusion model is loaded on the first training step (never to export or render a run), and the learned
token comes from `embedding`, or from textual inversion on the photo when none is given.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from nerfstudio.cameras.rays import RayBundle, RaySamples
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.model_components.losses import orientation_loss
from nerfstudio.model_components.renderers import AccumulationRenderer, DepthRenderer
from nerfstudio.models.base_model import Model, ModelConfig
from nerfstudio.utils import colormaps
from PIL import Image
from torch import Tensor
from torchmetrics.functional import peak_signal_noise_ratio
from torchvision.transforms.functional import gaussian_blur

from onelook.data.prior_views import VIEW_LABELS
from onelook.fields.realfusion_field import RealFusionField
from onelook.guidance.prior import DiffusionPrior
from onelook.guidance.stable_diffusion import DEFAULT_SD_MODEL
from onelook.model_components.losses import mask_loss, silhouette_loss
from onelook.model_components.sampling import SphereSampler

SHADINGS = ("albedo", "textureless", "lambertian")


@dataclass
class RealFusionModelConfig(ModelConfig):
    _target: type = field(default_factory=lambda: RealFusionModel)
    enable_collider: bool = False
    """Off: the model cuts rays to its own scene sphere."""
    sd_model: str = DEFAULT_SD_MODEL
    """Stable Diffusion: a hub id (needs the internet or a filled cache) or a local folder."""
    embedding: Path | None = None
    """Learned token (`onelook invert` output, safetensors). None: textual inversion runs first."""
    class_word: str | None = None
    """Prompt with this plain word (e.g. "mug") instead of a word learned from the photo: no textual inversion
    (the paper's ablation)."""
    inversion_steps: int = 3000
    """Textual inversion steps when no `embedding` is given."""
    inversion_accumulation: int = 4
    """Images averaged per textual-inversion step (the released code: batch 1 x 4 accumulated)."""
    prompt: str = "a high-resolution DSLR image of a {token}"
    """The prior's prompt; ", <front|side|back|overhead|bottom> view" is appended per random view."""
    guidance_scale: float = 100.0
    """Classifier-free guidance scale of score distillation (DreamFusion and RealFusion: 100)."""
    t_range: tuple[float, float] = (0.02, 0.98)
    """Range of diffusion timesteps (fractions of the schedule) score distillation draws from."""
    sds_pixel_space: bool = False
    """Score distillation's target decoded and compared pixel for pixel (no gradient through the VAE's
    encoder) instead of in latent space (DreamFusion and RealFusion)."""
    prior_silhouette_weight: float = 0.0
    """Pixel space only: weight of the random view's opacity against the silhouette of the decoded target (where
    it differs from its own border's colour; scaled by w(t), as the pull). Colour alone leaves a pale haze that
    looks like the background; the prior's opaque targets clear it. Not in the paper (0: off)."""
    prior_view_background: Literal["network", "white"] = "network"
    """What the random views are composited on: the background network (the released code), or white, for a
    prior that only ever saw objects on white (as `onelook train-prior`'s): on the network's colour, which only
    score distillation trains, its targets are noise."""
    half_precision: bool | None = None
    """Stable Diffusion in fp16; default: on CUDA only."""
    attention_slicing: bool = True
    """Compute the UNet's attention in slices (less memory, slightly slower)."""
    vae_tiling: bool = False
    """Encode large images with the VAE tile by tile (less memory)."""
    # field
    implementation: str = "tcnn"
    """Hash grid: tiny-cuda-nn when installed (falls back to PyTorch), or "torch"."""
    num_levels: int = 16
    """Hash-grid levels."""
    log2_hashmap_size: int = 16
    """log2 of the hash table size per level."""
    max_res: int = 1024
    """Resolution of the finest hash-grid level."""
    hidden_dim: int = 64
    """Width of the MLPs after the hash grid."""
    density_bias: float = 0.0
    """Added to the field's log-density away from the central blob (it fades out towards the blob's centre, so
    the blob keeps its peak). At 0 (the released code) the untrained field is a fog of density about 1 (a chord
    0.6 from the scene's centre 80-85% opaque) that only the losses clear; -3 starts the scene nearly empty
    (that chord 8-9% opaque) but for the central blob."""
    # sampling
    num_coarse_samples: int = 64
    """Uniform samples per ray in the scene sphere (they only place the fine samples)."""
    num_fine_samples: int = 64
    """Importance samples per ray, drawn from the coarse pass's weights."""
    normals: Literal["surface", "samples"] = "surface"
    """Where the prior view's normals (shading and the normal regularisers) are taken: "surface", once per ray
    at its expected surface point (deferred shading: 6 extra density queries per ray); "samples", at every
    sample and composited, as the released code does (6 extra queries per sample: 3-4x the work on a CPU)."""
    prior_view_chunk: int = 1024
    """Rays per chunk when the prior view is rendered in two passes: once without gradients (scored by the
    prior and the regularisers), then again chunk by chunk, each chunk back-propagating its share of the
    image's gradient, so memory is that of one chunk. A view of at most this many rays, or 0: one pass, the
    whole view in one autograd graph."""
    # losses (weights as in the released code)
    rgb_loss_weight: float = 5.0
    """Weight of the reference view's colour loss (on the foreground)."""
    mask_loss_weight: float = 0.5
    """Weight of the reference view's mask loss (opacity against the mask)."""
    sds_loss_weight: float = 1.0
    """Weight of score distillation on the random views (0: the reference view alone)."""
    normal_smoothness_weight: float = 0.5
    """Weight of the normal-smoothness loss (rendered normals against their blurred copy)."""
    orientation_weight: float = 1e-2
    """Weight of the orientation loss (normals facing away from the camera where there is density)."""
    entropy_weight: float = 1e-4
    """Weight of the opacity-entropy loss (opacity pushed to 0 or 1)."""
    # schedules
    coarse_to_fine_step: int = 3000
    """Until this step only the coarser half of the hash-grid levels is used."""
    albedo_steps: int = 1000
    """Shading is plain albedo until this step; after it 20% albedo, 40% textureless, 40% Lambertian."""
    ambient: float = 0.1
    """Ambient light of the Lambertian and textureless shadings."""


class RealFusionModel(Model):
    config: RealFusionModelConfig

    def populate_modules(self) -> None:
        super().populate_modules()
        cfg = self.config
        if cfg.prior_silhouette_weight > 0 and not cfg.sds_pixel_space:
            raise ValueError(
                "prior_silhouette_weight needs sds_pixel_space: the silhouette is read from the decoded target"
            )
        self.scene_radius = float(self.scene_box.aabb.abs().max())
        self.register_buffer("scene_radius_buffer", torch.tensor(self.scene_radius))
        self.field = RealFusionField(
            bound=self.scene_radius,
            num_levels=cfg.num_levels,
            log2_hashmap_size=cfg.log2_hashmap_size,
            max_res=cfg.max_res,
            hidden_dim=cfg.hidden_dim,
            density_bias=cfg.density_bias,
            implementation=cfg.implementation,
        )
        self.field.set_active_levels(cfg.num_levels // 2 if cfg.coarse_to_fine_step > 0 else cfg.num_levels)
        self.sampler = SphereSampler(self.scene_radius, cfg.num_coarse_samples, cfg.num_fine_samples)
        self.renderer_accumulation = AccumulationRenderer()
        self.renderer_depth = DepthRenderer(method="expected")
        self.step = 0
        self._prior = None  # loaded on the first training step
        self._diffusion_model = None  # a prior handed over by `use_prior`
        self._rng = random.Random(0)

    @staticmethod
    def num_train_data_from_state(state: dict) -> int:
        return 1

    @staticmethod
    def metadata_from_state(state: dict) -> dict:
        return {}

    def get_param_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        return {
            "grid": list(self.field.encoding.parameters()),
            "mlp": [p for name, p in self.field.named_parameters() if not name.startswith("encoding.")],
        }

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes):
        def schedule(step: int) -> None:
            self.step = step
            fine = step >= self.config.coarse_to_fine_step
            self.field.set_active_levels(self.config.num_levels if fine else self.config.num_levels // 2)

        return [TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], schedule)]

    # --- rendering --------------------------------------------------------------------------------------

    def place_samples(self, ray_bundle: RayBundle) -> RaySamples:
        """Uniform samples in the scene sphere, then importance samples where their weights are (no gradient
        reaches the placement)."""
        return self.sampler(ray_bundle, lambda samples: self.field.get_density(samples)[0])

    def render_samples(
        self, samples: RaySamples, shading: str = "albedo", normals: bool = False, light: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Foreground colour (premultiplied), opacity, depth and, when asked, normals (premultiplied by opacity)
        and each ray's orientation-loss term. Shading other than albedo needs normals and a `light` direction
        (3,); where the normals are taken is the config's `normals`."""
        density, albedo_logits = self.field.get_density(samples)
        weights = samples.get_weights(density)
        albedo = torch.sigmoid(albedo_logits)
        accumulation = self.renderer_accumulation(weights)
        out = {"accumulation": accumulation, "depth": self.renderer_depth(weights, samples)}
        directions = samples.frustums.directions[..., 0, :]
        surface_shade = None  # deferred shading: one shade per ray, applied to the composited colour
        if normals or shading != "albedo":
            if self.config.normals == "samples":
                sample_normals = self.field.normals(samples.frustums.get_positions())
                out["normals"] = (weights * sample_normals).sum(dim=-2)
                out["orientation"] = orientation_loss(weights.detach(), sample_normals, directions)[..., None]
                if shading != "albedo":
                    shade = self._shade(sample_normals, light)
                    albedo = shade if shading == "textureless" else albedo * shade
            else:
                # Each ray's expected termination point; no gradient reaches its placement, the normal's finite
                # differences train the geometry there.
                with torch.no_grad():
                    positions = samples.frustums.get_positions()
                    surface = (weights * positions).sum(dim=-2) / accumulation.clamp(min=1e-6)
                surface_normals = self.field.normals(surface)
                out["normals"] = accumulation * surface_normals
                out["orientation"] = orientation_loss(
                    accumulation.detach()[..., None, :], surface_normals[..., None, :], directions
                )[..., None]
                if shading != "albedo":
                    surface_shade = self._shade(surface_normals, light)
        rgb = (weights * albedo).sum(dim=-2)
        if surface_shade is not None:
            rgb = accumulation * surface_shade if shading == "textureless" else rgb * surface_shade
        out["rgb"] = rgb
        return out

    def _shade(self, normals: Tensor, light: Tensor) -> Tensor:
        """Ambient plus Lambertian light from the direction `light` (3,)."""
        return self.config.ambient + (1 - self.config.ambient) * F.relu((normals * light).sum(-1, keepdim=True))

    def render_rays(self, ray_bundle: RayBundle) -> dict[str, Tensor]:
        """Albedo, opacity and depth of a bundle of rays."""
        return self.render_samples(self.place_samples(ray_bundle))

    def get_outputs(self, ray_bundle: RayBundle) -> dict[str, Tensor]:
        """Reference and evaluation rays: albedo on a white background."""
        out = self.render_rays(ray_bundle)
        out["rgb_foreground"] = out["rgb"]
        out["rgb"] = out["rgb"] + (1.0 - out["accumulation"])
        return out

    # --- the prior ----------------------------------------------------------------------------------------

    def use_prior(self, prior: DiffusionPrior) -> None:
        """Distil from `prior` instead of the configured Stable Diffusion (DeepFloyd IF, Zero123, an exact
        prior in tests: anything implementing `onelook.guidance.prior.DiffusionPrior`)."""
        self._diffusion_model, self._prior = prior, None

    def diffusion_model(self) -> DiffusionPrior:
        """The prior given to `use_prior`, else the configured Stable Diffusion, loaded once per process (shared
        by every model that asks for it)."""
        from onelook.guidance.stable_diffusion import shared_prior

        if self._diffusion_model is not None:
            return self._diffusion_model
        cfg = self.config
        return shared_prior(
            cfg.sd_model,
            self.device,
            half_precision=cfg.half_precision,
            attention_slicing=cfg.attention_slicing,
            vae_tiling=cfg.vae_tiling,
        )

    def reference_on_white(self) -> np.ndarray:
        """The photo's object on white at Stable Diffusion's resolution (what textual inversion learns from)."""
        return np.asarray(Image.open(self.kwargs["metadata"]["inversion_path"]).convert("RGB"))

    def prior(self):
        """The diffusion prior and the prompts' embeddings, loaded once (on this model's device). The object's
        word: `class_word`, else the learned token from `embedding`, else from textual inversion (saved beside
        the prepared photo)."""
        if self._prior is None:
            from onelook.guidance.textual_inversion import LearnedToken, invert

            cfg = self.config
            prior = self.diffusion_model()
            word = cfg.class_word
            if word is None:
                if cfg.embedding is not None:
                    learned = LearnedToken.load(cfg.embedding)
                else:
                    learned = invert(
                        prior,
                        self.reference_on_white(),
                        cfg.inversion_steps,
                        gradient_accumulation=cfg.inversion_accumulation,
                    )
                    learned.save(Path(self.kwargs["metadata"]["image_path"]).parent / "embedding.safetensors")
                prior.add_token(learned.token, learned.embedding)
                word = learned.token
            base = cfg.prompt.format(token=word)
            with torch.no_grad():
                text = prior.encode_prompts([f"{base}, {view} view" for view in VIEW_LABELS])
                uncond = prior.encode_prompts([""])
            self._prior = (prior, dict(zip(VIEW_LABELS, text.split(1), strict=True)), uncond)
        return self._prior

    # --- losses ---------------------------------------------------------------------------------------------

    def get_metrics_dict(self, outputs, batch) -> dict[str, Tensor]:
        image, mask = self._reference(batch)
        return {"psnr": peak_signal_noise_ratio(outputs["rgb"] * mask, image * mask, data_range=1.0)}

    def _reference(self, batch) -> tuple[Tensor, Tensor]:
        return batch["image"].to(self.device)[..., :3], batch["mask"].to(self.device).float()

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> dict[str, Tensor]:
        cfg = self.config
        image, mask = self._reference(batch)
        loss = {
            "rgb_loss": cfg.rgb_loss_weight * F.mse_loss(outputs["rgb"] * mask, image * mask),
            "mask_loss": cfg.mask_loss_weight * mask_loss(outputs["accumulation"], mask),
        }
        if not self.training or "prior_camera" not in batch or cfg.sds_loss_weight == 0:
            return loss
        camera = batch["prior_camera"]
        bundle = camera.generate_rays(camera_indices=0, keep_shape=False)
        shading = "albedo" if self.step < cfg.albedo_steps else self._rng.choices(SHADINGS, (0.2, 0.4, 0.4))[0]
        light = None
        if shading != "albedo":  # a point light near the camera
            light = F.normalize(bundle.origins[0] + torch.randn(3, device=bundle.origins.device), dim=-1)
        normals = cfg.normal_smoothness_weight > 0 or cfg.orientation_weight > 0

        def render(rays: RayBundle, samples: RaySamples) -> dict[str, Tensor]:
            out = self.render_samples(samples, shading, normals, light)
            if cfg.prior_view_background == "white":
                background = out["rgb"].new_ones(3)  # the textureless shading's rgb has one channel
            else:
                background = self.field.background_rgb(rays.directions)
            view = {"rgb": out["rgb"] + (1.0 - out["accumulation"]) * background, "accumulation": out["accumulation"]}
            view.update({key: out[key] for key in ("normals", "orientation") if key in out})
            return view

        def score(view: dict[str, Tensor]) -> dict[str, Tensor]:
            return self._prior_view_losses(view, int(camera.height[0, 0]), batch["prior_view"])

        if cfg.prior_view_chunk <= 0 or len(bundle) <= cfg.prior_view_chunk:  # one graph holds the whole view
            loss.update(score(render(bundle, self.place_samples(bundle))))
        else:
            loss.update(self._two_pass(bundle, render, score, cfg.prior_view_chunk))
        return loss

    def _prior_view_losses(self, view: dict[str, Tensor], size: int, view_label: str) -> dict[str, Tensor]:
        """Score distillation on the composited view and the regularisers on its normals and opacity."""
        cfg = self.config
        prior, texts, uncond = self.prior()
        image_chw = view["rgb"].reshape(size, size, 3).permute(2, 0, 1)[None]
        text = texts[view_label]
        sds = prior.sds(image_chw, text, uncond, cfg.guidance_scale, cfg.t_range, pixel_space=cfg.sds_pixel_space)
        loss = {"sds_loss": cfg.sds_loss_weight * sds.loss}
        if cfg.prior_silhouette_weight > 0:
            opacity = view["accumulation"].reshape(size, size, 1).permute(2, 0, 1)[None]
            opacity = F.interpolate(opacity, size=sds.target_rgb.shape[-2:], mode="bilinear", align_corners=False)
            loss["prior_silhouette_loss"] = (
                cfg.prior_silhouette_weight * sds.weight * silhouette_loss(opacity, sds.target_rgb)
            )
        if "normals" in view:
            normals = view["normals"].reshape(size, size, 3).permute(2, 0, 1)[None]
            blurred = gaussian_blur(normals, kernel_size=9).detach()
            loss["normal_smoothness_loss"] = cfg.normal_smoothness_weight * F.mse_loss(normals, blurred)
            loss["orientation_loss"] = cfg.orientation_weight * view["orientation"].mean()
        alpha = view["accumulation"].clamp(1e-5, 1 - 1e-5)
        entropy = -(alpha * alpha.log() + (1 - alpha) * (1 - alpha).log()).mean()
        loss["entropy_loss"] = cfg.entropy_weight * entropy
        return loss

    def _two_pass(
        self,
        bundle: RayBundle,
        render: Callable[[RayBundle, RaySamples], dict[str, Tensor]],
        score: Callable[[dict[str, Tensor]], dict[str, Tensor]],
        chunk: int,
    ) -> dict[str, Tensor]:
        """Renders the view without gradients, scores it, then re-renders it chunk by chunk (at the same
        samples) and back-propagates each chunk's share of the image's gradient into the field at once.
        The gradients equal one pass's; the losses come back detached (their gradients are already in the
        parameters), so the trainer's backward on the loss sum adds only the reference view's."""
        parts = [bundle[start : start + chunk] for start in range(0, len(bundle), chunk)]
        with torch.no_grad():
            samples = [self.place_samples(part) for part in parts]
            rendered = [render(part, part_samples) for part, part_samples in zip(parts, samples, strict=True)]
        view = {key: torch.cat([r[key] for r in rendered]).requires_grad_() for key in rendered[0]}
        del rendered
        losses = score(view)
        image_grads = torch.autograd.grad(sum(losses.values()), list(view.values()), allow_unused=True)
        grads = dict(zip(view, image_grads, strict=True))
        start = 0
        for part, part_samples in zip(parts, samples, strict=True):
            out = render(part, part_samples)
            used = [(out[key], grad[start : start + len(part)]) for key, grad in grads.items() if grad is not None]
            torch.autograd.backward([o for o, _ in used], [g for _, g in used])
            start += len(part)
        return {name: value.detach() for name, value in losses.items()}

    def get_image_metrics_and_images(self, outputs, batch) -> tuple[dict[str, float], dict[str, Tensor]]:
        image, mask = self._reference(batch)
        metrics = {"psnr": float(peak_signal_noise_ratio(outputs["rgb"] * mask, image * mask, data_range=1.0))}
        images = {
            "img": torch.cat([image, outputs["rgb"]], dim=1),
            "accumulation": colormaps.apply_colormap(outputs["accumulation"]),
            "depth": colormaps.apply_depth_colormap(outputs["depth"], accumulation=outputs["accumulation"]),
        }
        return metrics, images
