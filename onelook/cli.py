"""The `onelook` command: the project's own tools beside nerfstudio's `ns-train`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from onelook.data.crop import DEFAULT_CROP_SCALE
from onelook.guidance.stable_diffusion import DEFAULT_SD_MODEL, PriorUnavailableError


def _prepare(args: argparse.Namespace) -> int:
    from onelook.data.prepare import prepare_dataset

    report = prepare_dataset(
        args.images_dir,
        args.out,
        landmarks=args.landmarks,
        masks=args.masks,
        focal_length=args.focal_length,
        size=args.size,
        crop_scale=args.crop_scale,
        workers=args.workers,
    )
    print(report)
    print(f"dataset written to {args.out} (train with: ns-train lolnerf --data {args.out})")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from onelook.data.object_family import generate_objects, orbit_views
    from onelook.data.synthetic import generate

    if args.category == "objects":
        if args.exif_focal:
            raise ValueError(
                "--exif-focal is for the heads, animals and cars (one photo each); objects are seen all around"
            )
        generate_objects(args.n, args.size, args.seed, args.out, args.random_views)
        print(f"{args.n} synthetic objects, {len(orbit_views()) + args.random_views} views each, written to {args.out}")
        print(f"reconstruct one from its front: ns-train realfusion --data {args.out / 'images' / '00000_000_15.png'}")
        return 0
    generate(args.n, args.size, args.seed, args.out, category=args.category, exif_focal=args.exif_focal)
    print(f"{args.n} synthetic {args.category} written to {args.out}")
    print(
        f"prepare them with: onelook prepare {args.out / 'images'} --out DATASET "
        f"--landmarks {args.out / 'landmarks.json'} --masks {args.out / 'masks'}"
    )
    return 0


def _example(args: argparse.Namespace) -> int:
    from onelook.data.prepare import prepare_dataset
    from onelook.data.synthetic import generate

    synth = generate(args.n, args.size, seed=0, out=args.out / "synthetic")
    dataset = args.out / "dataset"
    report = prepare_dataset(
        synth / "images",
        dataset,
        landmarks=synth / "landmarks.json",
        masks=synth / "masks",
        size=args.size,
    )
    print(report)
    print(f"dataset written to {dataset}; train a model on it with:")
    print(f"  ns-train lolnerf-small --data {dataset} --machine.device-type cpu")
    return 0


def _photo_inputs(photo: Path, landmarks: Path | None, mask: Path | None) -> dict:
    """fit() keyword arguments for one photo: its keypoints from a landmarks file (checked as `onelook prepare`
    checks them), its mask from an image file."""
    from onelook.data.prepare import read_landmarks
    from onelook.data.preprocess import load_mask, parse_keypoints

    inputs: dict = {"image": photo}
    if landmarks is not None:
        table = read_landmarks(landmarks)
        if photo.name not in table:
            raise ValueError(f"{landmarks} has no entry for {photo.name}")
        inputs["landmarks"] = parse_keypoints(table[photo.name])
    if mask is not None:
        inputs["mask"] = load_mask(mask)
    return inputs


def _fit(args: argparse.Namespace) -> int:
    from onelook.export import export_all
    from onelook.lolnerf import Reconstructor

    recon = Reconstructor.from_run(args.run_dir, device=args.device)
    result = recon.fit(**_photo_inputs(args.photo, args.landmarks, args.mask), steps=args.steps)
    paths = export_all(result, args.out, frames=args.frames, mesh_resolution=args.mesh_resolution)
    print("\n".join(f"{name}: {path}" for name, path in paths.items()))
    return 0


def _interpolate(args: argparse.Namespace) -> int:
    from onelook.export.images import save_png, write_video
    from onelook.lolnerf import Reconstructor

    recon = Reconstructor.from_run(args.run_dir, device=args.device)
    first = recon.fit(**_photo_inputs(args.photo_a, args.landmarks, None), steps=args.steps)
    second = recon.fit(**_photo_inputs(args.photo_b, args.landmarks, None), steps=args.steps)
    args.out.mkdir(parents=True, exist_ok=True)
    frames = recon.interpolate(first, second, args.frames)
    for i, frame in enumerate(frames):
        save_png(frame, args.out / f"interpolation_{i:02d}.png")
    print(write_video(frames, args.out / "interpolation.mp4"))
    return 0


def _sample(args: argparse.Namespace) -> int:
    import numpy as np

    from onelook.export.images import save_png
    from onelook.lolnerf import Reconstructor

    recon = Reconstructor.from_run(args.run_dir, device=args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    views = []
    for i, sample in enumerate(recon.sample(args.n, truncation=args.truncation, seed=args.seed)):
        views.append(sample.render(sample.camera_to_world, sample.focal_length, sample.image_size)["rgb"])
        save_png(views[-1], args.out / f"sample_{i:02d}.png")
    print(save_png(np.concatenate(views, axis=1), args.out / "samples.png"))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from onelook.lolnerf.evaluate import evaluate, write_report
    from onelook.runs import find_run, load_run_config

    data = args.data or load_run_config(find_run(args.run_dir)[0]).pipeline.datamanager.data
    report = evaluate(
        args.run_dir, args.synth, data, held_out=args.held_out, fit_steps=args.fit_steps, device=args.device
    )
    json_path, md_path = write_report(report, args.out)
    print(report.markdown())
    print(f"written: {json_path}, {md_path}")
    return 0


def _eval_realfusion(args: argparse.Namespace) -> int:
    from onelook.assets import OBJECT_PRIOR
    from onelook.models.realfusion import RealFusionModelConfig
    from onelook.realfusion.evaluate import evaluate_realfusion

    given = {
        "guidance_scale": args.guidance_scale,
        "sds_loss_weight": args.sds_weight,
        "albedo_steps": args.albedo_steps,
    }
    for option in args.model_option:
        name, _, value = option.partition("=")
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"--model-option {option!r}: give NAME=VALUE, VALUE in JSON (e.g. 0.1, true)") from None
        given[name.replace("-", "_")] = tuple(value) if isinstance(value, list) else value  # ranges are tuples
    if args.t_max is not None:
        given["t_range"] = (RealFusionModelConfig.t_range[0], args.t_max)
    views = {"prior_distance_range": args.prior_view_distance, "prior_fov_range": args.prior_view_fov}
    report = evaluate_realfusion(
        args.prior or str(OBJECT_PRIOR),
        args.objects,
        args.seed,
        args.out,
        args.quality,
        tuple(args.variants),
        args.device,
        sds_options={name: value for name, value in given.items() if value is not None},
        runs=args.runs,
        view_options={name: tuple(value) for name, value in views.items() if value is not None},
        iterations=args.iterations,
    )
    for variant, metrics in report["means"].items():
        print(variant, " ".join(f"{k}={v:.4g}" if v is not None else f"{k}=none" for k, v in metrics.items()))
    print(f"written: {args.out / 'metrics.json'}, {args.out / 'contact_sheet.png'}")
    return 0


def _train_prior(args: argparse.Namespace) -> int:
    from onelook.guidance.train_prior import PriorTrainingConfig, held_out_loss, sample_grid, train_prior

    options = ("image_size", "vae_steps", "unet_steps", "batch_size", "seed", "prediction_type")
    given = {name: getattr(args, name) for name in options}
    config = PriorTrainingConfig(**{name: value for name, value in given.items() if value is not None})
    folder = train_prior(args.synth_dir, args.out, config)
    print(f"prior written to {folder} (use it with --sd-model {folder} or --pipeline.model.sd-model {folder})")
    print(f"samples: {sample_grid(folder, folder / 'samples.png', seed=config.seed)}")
    if args.held_out is not None:
        loss = held_out_loss(folder, args.held_out)
        print(f"denoising loss on the held-out renders of {args.held_out}: {loss:.4f}")
        own, other = (held_out_loss(folder, args.held_out, captions=c) for c in ("own", "recoloured"))
        print(f"  captioned with their own colours: {own:.4f}; with another object's of their kind: {other:.4f}")
    return 0


def _invert(args: argparse.Namespace) -> int:
    from onelook.data.image_dataparser import INVERSION_IMAGE_SIZE
    from onelook.data.object_image import prepare_object_image
    from onelook.device import resolve_device
    from onelook.guidance.stable_diffusion import StableDiffusionPrior
    from onelook.guidance.textual_inversion import invert

    # At Stable Diffusion's resolution, from the photo itself; fails on a bad image before loading any model.
    prepared = prepare_object_image(args.image, args.mask, size=INVERSION_IMAGE_SIZE)
    device = resolve_device(args.device)
    prior = StableDiffusionPrior.load(args.sd_model, device=device, half_precision=args.half_precision)
    learned = invert(
        prior,
        prepared.on_white(),
        steps=args.steps,
        token=args.token,
        initializer=args.initializer,
        gradient_accumulation=args.gradient_accumulation,
    )
    print(f"learned {learned.token!r} ({prepared.mask_source} mask): {learned.save(args.out)}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from onelook.export import export_all
    from onelook.runs import load_result

    paths = export_all(
        load_result(args.run_dir, args.device), args.out, frames=args.frames, mesh_resolution=args.mesh_resolution
    )
    print("\n".join(f"{name}: {path}" for name, path in paths.items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onelook", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    prep = sub.add_parser("prepare", help="turn a folder of single-view images into a LOLNeRF dataset")
    prep.add_argument("images_dir", type=Path)
    prep.add_argument("--out", type=Path, required=True, help="dataset folder (re-running resumes)")
    prep.add_argument(
        "--landmarks",
        type=Path,
        help="JSON: image file name -> K [x, y] pixel keypoints (default: MediaPipe faces)",
    )
    prep.add_argument("--masks", type=Path, help="folder of PNG foreground masks with the images' file names")
    prep.add_argument("--focal-length", type=float, help="pixels of the --size crop (default: estimated)")
    prep.add_argument("--size", type=int, default=128, help="side of the square crops (default 128)")
    prep.add_argument(
        "--crop-scale",
        type=float,
        default=DEFAULT_CROP_SCALE,
        help=f"crop side / keypoint extent (default {DEFAULT_CROP_SCALE})",
    )
    prep.add_argument(
        "--workers", type=int, default=None, help="processes for per-image work (default: one per CPU core)"
    )
    prep.set_defaults(func=_prepare)

    syn = sub.add_parser(
        "synth",
        help="render a synthetic category with exact ground truth: LOLNeRF's heads, animals, cars (one view each) "
        "or RealFusion's objects (from all around)",
    )
    syn.add_argument("--category", choices=["heads", "animals", "cars", "objects"], default="heads")
    syn.add_argument("--n", type=int, default=200, help="number of identities")
    syn.add_argument("--size", type=int, default=128)
    syn.add_argument(
        "--random-views",
        type=int,
        default=0,
        help="objects only: this many more views per object from random cameras, as RealFusion's prior sees them",
    )
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument(
        "--exif-focal",
        action="store_true",
        help="heads, animals, cars: write the true focal length into each image's EXIF, as a camera does, so that "
        "`onelook prepare` uses it (default: none, and the landmarks decide it)",
    )
    syn.add_argument("--out", type=Path, required=True)
    syn.set_defaults(func=_synth)

    example = sub.add_parser("example", help="synthesise a small category and prepare it as a dataset")
    example.add_argument("--out", type=Path, default=Path("example"))
    example.add_argument("--n", type=int, default=64)
    example.add_argument("--size", type=int, default=64)
    example.set_defaults(func=_example)

    fit = sub.add_parser("fit", help="lift a photo to 3D with a trained LOLNeRF model")
    fit.add_argument("run_dir", type=Path, help="ns-train output folder (holding config.yml)")
    fit.add_argument("photo", type=Path)
    fit.add_argument("--out", type=Path, required=True)
    fit.add_argument("--landmarks", type=Path, help="JSON: file name -> K [x, y] keypoints (default: MediaPipe)")
    fit.add_argument("--mask", type=Path, help="foreground mask PNG (default: MediaPipe's, for faces)")
    fit.add_argument("--steps", type=int, default=300, help="latent optimisation steps (default 300)")
    fit.add_argument("--frames", type=int, default=24, help="turntable frames (default 24)")
    fit.add_argument("--mesh-resolution", type=int, default=128)
    fit.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    fit.set_defaults(func=_fit)

    inter = sub.add_parser("interpolate", help="blend two fitted photos' latents, camera held fixed")
    inter.add_argument("run_dir", type=Path)
    inter.add_argument("photo_a", type=Path)
    inter.add_argument("photo_b", type=Path)
    inter.add_argument("--out", type=Path, required=True)
    inter.add_argument("--landmarks", type=Path, help="JSON with both photos' keypoints (default: MediaPipe)")
    inter.add_argument("--frames", type=int, default=8)
    inter.add_argument("--steps", type=int, default=300)
    inter.add_argument("--device")
    inter.set_defaults(func=_interpolate)

    sample = sub.add_parser("sample", help="new identities from a trained model's latent distribution")
    sample.add_argument("run_dir", type=Path)
    sample.add_argument("--out", type=Path, required=True)
    sample.add_argument("--n", type=int, default=8)
    sample.add_argument("--truncation", type=float, default=0.7, help="0: the mean object, 1: no truncation")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--device")
    sample.set_defaults(func=_sample)

    export = sub.add_parser("export", help="views, depth, normals, turntable and meshes of a trained run")
    export.add_argument("run_dir", type=Path, help="ns-train output folder (realfusion, or lolnerf: its mean object)")
    export.add_argument("--out", type=Path, required=True)
    export.add_argument("--frames", type=int, default=24)
    export.add_argument("--mesh-resolution", type=int, default=128)
    export.add_argument("--device")
    export.set_defaults(func=_export)

    inv = sub.add_parser("invert", help="single-image textual inversion: a new word for the object in a photo")
    inv.add_argument("image", type=Path)
    inv.add_argument("--out", type=Path, required=True, help="embedding file (.safetensors)")
    inv.add_argument(
        "--sd-model", default=DEFAULT_SD_MODEL, help=f"hub id or local folder (default {DEFAULT_SD_MODEL})"
    )
    inv.add_argument("--steps", type=int, default=3000)
    inv.add_argument("--mask", type=Path, help="foreground mask (default: alpha, rembg if installed, GrabCut)")
    inv.add_argument("--token", default="<object>")
    inv.add_argument("--initializer", default="object", help="an existing word to start the new one from")
    inv.add_argument(
        "--gradient-accumulation", type=int, default=4, help="images averaged per step (the released code's 4)"
    )
    inv.add_argument(
        "--half-precision",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Stable Diffusion in fp16 (default: on CUDA only); the learned word is optimised in fp32 either way",
    )
    inv.add_argument("--device")
    inv.set_defaults(func=_invert)

    ev = sub.add_parser("eval", help="measure a LOLNeRF model trained on `onelook synth` data against the truth")
    ev.add_argument("run_dir", type=Path)
    ev.add_argument("--synth", type=Path, required=True, help="the `onelook synth` folder the dataset came from")
    ev.add_argument("--data", type=Path, help="the prepared dataset (default: the run's own --data)")
    ev.add_argument("--out", type=Path, required=True)
    ev.add_argument("--held-out", type=int, default=8, help="identities fitted from one view (default 8)")
    ev.add_argument("--fit-steps", type=int, default=200)
    ev.add_argument("--device")
    ev.set_defaults(func=_eval)

    tp = sub.add_parser(
        "train-prior",
        help="train a small Stable Diffusion (VAE, UNet, text encoder) on `onelook synth --category objects` "
        "renders; resumable (run the same command again)",
    )
    tp.add_argument("synth_dir", type=Path)
    tp.add_argument("--out", type=Path, required=True, help="the diffusers folder to write")
    tp.add_argument("--held-out", type=Path, help="another `onelook synth --category objects` folder to score")
    # Unset: `onelook.guidance.train_prior.PriorTrainingConfig`'s defaults.
    for option in ("--image-size", "--vae-steps", "--unet-steps", "--batch-size", "--seed"):
        tp.add_argument(option, type=int, help="default: PriorTrainingConfig's")
    tp.add_argument(
        "--prediction-type",
        choices=("epsilon", "v_prediction"),  # stable_diffusion.PREDICTION_TYPES (not imported: torch at start-up)
        help="what the UNet learns to predict (default: epsilon, as SD 1.x; v_prediction as SD 2.x 768)",
    )
    tp.set_defaults(func=_train_prior)

    evr = sub.add_parser(
        "eval-realfusion",
        help="reconstruct held-out synthetic objects from their front photo (reference only, class word, "
        "RealFusion) and score them against the truth",
    )
    evr.add_argument(
        "--prior",
        help="the diffusion prior: a diffusers folder or hub id (e.g. Stable Diffusion 1.5); default: the packaged "
        "object prior, trained on this family",
    )
    evr.add_argument("--objects", type=int, default=8, help="objects of the family to reconstruct (default 8)")
    evr.add_argument("--seed", type=int, default=1000, help="the family's seed (default 1000: never trained on)")
    evr.add_argument("--out", type=Path, required=True)
    evr.add_argument("--quality", default="quick", help="preview, quick (default), standard or high")
    evr.add_argument(
        "--iterations", type=int, help="training steps of every variant (default: the quality preset's; quick: 300)"
    )
    evr.add_argument(
        "--variants",
        nargs="+",
        default=["reference_only", "class_word", "realfusion"],
        help="any of reference_only, class_word, realfusion (default: all three)",
    )
    evr.add_argument(
        "--runs", type=int, default=1, help="training runs per object and variant, seeds S, S+1, ... (default 1)"
    )
    # Unset: what the prior's folder recommends (`onelook.guidance.prior_settings`), else `RealFusionModelConfig`'s
    # defaults (RealFusion's for Stable Diffusion 1.5), the numbers the help names.
    recommended = "default: the prior folder's setting, else"
    evr.add_argument("--guidance-scale", type=float, help=f"score distillation's guidance scale ({recommended} 100)")
    evr.add_argument("--sds-weight", type=float, help=f"weight of score distillation ({recommended} 1)")
    evr.add_argument(
        "--t-max", type=float, help=f"largest timestep drawn, a fraction of the schedule ({recommended} 0.98)"
    )
    evr.add_argument(
        "--albedo-steps", type=int, help="steps of plain albedo before shading (default: a fifth of the run)"
    )
    evr.add_argument(
        "--model-option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any other field of `ns-train realfusion`'s model config for the two prior variants, VALUE in JSON "
        "(e.g. normal_smoothness_weight=0.1); repeatable",
    )
    for flag, what in (
        ("--prior-view-distance", f"distance range of the random views' cameras ({recommended} 1.0 1.5)"),
        ("--prior-view-fov", f"field-of-view range of the random views, degrees ({recommended} 40 70)"),
    ):
        evr.add_argument(flag, type=float, nargs=2, metavar=("MIN", "MAX"), help=what)
    evr.add_argument("--device")
    evr.set_defaults(func=_eval_realfusion)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, PriorUnavailableError) as exc:
        print(f"onelook {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
