"""RealFusion's test bed (`onelook synth --category objects`): procedural objects whose back differs from their
front, photographed from all around with exact cameras, masks, depth and the true mesh.

Kinds: a mug (a logo in front, the handle behind), a house (door and windows in front, a chimney behind), a
creature (a face in front, a tail behind) and a chair (the seat in front, the backrest behind). Each identity
has its own proportions and colours. Every object is centred on the origin inside a sphere of OBJECT_RADIUS,
its front faces -Y and +Z is up: RealFusion's own frame. Its front photo is taken from `onelook-image`'s
reference camera (1.8 from the centre, 15 degrees up, a 55 degree field of view), so a reconstruction from it
can be scored against renders of the truth from any camera with no alignment step.
"""

from __future__ import annotations

import colorsys
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open3d as o3d
from PIL import Image
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from onelook.cameras import geometry
from onelook.data.image_dataparser import INVERSION_IMAGE_SIZE, ObjectImageDataParserConfig
from onelook.data.mesh_parts import box, combine, ellipsoid, random_colour, rotation_from_z
from onelook.data.object_image import ObjectImage
from onelook.data.prior_views import sample_prior_view, view_label

KINDS = ("mug", "house", "creature", "chair")
OBJECT_RADIUS = 0.6  # world units: every object's bounding sphere
_PARSER = ObjectImageDataParserConfig()  # the photo's camera is `onelook-image`'s reference camera
REFERENCE_DISTANCE, REFERENCE_ELEVATION = _PARSER.reference_distance, _PARSER.reference_elevation
REFERENCE_FOV = _PARSER.reference_fov
# The views a family's renders are taken from (all at the reference camera's distance and field of view):
# eight azimuths at two elevations, and from overhead.
ORBIT_AZIMUTHS = tuple(float(a) for a in range(0, 360, 45))
ORBIT_ELEVATIONS = (10.0, 35.0)
OVERHEAD_ELEVATION = 70.0
# Streams of the random generator, so that identity i of a seed is the same whatever else is generated.
_STREAM = 11


def _cylinder(radius: float, height: float, centre, colour, axis=(0.0, 0.0, 1.0)) -> o3d.geometry.TriangleMesh:
    mesh = o3d.geometry.TriangleMesh.create_cylinder(radius, height, resolution=32)
    mesh.rotate(rotation_from_z(np.asarray(axis, dtype=np.float64)), center=(0.0, 0.0, 0.0))
    mesh.translate(centre)
    mesh.paint_uniform_color(colour)
    return mesh


@dataclass(frozen=True)
class FamilyObject:
    """One identity: its kind, proportions (each kind reads its own) and colours."""

    kind: str
    proportions: tuple[float, ...]
    body: tuple[float, float, float]
    detail: tuple[float, float, float]  # what marks the front (logo, door, face, seat)
    accent: tuple[float, float, float]  # what marks the back (handle, chimney, tail, backrest)
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @classmethod
    def sample(cls, rng: np.random.Generator, kind: str | None = None) -> FamilyObject:
        kind = kind or KINDS[int(rng.integers(len(KINDS)))]
        if kind not in KINDS:
            raise ValueError(f"unknown object kind {kind!r}; choose one of {', '.join(KINDS)}")
        proportions = tuple(float(p) for p in rng.uniform(0.8, 1.25, 4))
        colours = [random_colour(rng, 0.1, 0.9) for _ in range(3)]
        while min(np.abs(np.subtract(colours[0], c)).sum() for c in colours[1:]) < 0.6:  # parts stand apart
            colours = [random_colour(rng, 0.1, 0.9) for _ in range(3)]
        return cls(kind, proportions, *colours)

    def mesh(self) -> o3d.geometry.TriangleMesh:
        """The object, centred on the origin and scaled into its bounding sphere of OBJECT_RADIUS."""
        mesh = combine(getattr(self, f"_{self.kind}")())
        vertices = np.asarray(mesh.vertices)
        centre = (vertices.min(axis=0) + vertices.max(axis=0)) / 2
        radius = np.linalg.norm(vertices - centre, axis=1).max()
        mesh.vertices = o3d.utility.Vector3dVector((vertices - centre) * (OBJECT_RADIUS / radius))
        mesh.compute_vertex_normals()
        return mesh

    def _mug(self) -> list[o3d.geometry.TriangleMesh]:
        width, height, handle, logo = self.proportions
        radius, tall = 0.4 * width, 0.8 * height
        parts = [_cylinder(radius, tall, (0.0, 0.0, 0.0), self.body)]
        parts.append(box((-0.18 * logo, -radius - 0.03, -0.15), (0.18 * logo, -radius + 0.1, 0.15), self.detail))
        torus = o3d.geometry.TriangleMesh.create_torus(0.22 * handle * height, 0.05, 32, 12)
        torus.rotate(rotation_from_z(np.array([1.0, 0.0, 0.0])), center=(0.0, 0.0, 0.0))
        torus.translate((0.0, radius + 0.1 * handle, 0.0))
        torus.paint_uniform_color(self.accent)
        return [*parts, torus]

    def _house(self) -> list[o3d.geometry.TriangleMesh]:
        width, height, chimney, door = self.proportions
        half_w, half_d, wall = 0.45 * width, 0.35, 0.5 * height
        parts = [box((-half_w, -half_d, -wall), (half_w, half_d, wall * 0.4), self.body)]
        roof = o3d.geometry.TriangleMesh.create_cone(1.45 * half_w, 0.45, resolution=4)  # a pyramid
        roof.rotate(Rotation.from_euler("z", 45.0, degrees=True).as_matrix(), center=(0.0, 0.0, 0.0))
        roof.translate((0.0, 0.0, wall * 0.4))
        roof.paint_uniform_color(self.accent)
        parts.append(roof)
        parts.append(box((-0.1 * door, -half_d - 0.03, -wall), (0.1 * door, -half_d + 0.02, -wall + 0.4), self.detail))
        for x in (-0.6 * half_w, 0.6 * half_w):
            parts.append(box((x - 0.08, -half_d - 0.03, 0.0), (x + 0.08, -half_d + 0.02, 0.14), self.detail))
        top = wall * 0.4 + 0.3 + 0.2 * chimney
        parts.append(box((0.12, 0.12, wall * 0.4), (0.28, 0.28, top), self.accent))
        return parts

    def _creature(self) -> list[o3d.geometry.TriangleMesh]:
        length, height, tail, head = self.proportions
        body = (0.3, 0.32 * length, 0.28 * height)
        parts = [ellipsoid(body, (0.0, 0.0, 0.0), self.body)]
        head_centre = (0.0, -body[1] - 0.12 * head, 0.2 * height)
        parts.append(ellipsoid((0.2 * head,) * 3, head_centre, self.body))
        for x in (-0.08, 0.08):
            parts.append(ellipsoid((0.05,) * 3, (x, head_centre[1] - 0.17 * head, head_centre[2] + 0.05), self.detail))
        direction = np.array([0.0, 1.0, 0.8 * tail])
        parts.append(_cylinder(0.06, 0.4 * tail, (0.0, body[1] + 0.12 * tail, 0.12 * tail), self.accent, direction))
        return parts

    def _chair(self) -> list[o3d.geometry.TriangleMesh]:
        width, height, back, seat = self.proportions
        half_w, half_d, seat_z = 0.35 * width, 0.32 * seat, -0.05
        parts = [box((-half_w, -half_d, seat_z), (half_w, half_d, seat_z + 0.08), self.detail)]
        for x in (-half_w + 0.04, half_w - 0.04):
            for y in (-half_d + 0.04, half_d - 0.04):
                parts.append(
                    box((x - 0.035, y - 0.035, seat_z - 0.4 * height), (x + 0.035, y + 0.035, seat_z), self.body)
                )
        top = seat_z + 0.08 + 0.5 * back
        parts.append(box((-half_w, half_d - 0.07, seat_z + 0.08), (half_w, half_d, top), self.accent))
        return parts

    def description(self) -> str:
        """The object in words, colours included ("red mug with a yellow logo and a blue handle"), as a prior's
        caption: a prior that never read a colour word cannot be told, nor an inverted word learn, a colour."""
        body, detail, accent = (colour_name(c) for c in (self.body, self.detail, self.accent))
        return {
            "mug": f"{body} mug with a {detail} logo and a {accent} handle",
            "house": f"{body} house with a {detail} door and a {accent} roof",
            "creature": f"{body} creature with {detail} eyes and a {accent} tail",
            "chair": f"{detail} chair with {body} legs and a {accent} back",
        }[self.kind]


def colour_name(rgb: tuple[float, float, float]) -> str:
    """The everyday name of an RGB colour in [0, 1]: black, white or grey when it has little hue, else one of
    eight hues (orange darkens to brown)."""
    hue, saturation, value = colorsys.rgb_to_hsv(*rgb)
    if value * saturation < 0.15:  # max - min of the channels: no hue to speak of
        return "black" if value < 0.25 else "white" if value > 0.8 else "grey"
    hue *= 360.0
    for name, upper in (("red", 15), ("orange", 45), ("yellow", 70), ("green", 160), ("cyan", 200), ("blue", 260)):
        if hue < upper:
            return "brown" if name == "orange" and value < 0.6 else name
    return "purple" if hue < 300 else "pink" if hue < 345 else "red"


def family_object(seed: int, index: int) -> FamilyObject:
    """Identity `index` of the family drawn with `seed`."""
    return FamilyObject.sample(np.random.default_rng([seed, index, _STREAM]))


def orbit_camera(
    azimuth: float, elevation: float, size: int, distance: float = REFERENCE_DISTANCE, fov: float = REFERENCE_FOV
) -> tuple[np.ndarray, float]:
    """Camera-to-world (4, 4) and focal length (pixels) of a view looking at the centre, by default at the
    reference camera's distance and field of view; azimuth 0 at the reference elevation is that camera."""
    return geometry.orbit_camera(azimuth, elevation, distance, fov, size)


def random_view(rng: np.random.Generator) -> tuple[float, float, float, float]:
    """(azimuth, elevation, distance, fov) drawn as RealFusion draws its prior's cameras, out to the reference
    camera's distance."""
    polar, azimuth, distance, fov = sample_prior_view(rng, distance_range=(1.0, REFERENCE_DISTANCE))
    return azimuth, 90.0 - polar, distance, fov


def render_orbit_view(
    thing: FamilyObject,
    azimuth: float,
    elevation: float,
    size: int,
    lit: bool = True,
    distance: float = REFERENCE_DISTANCE,
    fov: float = REFERENCE_FOV,
):
    """A view of `thing` from `orbit_camera`, lit from above the camera (so its back is as lit as its front),
    or its plain colours; returns the render (`onelook.data.synthetic.Render`), camera-to-world and focal."""
    from onelook.data.synthetic import render

    c2w, focal = orbit_camera(azimuth, elevation, size, distance, fov)
    light = c2w[:3, 2] + np.array([0.0, 0.0, 0.7])
    return render(thing, c2w, focal, size, light / np.linalg.norm(light) if lit else None), c2w, focal


def front_photo(
    thing: FamilyObject, size: int, photo_size: int = INVERSION_IMAGE_SIZE, lit: bool = True
) -> ObjectImage:
    """The object's photo from the reference camera, prepared as RealFusion's input at `size` pixels. It is not
    re-centred: the reconstruction's frame is the truth's. Rendered at `photo_size` for textual inversion."""
    view, _, _ = render_orbit_view(thing, 0.0, REFERENCE_ELEVATION, photo_size, lit)
    rgb = (view.rgb * 255).round().astype(np.uint8)
    return ObjectImage(rgb, view.mask, "synthetic", source=(rgb, view.mask, (0.0, 0.0, float(photo_size)))).resized(
        size
    )


def sector_views(
    thing: FamilyObject,
    size: int,
    azimuth_step: float = 15.0,
    elevations=(-25, -10, 5, 20, 35, 50, 65, 80),
    lit: bool = False,
) -> dict[str, np.ndarray]:
    """Views of `thing` from all around at the reference distance (plain colours, or `lit` as the prior's training
    renders are), grouped by the view word a RealFusion prompt gives that camera: {label: (N, size, size, 3) float
    in [0, 1]}."""
    views: dict[str, list[np.ndarray]] = {}
    for elevation in elevations:
        for azimuth in np.arange(0.0, 360.0, azimuth_step):
            label = view_label(90.0 - elevation, azimuth)
            views.setdefault(label, []).append(render_orbit_view(thing, azimuth, float(elevation), size, lit)[0].rgb)
    return {label: np.stack(images) for label, images in views.items()}


def orbit_views() -> list[tuple[float, float]]:
    """(azimuth, elevation) of every view a family's renders are taken from; the reference view first."""
    views = [(0.0, REFERENCE_ELEVATION)]
    views += [(a, e) for e in ORBIT_ELEVATIONS for a in ORBIT_AZIMUTHS]
    return views + [(a, OVERHEAD_ELEVATION) for a in (0.0, 180.0)]


def caption(thing: FamilyObject, azimuth: float, elevation: float) -> str:
    """The prior's caption of a render: the object in words, then the view words RealFusion's prompts use."""
    return f"a photo of a {thing.description()}, {view_label(90.0 - elevation, azimuth)} view"


def generate_objects(
    n: int, size: int, seed: int, out: Path, random_views: int = 0, show_progress: bool = True
) -> Path:
    """Writes every view of `n` identities (`orbit_views`, then `random_views` cameras drawn as RealFusion draws
    its prior's: what a prior trained on them should know): images/ (object on white), masks/, depth/ (float32
    .npy, along the optical axis), meshes/ (the true mesh, .ply), and synth.json (cameras, kinds, captions)."""
    if n < 1 or size < 16:
        raise ValueError(f"need n >= 1 and size >= 16, got n={n}, size={size}")
    out = Path(out)
    for sub in ("images", "masks", "depth", "meshes"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    frames, objects = [], []
    orbit = [(a, e, REFERENCE_DISTANCE, REFERENCE_FOV) for a, e in orbit_views()]
    for i in tqdm(range(n), desc="rendering synthetic objects", disable=not show_progress):
        thing = family_object(seed, i)
        o3d.io.write_triangle_mesh(str(out / "meshes" / f"{i:05d}.ply"), thing.mesh())
        objects.append({"identity": i, "kind": thing.kind, "mesh": f"meshes/{i:05d}.ply", "object": thing.__dict__})
        rng = np.random.default_rng([seed, i, _STREAM, 1])
        views = orbit + [random_view(rng) for _ in range(random_views)]
        for j, (azimuth, elevation, distance, fov) in enumerate(views):
            view, c2w, focal = render_orbit_view(thing, azimuth, elevation, size, True, distance, fov)
            name = f"{i:05d}_{int(azimuth):03d}_{int(elevation):02d}" if j < len(orbit) else f"{i:05d}_r{j:03d}"
            Image.fromarray((view.rgb * 255).round().astype(np.uint8)).save(out / "images" / f"{name}.png")
            Image.fromarray(view.mask.astype(np.uint8) * 255).save(out / "masks" / f"{name}.png")
            np.save(out / "depth" / f"{name}.npy", view.depth)
            frames.append(
                {
                    "file": f"{name}.png",
                    "identity": i,
                    "azimuth": azimuth,
                    "elevation": elevation,
                    "camera_to_world": c2w.tolist(),
                    "focal_length": focal,
                    "caption": caption(thing, azimuth, elevation),
                }
            )
    meta = {"seed": seed, "category": "objects", "image_size": [size, size], "objects": objects, "frames": frames}
    (out / "synth.json").write_text(json.dumps(meta, indent=1))
    return out
