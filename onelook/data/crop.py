"""Square crops with exact pixel geometry (corner-origin coordinates, as everywhere in onelook)."""

from __future__ import annotations

import cv2
import numpy as np


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
