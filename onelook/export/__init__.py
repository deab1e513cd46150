"""Exporting a reconstruction, the same way for every method: views, depth, normals, turntable, meshes.

Anything with `render(camera_to_world, focal_length, size)`, `turntable_cameras(frames)`, `camera_to_world`,
`focal_length`, `image_size` and `mesh(resolution)` can be exported: `onelook.lolnerf.Reconstruction` and
`onelook.realfusion.RealFusionResult` are (`onelook.runs.load_result` loads either from a run). One frame
convention for all of it: the model's frame (where its field lives; RealFusion's dataparser applies no
transform, so there it is also the world of the reference camera), OpenGL cameras, principal point at the
image centre, focal length in pixels of `image_size`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import trimesh

from onelook.export.images import depth_to_normals, depth_to_rgb, save_png, write_video
from onelook.export.mesh import save_mesh


class Exportable(Protocol):
    """A reconstruction, as `export_all` sees it (the result type of both methods)."""

    camera_to_world: np.ndarray
    focal_length: float
    image_size: tuple[int, int]

    def render(self, camera_to_world: np.ndarray, focal_length: float, size) -> dict[str, np.ndarray]: ...

    def turntable_cameras(self, frames: int) -> list[tuple[np.ndarray, float]]: ...

    def mesh(self, resolution: int) -> trimesh.Trimesh: ...


def export_all(
    recon: Exportable, out: Path, frames: int = 24, mesh_resolution: int = 128, max_size: int = 256, fps: int = 12
) -> dict[str, Path]:
    """Writes view.png, depth.png, normals.png (at the input's own camera), views/NN.png and turntable.mp4
    (an orbit), and mesh.glb / mesh.obj / mesh.ply into `out`; returns the paths by name.

    Renders keep the input's framing at no more than `max_size` pixels on the longer side.
    """
    out = Path(out)
    (out / "views").mkdir(parents=True, exist_ok=True)
    scale = min(1.0, max_size / max(recon.image_size))
    size = tuple(max(1, round(side * scale)) for side in recon.image_size)
    focal = recon.focal_length * scale
    main = recon.render(recon.camera_to_world, focal, size)
    paths = {
        "view": save_png(main["rgb"], out / "view.png"),
        "depth": save_png(depth_to_rgb(main["depth"], main["alpha"]), out / "depth.png"),
        "normals": save_png(depth_to_normals(main["depth"], focal, main["alpha"]), out / "normals.png"),
    }
    views = []
    for i, (c2w, orbit_focal) in enumerate(recon.turntable_cameras(frames)):
        views.append(recon.render(c2w, orbit_focal * scale, size)["rgb"])
        save_png(views[-1], out / "views" / f"{i:02d}.png")
    paths["turntable"] = write_video(views, out / "turntable.mp4", fps=fps)
    paths.update({f"mesh_{ext}": p for ext, p in save_mesh(recon.mesh(mesh_resolution), out).items()})
    return paths
