"""Five face keypoints and a foreground mask from MediaPipe (legacy solutions API, models inside the wheel)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

# Face Mesh vertices used as LOLNeRF's keypoints, in the subject's terms: outer eye corners, nose tip, mouth
# corners (33 appears on the image's left in a frontal photo).
FACE_MESH_INDICES = (33, 263, 1, 61, 291)
FACE_KEYPOINT_NAMES = ("right_eye_outer", "left_eye_outer", "nose_tip", "mouth_right", "mouth_left")


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
        """Landmarks of the largest face in an (H, W, 3) uint8 RGB image; raises NoFaceError if there is none."""
        height, width = rgb.shape[:2]
        rgb = np.ascontiguousarray(rgb)
        faces = self._mesh.process(rgb).multi_face_landmarks or []
        if not faces:
            raise NoFaceError("no face found")
        all_points = [np.array([[p.x * width, p.y * height] for p in face.landmark]) for face in faces]
        areas = [np.prod(pts.max(axis=0) - pts.min(axis=0)) for pts in all_points]
        points = all_points[int(np.argmax(areas))]
        keypoints = points[list(FACE_MESH_INDICES)]
        mask = self._segmenter.process(rgb).segmentation_mask
        return FaceDetection(
            keypoints=keypoints,
            confidence=self._confidence(rgb, points),
            num_faces=len(faces),
            mask=np.clip(np.asarray(mask, dtype=np.float32), 0.0, 1.0),
        )

    def _confidence(self, rgb: np.ndarray, face_points: np.ndarray) -> float:
        """Score of the face detector's box that contains the chosen face's centre."""
        height, width = rgb.shape[:2]
        centre = face_points.mean(axis=0)
        best = float("nan")
        for det in self._detector.process(rgb).detections or []:
            box = det.location_data.relative_bounding_box
            x0, y0 = box.xmin * width, box.ymin * height
            if x0 <= centre[0] <= x0 + box.width * width and y0 <= centre[1] <= y0 + box.height * height:
                best = max(float(det.score[0]), 0.0 if np.isnan(best) else best)
        return best

    def close(self) -> None:
        for graph in (self._mesh, self._detector, self._segmenter):
            graph.close()
