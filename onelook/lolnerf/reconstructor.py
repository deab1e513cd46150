"""Using a trained LOLNeRF model: lift a new photo to 3D by fitting its latent, then render it from anywhere.

The model's frame: the training world (cameras from `fit_cameras`: +Z up, the object's front facing -Y)
shifted so that the centre of the mean object's foreground is the origin. All cameras given to or returned by
this module are in that frame, OpenGL convention, with the principal point at the image centre.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from nerfstudio.cameras.rays import RayBundle
from tqdm import trange

from onelook.cameras.geometry import look_at, orbit_positions, turn_about_origin, viewing_angles
from onelook.cameras.pose import estimate_pose
from onelook.data.crop import crop_principal_point, crop_square, keypoint_crop_box
from onelook.data.images import load_image
from onelook.export.mesh import SURFACE_DENSITY, extract_mesh
from onelook.model_components.losses import mask_loss
from onelook.models.lolnerf import LOLNeRFModel
from onelook.rendering import pinhole_cameras, render_view
from onelook.runs import load_run


class Reconstructor:
    """A trained LOLNeRF model, frozen, ready to fit photos (`fit`) or make new identities (`sample`)."""

    def __init__(self, model: LOLNeRFModel):
        self.model = model.eval()
        self.model.requires_grad_(False)
        self.device = next(model.parameters()).device
        self.origin = self._object_centre()

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str | torch.device | None = None) -> Reconstructor:
        """Loads `ns-train lolnerf*` output (the folder with config.yml, or one above it); the dataset is not
        needed. Files are read without executing anything they contain (see `onelook.runs`)."""
        return cls(load_run(Path(run_dir), LOLNeRFModel, device).model)

    @property
    def latent_dim(self) -> int:
        return self.model.latents.latent_dim

    @property
    def canonical_keypoints(self) -> np.ndarray:
        """(K, 3) in the model's frame."""
        return self.model.canonical_keypoints.cpu().numpy() - self.origin

    def query(self, points: torch.Tensor, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Foreground density and colour at world points; zero density outside the scene sphere, where the
        field was never trained."""
        density, rgb = self.model.foreground.query(points, latent)
        inside = points.norm(dim=-1, keepdim=True) <= self.model.scene_radius
        return density * inside, rgb

    @torch.no_grad()
    def _object_centre(self, resolution: int = 40) -> np.ndarray:
        """Centroid of the mean latent's foreground (world coordinates); the origin if it has none yet."""
        radius = self.model.scene_radius
        axis = torch.linspace(-radius, radius, resolution, device=self.device)
        points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
        density, _ = self.query(points, self.model.latents.mean())
        inside = density[:, 0] > SURFACE_DENSITY
        return points[inside].mean(dim=0).cpu().numpy() if inside.any() else np.zeros(3)

    def to_world(self, camera_to_world: np.ndarray) -> np.ndarray:
        c2w = np.array(camera_to_world, dtype=np.float64)
        c2w[..., :3, 3] += self.origin
        return c2w

    def render(
        self,
        latent: torch.Tensor,
        camera_to_world: np.ndarray,
        focal_length: float,
        size,
        principal_point: tuple[float, float] | None = None,
    ) -> dict:
        """rgb (H, W, 3) in [0, 1], depth (H, W) along the optical axis, alpha (H, W): numpy arrays.
        `principal_point` (x, y) in pixels, default the image's centre (a prepared crop's is its `cx`, `cy`)."""
        return render_view(
            self.model, self.to_world(camera_to_world), focal_length, size, {"latent": latent}, principal_point
        )

    def fit(self, image, **options) -> Reconstruction:
        """Lifts one photo to 3D; see `fit_steps` for the options."""
        return deque(self.fit_steps(image, **options), maxlen=1)[0][1]  # the last item holds the result

    def fit_steps(
        self,
        image,
        landmarks: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        steps: int = 300,
        learning_rate: float = 1e-2,
        rays_per_step: int = 1024,
        mask_weight: float = 1.0,
        seed: int = 0,
        focal_length: float | None = None,
        show_progress: bool = True,
        placement: PhotoPlacement | None = None,
        more_views: Sequence[PlacedPhoto] = (),
    ) -> Iterator[tuple[int, Reconstruction | None]]:
        """Lifts one photo (a path or an (H, W, 3) uint8 array) to 3D, as in the paper's test time, yielding
        (step, None) after each optimisation step, then (steps, the Reconstruction); stopping the iteration
        stops the work (the demo app's Stop button):

        1. keypoints (MediaPipe's five face landmarks unless `landmarks` (K, 2) pixels are given) place the
           camera against the model's canonical keypoints, with the photo's `focal_length` (pixels) if given,
           else its EXIF one when `image` is a file that has it, else the focal length the training crops had;
           a known `placement` (a calibrated camera and its crop box) is used as it is instead, and then
           `landmarks` are not needed;
        2. the photo is cropped the way training photos were, and a new latent, starting at the mean of the
           training latents, is optimised on its pixels with the network frozen (RGB loss, plus the mask loss
           when a mask is given or detected).

        `more_views`: other photos of the same object at known placements (a camera rig; a model's capacity in
        a benchmark); the latent is fitted on all their pixels together, and the result keeps the first
        photo's camera.
        """
        loaded = load_image(image) if isinstance(image, (str, Path)) else None
        rgb = loaded.rgb if loaded is not None else _as_rgb(image)
        if landmarks is None and placement is None:
            from onelook.landmarks.mediapipe_face import FaceLandmarker

            detector = FaceLandmarker()
            try:
                detection = detector.detect(rgb)
            finally:
                detector.close()
            landmarks = detection.keypoints
            mask = detection.mask if mask is None else mask
        if focal_length is None and loaded is not None:
            focal_length = loaded.focal_length
        if placement is None:
            placement = self.locate(landmarks, rgb.shape[:2], focal_length)
        views = [self._view_pixels(PlacedPhoto(rgb, placement, mask)), *map(self._view_pixels, more_views)]
        rays = RayBundle(
            **{
                key: torch.cat([getattr(v.rays, key) for v in views])
                for key in ("origins", "directions", "pixel_area", "camera_indices")
            }
        )
        target = torch.cat([v.rgb for v in views])
        has_mask = torch.cat([torch.full((len(v.rgb),), v.mask is not None, device=self.device) for v in views])
        target_mask = torch.cat([v.mask if v.mask is not None else torch.zeros_like(v.rgb[:, :1]) for v in views])
        offsets = np.cumsum([0] + [len(v.rgb) for v in views[:-1]])
        pixels = torch.cat([v.pixels + int(offset) for v, offset in zip(views, offsets, strict=True)])

        generator = torch.Generator(device="cpu").manual_seed(seed)
        latent = self.model.latents.mean().detach().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([latent], lr=learning_rate)
        losses = []
        for step in trange(steps, desc="fitting latent", disable=not show_progress):
            pick = pixels[torch.randint(len(pixels), (min(rays_per_step, len(pixels)),), generator=generator)]
            bundle = rays[pick]
            bundle.metadata = {"latent": latent.expand(len(pick), -1)}
            outputs = self.model.get_outputs(bundle)
            loss = F.mse_loss(outputs["rgb"], target[pick])
            masked = pick[has_mask[pick]]
            if len(masked):
                accumulation = outputs["accumulation"][has_mask[pick]]
                loss = loss + mask_weight * mask_loss(accumulation, target_mask[masked]) * len(masked) / len(pick)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            yield step, None
        c2w = self.to_model_frame(placement.camera_to_world)
        result = Reconstruction(self, latent.detach(), c2w, placement.focal_length, rgb.shape[:2], losses)
        yield steps, result

    def _view_pixels(self, photo: PlacedPhoto) -> _ViewPixels:
        """A photo cropped the way training photos were, as rays (the photo's camera with the crop's scale and
        offset: an off-centre principal point) and their target colours and mask; `pixels` are the crop's
        pixels that lie inside the photo."""
        rgb = _as_rgb(photo.rgb)
        height, width = rgb.shape[:2]
        x0, y0, side = photo.placement.crop_box
        crop_size = self.model.crop.size
        scale = crop_size / side
        principal_point = crop_principal_point((height, width), x0, y0, side, crop_size)
        crop_focal = photo.placement.focal_length * scale
        camera = pinhole_cameras(photo.placement.camera_to_world, crop_focal, crop_size, principal_point, self.device)
        target = torch.as_tensor(crop_square(rgb, x0, y0, side, crop_size) / 255.0, dtype=torch.float32)
        centres = (np.arange(crop_size) + 0.5) / scale
        inside_x = (centres + x0 >= 0) & (centres + x0 < width)
        inside_y = (centres + y0 >= 0) & (centres + y0 < height)
        mask = None
        if photo.mask is not None:
            crop = crop_square(np.asarray(photo.mask, dtype=np.float32), x0, y0, side, crop_size) > 0.5
            mask = torch.as_tensor(crop, device=self.device).reshape(-1, 1)
        return _ViewPixels(
            camera.generate_rays(camera_indices=0, keep_shape=False),
            target.reshape(-1, 3).to(self.device),
            mask,
            torch.as_tensor(np.flatnonzero(np.outer(inside_y, inside_x)), device=self.device),
        )

    def locate(
        self, landmarks: np.ndarray, image_size: tuple[int, int], focal_length: float | None = None
    ) -> PhotoPlacement:
        """Where a photo of (H, W) `image_size` sits against the model, from its keypoints (K, 2) in pixels:
        the crop training photos would have had, and the camera placing the canonical keypoints on them, with
        the photo's `focal_length` in pixels when known (EXIF), else the one the training crops had."""
        landmarks = np.asarray(landmarks, dtype=np.float64)
        canonical = self.model.canonical_keypoints.cpu().numpy()
        if landmarks.shape != canonical.shape[:1] + (2,):
            raise ValueError(f"the model has {len(canonical)} keypoints; got landmarks of shape {landmarks.shape}")
        if focal_length is not None and not (np.isfinite(focal_length) and focal_length > 0):
            raise ValueError(f"focal_length must be positive pixels, got {focal_length!r}")
        crop = self.model.crop
        x0, y0, side = keypoint_crop_box(landmarks, crop.scale)
        focal = crop.focal * side / crop.size if focal_length is None else float(focal_length)
        c2w, residual = estimate_pose(canonical, landmarks, focal, image_size)
        return PhotoPlacement(c2w, focal, (x0, y0, side), residual, viewing_angles(self.to_model_frame(c2w)))

    def to_model_frame(self, camera_to_world: np.ndarray) -> np.ndarray:
        c2w = np.array(camera_to_world, dtype=np.float64)
        c2w[..., :3, 3] -= self.origin
        return c2w

    def reconstruction(self, latent: torch.Tensor, yaw: float = 0.0, pitch: float = 0.0) -> Reconstruction:
        """A latent (sampled, interpolated, ...) seen from a training-like camera at `yaw`/`pitch` degrees."""
        size = self.model.crop.size
        c2w, focal = self.orbit_camera(yaw, pitch)
        return Reconstruction(self, latent.to(self.device), c2w, focal, (size, size))

    def orbit_camera(self, yaw: float, pitch: float, distance: float | None = None) -> tuple[np.ndarray, float]:
        """A camera looking at the origin from `yaw` (around +Z, 0 = front) and `pitch` degrees, at the
        training cameras' typical distance and focal length (model frame)."""
        distance = self.typical_distance if distance is None else distance
        return look_at(orbit_positions(yaw, pitch, distance)[None])[0], self.model.crop.focal

    @property
    def typical_distance(self) -> float:
        """How far training cameras were from the object: from the crop geometry and keypoint spread."""
        crop = self.model.crop
        keypoints = self.canonical_keypoints
        extent = float((keypoints.max(axis=0) - keypoints.min(axis=0))[[0, 2]].max())  # as seen from the front
        return crop.focal * extent * crop.scale / crop.size

    def interpolate(self, first: Reconstruction, second: Reconstruction, frames: int = 12) -> list[np.ndarray]:
        """Views (front, training-like camera, crop size) of latents blended from `first`'s to `second`'s."""
        size = self.model.crop.size
        c2w, focal = self.orbit_camera(0.0, 0.0)
        blends = [torch.lerp(first.latent, second.latent, t) for t in np.linspace(0.0, 1.0, frames)]
        return [self.render(latent, c2w, focal, size)["rgb"] for latent in blends]

    def sample(self, num: int, truncation: float = 0.7, seed: int = 0) -> list[Reconstruction]:
        """New identities from the latent distribution, pulled towards the mean by `truncation`."""
        generator = torch.Generator(device=self.device).manual_seed(seed)
        latents = self.model.latents.sample(num, truncation, generator)
        return [self.reconstruction(z) for z in latents]


@dataclass
class PlacedPhoto:
    """A photo of an object with its known placement against the model (`fit_steps`' `more_views`)."""

    rgb: np.ndarray  # (H, W, 3) uint8
    placement: PhotoPlacement
    mask: np.ndarray | None = None  # (H, W) foreground, for the mask loss


@dataclass
class _ViewPixels:
    rays: RayBundle  # one per pixel of the crop
    rgb: torch.Tensor  # (N, 3) target colours in [0, 1]
    mask: torch.Tensor | None  # (N, 1) bool foreground
    pixels: torch.Tensor  # indices of the rays whose pixels lie inside the photo


@dataclass
class PhotoPlacement:
    """A photo against a LOLNeRF model (`Reconstructor.locate`)."""

    camera_to_world: np.ndarray  # (4, 4) the photo's camera, training world frame, OpenGL convention
    focal_length: float  # pixels of the photo
    crop_box: tuple[float, float, float]  # (x0, y0, side) in the photo's pixels: how training photos were cropped
    residual_px: float  # mean keypoint reprojection error
    yaw_pitch_deg: tuple[float, float]  # where the camera looks from (`viewing_angles`, model frame)


@dataclass
class Reconstruction:
    """One object (a latent) from a LOLNeRF model, with the camera of the photo it came from (if any)."""

    reconstructor: Reconstructor
    latent: torch.Tensor
    camera_to_world: np.ndarray  # (4, 4) the photo's camera, model frame, OpenGL convention
    focal_length: float  # pixels of the photo
    image_size: tuple[int, int]  # (H, W) of the photo
    fit_losses: list[float] = field(default_factory=list)

    def render(self, camera_to_world: np.ndarray, focal_length: float, size) -> dict[str, np.ndarray]:
        """Renders from any camera (model frame); `size` is an int (square) or (H, W)."""
        return self.reconstructor.render(self.latent, camera_to_world, focal_length, size)

    def camera_at(self, yaw: float, pitch: float) -> tuple[np.ndarray, float]:
        """The photo's camera turned by `yaw` (around +Z) and `pitch` degrees about the object's centre."""
        return turn_about_origin(self.camera_to_world, yaw, pitch), self.focal_length

    def turntable_cameras(self, frames: int = 24, yaw_range: float = 35.0) -> list[tuple[np.ndarray, float]]:
        """Swings the photo's camera left and right by `yaw_range` degrees (the range single views cover)."""
        return [self.camera_at(yaw_range * np.sin(2 * np.pi * i / frames), 0.0) for i in range(frames)]

    def turntable(self, path: Path | None = None, frames: int = 24, size=None, fps: int = 12) -> list[np.ndarray]:
        """Renders the turntable; writes it to `path` (.mp4 or .gif) when given."""
        from onelook.export.images import write_video

        size = self.image_size if size is None else size
        height = size if isinstance(size, int) else size[0]
        scale = height / self.image_size[0]
        views = [self.render(c2w, focal * scale, size)["rgb"] for c2w, focal in self.turntable_cameras(frames)]
        if path is not None:
            write_video(views, Path(path), fps=fps)
        return views

    def mesh(self, resolution: int = 128, level: float = SURFACE_DENSITY) -> trimesh.Trimesh:
        """Marching cubes on the foreground density; vertex colours; model frame."""
        recon = self.reconstructor
        latent = self.latent.to(recon.device)
        origin = torch.as_tensor(recon.origin, dtype=torch.float32, device=recon.device)

        def density_and_colour(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return recon.query(points + origin, latent)

        radius = recon.model.scene_radius
        return extract_mesh(density_and_colour, np.zeros(3), radius, resolution, level, recon.device)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image[..., :3])
