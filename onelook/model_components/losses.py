"""LOLNeRF's and RealFusion's own losses as plain functions, importable by any nerfstudio model."""

from __future__ import annotations

import math

import torch
from torch import Tensor

# log(1 + 1/e): -log(exp(-|w|) + exp(-|1 - w|)) is -log(1 + 1/e) at w = 0 and w = 1; adding this makes the
# loss's minimum zero (NeuMan's HARD_SURFACE_OFFSET = 0.31326165795326233).
HARD_SURFACE_OFFSET = math.log1p(math.exp(-1.0))


def hard_surface_loss(weights: Tensor) -> Tensor:
    """Mean of -log(e^-|w| + e^-|1-w|) + offset over rendering weights, clipped to [0, 1].

    A mixture-of-Laplacians prior that pushes each sample's weight to 0 or 1, so that surfaces come out solid
    rather than cloudy: zero at w = 0 and w = 1, highest at w = 0.5 (0.5 - log 2 + offset, about 0.120).
    """
    w = weights.clamp(0.0, 1.0)
    return (-torch.log(torch.exp(-w.abs()) + torch.exp(-(1.0 - w).abs())) + HARD_SURFACE_OFFSET).mean()


def mask_loss(accumulation: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error between the foreground's accumulated opacity and the foreground mask."""
    return torch.mean((accumulation - mask.to(accumulation)) ** 2)


def silhouette_loss(accumulation: Tensor, target_rgb: Tensor, tolerance: float = 0.1) -> Tensor:
    """Mean squared error between opacity (B, 1, H, W) and the silhouette of an object-centred target image
    (B, 3, H, W): 0 where the target is within `tolerance` of its background (the median of its border pixels;
    largest channel), 1 where it differs by twice that or more, linear between (the dead zone keeps a decoded
    target's blotchy background from reading as object). A colour loss cannot clear a pale fog in front of a
    pale background, nor make it opaque (the two look alike, so its gradient vanishes); this one can."""
    border = torch.cat(
        [target_rgb[..., 0, :], target_rgb[..., -1, :], target_rgb[..., 1:-1, 0], target_rgb[..., 1:-1, -1]], -1
    )
    background = border.median(dim=-1).values[..., None, None]
    distance = (target_rgb - background).abs().amax(dim=1, keepdim=True)
    return mask_loss(accumulation, ((distance - tolerance) / tolerance).clamp(0.0, 1.0))
