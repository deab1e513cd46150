"""Meshes from density fields: marching cubes (scikit-image), vertex colours, GLB/OBJ/PLY (trimesh)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import trimesh
from skimage.measure import marching_cubes

# Density taken as an object's surface (meshes, object centres): a 0.07 thick layer of it (three steps of a
# 128^3 grid over a scene of side 3) is opaque to 50%. Hard-surface and entropy losses make density jump
# across surfaces, so the level matters little once a model is trained.
SURFACE_DENSITY = 10.0
# glTF is +Y up; onelook's world (nerfstudio's) is +Z up: GLB files are turned so viewers show them upright.
Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


@torch.no_grad()
def extract_mesh(
    density_and_colour: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    center: np.ndarray,
    half_size: float,
    resolution: int,
    level: float,
    device: torch.device | str = "cpu",
    chunk: int = 65536,
) -> trimesh.Trimesh:
    """The `level` iso-surface of a density field in the cube `center` +- `half_size`, coloured per vertex.

    `density_and_colour` maps (P, 3) world points to densities (P, 1) and colours (P, 3) in [0, 1].
    """
    axis = np.linspace(-half_size, half_size, resolution)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3) + center
    points = torch.as_tensor(grid, dtype=torch.float32, device=device)
    density = torch.cat([density_and_colour(p)[0] for p in points.split(chunk)]).reshape((resolution,) * 3)
    volume = density.cpu().numpy()
    if not (volume.min() < level < volume.max()):
        raise ValueError(f"no surface at density {level:g} (the field ranges {volume.min():.3g} to {volume.max():.3g})")
    spacing = (axis[1] - axis[0],) * 3
    verts, faces, _, _ = marching_cubes(volume, level=level, spacing=spacing)
    verts = verts - half_size + center
    colour = torch.cat(
        [density_and_colour(p)[1] for p in torch.as_tensor(verts, dtype=torch.float32, device=device).split(chunk)]
    )
    colours = (colour.clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    # marching_cubes orients faces for a field that grows inwards, as density does; keep the largest part.
    mesh = trimesh.Trimesh(verts, faces[:, ::-1], vertex_colors=colours, process=True)
    parts = mesh.split(only_watertight=False)
    return max(parts, key=lambda m: len(m.faces)) if len(parts) > 1 else mesh


def save_mesh(mesh: trimesh.Trimesh, out_dir: Path, stem: str = "mesh") -> dict[str, Path]:
    """Writes `stem`.glb (turned +Y up, as glTF wants), .obj and .ply (in the model's +Z-up frame)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: out_dir / f"{stem}.{ext}" for ext in ("glb", "obj", "ply")}
    gltf = mesh.copy()
    gltf.vertices = mesh.vertices @ Z_UP_TO_Y_UP.T
    gltf.export(paths["glb"])
    mesh.export(paths["obj"])
    mesh.export(paths["ply"])
    return paths
