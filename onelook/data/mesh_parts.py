"""Mesh building blocks of the procedural objects (`onelook synth`): coloured solids in open3d, combined."""

from __future__ import annotations

import numpy as np
import open3d as o3d
from scipy.spatial.transform import Rotation


def random_colour(rng: np.random.Generator, lo: float, hi: float) -> tuple[float, float, float]:
    return tuple(float(c) for c in rng.uniform(lo, hi, 3))


def front_y(radii: tuple[float, float, float], x: float, z: float) -> float:
    """y of the front (-Y) surface of an origin-centred ellipsoid with half-axes `radii`, at (x, z)."""
    a, b, c = radii
    return -b * float(np.sqrt(max(1.0 - (x / a) ** 2 - (z / c) ** 2, 0.0)))


def ellipsoid(radii, centre, colour, resolution: int = 24) -> o3d.geometry.TriangleMesh:
    mesh = o3d.geometry.TriangleMesh.create_sphere(1.0, resolution=resolution)
    mesh.vertices = o3d.utility.Vector3dVector(np.asarray(mesh.vertices) * np.asarray(radii) + np.asarray(centre))
    mesh.paint_uniform_color(colour)
    return mesh


def hexahedron(corners: np.ndarray, colour) -> o3d.geometry.TriangleMesh:
    """A six-faced solid from its 8 corners (bottom face 0-3, top face 4-7, both counter-clockwise seen from
    above), each face with its own vertices so that smooth shading keeps the edges sharp."""
    faces = ((0, 3, 2, 1), (4, 5, 6, 7), (0, 1, 5, 4), (1, 2, 6, 5), (2, 3, 7, 6), (3, 0, 4, 7))
    vertices, triangles = [], []
    for face in faces:
        base = len(vertices)
        vertices += [corners[i] for i in face]
        triangles += [(base, base + 1, base + 2), (base, base + 2, base + 3)]
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(vertices), o3d.utility.Vector3iVector(triangles))
    mesh.paint_uniform_color(colour)
    return mesh


def box(lo, hi, colour) -> o3d.geometry.TriangleMesh:
    (x0, y0, z0), (x1, y1, z1) = lo, hi
    bottom = [(x0, y0, z0), (x1, y0, z0), (x1, y1, z0), (x0, y1, z0)]
    top = [(x, y, z1) for x, y, _ in bottom]
    return hexahedron(np.array(bottom + top, dtype=np.float64), colour)


def combine(parts: list[o3d.geometry.TriangleMesh]) -> o3d.geometry.TriangleMesh:
    combined = parts[0]
    for part in parts[1:]:
        combined += part
    combined.compute_vertex_normals()
    return combined


def rotation_from_z(axis: np.ndarray) -> np.ndarray:
    """The rotation taking +Z to the unit vector `axis`."""
    return Rotation.align_vectors([axis], [[0.0, 0.0, 1.0]])[0].as_matrix()
