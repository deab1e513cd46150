"""Procedural keypoint categories with exact cameras: the test bed of the camera fit.

A category is a mean layout of K 3D keypoints (world frame: +Z up, the object's front faces -Y). Each
identity deforms it the way real faces, cats or cars differ: overall proportions (width, depth and height
scaled independently) plus a per-keypoint offset, mirrored for the keypoints that come in left/right pairs
(so identities stay bilaterally symmetric when the layout is). `variation` is the RMS displacement of the
keypoints from the mean layout, as a fraction of the object's size (its largest extent). Views are pinhole
cameras looking at the object from around its front, at any focal length, with the object filling a given
share of the image. Everything is seeded: identity i of a seed is always the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onelook.cameras.geometry import look_at, orbit_positions, project, rotation_errors_deg
from onelook.cameras.pose import estimate_pose


@dataclass(frozen=True)
class KeypointLayout:
    """A category's mean keypoints and which of them mirror each other."""

    name: str
    points: np.ndarray  # (K, 3) world units, the object's front faces -Y
    mirrored_pairs: tuple[tuple[int, int], ...] = ()  # (left, right) indices, mirrored across x = 0

    @property
    def size(self) -> float:
        return float((self.points.max(axis=0) - self.points.min(axis=0)).max())


LAYOUTS = {
    # Outer eye corners, nose tip, mouth corners: where MediaPipe's face keypoints are.
    "face": KeypointLayout(
        "face",
        np.array([[-0.45, 0.0, 0.15], [0.45, 0.0, 0.15], [0.0, -0.35, -0.1], [-0.3, -0.1, -0.35], [0.3, -0.1, -0.35]]),
        ((0, 1), (3, 4)),
    ),
    # Ear tips high and behind, eyes, a long snout: an animal head.
    "animal": KeypointLayout(
        "animal",
        np.array([[-0.35, 0.15, 0.6], [0.35, 0.15, 0.6], [-0.2, -0.25, 0.15], [0.2, -0.25, 0.15], [0.0, -0.75, -0.1]]),
        ((0, 1), (2, 3)),
    ),
    # Headlights low and forward, mirrors wide and back, the top of the windscreen: a car seen from the front.
    "car": KeypointLayout(
        "car",
        np.array([[-0.7, -0.9, -0.1], [0.7, -0.9, -0.1], [-0.85, -0.1, 0.3], [0.85, -0.1, 0.3], [0.0, 0.0, 0.6]]),
        ((0, 1), (2, 3)),
    ),
    # Six points with no symmetry at all.
    "irregular": KeypointLayout(
        "irregular",
        np.array(
            [
                [-0.5, -0.1, 0.4],
                [0.3, 0.2, 0.5],
                [0.1, -0.6, 0.0],
                [-0.3, -0.3, -0.4],
                [0.55, -0.2, -0.2],
                [0.0, 0.3, -0.5],
            ]
        ),
    ),
}


def identity_keypoints(layout: KeypointLayout, variation: float, num: int, seed: int) -> np.ndarray:
    """(num, K, 3) keypoints of `num` identities whose RMS displacement from the layout is `variation` times
    the layout's size: half from proportions, half from per-keypoint offsets (mirrored within pairs)."""
    rng = np.random.default_rng(seed)
    mean = layout.points
    if variation == 0:
        return np.broadcast_to(mean, (num, *mean.shape)).copy()
    centred = mean - mean.mean(axis=0)
    proportions = centred[None] * rng.normal(0.0, 1.0, (num, 1, 3))  # per-axis stretch of each identity
    offsets = rng.normal(0.0, 1.0, (num, *mean.shape))
    for left, right in layout.mirrored_pairs:
        offsets[:, right] = offsets[:, left] * np.array([-1.0, 1.0, 1.0])
    for part in (proportions, offsets):
        part *= variation * layout.size / np.sqrt(2.0) / np.sqrt(np.square(part).sum(axis=2).mean())
    return mean + proportions + offsets


@dataclass
class KeypointViews:
    """One view of each identity, with everything a fit could be checked against."""

    landmarks: np.ndarray  # (N, K, 2) pixels, x right, y down, origin at the top-left corner
    camera_to_world: np.ndarray  # (N, 4, 4) OpenGL convention
    focal_length: float  # pixels
    image_size: tuple[int, int]
    keypoints: np.ndarray  # (N, K, 3) each identity's true keypoints
    mean_keypoints: np.ndarray  # (K, 3) the category's layout

    def oracle_rotation_errors(self) -> np.ndarray:
        """(N,) rotation errors in degrees of the camera fit's yardstick: each image's globally best pose
        (SQPnP) for the category's mean keypoints at the true focal length. What no fit that must also find
        the shape and the focal length can be expected to beat."""
        c2w = np.stack(
            [
                estimate_pose(self.mean_keypoints, points, self.focal_length, self.image_size)[0]
                for points in self.landmarks
            ]
        )
        return rotation_errors_deg(c2w, self.camera_to_world, self.mean_keypoints, self.mean_keypoints)


def make_views(
    layout: KeypointLayout,
    num: int,
    variation: float = 0.05,
    focal_factor: float = 2.0,
    noise: float = 0.0,
    image_size: int = 64,
    fill: float = 0.5,
    yaw_range: tuple[float, float] = (-35.0, 35.0),
    pitch_range: tuple[float, float] = (-15.0, 20.0),
    roll_deg: float = 8.0,
    seed: int = 0,
) -> KeypointViews:
    """`num` identities, one view each: focal length `focal_factor` times the image side, the object
    spanning about `fill` of the image, landmark noise of `noise` times the image side."""
    rng = np.random.default_rng(seed)
    keypoints = identity_keypoints(layout, variation, num, seed + 1)
    focal = focal_factor * image_size
    distance = focal * layout.size / (fill * image_size)
    positions = orbit_positions(rng.uniform(*yaw_range, num), rng.uniform(*pitch_range, num), distance)
    targets = rng.normal(0.0, 0.03 * layout.size, (num, 3))  # the object is not exactly at the image centre
    c2w = np.stack([look_at(p[None], t)[0] for p, t in zip(positions, targets, strict=True)])
    roll = np.radians(rng.uniform(-roll_deg, roll_deg, num))
    spin = np.tile(np.eye(4), (num, 1, 1))
    spin[:, 0, 0], spin[:, 0, 1], spin[:, 1, 0], spin[:, 1, 1] = np.cos(roll), -np.sin(roll), np.sin(roll), np.cos(roll)
    c2w = c2w @ spin
    uv, _ = project(keypoints, c2w, focal, (image_size, image_size))
    uv = uv + rng.normal(0.0, noise * image_size, uv.shape)
    return KeypointViews(uv, c2w, focal, (image_size, image_size), keypoints, layout.points.copy())
