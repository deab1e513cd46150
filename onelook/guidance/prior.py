"""The seam where a diffusion model plugs into RealFusion: `DiffusionPrior`, and score distillation over it.

RealFusion asks four things of its prior: prompt embeddings, latents of rendered images (differentiably),
the forward noising process, and a noise prediction for noisy latents at given timesteps and prompts.
Stable Diffusion (`onelook.guidance.stable_diffusion`) is one; DeepFloyd IF, Zero123 or a researcher's own
model plug in by subclassing this and handing the object to `RealFusionModel.use_prior` (or to
`train_realfusion(prior=...)`). Score distillation is written once, here, over these methods.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class SDSOutput:
    loss: Tensor  # its gradient with respect to the latents is w(t) (eps_pred - eps)
    timestep: int
    # pixel space only: the decoded target (B, 3, H, W) at the model's resolution, and the pull's weight w(t)
    target_rgb: Tensor | None = None
    weight: float | None = None


class DiffusionPrior(ABC):
    """A frozen denoising diffusion model RealFusion distils from (epsilon parametrisation, DDPM schedule)."""

    device: torch.device
    alphas_cumprod: Tensor  # (T,) float32 on `device`: the schedule's cumulative products of 1 - beta

    @abstractmethod
    def encode_prompts(self, prompts: list[str]) -> Tensor:
        """(P, ...) embeddings of the prompts; "" is the unconditional prompt of classifier-free guidance."""

    @abstractmethod
    def encode_images(self, rgb: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, C, h, w) latents; differentiable (score distillation reaches the
        rendered pixels through it)."""

    @abstractmethod
    def predict_noise(self, noisy: Tensor, timesteps: Tensor, text: Tensor) -> Tensor:
        """The model's estimate of the noise (epsilon) in `noisy` latents at `timesteps` (B,), for prompt
        embeddings `text` (B, ...)."""

    def add_token(self, token: str, embedding: Tensor | None = None, initializer: str | None = None) -> int:
        """Adds a learned word (textual inversion); priors without a vocabulary refuse."""
        raise TypeError(f"{type(self).__name__} has no vocabulary to add {token!r} to; prompt it with a class word")

    def add_noise(self, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """The forward process: sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) noise."""
        alpha_bar = self.alphas_cumprod[timesteps].view(-1, *([1] * (latents.dim() - 1))).to(latents)
        return alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise

    def decode_latents(self, latents: Tensor) -> Tensor:
        """(B, C, h, w) latents -> (B, 3, H, W) images in [0, 1] at the model's resolution (a pixel-space
        target for score distillation); priors without a decoder refuse."""
        raise TypeError(f"{type(self).__name__} cannot decode latents to pixels")

    def sds(
        self,
        rgb: Tensor,
        text: Tensor,
        uncond: Tensor,
        guidance_scale: float = 100.0,
        t_range: tuple[float, float] = (0.02, 0.98),
        generator: torch.Generator | None = None,
        pixel_space: bool = False,
    ) -> SDSOutput:
        """Score distillation on rendered images (B, 3, H, W) in [0, 1]. In latent space (the default, as
        DreamFusion and RealFusion) the gradient reaches the pixels through `encode_images`' Jacobian. With
        `pixel_space` the denoised target is decoded and the images are pulled towards it, pixel for pixel, at
        the model's resolution, with the same weight w(t): no gradient passes through the encoder, whose
        Jacobian can steer the pixels where the decoder does not (a small VAE's does: measured in the README's
        "RealFusion, proven on this machine"). The other arguments are `sds_on_latents`'."""
        if not pixel_space:
            return self.sds_on_latents(
                self.encode_images(rgb).float(), text, uncond, guidance_scale, t_range, generator
            )
        with torch.no_grad():
            latents = self.encode_images(rgb).float()
            target, weight, t = self.denoised_target(latents, text, uncond, guidance_scale, t_range, generator)
            target_rgb = self.decode_latents(target).float()
        resized = F.interpolate(rgb, size=target_rgb.shape[-2:], mode="bilinear", align_corners=False)
        pull = self._pull(resized, weight * (resized.detach() - target_rgb), t)
        return replace(pull, target_rgb=target_rgb, weight=float(weight.mean()))

    def sds_on_latents(
        self,
        latents: Tensor,
        text: Tensor,
        uncond: Tensor,
        guidance_scale: float = 100.0,
        t_range: tuple[float, float] = (0.02, 0.98),
        generator: torch.Generator | None = None,
    ) -> SDSOutput:
        """Score distillation (DreamFusion): a loss whose gradient on the latents is w(t) (eps_hat - eps) / B,
        with eps_hat the classifier-free-guided noise prediction uncond + s (cond - uncond) at a timestep t
        drawn uniformly from `t_range`, and w(t) = 1 - alpha_bar(t). Draws t, then eps, from `generator`."""
        with torch.no_grad():
            target, weight, t = self.denoised_target(latents.detach(), text, uncond, guidance_scale, t_range, generator)
        return self._pull(latents, weight * (latents.detach() - target), t)

    def denoised_target(
        self,
        latents: Tensor,
        text: Tensor,
        uncond: Tensor,
        guidance_scale: float,
        t_range: tuple[float, float],
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, int]:
        """Score distillation as a pull towards a denoised target: noises `latents` at a timestep t drawn
        uniformly from `t_range` (t, then the noise eps, from `generator`) and returns (x0, w, t), x0 = (x_t -
        sqrt(1 - alpha_bar) eps_hat) / sqrt(alpha_bar) the guided one-step estimate of the clean latents and w =
        sqrt(alpha_bar (1 - alpha_bar)), so that w (latents - x0) = (1 - alpha_bar) (eps_hat - eps), SDS's
        gradient."""
        num = len(self.alphas_cumprod)
        low, high = int(t_range[0] * num), min(int(t_range[1] * num), num - 1)
        batch = len(latents)
        t = torch.randint(low, high + 1, (1,), generator=generator).to(self.device)
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        alpha_bar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = self.add_noise(latents, noise, t)
        # One prompt for every view, or one per view: (1 or B, ...) -> (B, ...).
        text = text.expand(batch, *text.shape[1:])
        uncond = uncond.expand(batch, *uncond.shape[1:])
        eps = self.predict_noise(torch.cat([noisy, noisy]), t.expand(2 * batch), torch.cat([uncond, text]))
        eps_uncond, eps_text = eps.float().chunk(2)
        eps_hat = eps_uncond + guidance_scale * (eps_text - eps_uncond)
        target = (noisy - (1 - alpha_bar).sqrt() * eps_hat) / alpha_bar.sqrt()
        return target, (alpha_bar * (1 - alpha_bar)).sqrt(), int(t)

    @staticmethod
    def _pull(values: Tensor, grad: Tensor, t: int) -> SDSOutput:
        """A loss whose gradient on `values` is `grad` / B."""
        if not torch.isfinite(grad).all():
            raise FloatingPointError(
                f"score distillation gave a non-finite gradient (timestep {t}): the diffusion model's output "
                "overflowed (in fp16: try --pipeline.model.half-precision False) or the learned word is not finite"
            )
        target = (values - grad).detach()
        loss = 0.5 * F.mse_loss(values, target, reduction="sum") / len(values)
        return SDSOutput(loss=loss, timestep=t)
