"""Sampling rays inside the scene sphere, shared by both methods: each object sits in a sphere at the origin."""

from __future__ import annotations

from collections.abc import Callable

import torch
from nerfstudio.cameras.rays import RayBundle, RaySamples
from nerfstudio.model_components.ray_samplers import PDFSampler, UniformSampler
from torch import Tensor, nn


def sphere_interval(origins: Tensor, directions: Tensor, radius: float) -> tuple[Tensor, Tensor]:
    """Near and far distances of rays through a sphere at the origin; a ray that misses gets an empty interval
    at its closest approach, so that the background shell still starts behind the object."""
    a = (directions * directions).sum(dim=-1, keepdim=True)
    b = (origins * directions).sum(dim=-1, keepdim=True)
    c = (origins * origins).sum(dim=-1, keepdim=True) - radius**2
    closest = -b / a
    half = torch.sqrt((b * b - a * c).clamp(min=0.0)) / a
    nears = (closest - half).clamp(min=1e-3)
    return nears, torch.maximum(closest + half, nears + 1e-4)


class SphereSampler(nn.Module):
    """Uniform samples between a ray's entry into the sphere and its exit, then importance samples where those
    samples' weights are. One field serves both passes (as in mip-NeRF): the uniform pass only places the
    importance samples, so it runs without gradients. Sets the bundle's `nears`/`fars` to the sphere's."""

    def __init__(self, radius: float, num_uniform: int, num_importance: int):
        super().__init__()
        self.radius = radius
        self.uniform = UniformSampler(num_samples=num_uniform)
        self.importance = PDFSampler(num_samples=num_importance)

    def forward(self, ray_bundle: RayBundle, density: Callable[[RaySamples], Tensor]) -> RaySamples:
        """`density` maps samples to their (..., 1) densities."""
        ray_bundle.nears, ray_bundle.fars = sphere_interval(ray_bundle.origins, ray_bundle.directions, self.radius)
        uniform = self.uniform(ray_bundle)
        with torch.no_grad():
            weights = uniform.get_weights(density(uniform))
        return self.importance(ray_bundle, uniform, weights)
