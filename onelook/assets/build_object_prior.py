"""Packages a prior trained by `onelook train-prior` as the app's default "Any object" model, with example photos
of its family drawn with a seed it never saw. The shipped one was trained by (about an hour on 2 CPU cores;
`onelook train-prior` resumes where an interrupted run stopped):

    onelook synth --category objects --n 300 --size 32 --seed 0 --random-views 12 --out prior_data
    onelook synth --category objects --n 40 --size 32 --seed 1000 --random-views 12 --out heldout
    onelook train-prior prior_data --out objects-prior --vae-steps 1500 --unet-steps 5000 \
        --prediction-type v_prediction --held-out heldout
    python -m onelook.assets.build_object_prior objects-prior

Writes onelook/assets/object_prior/ (the diffusers folder with the RealFusion settings it recommends, without
its training state) and onelook/assets/object_examples/ (one front photo per kind, its mask as alpha).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from onelook.assets import OBJECT_EXAMPLES, OBJECT_PRIOR
from onelook.data.object_family import KINDS, REFERENCE_ELEVATION, family_object, render_orbit_view
from onelook.guidance.prior_settings import SETTINGS_FILE

SHIPPED = ("model_index.json", "vae", "unet", "text_encoder", "tokenizer", "scheduler", SETTINGS_FILE)
EXAMPLE_SEED = 2000  # the prior trains on seed 0 and is evaluated on seed 1000


def ship_prior(folder: Path, out: Path = OBJECT_PRIOR) -> Path:
    """Copies the parts of a trained prior folder that load it (not `training/`, its resumable state)."""
    missing = [name for name in SHIPPED if not (folder / name).exists()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {missing}: is it a finished `onelook train-prior` folder?")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for name in SHIPPED:
        source = folder / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, out / name)
    return out


def write_examples(out: Path = OBJECT_EXAMPLES, size: int = 128, seed: int = EXAMPLE_SEED) -> list[Path]:
    """The first object of each kind in the family drawn with `seed`, from the front as RealFusion's photo."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    paths, index = [], 0
    for kind in KINDS:
        while (thing := family_object(seed, index)).kind != kind:
            index += 1
        view, _, _ = render_orbit_view(thing, 0.0, REFERENCE_ELEVATION, size)
        rgba = np.dstack([view.rgb * 255, view.mask * 255]).round().astype(np.uint8)
        paths.append(out / f"{kind}.png")
        Image.fromarray(rgba).save(paths[-1])
        index = 0
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prior", type=Path, help="a folder written by `onelook train-prior`")
    args = parser.parse_args()
    print(f"wrote {ship_prior(args.prior)} and {len(write_examples())} examples in {OBJECT_EXAMPLES}")


if __name__ == "__main__":
    main()
