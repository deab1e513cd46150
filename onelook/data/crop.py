"""Square crops with exact pixel geometry (corner-origin coordinates, as everywhere in onelook)."""

from __future__ import annotations

import cv2
import numpy as np

# Crop side / extent of the keypoints' bounding box: with the five face keypoints, the whole head and a margin.
DEFAULT_CROP_SCALE = 3.2


def keypoint_crop_box(keypoints: np.ndarray, crop_scale: float) -> tuple[float, float, float]:
    """A square around the keypoints: centred on their bounding box, crop_scale times its longer side."""
    valid = keypoints[np.isfinite(keypoints).all(axis=1)]
    lo, hi = valid.min(axis=0), valid.max(axis=0)
    extent = float((hi - lo).max())
    if extent < 2.0:
        raise ValueError("keypoints are degenerate (all within 2 pixels)")
    side = crop_scale * extent
    centre = (lo + hi) / 2.0
    return float(centre[0] - side / 2), float(centre[1] - side / 2), side


def crop_principal_point(
    image_size: tuple[int, int], x0: float, y0: float, side: float, size: int
) -> tuple[float, float]:
    """Where a (H, W) photo's centre, its camera's principal point, lands in the size x size crop of the square
    [x0, x0 + side) x [y0, y0 + side): the crop follows the keypoints, the camera's axis stays put."""
    height, width = image_size
    return (width / 2 - x0) * size / side, (height / 2 - y0) * size / side


def crop_square(image: np.ndarray, x0: float, y0: float, side: float, size: int) -> np.ndarray:
    """Resamples the square [x0, x0 + side) x [y0, y0 + side) to size x size, edges extended outwards."""
    sx = sy = size / side
    if sx < 0.5:  # shrink with area averaging first, so the affine resampling does not alias
        height, width = image.shape[:2]
        shrunk = (max(1, round(width * 2 * sx)), max(1, round(height * 2 * sx)))
        image = cv2.resize(image, shrunk, interpolation=cv2.INTER_AREA)
        sx, sy = sx * width / shrunk[0], sy * height / shrunk[1]  # what is left to do, per axis
        x0, y0 = x0 * shrunk[0] / width, y0 * shrunk[1] / height
    # Corner-origin coordinates: output X = (input X - x0) * s; OpenCV indexes pixel centres (X - 0.5).
    matrix = np.array([[sx, 0.0, (0.5 - x0) * sx - 0.5], [0.0, sy, (0.5 - y0) * sy - 0.5]])
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
