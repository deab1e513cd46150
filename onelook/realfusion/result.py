"""A trained RealFusion object, ready for `onelook.export.export_all` (no diffusion model is loaded)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import trimesh

from onelook.cameras.geometry import turn_about_origin
from onelook.data.image_dataparser import ObjectImageDataParserConfig, reference_camera
from onelook.export.mesh import SURFACE_DENSITY, extract_mesh
from onelook.models.realfusion import RealFusionModel
from onelook.rendering import render_view
from onelook.runs import load_run


@dataclass
class RealFusionResult:
    model: RealFusionModel
    camera_to_world: np.ndarray  # (4, 4) the photo's (reference) camera, model frame, OpenGL convention
    focal_length: float
    image_size: tuple[int, int]

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str | torch.device | None = None) -> RealFusionResult:
        run = load_run(Path(run_dir), RealFusionModel, device)
        return cls.from_model(run.model, run.config.pipeline.datamanager.dataparser)

    @classmethod
    def from_model(cls, model: RealFusionModel, parser: ObjectImageDataParserConfig) -> RealFusionResult:
        """The photo's camera is the dataparser's reference camera."""
        c2w, focal = reference_camera(
            parser.reference_distance, parser.reference_elevation, parser.reference_fov, parser.image_size
        )
        return cls(model.eval(), c2w, focal, (parser.image_size, parser.image_size))

    def render(self, camera_to_world: np.ndarray, focal_length: float, size) -> dict[str, np.ndarray]:
        """Albedo on white, depth along the optical axis, opacity; any camera (model frame)."""
        return render_view(self.model, camera_to_world, focal_length, size)

    def turntable_cameras(self, frames: int = 24) -> list[tuple[np.ndarray, float]]:
        """A full circle around the object at the photo's elevation and distance."""
        return [
            (turn_about_origin(self.camera_to_world, 360.0 * i / frames, 0.0), self.focal_length) for i in range(frames)
        ]

    def mesh(self, resolution: int = 128, level: float = SURFACE_DENSITY) -> trimesh.Trimesh:
        field = self.model.field

        def density_and_colour(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            density, albedo = field.query(points)
            return density * (points.norm(dim=-1, keepdim=True) <= self.model.scene_radius), albedo

        return extract_mesh(
            density_and_colour, np.zeros(3), self.model.scene_radius, resolution, level, self.model.device
        )
