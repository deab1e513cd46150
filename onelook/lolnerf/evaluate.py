"""`onelook eval`: a LOLNeRF model trained on the synthetic category, measured against exact ground truth.

1. Training images: each rendered with its own latent and camera, against the dataset crop (PSNR, SSIM).
2. Held-out identities (never trained on): fitted from one view with their true keypoints and mask, then
   rendered with the input camera turned by the given yaw/pitch about the object's centre, against the true
   render from the true camera turned the same way, inside the true foreground (masked PSNR, SSIM). Next to
   it, in the same run, the "copy the input image" baseline: the input view offered as every novel view.
3. Depth (the input and novel views) against the true depth where the true foreground and the model's
   opacity overlap, after bringing the model's frame to the true scale (similarity of the canonical keypoints
   to the true mean keypoints); as a fraction of the object's size (the longest side of the true object's
   bounding box). Also reported after removing each view's median offset, which separates shape errors from
   the fitted camera's distance error.
4. Cameras, so that a camera problem is told apart from a shape problem at a glance: the training cameras
   (`onelook prepare`'s joint fit) and the held-out photos' fitted cameras against the true ones, after the
   same similarity: rotation error in degrees, the focal length's ratio to the truth, and the held-out
   cameras' position error as a fraction of the object's size.
5. Mesh: symmetric Chamfer distance (mean of nearest-surface distances both ways) between the fitted mesh,
   brought to the true frame by the same similarity, and the true surface; as a fraction of the object's size.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.metrics import structural_similarity
from tqdm import tqdm

from onelook.cameras.geometry import project, rotation_errors_deg, similarity_align, turn_about_origin
from onelook.data.synthetic import Render, SynthObject, identity, render
from onelook.lolnerf.reconstructor import Reconstructor
from onelook.metrics import chamfer_and_fscore, masked_psnr, masked_ssim, surface_points

DEFAULT_ANGLES = ((-30.0, 0.0), (30.0, 0.0), (0.0, -15.0), (0.0, 15.0))


@dataclass
class EvalReport:
    train_psnr: float
    train_ssim: float
    novel: dict[str, dict[str, float]] = field(default_factory=dict)  # angle -> masked psnr/ssim, model & copy
    depth_error: float = float("nan")  # mean absolute depth error / object size
    depth_error_shift_aligned: float = float("nan")  # the same after removing each view's median offset
    depth_coverage: float = float("nan")  # fraction of the true foreground where the model is opaque
    chamfer: float = float("nan")  # symmetric Chamfer distance / object size
    train_rotation_error_deg: tuple[float, float] = (float("nan"), float("nan"))  # median, 90th percentile
    train_focal_ratio: float = float("nan")  # median fitted focal length / true focal length
    fit_rotation_error_deg: tuple[float, float] = (float("nan"), float("nan"))  # held-out photos' cameras
    fit_position_error: float = float("nan")  # mean held-out camera position error / object size
    settings: dict = field(default_factory=dict)

    def markdown(self) -> str:
        lines = [
            f"Training images ({self.settings['train_images']}): PSNR {self.train_psnr:.2f} dB, "
            f"SSIM {self.train_ssim:.3f}",
            "",
            f"Held-out identities ({self.settings['held_out']}), fitted from one view "
            f"({self.settings['fit_steps']} steps), masked to the true foreground:",
            "",
            "| view (yaw, pitch) | PSNR model | PSNR copy-input | gain | SSIM model | SSIM copy-input |",
            "|---|---|---|---|---|---|",
        ]
        for angle, row in self.novel.items():
            lines.append(
                f"| {angle} | {row['psnr']:.2f} | {row['psnr_copy']:.2f} | {row['psnr'] - row['psnr_copy']:+.2f} "
                f"| {row['ssim']:.3f} | {row['ssim_copy']:.3f} |"
            )
        lines += [
            "",
            f"Depth error (true scale, where the true foreground and the model's opacity > 0.5 overlap: "
            f"{100 * self.depth_coverage:.0f}% of the true foreground): {100 * self.depth_error:.2f}% of the object's "
            f"size; {100 * self.depth_error_shift_aligned:.2f}% after removing each view's median offset",
            f"Mesh Chamfer distance to the true surface: {100 * self.chamfer:.2f}% of the object's size",
            f"Training cameras (`onelook prepare`): rotation error median {self.train_rotation_error_deg[0]:.2f}°, "
            f"90th percentile {self.train_rotation_error_deg[1]:.2f}°; focal length {self.train_focal_ratio:.3f}x "
            "the true one",
            f"Held-out photos' cameras (`Reconstructor.fit`): rotation error median "
            f"{self.fit_rotation_error_deg[0]:.2f}°, 90th percentile {self.fit_rotation_error_deg[1]:.2f}°; "
            f"position error {100 * self.fit_position_error:.2f}% of the object's size",
        ]
        return "\n".join(lines)


@dataclass
class SyntheticTruth:
    """What an `onelook synth` folder knows against a model trained on it (through `onelook prepare`'s folder):
    the similarity taking the model's frame to the synthetic world, fitted between the canonical keypoints and
    the true mean keypoints of the training images, the true focal length at the model's crop size, and the
    held-out identities (those after the training ones: never trained on)."""

    synth: dict  # synth.json
    transforms: dict  # the prepared folder's transforms.json
    true_frames: list[dict]  # synth.json's frame of each prepared frame (its truth), in the same order
    true_mean: np.ndarray  # (K, 3) the training images' mean true keypoints
    scale: float  # model frame -> synthetic world: x -> scale * rotation @ x + translation
    rotation: np.ndarray
    translation: np.ndarray
    focal: float  # the true focal length of a whole synthetic image rendered at the model's crop size, pixels
    size: int  # the model's crop size

    @classmethod
    def load(cls, recon: Reconstructor, synth_dir: Path, data_dir: Path) -> SyntheticTruth:
        synth = json.loads((Path(synth_dir) / "synth.json").read_text())
        transforms = json.loads((Path(data_dir) / "transforms.json").read_text())
        by_file = {f["file"]: f for f in synth["frames"]}
        true_frames = [by_file[f["source"]] for f in transforms["frames"]]
        true_mean = np.mean([f["keypoints_3d"] for f in true_frames], axis=0)
        similarity = similarity_align(recon.canonical_keypoints, true_mean)
        size = recon.model.crop.size
        focal = synth["focal_length"] * size / synth["image_size"][0]
        return cls(synth, transforms, true_frames, true_mean, *similarity, focal, size)

    def to_model(self, camera_to_world: np.ndarray) -> np.ndarray:
        """A camera of the synthetic world in the model's frame."""
        c2w = np.eye(4)
        c2w[:3, :3] = self.rotation.T @ camera_to_world[:3, :3]
        c2w[:3, 3] = self.rotation.T @ (camera_to_world[:3, 3] - self.translation) / self.scale
        return c2w

    def held_out(self, index: int) -> tuple[SynthObject, np.ndarray, Render, np.ndarray]:
        """Held-out identity `index`: the object, its true camera (synthetic world), its photo at the model's
        crop size (a `Render`) and its true keypoints in that photo (K, 2)."""
        seed, category = self.synth["seed"], self.synth.get("category", "heads")
        thing, c2w, _ = identity(seed, len(self.synth["frames"]) + index, category)
        photo = render(thing, c2w, self.focal, self.size)
        keypoints = project(thing.keypoints(), c2w[None], self.focal, (self.size, self.size))[0][0]
        return thing, c2w, photo, keypoints


def true_crop_focals(synth: dict, data_dir: Path, frames: list[dict]) -> np.ndarray:
    """The true focal length of each prepared frame in its own crop's pixels: `onelook prepare` crops each
    image to a square around its keypoints (its side varies from image to image) and resizes it, so the
    synthetic camera's focal length scales by crop size / crop side, as the frame's `fl_x` is measured."""
    sides = []
    for frame in frames:
        record = json.loads((Path(data_dir) / "records" / f"{Path(frame['file_path']).stem}.json").read_text())
        sides.append(record["crop_box"][2])  # in the synthetic image's pixels
    return synth["focal_length"] * np.array([frame["w"] for frame in frames]) / np.array(sides)


def evaluate(
    run_dir: Path,
    synth_dir: Path,
    data_dir: Path,
    held_out: int = 8,
    train_images: int = 32,
    fit_steps: int = 200,
    angles: tuple[tuple[float, float], ...] = DEFAULT_ANGLES,
    mesh_resolution: int = 96,
    device: str | None = None,
) -> EvalReport:
    recon = Reconstructor.from_run(run_dir, device=device)
    truth = SyntheticTruth.load(recon, synth_dir, data_dir)
    frames, size = truth.transforms["frames"], recon.model.crop.size

    # 1. Training images with their own latents and cameras.
    psnrs, ssims = [], []
    picks = np.linspace(0, len(frames) - 1, min(train_images, len(frames))).round().astype(int)
    for i in tqdm(picks, desc="training views"):
        frame = frames[i]
        c2w = np.array(frame["transform_matrix"])
        c2w[:3, 3] -= recon.origin
        latent = recon.model.latents.embedding.weight[i].detach()
        pred = recon.render(latent, c2w, frame["fl_x"], (frame["h"], frame["w"]), (frame["cx"], frame["cy"]))["rgb"]
        target = np.asarray(Image.open(Path(data_dir) / frame["file_path"]).convert("RGB")) / 255.0
        psnrs.append(masked_psnr(pred, target, np.ones(target.shape[:2], bool)))
        ssims.append(float(structural_similarity(pred, target, channel_axis=2, data_range=1.0)))

    scale, rotation, translation, true_focal = truth.scale, truth.rotation, truth.translation, truth.focal
    train_c2w = np.array([f["transform_matrix"] for f in frames])
    canonical = np.array(truth.transforms["canonical_keypoints"])
    train_rotation = rotation_errors_deg(
        train_c2w, np.array([f["camera_to_world"] for f in truth.true_frames]), canonical, truth.true_mean
    )
    train_focal_ratio = float(np.median([f["fl_x"] for f in frames] / true_crop_focals(truth.synth, data_dir, frames)))

    # 2-4. Held-out identities.
    novel = {
        f"({yaw:+.0f}, {pitch:+.0f})": {"psnr": [], "psnr_copy": [], "ssim": [], "ssim_copy": []}
        for yaw, pitch in angles
    }
    depth_errors, shift_errors, coverage, chamfers = [], [], [], []
    fit_c2w, fit_true_c2w, position_errors = [], [], []
    for j in tqdm(range(held_out), desc="held-out identities"):
        head, c2w_true, view, keypoints = truth.held_out(j)
        true_mesh = head.mesh()
        object_size = float(np.ptp(np.asarray(true_mesh.vertices), axis=0).max())
        fitted = recon.fit(
            (view.rgb * 255).round().astype(np.uint8),
            landmarks=keypoints,
            mask=view.mask,
            steps=fit_steps,
            show_progress=False,
            seed=j,
        )
        fit_c2w.append(fitted.camera_to_world)
        fit_true_c2w.append(c2w_true)
        centre = scale * rotation @ fitted.camera_to_world[:3, 3] + translation
        position_errors.append(np.linalg.norm(centre - c2w_true[:3, 3]) / object_size)
        views = [(None, fitted.camera_to_world, c2w_true)] + [
            ((yaw, pitch), fitted.camera_at(yaw, pitch)[0], turn_about_origin(c2w_true, yaw, pitch))
            for yaw, pitch in angles
        ]
        for angle, c2w_model, c2w_novel in views:
            pred = fitted.render(c2w_model, fitted.focal_length, size)
            true = render(head, c2w_novel, true_focal, size)
            both = true.mask & (pred["alpha"] > 0.5)  # depth is defined where both see the object
            coverage.append(both.sum() / max(true.mask.sum(), 1))
            if both.any():
                difference = scale * pred["depth"][both] - true.depth[both]
                depth_errors.append(np.abs(difference).mean() / object_size)
                shift_errors.append(np.abs(difference - np.median(difference)).mean() / object_size)
            if angle is None:
                continue
            row = novel[f"({angle[0]:+.0f}, {angle[1]:+.0f})"]
            row["psnr"].append(masked_psnr(pred["rgb"], true.rgb, true.mask))
            row["ssim"].append(masked_ssim(pred["rgb"], true.rgb, true.mask))
            row["psnr_copy"].append(masked_psnr(view.rgb, true.rgb, true.mask))
            row["ssim_copy"].append(masked_ssim(view.rgb, true.rgb, true.mask))
        try:
            mesh = fitted.mesh(resolution=mesh_resolution)
        except ValueError:  # no surface at all: the worst case, counted as the object's size
            chamfers.append(1.0)
            continue
        predicted = scale * surface_points(mesh.vertices, mesh.faces) @ rotation.T + translation
        true_points = surface_points(true_mesh.vertices, true_mesh.triangles)
        chamfers.append(chamfer_and_fscore(predicted, true_points, 0.05 * object_size)[0] / object_size)

    fit_rotation = rotation_errors_deg(
        np.array(fit_c2w), np.array(fit_true_c2w), recon.canonical_keypoints, truth.true_mean
    )
    return EvalReport(
        train_psnr=float(np.mean(psnrs)),
        train_ssim=float(np.mean(ssims)),
        novel={angle: {k: float(np.mean(v)) for k, v in row.items()} for angle, row in novel.items()},
        depth_error=float(np.mean(depth_errors)),
        depth_error_shift_aligned=float(np.mean(shift_errors)),
        depth_coverage=float(np.mean(coverage)),
        chamfer=float(np.mean(chamfers)),
        train_rotation_error_deg=(float(np.median(train_rotation)), float(np.percentile(train_rotation, 90))),
        train_focal_ratio=train_focal_ratio,
        fit_rotation_error_deg=(float(np.median(fit_rotation)), float(np.percentile(fit_rotation, 90))),
        fit_position_error=float(np.mean(position_errors)),
        settings={
            "run": str(run_dir),
            "train_images": len(picks),
            "held_out": held_out,
            "fit_steps": fit_steps,
            "image_size": size,
            "mesh_resolution": mesh_resolution,
        },
    )


def write_report(report: EvalReport, out: Path) -> tuple[Path, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(asdict(report), indent=1))
    (out / "eval.md").write_text(report.markdown() + "\n")
    return out / "eval.json", out / "eval.md"
