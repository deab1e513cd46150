"""Real MediaPipe on the real photos that scikit-image ships."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from onelook.landmarks.mediapipe_face import FaceLandmarker, NoFaceError


@pytest.fixture(scope="module")
def landmarker():
    detector = FaceLandmarker()
    yield detector
    detector.close()


def test_astronaut_has_five_sensible_keypoints(landmarker):
    det = landmarker.detect(data.astronaut())
    (rx, ry), (lx, ly), (nx, ny), (mrx, mry), (mlx, mly) = det.keypoints
    assert det.num_faces == 1 and det.confidence > 0.8
    # Her face spans about x 170-280, y 60-170 in the 512 px photo.
    assert (det.keypoints[:, 0] > 150).all() and (det.keypoints[:, 0] < 300).all()
    assert rx < nx < lx and mrx < nx < mlx  # subject's right appears on the image's left
    assert max(ry, ly) < ny < min(mry, mly)  # eyes above the nose tip above the mouth corners
    assert det.mask.shape == (512, 512) and det.mask[120, 225] > 0.5 and det.mask[30, 480] < 0.5


def test_largest_of_several_faces_is_used(landmarker):
    big = data.astronaut()
    small = cv2.resize(big, (384, 384), interpolation=cv2.INTER_AREA)
    canvas = np.full((512, 896, 3), 255, np.uint8)
    canvas[:, :512] = big
    canvas[:384, 512:] = small
    det = landmarker.detect(canvas)
    assert det.num_faces == 2
    assert det.keypoints[:, 0].max() < 512  # on the big face


def test_cat_has_no_face(landmarker):
    with pytest.raises(NoFaceError):
        landmarker.detect(data.chelsea())
