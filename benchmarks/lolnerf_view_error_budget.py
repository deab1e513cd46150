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
from pathlib import Path

import numpy as np
from tqdm import tqdm

from onelook.cameras.geometry import turn_about_origin, viewing_angles
from onelook.data.crop import keypoint_crop_box
from onelook.data.synthetic import render
from onelook.lolnerf.evaluate import DEFAULT_ANGLES, SyntheticTruth
from onelook.lolnerf.reconstructor import PhotoPlacement, PlacedPhoto, Reconstructor
from onelook.metrics import masked_psnr

VARIANTS = ("copy_input", "fit", "true_camera", "true_camera_and_turn", "all_views")


def as_uint8(rgb: np.ndarray) -> np.ndarray:
    return (rgb * 255).round().astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--synth", type=Path, required=True, help="the `onelook synth` folder the run was trained on")
    parser.add_argument("--data", type=Path, required=True, help="the `onelook prepare` folder the run was trained on")
    parser.add_argument("--held-out", type=int, default=8)
    parser.add_argument("--fit-steps", type=int, default=200)
    args = parser.parse_args()

    recon = Reconstructor.from_run(args.run)
    truth = SyntheticTruth.load(recon, args.synth, args.data)
    to_model, focal, size = truth.to_model, truth.focal, truth.size

    def placed(c2w_model: np.ndarray, crop_box: tuple[float, float, float]) -> PhotoPlacement:
        return PhotoPlacement(recon.to_world(c2w_model), focal, crop_box, 0.0, viewing_angles(c2w_model))

    psnr = {variant: {angle: [] for angle in DEFAULT_ANGLES} for variant in VARIANTS}
    for j in tqdm(range(args.held_out), desc="held-out identities"):
        thing, c2w_true, photo, keypoints = truth.held_out(j)
        pixels = as_uint8(photo.rgb)
        truths = {angle: render(thing, turn_about_origin(c2w_true, *angle), focal, size) for angle in DEFAULT_ANGLES}
        options = {"mask": photo.mask, "steps": args.fit_steps, "show_progress": False, "seed": j}
        fitted = recon.fit(pixels, landmarks=keypoints, **options)
        known = placed(to_model(c2w_true), keypoint_crop_box(keypoints, recon.model.crop.scale))
        at_true_camera = recon.fit(pixels, placement=known, **options)
        novel_true = {angle: to_model(turn_about_origin(c2w_true, *angle)) for angle in DEFAULT_ANGLES}
        # The whole render as the crop (no keypoint crop) and no mask loss: every pixel of every true view.
        whole = (0.0, 0.0, float(size))
        all_views = recon.fit(
            pixels,
            placement=placed(to_model(c2w_true), whole),
            more_views=[PlacedPhoto(as_uint8(true.rgb), placed(novel_true[a], whole)) for a, true in truths.items()],
            steps=args.fit_steps,
            show_progress=False,
            seed=j,
        ).latent
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
