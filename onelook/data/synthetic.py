"""Procedural object categories with exact ground truth, rendered on the CPU (`onelook synth`).

- heads: an ellipsoid head with a nose, eyes, a mouth and a hair cap, with random proportions and colours.
  Its five keypoints sit at the same semantic places as the face landmarks used for real photos (outer eye
  corners, nose tip, mouth corners).
- animals and cars: keypoints elsewhere (ear tips, eyes and nose; headlights,
  mirrors and the top of the windscreen), other focal lengths and view ranges, so that no setting of the
  camera fit or the model is tuned to one category.

The objects themselves are in `onelook.data.synthetic_objects`; this module photographs them.

The whole LOLNeRF data path can be checked against true cameras, depth, masks and meshes. Rendering is ray
casting with open3d's RaycastingScene (no display or GPU needed). Identity i of a seed and category is the
same whatever else is generated, so held-out identities can be re-rendered from any camera for evaluation.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import open3d as o3d
from PIL import Image
from tqdm import tqdm

from onelook.cameras.geometry import look_at, orbit_positions, project
from onelook.data.images import focal_length_exif
from onelook.data.keypoint_categories import KeypointViews
from onelook.data.synthetic_objects import SynthAnimal, SynthCar, SynthHead

FOCAL_FACTOR = 2.0  # the heads' focal length in pixels = FOCAL_FACTOR * image size (a 28 degree field of view)
_LIGHT = np.array([0.4, -0.8, 0.6]) / np.linalg.norm([0.4, -0.8, 0.6])


SynthObject = SynthHead | SynthAnimal | SynthCar


@dataclass(frozen=True)
class SynthCategory:
    """What a category's identities are and how they are photographed: each from one random view around its
    front at `distance`, with a focal length of `focal_factor` times the image side."""

    object_type: type[SynthObject]
    focal_factor: float
    distance: float  # world units; the front of every object faces -Y
    yaw_range: tuple[float, float]  # degrees
    pitch_range: tuple[float, float]
    roll_range: tuple[float, float]

    @property
    def keypoint_names(self) -> tuple[str, ...]:
        return self.object_type.KEYPOINT_NAMES


CATEGORIES = {
    "heads": SynthCategory(SynthHead, FOCAL_FACTOR, 4.5, (-35.0, 35.0), (-15.0, 20.0), (-8.0, 8.0)),
    # A wide lens close up (a 45 degree field of view), looked at from a little below to well above.
    "animals": SynthCategory(SynthAnimal, 1.2, 2.2, (-40.0, 40.0), (-10.0, 25.0), (-10.0, 10.0)),
    # A long lens from afar (a 19 degree field of view), from the ground up to a first floor's height.
    "cars": SynthCategory(SynthCar, 3.0, 11.0, (-30.0, 30.0), (0.0, 25.0), (-4.0, 4.0)),
}


@dataclass
class Render:
    rgb: np.ndarray  # (H, W, 3) float in [0, 1]
    mask: np.ndarray  # (H, W) bool
    depth: np.ndarray  # (H, W) float32, distance along the optical axis; 0 on the background


def render(
    head: SynthObject, camera_to_world: np.ndarray, focal: float, size: int, light: np.ndarray | None = _LIGHT
) -> Render:
    """Ray casts one view of an object (OpenGL camera-to-world, square image of `size` pixels), lit from the
    unit direction `light` (world frame); None: its plain colours (albedo)."""
    mesh = head.mesh()
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(mesh))
    centres = np.arange(size) + 0.5
    u, v = np.meshgrid(centres, centres)
    # Directions with a unit component along the optical axis: the hit distance is then the depth.
    dirs_cam = np.stack([(u - size / 2) / focal, -(v - size / 2) / focal, -np.ones_like(u)], axis=-1)
    dirs = dirs_cam @ camera_to_world[:3, :3].T
    origins = np.broadcast_to(camera_to_world[:3, 3], dirs.shape)
    rays = o3d.core.Tensor(np.concatenate([origins, dirs], axis=-1).astype(np.float32))
    hits = scene.cast_rays(rays)
    t_hit = hits["t_hit"].numpy()
    mask = np.isfinite(t_hit)
    prim = np.where(mask, hits["primitive_ids"].numpy(), 0).astype(np.int64)
    bary = hits["primitive_uvs"].numpy()
    tris = np.asarray(mesh.triangles)[prim]  # (H, W, 3) vertex ids
    weights = np.stack([1.0 - bary[..., 0] - bary[..., 1], bary[..., 0], bary[..., 1]], axis=-1)[..., None]
    albedo = (weights * np.asarray(mesh.vertex_colors)[tris]).sum(axis=2)
    normals = (weights * np.asarray(mesh.vertex_normals)[tris]).sum(axis=2)  # smooth shading
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True).clip(min=1e-9)
    shade = np.ones(mask.shape) if light is None else 0.35 + 0.65 * np.clip(normals @ light, 0.0, 1.0)
    rgb = np.where(mask[..., None], albedo * shade[..., None], np.array(head.background))
    depth = np.where(mask, t_hit, 0.0).astype(np.float32)
    return Render(rgb=np.clip(rgb, 0.0, 1.0), mask=mask, depth=depth)


def sample_view(
    rng: np.random.Generator, category: SynthCategory = CATEGORIES["heads"]
) -> tuple[np.ndarray, dict[str, float]]:
    """A random camera-to-world from the category's view distribution, and its yaw/pitch/roll."""
    yaw, pitch = rng.uniform(*category.yaw_range), rng.uniform(*category.pitch_range)
    roll = rng.uniform(*category.roll_range)
    target = rng.uniform(-0.05, 0.05, 3)
    c2w = look_at(orbit_positions(yaw, pitch, category.distance) + target, target)[0]
    c, s = np.cos(np.radians(roll)), np.sin(np.radians(roll))
    c2w[:3, :3] = c2w[:3, :3] @ np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return c2w, {"yaw": float(yaw), "pitch": float(pitch), "roll": float(roll)}


def identity(seed: int, index: int, category: str = "heads") -> tuple[SynthObject, np.ndarray, dict[str, float]]:
    """Identity `index` of `category` drawn with `seed`, and the camera of its one training view."""
    kind = _category(category)
    rng = np.random.default_rng([seed, index] if category == "heads" else [seed, index, _CATEGORY_STREAMS[category]])
    head = kind.object_type.sample(rng)
    c2w, angles = sample_view(rng, kind)
    return head, c2w, angles


def keypoint_views(category: str, num: int, size: int = 64, seed: int = 0) -> KeypointViews:
    """The keypoints of `num` identities of a category in their one view each, with everything a camera fit can
    be checked against (no rendering: a test bed for `fit_cameras`)."""
    kind = _category(category)
    focal = kind.focal_factor * size
    objects, cameras = zip(*(identity(seed, i, category)[:2] for i in range(num)), strict=True)
    keypoints, c2w = np.array([o.keypoints() for o in objects]), np.array(cameras)
    landmarks = np.concatenate(
        [project(k, c[None], focal, (size, size))[0] for k, c in zip(keypoints, c2w, strict=True)]
    )
    return KeypointViews(landmarks, c2w, focal, (size, size), keypoints, keypoints.mean(axis=0))


# Other categories draw from streams of their own, so that the heads' identities stay what they always were.
_CATEGORY_STREAMS = {"animals": 1, "cars": 2}


def _category(name: str) -> SynthCategory:
    if name not in CATEGORIES:
        raise ValueError(f"unknown category {name!r}; choose one of {', '.join(CATEGORIES)}")
    return CATEGORIES[name]


def generate(
    n: int,
    size: int,
    seed: int,
    out: Path,
    category: str = "heads",
    show_progress: bool = True,
    exif_focal: bool = False,
) -> Path:
    """Writes n single views (one per identity) with images, masks, depth, true cameras and keypoints.

    Layout: images/, masks/, depth/ (float32 .npy), synth.json (everything true), and landmarks.json (file
    name -> 5 [x, y] pixel keypoints), which `onelook prepare --landmarks` reads. `exif_focal`: the images
    carry the true focal length in their EXIF, as a camera's photos do, so `onelook prepare` fits the cameras
    at it instead of estimating it (off, the focal length is left to the landmarks, as with photos that lost
    their EXIF).
    """
    kind = _category(category)
    if n < 1 or size < 16:
        raise ValueError(f"need n >= 1 and size >= 16, got n={n}, size={size}")
    out = Path(out)
    for sub in ("images", "masks", "depth"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    focal = kind.focal_factor * size
    frames, landmarks = [], {}
    for i in tqdm(range(n), desc=f"rendering synthetic {category}", disable=not show_progress):
        head, c2w, angles = identity(seed, i, category)
        view = render(head, c2w, focal, size)
        name = f"{i:05d}.png"
        exif = focal_length_exif(focal, size, size) if exif_focal else None
        Image.fromarray((view.rgb * 255).round().astype(np.uint8)).save(out / "images" / name, exif=exif)
        Image.fromarray(view.mask.astype(np.uint8) * 255).save(out / "masks" / name)
        np.save(out / "depth" / f"{i:05d}.npy", view.depth)
        keypoints_3d = head.keypoints()
        keypoints_2d = project(keypoints_3d, c2w[None], focal, (size, size))[0][0]
        landmarks[name] = keypoints_2d.tolist()
        frames.append(
            {
                "file": name,
                "identity": i,
                "camera_to_world": c2w.tolist(),
                "angles": angles,
                "keypoints_2d": keypoints_2d.tolist(),
                "keypoints_3d": keypoints_3d.tolist(),
                "object": asdict(head),
            }
        )
    meta = {
        "seed": seed,
        "category": category,
        "image_size": [size, size],
        "focal_length": focal,
        "keypoint_names": list(kind.keypoint_names),
        "frames": frames,
    }
    (out / "synth.json").write_text(json.dumps(meta, indent=1))
    (out / "landmarks.json").write_text(json.dumps(landmarks, indent=1))
    return out
