"""The `onelook` command: the project's own tools beside nerfstudio's `ns-train`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


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
    from onelook.data.synthetic import generate

    generate(args.n, args.size, args.seed, args.out)
    print(f"{args.n} synthetic views written to {args.out}")
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
    prep.add_argument("--crop-scale", type=float, default=3.2, help="crop side / keypoint extent (default 3.2)")
    prep.add_argument("--workers", type=int, default=2, help="processes for per-image work (default 2)")
    prep.set_defaults(func=_prepare)

    syn = sub.add_parser("synth", help="render a synthetic head-like category with exact ground truth")
    syn.add_argument("--n", type=int, default=200, help="number of identities, one view each")
    syn.add_argument("--size", type=int, default=128)
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--out", type=Path, required=True)
    syn.set_defaults(func=_synth)

    example = sub.add_parser("example", help="synthesise a small category and prepare it as a dataset")
    example.add_argument("--out", type=Path, default=Path("example"))
    example.add_argument("--n", type=int, default=64)
    example.add_argument("--size", type=int, default=64)
    example.set_defaults(func=_example)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"onelook {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
