"""Pinhole camera helpers in nerfstudio's conventions (OpenGL camera: looks down -Z, +Y up; world +Z up).

Pixel coordinates are x right, y down, origin at the top-left pixel corner, principal point at the centre.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial.transform import Rotation

# OpenCV camera axes (x right, y down, z forward) to OpenGL ones (x right, y up, z backward): its own inverse.
CV_TO_GL = np.diag([1.0, -1.0, -1.0])


def look_at(positions: np.ndarray, target: np.ndarray | None = None, up: np.ndarray | None = None) -> np.ndarray:
    """Camera-to-world matrices (N, 4, 4) of cameras at `positions` (N, 3) looking at `target`."""
    positions = np.atleast_2d(np.asarray(positions, dtype=np.float64))
    target = np.zeros(3) if target is None else np.asarray(target, dtype=np.float64)
    up = np.array([0.0, 0.0, 1.0]) if up is None else np.asarray(up, dtype=np.float64)
    back = positions - target
    back /= np.linalg.norm(back, axis=1, keepdims=True)
    right = np.cross(up, back)
    right /= np.linalg.norm(right, axis=1, keepdims=True)
    cam_up = np.cross(back, right)
    c2w = np.tile(np.eye(4), (len(positions), 1, 1))
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, cam_up, back, positions
    return c2w


def orbit_positions(yaw_deg: np.ndarray, pitch_deg: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Camera centres around the origin: yaw 0 and pitch 0 is the front view from -Y; positive pitch is above."""
    yaw, pitch = np.radians(yaw_deg), np.radians(pitch_deg)
    distance = np.asarray(distance, dtype=np.float64)
    return np.stack(
        [
            distance * np.cos(pitch) * np.sin(yaw),
            -distance * np.cos(pitch) * np.cos(yaw),
            distance * np.sin(pitch),
        ],
        axis=-1,
    )


def orbit_camera(
    azimuth: float, elevation: float, distance: float, fov_deg: float, size: int
) -> tuple[np.ndarray, float]:
    """Camera-to-world (4, 4) looking at the origin from `orbit_positions`, and the focal length (pixels) that
    gives a `size`-pixel image the field of view `fov_deg`. Straight above or below, "up" for the camera is the
    object's front-back axis (+Y)."""
    up = np.array([0.0, 1.0, 0.0]) if abs(elevation) > 89.9 else None
    focal = 0.5 * size / np.tan(np.radians(fov_deg) / 2)
    return look_at(orbit_positions(azimuth, elevation, distance)[None], up=up)[0], float(focal)


def viewing_angles(camera_to_world: np.ndarray) -> tuple[float, float]:
    """(yaw, pitch) in degrees of the direction a camera looks from, in `orbit_positions`' terms: (0, 0) is the
    front view from -Y; the inverse of `look_at(orbit_positions(yaw, pitch, d))` for a camera aimed at the origin."""
    forward = -np.asarray(camera_to_world)[:3, 2]  # the direction the camera looks in
    yaw = np.degrees(np.arctan2(-forward[0], forward[1]))
    pitch = np.degrees(np.arcsin(np.clip(-forward[2], -1.0, 1.0)))
    return float(yaw), float(pitch)


def turn_about_origin(camera_to_world: np.ndarray, yaw_deg: float, pitch_deg: float) -> np.ndarray:
    """A camera moved around the world origin: up by `pitch` (about its own right axis), then by `yaw`
    about +Z (positive: counter-clockwise seen from above)."""
    right = camera_to_world[:3, 0] / np.linalg.norm(camera_to_world[:3, 0])
    turn = np.eye(4)
    turn[:3, :3] = Rotation.from_rotvec(np.radians(yaw_deg) * np.array([0.0, 0.0, 1.0])).as_matrix() @ (
        Rotation.from_rotvec(-np.radians(pitch_deg) * right).as_matrix()
    )
    return turn @ camera_to_world


def project(points: np.ndarray, camera_to_world: np.ndarray, focal: np.ndarray, image_size: tuple[int, int]):
    """Projects world points (K, 3) or (N, K, 3) into N cameras; returns pixels (N, K, 2) and depths (N, K)."""
    c2w = np.asarray(camera_to_world, dtype=np.float64)
    points = np.asarray(points, dtype=np.float64)
    if points.ndim == 2:
        points = np.broadcast_to(points, (len(c2w), *points.shape))
    rot, trans = c2w[:, :3, :3], c2w[:, :3, 3]
    cam = np.einsum("nji,nkj->nki", rot, points - trans[:, None])  # world-to-camera, OpenGL axes
    depth = -cam[..., 2]
    focal = np.broadcast_to(np.asarray(focal, dtype=np.float64), (len(c2w),))[:, None]
    height, width = image_size
    u = width / 2.0 + focal * cam[..., 0] / depth
    v = height / 2.0 - focal * cam[..., 1] / depth
    return np.stack([u, v], axis=-1), depth


def similarity_align(source: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Umeyama: scale s, rotation R, translation t minimising |s R source + t - target|^2 over (K, 3) points."""
    mu_s, mu_t = source.mean(axis=0), target.mean(axis=0)
    src, tgt = source - mu_s, target - mu_t
    u, sing, vt = np.linalg.svd(tgt.T @ src / len(source))
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    rot = u @ d @ vt
    scale = float(np.trace(np.diag(sing) @ d) / src.var(axis=0).sum())
    return scale, rot, mu_t - scale * rot @ mu_s


def rotation_errors_deg(
    estimated_c2w: np.ndarray, true_c2w: np.ndarray, estimated_points: np.ndarray, true_points: np.ndarray
) -> np.ndarray:
    """Per-camera rotation error (degrees) after aligning the estimated frame to the true one by the keypoints.

    A fit is only defined up to a global similarity (the gauge); the keypoints fix it.
    """
    _, align, _ = similarity_align(estimated_points, true_points)
    return rotation_angle_deg(align @ estimated_c2w[:, :3, :3], true_c2w[:, :3, :3])


def rotation_angle_deg(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Angle in degrees of the rotation between rotation matrices (..., 3, 3)."""
    cos = (np.einsum("...ji,...ji->...", first, second) - 1.0) / 2.0  # trace(first^T second)
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def skew(v: torch.Tensor) -> torch.Tensor:
    """(..., 3) vectors -> (..., 3, 3) matrices with skew(a) @ b = a x b (batched, differentiable)."""
    zero = torch.zeros_like(v[..., 0])
    return torch.stack(
        [
            torch.stack([zero, -v[..., 2], v[..., 1]], dim=-1),
            torch.stack([v[..., 2], zero, -v[..., 0]], dim=-1),
            torch.stack([-v[..., 1], v[..., 0], zero], dim=-1),
        ],
        dim=-2,
    )
