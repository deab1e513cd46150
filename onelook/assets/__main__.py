"""Rebuilds the packaged demo assets from a LOLNeRF run trained on `onelook synth` data:

    onelook synth --n 320 --size 64 --seed 1 --out synth
    onelook prepare synth/images --out dataset --landmarks synth/landmarks.json --masks synth/masks --size 64
    ns-train lolnerf-small --data dataset --machine.device-type cpu --output-dir runs
    python -m onelook.assets runs/dataset/lolnerf-small/TIMESTAMP --synth synth

Writes onelook/assets/demo_lolnerf/ (the run's config.yml and its weights without optimiser state) and
onelook/assets/examples/ (held-out identities the model never saw, with their true keypoints).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from onelook.assets import DEMO_MODEL, EXAMPLES
from onelook.cameras.geometry import project
from onelook.data.synthetic import CATEGORIES, identity, render
from onelook.runs import find_run, load_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--synth", type=Path, required=True)
    parser.add_argument("--examples", type=int, default=4)
    parser.add_argument("--size", type=int, default=128, help="example photo size")
    args = parser.parse_args()

    config, checkpoint = find_run(args.run_dir)
    model_dir = DEMO_MODEL
    shutil.rmtree(model_dir, ignore_errors=True)
    (model_dir / "nerfstudio_models").mkdir(parents=True)
    shutil.copy(config, model_dir / "config.yml")
    state = load_checkpoint(checkpoint)
    torch.save(
        {"step": state["step"], "pipeline": state["pipeline"]}, model_dir / "nerfstudio_models" / checkpoint.name
    )

    synth = json.loads((args.synth / "synth.json").read_text())
    examples = EXAMPLES
    shutil.rmtree(examples, ignore_errors=True)
    examples.mkdir()
    category = synth.get("category", "heads")
    focal = CATEGORIES[category].focal_factor * args.size
    landmarks = {}
    for i in range(args.examples):
        head, c2w, _ = identity(synth["seed"], len(synth["frames"]) + 100 + i, category)
        view = render(head, c2w, focal, args.size)
        name = f"synthetic_{i}.png"
        Image.fromarray((view.rgb * 255).round().astype(np.uint8)).save(examples / name)
        landmarks[name] = project(head.keypoints(), c2w[None], focal, (args.size, args.size))[0][0].tolist()
    (examples / "landmarks.json").write_text(json.dumps(landmarks, indent=1))
    print(f"wrote {model_dir} and {examples}")


if __name__ == "__main__":
    main()
