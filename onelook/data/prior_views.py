"""RealFusion's training batches: reference-view pixels plus a random camera for the diffusion prior.

The random camera follows the released code: half the time uniform on the upper hemisphere, otherwise a polar
angle up to 120 degrees from +Z; any azimuth; distance 1.0-1.5; field of view 40-70 degrees. Its view label
(front, side, back, overhead, bottom) picks the view-dependent prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic

import numpy as np
import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.datamanagers.base_datamanager import TDataset, VanillaDataManager, VanillaDataManagerConfig

from onelook.cameras.geometry import orbit_camera

VIEW_LABELS = ("front", "side", "back", "overhead", "bottom")


def view_label(polar_deg: float, azimuth_deg: float) -> str:
    """Which prompt suffix fits a camera at this polar angle (from +Z) and azimuth (0 = the photo's side)."""
    if polar_deg <= 30.0:
        return "overhead"
    if polar_deg >= 150.0:
        return "bottom"
    azimuth = abs((azimuth_deg + 180.0) % 360.0 - 180.0)
    return "front" if azimuth < 60.0 else "back" if azimuth > 120.0 else "side"


def sample_prior_view(
    rng: np.random.Generator,
    distance_range: tuple[float, float] = (1.0, 1.5),
    fov_range: tuple[float, float] = (40.0, 70.0),
    hemisphere_probability: float = 0.5,
    max_polar: float = 120.0,
) -> tuple[float, float, float, float]:
    """A random view's polar angle (degrees from +Z), azimuth, distance and field of view (degrees)."""
    if rng.random() < hemisphere_probability:
        polar = np.degrees(np.arccos(rng.uniform(0.0, 1.0)))  # uniform by area on the upper hemisphere
    else:
        polar = rng.uniform(0.0, max_polar)
    return polar, rng.uniform(0.0, 360.0), rng.uniform(*distance_range), rng.uniform(*fov_range)


def sample_prior_camera(
    rng: np.random.Generator,
    size: int,
    distance_range: tuple[float, float] = (1.0, 1.5),
    fov_range: tuple[float, float] = (40.0, 70.0),
    hemisphere_probability: float = 0.5,
    max_polar: float = 120.0,
) -> tuple[Cameras, str]:
    polar, azimuth, distance, fov = sample_prior_view(rng, distance_range, fov_range, hemisphere_probability, max_polar)
    c2w, focal = orbit_camera(azimuth, 90.0 - polar, distance, fov, size)
    camera = Cameras(
        camera_to_worlds=torch.as_tensor(c2w[:3], dtype=torch.float32)[None],
        fx=float(focal),
        fy=float(focal),
        cx=size / 2,
        cy=size / 2,
        width=size,
        height=size,
    )
    return camera, view_label(polar, azimuth)


@dataclass
class PriorViewDataManagerConfig(VanillaDataManagerConfig):
    """The reference photo's rays plus, each step, one random camera for the diffusion prior (RealFusion)."""

    _target: type = field(default_factory=lambda: PriorViewDataManager)
    prior_view_size: int = 64
    """Side of the random views rendered for the diffusion prior (the released code: 96)."""
    prior_distance_range: tuple[float, float] = (1.0, 1.5)
    """Range of the random cameras' distances from the object's centre."""
    prior_fov_range: tuple[float, float] = (40.0, 70.0)
    """Range of the random cameras' fields of view, in degrees."""
    seed: int = 0
    """Seed of the random cameras."""


class PriorViewDataManager(VanillaDataManager, Generic[TDataset]):
    config: PriorViewDataManagerConfig

    def next_train(self, step: int):
        ray_bundle, batch = super().next_train(step)
        rng = np.random.default_rng([self.config.seed, step])
        camera, label = sample_prior_camera(
            rng, self.config.prior_view_size, self.config.prior_distance_range, self.config.prior_fov_range
        )
        batch["prior_camera"] = camera.to(self.device)
        batch["prior_view"] = label
        return ray_bundle, batch
