"""Rendering any onelook model from an arbitrary pinhole camera into numpy images."""

from __future__ import annotations

import numpy as np
import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.models.base_model import Model


def pinhole_cameras(
    c2w: np.ndarray, focal: float, size, principal_point: tuple[float, float] | None = None, device="cpu"
) -> Cameras:
    """One nerfstudio camera; `size` is an int (square) or (H, W); principal point at the centre by default."""
    height, width = (size, size) if isinstance(size, int) else size
    cx, cy = principal_point if principal_point is not None else (width / 2, height / 2)
    return Cameras(
        camera_to_worlds=torch.as_tensor(np.asarray(c2w)[:3], dtype=torch.float32)[None],
        fx=float(focal),
        fy=float(focal),
        cx=float(cx),
        cy=float(cy),
        width=int(width),
        height=int(height),
    ).to(device)


@torch.no_grad()
def render_view(
    model: Model,
    c2w: np.ndarray,
    focal: float,
    size,
    metadata: dict | None = None,
    principal_point: tuple[float, float] | None = None,
) -> dict:
    """rgb (H, W, 3) in [0, 1], depth (H, W) along the optical axis, alpha (H, W), in chunks of rays.

    `metadata` entries (e.g. a latent code) are broadcast to every ray; `principal_point` (x, y) in pixels,
    default the centre.
    """
    cameras = pinhole_cameras(c2w, focal, size, principal_point, device=model.device)
    bundle = cameras.generate_rays(camera_indices=0, keep_shape=True)
    height, width = bundle.shape
    bundle.metadata = {key: value.to(model.device).expand(height, width, -1) for key, value in (metadata or {}).items()}
    outputs = model.get_outputs_for_camera_ray_bundle(bundle)
    cosine = (bundle.directions * -cameras.camera_to_worlds[0, :3, 2]).sum(dim=-1)  # ray length -> depth
    return {
        "rgb": outputs["rgb"].clamp(0, 1).cpu().numpy(),
        "depth": (outputs["depth"][..., 0] * cosine).cpu().numpy(),
        "alpha": outputs["accumulation"][..., 0].cpu().numpy(),
    }
