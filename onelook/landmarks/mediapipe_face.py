"""Five face keypoints and a foreground mask from MediaPipe (legacy solutions API, models inside the wheel)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from onelook.data.crop import crop_square

# Face Mesh vertices used as LOLNeRF's keypoints, in the subject's terms: outer eye corners, nose tip, mouth
# corners (33 appears on the image's left in a frontal photo).
FACE_MESH_INDICES = (33, 263, 1, 61, 291)
FACE_KEYPOINT_NAMES = ("right_eye_outer", "left_eye_outer", "nose_tip", "mouth_right", "mouth_left")
CROP_FACTOR = 2.0  # Face Mesh runs on a square this many times the detected face box...
MESH_INPUT_SIZE = 256  # ...resampled to this many pixels


class NoFaceError(ValueError):
    """MediaPipe found no face in the image."""


@dataclass
class FaceDetection:
    keypoints: np.ndarray  # (5, 2) pixels, x right, y down, origin at the top-left pixel corner
    confidence: float  # MediaPipe face detector score of the chosen face (NaN if the detector missed it)
    num_faces: int  # faces found; the largest is used
    mask: np.ndarray  # (H, W) float in [0, 1] from Selfie Segmentation


class FaceLandmarker:
    """Holds the three MediaPipe graphs; create once per process and reuse (each costs ~100 ms to build)."""

    def __init__(self, max_faces: int = 4, min_confidence: float = 0.5):
        os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ logging is noisy at INFO
        import mediapipe as mp  # imported here: it takes a second and only detection needs it

        solutions = mp.solutions
        self._mesh = solutions.face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=max_faces, min_detection_confidence=min_confidence
        )
        self._detector = solutions.face_detection.FaceDetection(
            model_selection=1, min_detection_confidence=min_confidence
        )
        self._segmenter = solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)

    def detect(self, rgb: np.ndarray) -> FaceDetection:
        """Landmarks of the largest face in an (H, W, 3) uint8 RGB image; raises NoFaceError if there is none.

        The full-range face detector finds every face (Face Mesh alone squeezes the whole image into its
        detector's small input and misses small or off-centre faces); Face Mesh then runs on a square crop
        around the largest one.
        """
        rgb = np.ascontiguousarray(rgb)
        height, width = rgb.shape[:2]
        boxes = []
        for det in self._detector.process(rgb).detections or []:
            box = det.location_data.relative_bounding_box
            boxes.append((box.xmin * width, box.ymin * height, box.width * width, box.height * height, det.score[0]))
        if boxes:
            x, y, w, h, confidence = max(boxes, key=lambda b: b[2] * b[3])
            side = CROP_FACTOR * max(w, h)
            x0, y0 = x + w / 2 - side / 2, y + h / 2 - side / 2
            crop = crop_square(rgb, x0, y0, side, MESH_INPUT_SIZE)
            points = self._mesh_points(crop)
            if points is None:
                raise NoFaceError("a face was detected but Face Mesh found no landmarks on it")
            points = points * (side / crop.shape[0]) + np.array([x0, y0])
        else:  # the detector can miss a face filling the whole frame, which Face Mesh still finds
            points, confidence = self._mesh_points(rgb), float("nan")
            if points is None:
                raise NoFaceError("no face found")
        mask = self._segmenter.process(rgb).segmentation_mask
        return FaceDetection(
            keypoints=points[list(FACE_MESH_INDICES)],
            confidence=float(confidence),
            num_faces=max(len(boxes), 1),
            mask=np.clip(np.asarray(mask, dtype=np.float32), 0.0, 1.0),
        )

    def _mesh_points(self, rgb: np.ndarray) -> np.ndarray | None:
        """All Face Mesh landmarks (468, 2) in pixels of the largest face, or None."""
        height, width = rgb.shape[:2]
        faces = self._mesh.process(rgb).multi_face_landmarks or []
        if not faces:
            return None
        all_points = [np.array([[p.x * width, p.y * height] for p in face.landmark]) for face in faces]
        return max(all_points, key=lambda pts: np.prod(pts.max(axis=0) - pts.min(axis=0)))

    def close(self) -> None:
        for graph in (self._mesh, self._detector, self._segmenter):
            graph.close()
