"""The camera of one new photo, given the model's canonical keypoints (a perspective-n-point problem)."""

from __future__ import annotations

import cv2
import numpy as np

from onelook.cameras.geometry import CV_TO_GL


def estimate_pose(
    canonical_points: np.ndarray, landmarks: np.ndarray, focal_length: float, image_size: tuple[int, int]
) -> tuple[np.ndarray, float]:
    """Camera-to-world (4, 4, OpenGL axes) placing `canonical_points` (K, 3) onto `landmarks` (K, 2).

    Pixel conventions as in `fit_cameras`; NaN landmarks are ignored (at least 4 must remain). OpenCV's SQPnP
    finds the global least-squares pose, refined by Levenberg-Marquardt. Returns the pose and the mean
    reprojection error in pixels.
    """
    landmarks = np.asarray(landmarks, dtype=np.float64)
    canonical_points = np.asarray(canonical_points, dtype=np.float64)
    if landmarks.shape != (len(canonical_points), 2):
        raise ValueError(f"expected {len(canonical_points)} landmarks of (x, y), got shape {landmarks.shape}")
    valid = np.isfinite(landmarks).all(axis=1)
    if valid.sum() < 4:
        raise ValueError(f"need at least 4 landmarks to place the camera, got {int(valid.sum())}")
    intrinsics = intrinsics_matrix(focal_length, image_size)
    # Landmarks and principal point are in the same corner-origin pixel frame, so no half-pixel shift is needed
    # (shifting only the landmarks, to OpenCV's centre-origin frame, would move the principal point by 0.5 px).
    obj, img = canonical_points[valid], landmarks[valid]
    ok, rvec, tvec = cv2.solvePnP(obj, img, intrinsics, None, flags=cv2.SOLVEPNP_SQPNP)
    if not ok:
        raise ValueError("could not place a camera for these landmarks")
    rvec, tvec = cv2.solvePnPRefineLM(obj, img, intrinsics, None, rvec, tvec)
    projected, _ = cv2.projectPoints(obj, rvec, tvec, intrinsics, None)
    residual = float(np.linalg.norm(projected[:, 0] - img, axis=1).mean())
    return camera_to_world_from_opencv(rvec, tvec), residual


def intrinsics_matrix(focal_length: float, image_size: tuple[int, int]) -> np.ndarray:
    """OpenCV's camera matrix: principal point at the image centre of the corner-origin pixel frame."""
    height, width = image_size
    return np.array([[focal_length, 0.0, width / 2.0], [0.0, focal_length, height / 2.0], [0.0, 0.0, 1.0]])


def camera_to_world_from_opencv(rvec: np.ndarray, tvec: np.ndarray) -> np.ndarray:
    """OpenCV's world-to-camera pose (Rodrigues vector, translation (3, 1)) as a camera-to-world matrix, OpenGL
    axes."""
    rot = cv2.Rodrigues(rvec)[0]
    c2w = np.eye(4)
    c2w[:3, :3] = rot.T @ CV_TO_GL
    c2w[:3, 3] = -rot.T @ tvec[:, 0]
    return c2w
