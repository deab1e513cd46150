"""The per-image step of dataset preparation: load, find keypoints and mask, crop, save, record.

It runs in worker processes, so it imports nothing heavy (no torch). Each image ends in a small JSON record,
written last and atomically: a record on disk means that image's work is complete, which is what makes a
re-run after an interruption skip it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from onelook.data.crop import crop_principal_point, crop_square, keypoint_crop_box
from onelook.data.images import ImageError, load_image

_landmarker = None  # one MediaPipe FaceLandmarker per worker process


@dataclass
class ImageJob:
    source: Path  # the user's image file
    name: str  # output file stem, unique in the dataset
    out: Path  # dataset folder
    size: int
    crop_scale: float
    keypoints: list | None = None  # K [x, y] pairs from landmarks.json (None entries: missing); None: detect
    mask: Path | None = None  # user mask file


@dataclass
class ImageRecord:
    source: str
    status: str  # "ok" or "error"
    reason: str = ""
    image: str | None = None  # paths relative to the dataset folder
    mask: str | None = None
    keypoints: list | None = None  # (K, 2) in the crop's pixels; None for a missing keypoint
    confidence: float | None = None
    num_faces: int | None = None
    crop_box: list | None = None  # [x0, y0, side] in the loaded image's pixels (upright, at most MAX_SIDE)
    focal_length: float | None = None  # pixels of the crop, from the photo's EXIF; None when unknown
    # [x, y] in the crop's pixels: the photo's centre, where its camera's axis meets the image. The crop is
    # centred on the keypoints, not on the photo, so this is rarely the crop's centre.
    principal_point: list | None = None
    notes: list[str] = field(default_factory=list)

    @staticmethod
    def path(out: Path, name: str) -> Path:
        return out / "records" / f"{name}.json"

    def save(self, out: Path, name: str) -> None:
        path = self.path(out, name)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, path)

    @classmethod
    def load(cls, out: Path, name: str) -> ImageRecord | None:
        try:
            return cls(**json.loads(cls.path(out, name).read_text()))
        except (OSError, ValueError, TypeError):
            return None


def init_worker(detect_faces: bool) -> None:
    global _landmarker
    if detect_faces and _landmarker is None:
        from onelook.landmarks.mediapipe_face import FaceLandmarker

        _landmarker = FaceLandmarker()


def process(job: ImageJob) -> ImageRecord:
    """Never raises for bad input: the record says what went wrong."""
    try:
        record = _process(job)
    except (ImageError, ValueError) as exc:
        record = ImageRecord(source=job.source.name, status="error", reason=str(exc))
    except Exception as exc:  # an unexpected failure on one file must not stop the others
        record = ImageRecord(source=job.source.name, status="error", reason=f"{type(exc).__name__}: {exc}")
    record.save(job.out, job.name)
    return record


def _process(job: ImageJob) -> ImageRecord:
    from onelook.landmarks.mediapipe_face import NoFaceError

    loaded = load_image(job.source)
    notes = list(loaded.notes)
    height, width = loaded.rgb.shape[:2]
    confidence, num_faces, mask = None, None, None
    if job.keypoints is None:
        init_worker(detect_faces=True)
        try:
            detection = _landmarker.detect(loaded.rgb)
        except NoFaceError as exc:
            raise ValueError("no face found by MediaPipe Face Mesh") from exc
        keypoints = detection.keypoints
        confidence = None if math.isnan(detection.confidence) else detection.confidence
        num_faces = detection.num_faces
        if num_faces > 1:
            notes.append(f"{num_faces} faces found; used the largest")
        mask = detection.mask
    else:
        keypoints = parse_keypoints(job.keypoints)
        keypoints = keypoints * np.array([width, height]) / np.array(loaded.original_size)
    if job.mask is not None:
        mask = load_mask(job.mask, (height, width))
    elif loaded.alpha is not None:
        mask = loaded.alpha
        notes.append("used the image's alpha channel as the foreground mask")

    x0, y0, side = keypoint_crop_box(keypoints, job.crop_scale)
    if side < job.size / 2:
        notes.append(f"object is small ({side:.0f} px crop); upscaled to {job.size} px")
    image_rel = f"images/{job.name}.png"
    crop = crop_square(loaded.rgb, x0, y0, side, job.size)
    Image.fromarray(crop).save(job.out / image_rel)
    mask_rel = None
    if mask is not None:
        mask_rel = f"masks/{job.name}.png"
        mask_crop = crop_square((mask * 255).astype(np.uint8), x0, y0, side, job.size)
        Image.fromarray(np.where(mask_crop >= 128, 255, 0).astype(np.uint8)).save(job.out / mask_rel)
    crop_keypoints = (keypoints - np.array([x0, y0])) * (job.size / side)
    return ImageRecord(
        source=job.source.name,
        status="ok",
        image=image_rel,
        mask=mask_rel,
        keypoints=[None if not np.isfinite(p).all() else [float(p[0]), float(p[1])] for p in crop_keypoints],
        confidence=confidence,
        num_faces=num_faces,
        crop_box=[float(x0), float(y0), float(side)],
        focal_length=None if loaded.focal_length is None else loaded.focal_length * job.size / side,
        principal_point=list(crop_principal_point((height, width), x0, y0, side, job.size)),
        notes=notes,
    )


def parse_keypoints(raw: list) -> np.ndarray:
    """A landmarks-file entry, K [x, y] pairs (None: missing), as (K, 2) floats with NaN where missing; a
    ValueError says what is wrong with it."""
    try:
        pts = np.array([[np.nan, np.nan] if p is None else [float(p[0]), float(p[1])] for p in raw])
    except (TypeError, ValueError, IndexError) as exc:
        raise ValueError(f"landmarks must be a list of [x, y] pairs, got {str(raw)[:80]}") from exc
    if pts.ndim != 2 or len(pts) < 5:
        raise ValueError(f"need at least 5 keypoints per image, got {len(pts)}")
    if np.isfinite(pts).all(axis=1).sum() < 4:
        raise ValueError("fewer than 4 keypoints are present")
    return pts


def load_mask(path: Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A mask file as floats in [0, 1]: its alpha channel if it has one, else its grey level; checked against
    the image's (H, W) `shape` when given."""
    loaded = load_image(path)
    mask = loaded.rgb.mean(axis=2) / 255.0 if loaded.alpha is None else loaded.alpha
    if shape is not None and mask.shape != shape:
        raise ValueError(f"mask {path.name} is {mask.shape[1]}x{mask.shape[0]}, the image {shape[1]}x{shape[0]}")
    return mask
