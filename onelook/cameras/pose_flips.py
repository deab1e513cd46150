"""Each image's two-fold pose ambiguity, resolved by where the other cameras stand.

Keypoints that lie near a plane (a car's headlights, mirrors and windscreen; any layout seen from afar) are
explained about equally well by a camera and by its mirror image through that plane: a car seen from the front
and a little below looks like one seen from behind and above. When every identity's keypoints differ, the
wrong one of the two often fits a little better, and no reprojection error can tell them apart (measured on a
car layout whose keypoints vary by 10%: 15 of 250 cameras ended up behind and above, more than 90 degrees
off; the mean-shape oracle had 14; resolved as below, 2).

The cameras of a category's photos are not spread at random: they cluster around the views people take. Here
each image's alternatives (the other of the two poses of its keypoints flattened onto their best plane, and
the pose reached from the cameras' typical view, both refined on the 3D keypoints) are weighed against its
fitted pose by the reprojection error plus a von Mises-Fisher prior on the viewing direction, fitted robustly
to all the cameras; an alternative wins only where it is both plausible as a view and about as good a fit.
"""

from __future__ import annotations

import cv2
import numpy as np

from onelook.cameras.geometry import CV_TO_GL, look_at, project, rotation_angle_deg
from onelook.cameras.pose import camera_to_world_from_opencv, intrinsics_matrix

# Directions further than this from the cameras' mean direction are left out of the prior's fit.
PRIOR_INLIER_ANGLE_DEG = 60.0
# The concentration is capped: one camera's view is never declared impossible by the others.
MAX_CONCENTRATION = 50.0
# An alternative closer than this to the fitted pose is the same local minimum, not the other one.
MIN_FLIP_ANGLE_DEG = 30.0
REFINEMENT = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_COUNT, 200, 1e-12)  # Levenberg-Marquardt's stopping rule


def resolve_flips(
    canonical_points: np.ndarray,
    camera_to_world: np.ndarray,
    focal_length: np.ndarray,
    landmarks: np.ndarray,
    image_size: tuple[int, int],
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns the camera-to-world matrices (N, 4, 4, OpenGL) with each image's pose replaced by an alternative
    where that scores better, and a (N,) bool of the images that changed. `landmarks` (N, K, 2)
    pixels, NaN for missing; `weights` (N, K) as in `fit_cameras`."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    valid = np.isfinite(landmarks).all(axis=2)
    w = valid * (1.0 if weights is None else np.asarray(weights, dtype=np.float64))
    centroid = canonical_points.mean(axis=0)
    plane = np.linalg.svd(canonical_points - centroid)[2]  # rows: the keypoints' best plane's axes, its normal
    plane[2] *= np.sign(np.linalg.det(plane))  # a rotation, not a reflection
    focal = np.broadcast_to(np.asarray(focal_length, dtype=np.float64), (len(landmarks),))

    def sq_errors(c2w: np.ndarray) -> np.ndarray:
        projected, _ = project(canonical_points, c2w, focal, image_size)
        err2 = np.square(np.nan_to_num(projected - landmarks)).sum(axis=2)
        return (err2 * w).sum(axis=1)

    current = sq_errors(camera_to_world)
    # Landmark misfit per coordinate, for weighing squared errors as a Gaussian log-likelihood would.
    variance = max(float(np.median(current / (2.0 * w.sum(axis=1)))), 1e-12)
    mean_direction, concentration = _view_prior(camera_to_world[:, :3, 3] - centroid)

    def score(c2w: np.ndarray) -> np.ndarray:
        direction = c2w[:, :3, 3] - centroid
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        return sq_errors(c2w) / (2.0 * variance) - concentration * direction @ mean_direction

    result, best = camera_to_world.copy(), score(camera_to_world)
    flipped = np.zeros(len(landmarks), dtype=bool)
    search = _AlternativePoses(canonical_points, image_size, plane, mean_direction)
    for alternative_pose in (search.mirrored, search.from_typical_view):
        alternative = np.array(
            [
                _or_unchanged(alternative_pose, *args)
                for args in zip(camera_to_world, focal, landmarks, valid, strict=True)
            ]
        )
        alternative_score = score(alternative)
        distinct = rotation_angle_deg(alternative[:, :3, :3], camera_to_world[:, :3, :3]) > MIN_FLIP_ANGLE_DEG
        better = distinct & (alternative_score < best)
        result[better], best[better], flipped[better] = alternative[better], alternative_score[better], True
    return result, flipped


def _view_prior(offsets: np.ndarray) -> tuple[np.ndarray, float]:
    """Mean direction and concentration of a von Mises-Fisher distribution fitted to the cameras' directions
    from the object, without the cameras far from the rest (the flips it is to find)."""
    directions = offsets / np.linalg.norm(offsets, axis=1, keepdims=True)
    mean = np.median(directions, axis=0)
    if np.linalg.norm(mean) < 1e-6:  # cameras all around the object: no typical view
        return np.array([0.0, -1.0, 0.0]), 0.0
    mean /= np.linalg.norm(mean)
    near = directions @ mean >= np.cos(np.radians(PRIOR_INLIER_ANGLE_DEG))
    resultant = directions[near].mean(axis=0)
    length = float(np.linalg.norm(resultant))
    concentration = length * (3.0 - length**2) / max(1.0 - length**2, 1e-9)  # Banerjee et al.'s approximation
    return resultant / length, min(concentration, MAX_CONCENTRATION)


class _AlternativePoses:
    """Other local minima of one image's pose (camera-to-world, OpenGL), each refined on the 3D keypoints."""

    def __init__(self, points: np.ndarray, image_size: tuple[int, int], plane: np.ndarray, mean_direction: np.ndarray):
        self.points = points
        self.centroid = points.mean(axis=0)
        self.image_size = image_size
        self.plane = plane  # rows: the keypoints' best plane's axes, its normal
        self.mean_direction = mean_direction  # the cameras' typical direction from the object

    def mirrored(
        self, camera_to_world: np.ndarray, focal: float, landmarks: np.ndarray, valid: np.ndarray
    ) -> np.ndarray:
        """The two poses of the keypoints flattened onto their best plane (OpenCV's IPPE): the one further
        from the current pose."""
        flat = np.c_[(self.points - self.centroid) @ self.plane[:2].T, np.zeros(len(self.points))]
        intrinsics = intrinsics_matrix(focal, self.image_size)
        count, rvecs, tvecs, _ = cv2.solvePnPGeneric(
            flat[valid], landmarks[valid], intrinsics, None, flags=cv2.SOLVEPNP_IPPE
        )
        best, best_angle = camera_to_world, -1.0
        for rvec, tvec in zip(rvecs[:count], tvecs[:count], strict=True):
            # From plane coordinates back to the world: x_plane = plane @ (x - centroid).
            rot = cv2.Rodrigues(rvec)[0] @ self.plane
            c2w = _refined(self.points, landmarks, valid, intrinsics, rot, tvec[:, 0] - rot @ self.centroid)
            angle = float(rotation_angle_deg(c2w[:3, :3], camera_to_world[:3, :3]))
            if angle > best_angle:
                best, best_angle = c2w, angle
        return best

    def from_typical_view(
        self, camera_to_world: np.ndarray, focal: float, landmarks: np.ndarray, valid: np.ndarray
    ) -> np.ndarray:
        """The pose reached from the cameras' typical view (at this camera's distance, upright): where a camera
        flipped to a view no other camera has comes back from."""
        distance = np.linalg.norm(camera_to_world[:3, 3] - self.centroid)
        start = look_at((self.centroid + distance * self.mean_direction)[None], self.centroid)[0]
        rot = CV_TO_GL @ start[:3, :3].T  # world-to-camera, OpenCV axes
        intrinsics = intrinsics_matrix(focal, self.image_size)
        return _refined(self.points, landmarks, valid, intrinsics, rot, -rot @ start[:3, 3])


def _or_unchanged(alternative_pose, camera_to_world: np.ndarray, *args) -> np.ndarray:
    """The alternative, or the pose itself where OpenCV finds none (keypoints in a line, too few of them)."""
    try:
        return alternative_pose(camera_to_world, *args)
    except cv2.error:
        return camera_to_world


def _refined(
    points: np.ndarray,
    landmarks: np.ndarray,
    valid: np.ndarray,
    intrinsics: np.ndarray,
    rot: np.ndarray,
    trans: np.ndarray,
) -> np.ndarray:
    """Levenberg-Marquardt (OpenCV) from the world-to-camera pose (`rot`, `trans`, OpenCV axes); returns the
    camera-to-world matrix, OpenGL axes."""
    rvec, tvec = cv2.solvePnPRefineLM(
        points[valid], landmarks[valid], intrinsics, None, cv2.Rodrigues(rot)[0], trans[:, None], REFINEMENT
    )
    return camera_to_world_from_opencv(rvec, tvec)
