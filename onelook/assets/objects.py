"""Rebuilds the packaged offline prior for RealFusion and the app's object examples:

    onelook synth --category objects --n 300 --size 32 --seed 0 --random-views 12 --out prior_data
    onelook synth --category objects --n 40 --size 32 --seed 1000 --random-views 12 --out heldout
    onelook train-prior prior_data --out objects-prior --held-out heldout
    python -m onelook.assets.objects objects-prior

Writes onelook/assets/object_prior/ (the diffusers folder, without its training state) and
onelook/assets/object_examples/ (front photos of objects of the family from a seed the prior never saw, with
their masks as alpha).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from onelook.data.object_family import KINDS, REFERENCE_ELEVATION, FamilyObject, render_orbit_view

ASSETS = Path(__file__).parent
OBJECT_PRIOR = ASSETS / "object_prior"
OBJECT_EXAMPLES = ASSETS / "object_examples"
PRIOR_PARTS = ("model_index.json", "scheduler", "text_encoder", "tokenizer", "unet", "vae")
EXAMPLE_SEED = 2000  # neither the prior's training seed (0) nor its held-out one (1000)


def write_object_examples(out: Path, count: int, size: int, seed: int = EXAMPLE_SEED) -> list[Path]:
    """`count` objects' front photos (RGBA, the object's mask as alpha), one of each kind in turn."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        thing = FamilyObject.sample(np.random.default_rng([seed, i]), kind=KINDS[i % len(KINDS)])
        view, _, _ = render_orbit_view(thing, 0.0, REFERENCE_ELEVATION, size, lit=True)
        rgba = np.dstack([view.rgb * 255, view.mask * 255]).round().astype(np.uint8)
        paths.append(out / f"{thing.kind}_{i}.png")
        Image.fromarray(rgba, "RGBA").save(paths[-1])
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prior", type=Path, help="a folder written by `onelook train-prior`")
    parser.add_argument("--examples", type=int, default=4)
    parser.add_argument("--size", type=int, default=128, help="example photo size")
    args = parser.parse_args()

    shutil.rmtree(OBJECT_PRIOR, ignore_errors=True)
    OBJECT_PRIOR.mkdir()
    for part in (*PRIOR_PARTS, "training_config.json", "samples.png"):
        source = args.prior / part
        if source.is_dir():
            shutil.copytree(source, OBJECT_PRIOR / part)
        elif source.is_file():
            shutil.copy(source, OBJECT_PRIOR / part)
    shutil.rmtree(OBJECT_EXAMPLES, ignore_errors=True)
    write_object_examples(OBJECT_EXAMPLES, args.examples, args.size)
    print(f"wrote {OBJECT_PRIOR} and {OBJECT_EXAMPLES}")


if __name__ == "__main__":
    main()
