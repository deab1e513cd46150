"""An exact diffusion prior: the ideal denoiser of a finite set of images, one set per view label.

For images x0 drawn uniformly from a finite set, the best possible noise prediction at x_t is known in closed
form: the posterior mean E[x0 | x_t] is the set's average weighted by softmax(-|x_t - sqrt(a) x0_j|^2 /
(2 (1 - a))), and eps = (x_t - sqrt(a) E[x0 | x_t]) / sqrt(1 - a). Given the renders of one object from
each view sector, it is the perfect prior for that object: RealFusion distilling from it must rebuild the
object, which checks score distillation, the view labels, the camera sectors and the regularisers with no
trained model. The unconditional prompt "" draws on every set at once.
"""

from __future__ import annotations

import torch
from torch import Tensor

from onelook.data.prior_views import VIEW_LABELS
from onelook.guidance.prior import DiffusionPrior


class ExemplarPrior(DiffusionPrior):
    """The ideal denoiser of `exemplars`, in the latent space of `vae` (a diffusers `AutoencoderKL`; None: at
    pixels scaled to [-1, 1]). Prompts are read for their view words (", back view")."""

    def __init__(
        self,
        exemplars: dict[str, Tensor],
        alphas_cumprod: Tensor,
        vae=None,
        image_size: int | None = None,
    ):
        unknown = set(exemplars) - set(VIEW_LABELS)
        if unknown:
            raise ValueError(f"exemplars are keyed by view labels {VIEW_LABELS}; got {sorted(unknown)}")
        if not exemplars or any(len(images) == 0 for images in exemplars.values()):
            raise ValueError("every view label given needs at least one exemplar image")
        self.vae = vae.requires_grad_(False).eval() if vae is not None else None
        self.device = torch.device("cpu") if vae is None else vae.device
        self.alphas_cumprod = alphas_cumprod.to(self.device, torch.float32)
        self.image_size = image_size or next(iter(exemplars.values())).shape[-1]
        with torch.no_grad():
            latents = {label: self.encode_images(images.to(self.device)) for label, images in exemplars.items()}
        self.labels = [label for label in VIEW_LABELS if label in latents]
        self.latents = torch.cat([latents[label] for label in self.labels])  # (M, C, h, w)
        self.label_of = torch.cat(
            [torch.full((len(latents[label]),), i, device=self.device) for i, label in enumerate(self.labels)]
        )

    def encode_images(self, rgb: Tensor) -> Tensor:
        """Pixels in [-1, 1] at `image_size`, or their VAE latents (the posterior's mean: deterministic)."""
        rgb = torch.nn.functional.interpolate(rgb, size=(self.image_size,) * 2, mode="bilinear", align_corners=False)
        if self.vae is None:
            return 2.0 * rgb - 1.0
        return self.vae.encode(2.0 * rgb - 1.0).latent_dist.mean * self.vae.config.scaling_factor

    def decode_latents(self, latents: Tensor) -> Tensor:
        """The inverse of `encode_images` (the VAE's decoder, or pixels back to [0, 1])."""
        if self.vae is not None:
            latents = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        return ((latents + 1.0) / 2.0).clamp(0.0, 1.0)

    def encode_prompts(self, prompts: list[str]) -> Tensor:
        """(P, 1, L) indicator of the prompt's view label among the exemplars' (all zero: unconditional, or a
        view no exemplar shows)."""
        codes = torch.zeros(len(prompts), 1, len(self.labels), device=self.device)
        for i, prompt in enumerate(prompts):
            for j, label in enumerate(self.labels):
                if prompt.rstrip().endswith(f"{label} view"):
                    codes[i, 0, j] = 1.0
        return codes

    def add_token(self, token: str, embedding: Tensor | None = None, initializer: str | None = None) -> int:
        """Learned words change nothing: the prior knows one object."""
        return -1

    def predict_noise(self, noisy: Tensor, timesteps: Tensor, text: Tensor) -> Tensor:
        alpha_bar = self.alphas_cumprod[timesteps].view(-1, 1)
        flat = noisy.flatten(1).float()  # (B, D)
        exemplars = self.latents.flatten(1)  # (M, D)
        distance = torch.cdist(flat[:, None], alpha_bar.sqrt()[..., None] * exemplars[None]).squeeze(1)
        logits = -distance.square() / (2 * (1 - alpha_bar))  # (B, M)
        chosen = text[:, 0]  # (B, L): which view each prompt asks for
        allowed = (chosen[:, self.label_of] > 0) | (chosen.sum(dim=1, keepdim=True) == 0)
        weights = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=1)
        clean = weights @ exemplars
        eps = (flat - alpha_bar.sqrt() * clean) / (1 - alpha_bar).sqrt()
        return eps.view_as(noisy).to(noisy.dtype)
