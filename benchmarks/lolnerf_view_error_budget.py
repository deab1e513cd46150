"""Where a LOLNeRF model's held-out novel views lose their decibels: the photo's camera, the frame the views
are turned in, or the model itself.

On held-out identities of an `onelook synth` category (as `onelook eval`), masked PSNR at each novel view for:
- `copy_input`: the input photo offered as every view (the baseline of #12's target);
- `fit`: `Reconstructor.fit` as shipped (keypoint camera and focal length), turned with
  `Reconstruction.camera_at` (what `onelook eval` reports);
- `true_camera`: the latent fitted from the photo's true camera (brought into the model's frame by the
  similarity of the canonical keypoints to the true mean keypoints), still turned by `camera_at` (about the
  model's origin and +Z);
- `true_camera_and_turn`: the same latent, rendered from the true novel cameras brought into the model frame;
- `all_views`: a latent fitted on the input and every true novel view at their true cameras (what the model can
  show of this identity at best: its capacity, not a single-view result).

    .venv/bin/python benchmarks/lolnerf_view_error_budget.py --run onelook/assets/demo_lolnerf \
        --synth synth --data dataset
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from onelook.cameras.geometry import project, similarity_align, turn_about_origin, viewing_angles
from onelook.data.crop import keypoint_crop_box
from onelook.data.synthetic import identity, render
from onelook.lolnerf.evaluate import DEFAULT_ANGLES
from onelook.lolnerf.reconstructor import PhotoPlacement, Reconstructor
from onelook.metrics import masked_psnr
from onelook.rendering import pinhole_cameras

VARIANTS = ("copy_input", "fit", "true_camera", "true_camera_and_turn", "all_views")


def fit_on_views(recon: Reconstructor, cameras, images, focal: float, steps: int, seed: int) -> torch.Tensor:
    """A latent fitted on several views of one object at known cameras (model frame), as `fit` fits one."""
    rays = [
        pinhole_cameras(recon.to_world(c2w), focal, image.shape[0]).generate_rays(0, keep_shape=False)
        for c2w, image in zip(cameras, images, strict=True)
    ]
    bundle = type(rays[0])(
        **{
            key: torch.cat([getattr(r, key) for r in rays])
            for key in ("origins", "directions", "pixel_area", "camera_indices")
        }
    )
    target = torch.cat([torch.as_tensor(image, dtype=torch.float32).reshape(-1, 3) for image in images])
    generator = torch.Generator().manual_seed(seed)
    latent = recon.model.latents.mean().detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([latent], lr=1e-2)
    for _ in range(steps):
        pick = torch.randint(len(target), (1024,), generator=generator)
        batch = bundle[pick]
        batch.metadata = {"latent": latent.expand(len(pick), -1)}
        loss = F.mse_loss(recon.model.get_outputs(batch)["rgb"], target[pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return latent.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--synth", type=Path, required=True, help="the `onelook synth` folder the run was trained on")
    parser.add_argument("--data", type=Path, required=True, help="the `onelook prepare` folder the run was trained on")
    parser.add_argument("--held-out", type=int, default=8)
    parser.add_argument("--fit-steps", type=int, default=200)
    args = parser.parse_args()

    recon = Reconstructor.from_run(args.run)
    synth = json.loads((args.synth / "synth.json").read_text())
    frames = json.loads((args.data / "transforms.json").read_text())["frames"]
    truth = {f["file"]: f for f in synth["frames"]}
    true_mean = np.mean([truth[f["source"]]["keypoints_3d"] for f in frames], axis=0)
    scale, rotation, translation = similarity_align(recon.canonical_keypoints, true_mean)
    size = recon.model.crop.size
    focal = synth["focal_length"] * size / synth["image_size"][0]

    def to_model(c2w_true: np.ndarray) -> np.ndarray:
        c2w = np.eye(4)
        c2w[:3, :3] = rotation.T @ c2w_true[:3, :3]
        c2w[:3, 3] = rotation.T @ (c2w_true[:3, 3] - translation) / scale
        return c2w

    psnr = {variant: {angle: [] for angle in DEFAULT_ANGLES} for variant in VARIANTS}
    for j in tqdm(range(args.held_out), desc="held-out identities"):
        thing, c2w_true, _ = identity(synth["seed"], len(synth["frames"]) + j, synth.get("category", "heads"))
        photo = render(thing, c2w_true, focal, size)
        keypoints = project(thing.keypoints(), c2w_true[None], focal, (size, size))[0][0]
        pixels = (photo.rgb * 255).round().astype(np.uint8)
        truths = {angle: render(thing, turn_about_origin(c2w_true, *angle), focal, size) for angle in DEFAULT_ANGLES}
        options = {"mask": photo.mask, "steps": args.fit_steps, "show_progress": False, "seed": j}
        fitted = recon.fit(pixels, landmarks=keypoints, **options)
        known = PhotoPlacement(
            recon.to_world(to_model(c2w_true)),
            focal,
            keypoint_crop_box(keypoints, recon.model.crop.scale),
            0.0,
            viewing_angles(to_model(c2w_true)),
        )
        at_true_camera = recon.fit(pixels, placement=known, **options)
        novel_true = {angle: to_model(turn_about_origin(c2w_true, *angle)) for angle in DEFAULT_ANGLES}
        all_views = fit_on_views(
            recon,
            [to_model(c2w_true), *novel_true.values()],
            [photo.rgb, *(t.rgb for t in truths.values())],
            focal,
            args.fit_steps,
            j,
        )
        for angle, true in truths.items():
            views = {
                "copy_input": photo.rgb,
                "fit": fitted.render(*fitted.camera_at(*angle), size)["rgb"],
                "true_camera": at_true_camera.render(*at_true_camera.camera_at(*angle), size)["rgb"],
                "true_camera_and_turn": at_true_camera.render(novel_true[angle], focal, size)["rgb"],
                "all_views": recon.render(all_views, novel_true[angle], focal, size)["rgb"],
            }
            for variant, rgb in views.items():
                psnr[variant][angle].append(masked_psnr(rgb, true.rgb, true.mask))

    print(f"masked PSNR (dB), {args.held_out} held-out identities of {args.synth}, run {args.run}")
    print("| variant | " + " | ".join(f"({y:+.0f}, {p:+.0f})" for y, p in DEFAULT_ANGLES) + " | mean |")
    print("|---|" + "---|" * (len(DEFAULT_ANGLES) + 1))
    for variant, rows in psnr.items():
        means = [float(np.mean(rows[angle])) for angle in DEFAULT_ANGLES]
        print(f"| {variant} | " + " | ".join(f"{m:.2f}" for m in means) + f" | {np.mean(means):.2f} |")


if __name__ == "__main__":
    main()
