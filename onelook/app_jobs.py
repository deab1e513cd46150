"""What the demo app's worker process does: each reconstruction, from the uploaded file to the exported files.

`AppJobs` is built once per worker process (`onelook.worker`): it loads the LOLNeRF model there and keeps it,
and the diffusion prior stays loaded after its first use (`shared_prior`). Each job decodes its
upload once, yields `JobUpdate`s, and ends with a `JobResult` of plain data (paths, lists). A reason the
visitor can act on (a bad file, no face) is raised as `JobError`. Nothing here imports gradio.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onelook.assets import DEMO_MODEL, EXAMPLES
from onelook.data.images import ImageError, LoadedImage, load_image
from onelook.data.object_image import prepare_object_image
from onelook.export import export_all
from onelook.export.images import write_video
from onelook.guidance.stable_diffusion import PriorUnavailableError
from onelook.landmarks.mediapipe_face import FaceLandmarker, NoFaceError
from onelook.lolnerf import Reconstruction, Reconstructor
from onelook.realfusion.train import QUALITY, train_realfusion
from onelook.runs import UnsafeRunConfigError
from onelook.worker import JobError, JobResult, JobUpdate

UPLOAD_MAX_SIDE = 2048  # uploads are decoded at most this large (JPEGs straight at a reduced scale)


@dataclass(frozen=True)
class FitQuality:
    """Sizes of one LOLNeRF photo fit in the app."""

    steps: int  # latent optimisation steps
    image_size: int  # longest side of the rendered results
    mesh_resolution: int


LOLNERF_QUALITY = {
    "preview": FitQuality(10, 32, 32),
    "quick": FitQuality(100, 48, 64),
    "standard": FitQuality(300, 96, 128),
    "high": FitQuality(800, 128, 256),
}


def load_upload(path: str | Path | None) -> LoadedImage:
    """The uploaded file through onelook's loader; every bad input becomes a JobError the visitor can read."""
    if not path:
        raise JobError("Upload a photo first (or pick an example).")
    try:
        return load_image(path, max_side=UPLOAD_MAX_SIDE)
    except ImageError as exc:
        raise JobError(f"This file cannot be used: {exc}.") from exc


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class ExampleKeypoints:
    """The bundled examples' known keypoints, found by the file's content (a visitor's file that merely shares
    an example's name gets detected keypoints, like any other photo)."""

    def __init__(self, folder: Path = EXAMPLES):
        known = folder / "landmarks.json"
        table = json.loads(known.read_text()) if known.is_file() else {}
        self._by_digest = {file_digest(folder / name): points for name, points in table.items()}

    def find(self, path: str | Path) -> np.ndarray | None:
        points = self._by_digest.get(file_digest(path))
        return None if points is None else np.array(points, dtype=float)


def face_keypoints(path: str | Path, rgb: np.ndarray, examples: ExampleKeypoints):
    """(keypoints (5, 2), mask or None): an example's known keypoints, else MediaPipe's five face landmarks."""
    known = examples.find(path)
    if known is not None:
        return known, None
    detector = FaceLandmarker()
    try:
        detection = detector.detect(rgb)
    except NoFaceError as exc:
        raise JobError("No face was found in this photo. Try a clear, front-facing photo of one face.") from exc
    finally:
        detector.close()
    return detection.keypoints, detection.mask


def load_reconstructor(run: Path, device: str | None):
    """(Reconstructor, None), or (None, the reason in words) when `run` holds no usable LOLNeRF model."""
    try:
        return Reconstructor.from_run(run, device=device), None
    except (FileNotFoundError, ValueError, KeyError, RuntimeError, UnsafeRunConfigError) as exc:
        return None, f"No LOLNeRF model could be loaded from {run} ({exc}). Start the app with --lolnerf-run DIR."


class AppJobs:
    """The app's reconstructions; see the module docstring."""

    def __init__(self, sd_model: str | None, lolnerf_run: Path | None, device: str | None):
        self.sd_model, self.device = sd_model, device
        self.reconstructor, self.lolnerf_error = load_reconstructor(lolnerf_run or DEMO_MODEL, device)
        self.examples = ExampleKeypoints()

    def reconstruct_object(
        self, path: str, object_fraction: float, quality: str, seed: int, out: Path
    ) -> Iterator[JobUpdate | JobResult]:
        """RealFusion on one photo: (status text), then the exported files' paths by name."""
        if self.sd_model is None:
            raise JobError("No diffusion model is set: start the app with --sd-model ID_OR_FOLDER (or --prior tiny).")
        preset = QUALITY[quality]
        try:
            prepared = prepare_object_image(load_upload(path), size=preset.image_size, object_fraction=object_fraction)
        except ImageError as exc:
            raise JobError(f"This photo cannot be used: {exc}.") from exc
        result = None
        try:
            for update in train_realfusion(
                prepared, out, preset, self.sd_model, seed=seed, device=self.device, object_fraction=object_fraction
            ):
                result = update.result
                yield JobUpdate(update.stage, update.step, update.total)
        except PriorUnavailableError as exc:
            raise JobError(str(exc)) from exc
        yield JobUpdate("exporting", preset.iterations, preset.iterations)
        paths = export_all(result, out / "export", mesh_resolution=preset.mesh_resolution)
        yield JobResult({name: str(p) for name, p in paths.items()})

    def _model(self):
        if self.reconstructor is None:
            raise JobError(self.lolnerf_error)
        return self.reconstructor

    def _fit(self, path: str, steps: int, seed: int, stage: str) -> Generator[JobUpdate, None, Reconstruction]:
        """Fits one photo, yielding a JobUpdate per step; returns the Reconstruction (`yield from` gives it)."""
        recon = self._model()
        upload = load_upload(path)
        keypoints, mask = face_keypoints(path, upload.rgb, self.examples)
        fitting = recon.fit_steps(
            upload.rgb, keypoints, mask, focal_length=upload.focal_length, steps=steps, seed=seed, show_progress=False
        )
        for step, result in fitting:
            if result is None:
                yield JobUpdate(stage, step, steps)
        return result

    def reconstruct_face(self, path: str, quality: str, seed: int, out: Path) -> Iterator[JobUpdate | JobResult]:
        """LOLNeRF on one photo: the exported files' paths, and the state the angle sliders render from."""
        preset = LOLNERF_QUALITY[quality]
        result = yield from self._fit(path, preset.steps, seed, "fitting the photo's latent code")
        yield JobUpdate("rendering and meshing", preset.steps, preset.steps)
        paths = export_all(result, out, mesh_resolution=preset.mesh_resolution, max_size=preset.image_size)
        state = {
            "latent": result.latent.cpu().numpy().tolist(),
            "c2w": result.camera_to_world.tolist(),
            "focal": result.focal_length,
            "size": list(result.image_size),
            "max_size": preset.image_size,
        }
        yield JobResult({"paths": {name: str(p) for name, p in paths.items()}, "state": state})

    def interpolate_faces(self, path_a: str, path_b: str, quality: str, out: Path) -> Iterator[JobUpdate | JobResult]:
        """A video morphing from one photo's fitted object to the other's."""
        steps = LOLNERF_QUALITY[quality].steps
        fitted = []
        for i, path in enumerate((path_a, path_b)):
            fitted.append((yield from self._fit(path, steps, 0, f"fitting photo {i + 1} of 2")))
        yield JobUpdate("rendering", steps, steps)
        frames = self._model().interpolate(fitted[0], fitted[1], frames=12)
        yield JobResult(str(write_video(frames + frames[::-1], out / "interpolation.mp4", fps=8)))
