"""The objects `onelook synth` renders: heads (keypoints where face landmarks are), animal heads and cars.

Each identity has its own proportions (so its keypoints move by several percent of the object's size from
identity to identity, as real animals' and cars' do) and colours. The object's front faces -Y, +Z is up, and
the keypoints lie on the visible surface, in the order of the class's KEYPOINT_NAMES.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import open3d as o3d

from onelook.data.mesh_parts import box, combine, ellipsoid, front_y, hexahedron, random_colour, rotation_from_z
from onelook.landmarks.mediapipe_face import FACE_KEYPOINT_NAMES


@dataclass
class SynthHead:
    """A head: an ellipsoid with a nose, eyes, a mouth and a hair cap; keypoints where the face landmarks are."""

    KEYPOINT_NAMES = FACE_KEYPOINT_NAMES

    radii: tuple[float, float, float]  # head ellipsoid half-axes (x: width, y: depth, z: height)
    nose_length: float
    nose_radius: float
    eye_spacing: float
    eye_height: float
    eye_radius: float
    mouth_width: float
    mouth_height: float
    hair_line: float  # z above which the head is hair-coloured
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    eyes: tuple[float, float, float]
    lips: tuple[float, float, float]
    background: tuple[float, float, float]

    @classmethod
    def sample(cls, rng: np.random.Generator) -> SynthHead:
        skin_tone = rng.uniform(0.35, 0.95)
        skin = (skin_tone, skin_tone * rng.uniform(0.7, 0.85), skin_tone * rng.uniform(0.55, 0.7))
        return cls(
            radii=(
                float(rng.uniform(0.55, 0.7)),
                float(rng.uniform(0.6, 0.75)),
                float(rng.uniform(0.78, 0.92)),
            ),
            nose_length=float(rng.uniform(0.15, 0.3)),
            nose_radius=float(rng.uniform(0.08, 0.12)),
            eye_spacing=float(rng.uniform(0.2, 0.28)),
            eye_height=float(rng.uniform(0.1, 0.2)),
            eye_radius=float(rng.uniform(0.06, 0.09)),
            mouth_width=float(rng.uniform(0.16, 0.24)),
            mouth_height=float(rng.uniform(-0.4, -0.3)),
            hair_line=float(rng.uniform(0.35, 0.6)),
            skin=tuple(float(c) for c in skin),
            hair=random_colour(rng, 0.05, 0.6),
            eyes=random_colour(rng, 0.0, 0.35),
            lips=(float(rng.uniform(0.5, 0.8)), float(rng.uniform(0.1, 0.3)), float(rng.uniform(0.15, 0.3))),
            background=random_colour(rng, 0.0, 1.0),
        )

    def _front_y(self, x: float, z: float) -> float:
        return front_y(self.radii, x, z)

    def keypoints(self) -> np.ndarray:
        """(5, 3) keypoints in the object's frame, in the order of KEYPOINT_NAMES."""
        eye_x = self.eye_spacing + self.eye_radius
        nose_z = 0.5 * (self.eye_height + self.mouth_height)
        return np.array(
            [
                [-eye_x, self._front_y(-eye_x, self.eye_height), self.eye_height],
                [eye_x, self._front_y(eye_x, self.eye_height), self.eye_height],
                [0.0, self._front_y(0.0, nose_z) - self.nose_length, nose_z],
                [-self.mouth_width, self._front_y(-self.mouth_width, self.mouth_height), self.mouth_height],
                [self.mouth_width, self._front_y(self.mouth_width, self.mouth_height), self.mouth_height],
            ]
        )

    def mesh(self) -> o3d.geometry.TriangleMesh:
        """The head as one triangle mesh with per-vertex colours."""
        head = o3d.geometry.TriangleMesh.create_sphere(1.0, resolution=40)
        verts = np.asarray(head.vertices) * np.array(self.radii)
        head.vertices = o3d.utility.Vector3dVector(verts)
        colours = np.where(verts[:, 2:3] > self.hair_line, self.hair, self.skin)
        head.vertex_colors = o3d.utility.Vector3dVector(colours)
        parts = [head]

        nose_z = 0.5 * (self.eye_height + self.mouth_height)
        nose_base = self._front_y(0.0, nose_z)
        nose = o3d.geometry.TriangleMesh.create_cone(self.nose_radius, self.nose_length + 0.05, resolution=24)
        nose.rotate(o3d.geometry.get_rotation_matrix_from_xyz((np.pi / 2, 0.0, 0.0)), center=(0, 0, 0))
        nose.translate((0.0, nose_base + 0.05, nose_z))  # the cone's apex now points to -Y, at the tip
        nose.paint_uniform_color(np.array(self.skin) * 0.9)
        parts.append(nose)

        for sign in (-1.0, 1.0):
            x = sign * self.eye_spacing
            eye = o3d.geometry.TriangleMesh.create_sphere(self.eye_radius, resolution=16)
            eye.translate((x, self._front_y(x, self.eye_height) + 0.3 * self.eye_radius, self.eye_height))
            eye.paint_uniform_color(self.eyes)
            parts.append(eye)

        mouth = o3d.geometry.TriangleMesh.create_sphere(1.0, resolution=20)
        mouth.vertices = o3d.utility.Vector3dVector(
            np.asarray(mouth.vertices) * np.array([self.mouth_width, 0.05, 0.04])
        )
        mouth.translate((0.0, self._front_y(0.0, self.mouth_height) + 0.02, self.mouth_height))
        mouth.paint_uniform_color(self.lips)
        parts.append(mouth)

        return combine(parts)


@dataclass
class SynthAnimal:
    """An animal head: an ellipsoid skull, a snout of its own length and drop, two ears and two eyes."""

    KEYPOINT_NAMES = ("left_ear_tip", "right_ear_tip", "left_eye", "right_eye", "nose_tip")

    skull: tuple[float, float, float]  # half-axes (x: width, y: depth, z: height)
    snout_length: float
    snout_width: float
    snout_drop: float  # how far below the skull's centre the snout sits
    ear_spread: float  # x of each ear's base
    ear_length: float
    ear_radius: float
    ear_tilt: float  # radians outwards from vertical
    eye_spacing: float
    eye_height: float
    eye_radius: float
    fur: tuple[float, float, float]
    muzzle: tuple[float, float, float]
    patch: tuple[float, float, float]  # a colour patch over one side of the skull
    patch_side: float  # +1 or -1: which side
    eyes: tuple[float, float, float]
    background: tuple[float, float, float]

    @classmethod
    def sample(cls, rng: np.random.Generator) -> SynthAnimal:
        fur = random_colour(rng, 0.15, 0.85)
        return cls(
            skull=(float(rng.uniform(0.42, 0.52)), float(rng.uniform(0.42, 0.52)), float(rng.uniform(0.38, 0.48))),
            snout_length=float(rng.uniform(0.3, 0.5)),
            snout_width=float(rng.uniform(0.15, 0.21)),
            snout_drop=float(rng.uniform(0.08, 0.2)),
            ear_spread=float(rng.uniform(0.2, 0.3)),
            ear_length=float(rng.uniform(0.3, 0.45)),
            ear_radius=float(rng.uniform(0.1, 0.15)),
            ear_tilt=float(np.radians(rng.uniform(5.0, 30.0))),
            eye_spacing=float(rng.uniform(0.15, 0.21)),
            eye_height=float(rng.uniform(0.04, 0.14)),
            eye_radius=float(rng.uniform(0.05, 0.07)),
            fur=fur,
            muzzle=tuple(float(min(c * 1.4 + 0.15, 1.0)) for c in fur),
            patch=random_colour(rng, 0.0, 1.0),
            patch_side=float(rng.choice([-1.0, 1.0])),
            eyes=random_colour(rng, 0.0, 0.3),
            background=random_colour(rng, 0.0, 1.0),
        )

    def _front_y(self, x: float, z: float) -> float:
        return front_y(self.skull, x, z)

    def _ear(self, sign: float) -> tuple[np.ndarray, np.ndarray]:
        """Base centre and axis (unit) of one ear."""
        x = sign * self.ear_spread
        a, _, c = self.skull
        base = np.array([x, 0.05, 0.8 * c * np.sqrt(max(1.0 - (x / a) ** 2, 0.0))])
        axis = np.array([sign * np.sin(self.ear_tilt), 0.1, np.cos(self.ear_tilt)])
        return base, axis / np.linalg.norm(axis)

    def _snout_centre(self) -> np.ndarray:
        return np.array([0.0, self._front_y(0.0, -self.snout_drop) - 0.5 * self.snout_length + 0.1, -self.snout_drop])

    def keypoints(self) -> np.ndarray:
        """(5, 3): ear tips, the eyes' front points, the nose tip."""
        points = []
        for sign in (-1.0, 1.0):
            base, axis = self._ear(sign)
            points.append(base + self.ear_length * axis)
        for sign in (-1.0, 1.0):
            x = sign * self.eye_spacing
            points.append([x, self._front_y(x, self.eye_height) - 0.7 * self.eye_radius, self.eye_height])
        tip = self._snout_centre() - np.array([0.0, 0.5 * self.snout_length + 0.1 + 0.04, 0.0])
        points.append(tip)
        return np.array(points, dtype=np.float64)

    def mesh(self) -> o3d.geometry.TriangleMesh:
        skull = ellipsoid(self.skull, (0.0, 0.0, 0.0), self.fur, resolution=40)
        verts = np.asarray(skull.vertices)
        colours = np.where(self.patch_side * verts[:, :1] > 0.15, self.patch, self.fur)
        skull.vertex_colors = o3d.utility.Vector3dVector(colours)
        centre = self._snout_centre()
        snout_radii = (self.snout_width, 0.5 * self.snout_length + 0.1, 0.8 * self.snout_width)
        parts = [skull, ellipsoid(snout_radii, centre, self.muzzle)]
        tip = self.keypoints()[4]
        parts.append(ellipsoid((0.06, 0.04, 0.05), tip + np.array([0.0, 0.04, 0.0]), (0.05, 0.04, 0.04), 12))
        for sign in (-1.0, 1.0):
            base, axis = self._ear(sign)
            ear = o3d.geometry.TriangleMesh.create_cone(self.ear_radius, self.ear_length, resolution=16)
            ear.rotate(rotation_from_z(axis), center=(0.0, 0.0, 0.0))
            ear.translate(base)
            ear.paint_uniform_color(self.fur)
            parts.append(ear)
            x = sign * self.eye_spacing
            eye_centre = (x, self._front_y(x, self.eye_height) + 0.3 * self.eye_radius, self.eye_height)
            parts.append(ellipsoid((self.eye_radius,) * 3, eye_centre, self.eyes, 16))
        return combine(parts)


@dataclass
class SynthCar:
    """A car seen from around its front: a body, a cabin with a sloped windscreen, wheels, lights, mirrors."""

    KEYPOINT_NAMES = ("left_headlight", "right_headlight", "left_mirror", "right_mirror", "windscreen_top")

    width: float
    length: float
    body_height: float
    clearance: float  # from the ground to the body's bottom
    hood_length: float  # from the front to the windscreen's foot
    cabin_height: float
    cabin_length: float
    windscreen_slope: float  # how far back the windscreen's top is from its foot
    light_inset: float  # from the body's side to a headlight's centre
    paint: tuple[float, float, float]
    glass: tuple[float, float, float]
    lights: tuple[float, float, float]
    background: tuple[float, float, float]

    @classmethod
    def sample(cls, rng: np.random.Generator) -> SynthCar:
        return cls(
            width=float(rng.uniform(1.6, 1.95)),
            length=float(rng.uniform(3.6, 4.5)),
            body_height=float(rng.uniform(0.5, 0.7)),
            clearance=float(rng.uniform(0.15, 0.25)),
            hood_length=float(rng.uniform(0.9, 1.3)),
            cabin_height=float(rng.uniform(0.42, 0.6)),
            cabin_length=float(rng.uniform(1.6, 2.1)),
            windscreen_slope=float(rng.uniform(0.3, 0.6)),
            light_inset=float(rng.uniform(0.18, 0.32)),
            paint=random_colour(rng, 0.05, 0.95),
            glass=random_colour(rng, 0.05, 0.25),
            lights=(float(rng.uniform(0.85, 1.0)), float(rng.uniform(0.8, 0.95)), float(rng.uniform(0.5, 0.8))),
            background=random_colour(rng, 0.0, 1.0),
        )

    def _frame(self) -> dict[str, float]:
        """Heights and positions shared by the mesh and the keypoints (the car's box is centred at the origin)."""
        total = self.clearance + self.body_height + self.cabin_height
        bottom = -total / 2 + self.clearance
        front = -self.length / 2
        return {
            "bottom": bottom,
            "deck": bottom + self.body_height,
            "roof": bottom + self.body_height + self.cabin_height,
            "front": front,
            "screen_foot": front + self.hood_length,
            "screen_top": front + self.hood_length + self.windscreen_slope,
            "cabin_half": self.width / 2 - 0.12,
        }

    def keypoints(self) -> np.ndarray:
        """(5, 3): headlight centres, mirror tips, the top of the windscreen."""
        f = self._frame()
        light_z = f["deck"] - 0.16
        mirror_x = f["cabin_half"] + 0.22
        mirror_y, mirror_z = f["screen_foot"] + 0.15, f["deck"] + 0.12
        return np.array(
            [
                [-(self.width / 2 - self.light_inset), f["front"] - 0.03, light_z],
                [self.width / 2 - self.light_inset, f["front"] - 0.03, light_z],
                [-mirror_x, mirror_y, mirror_z],
                [mirror_x, mirror_y, mirror_z],
                [0.0, f["screen_top"], f["roof"]],
            ]
        )

    def mesh(self) -> o3d.geometry.TriangleMesh:
        f = self._frame()
        half, cabin = self.width / 2, f["cabin_half"]
        back = self.length / 2
        parts = [box((-half, f["front"], f["bottom"]), (half, back, f["deck"]), self.paint)]
        cabin_back = min(f["screen_foot"] + self.cabin_length, back - 0.2)
        bottom = [(-cabin, f["screen_foot"], f["deck"]), (cabin, f["screen_foot"], f["deck"])]
        bottom += [(cabin, cabin_back, f["deck"]), (-cabin, cabin_back, f["deck"])]
        top = [(-cabin + 0.08, f["screen_top"], f["roof"]), (cabin - 0.08, f["screen_top"], f["roof"])]
        top += [(cabin - 0.08, cabin_back - 0.2, f["roof"]), (-cabin + 0.08, cabin_back - 0.2, f["roof"])]
        parts.append(hexahedron(np.array(bottom + top), self.glass))
        parts.append(hexahedron(np.array(top + [(x, y, z + 0.04) for x, y, z in top]), self.paint))  # the roof
        keypoints = self.keypoints()
        for light in keypoints[:2]:
            parts.append(box(light + (-0.16, 0.0, -0.07), light + (0.16, 0.06, 0.07), self.lights))
        for mirror in keypoints[2:4]:
            inner = np.array([np.sign(mirror[0]) * cabin, mirror[1], mirror[2]])
            lo, hi = np.minimum(inner, mirror), np.maximum(inner, mirror)
            parts.append(box(lo + (0.0, -0.04, -0.06), hi + (0.0, 0.04, 0.06), self.paint))
        radius = 0.32
        for x in (-half + 0.02, half - 0.27):
            for y in (f["front"] + 0.75, back - 0.75):
                wheel = o3d.geometry.TriangleMesh.create_cylinder(radius, 0.25, resolution=20)
                wheel.rotate(rotation_from_z(np.array([1.0, 0.0, 0.0])), center=(0.0, 0.0, 0.0))
                wheel.translate((x + 0.125, y, f["bottom"] - self.clearance + radius))
                wheel.paint_uniform_color((0.08, 0.08, 0.08))
                parts.append(wheel)
        return combine(parts)
