"""LOLNeRF's memory and speed against the number of training photos (2 CPU cores by default).

1. `onelook synth` and `onelook prepare` (with its default workers, one per core) on the largest count,
   images/s of each; the smaller datasets are the first photos of it, prepared the same way.
2. For each count, `lolnerf-small` training steps through nerfstudio's pipeline in a child process of its
   own: peak resident memory (VmHWM) and training rays/s over enough steps to load a new image subset
   (the presets hold `IMAGES_IN_MEMORY` images at a time, a new subset every `IMAGE_SUBSET_STEPS` steps).
   Reported: the largest count's peak and rays/s as ratios to the smallest's (goals: peak within 1.2x,
   rays/s within 10%).
3. A projection to FFHQ (70,000 photos at 256 px): the measured peak at the largest count, plus the measured
   growth per photo over the extra photos, plus the image subset's size at 256 px instead of 64 px, plus the
   `lolnerf` preset's larger latent table (256-d codes with Adam's two moments).

Run: `.venv/bin/python benchmarks/lolnerf_scale.py [--counts 2000 20000] [--steps 300] [--work DIR]`.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

SIZE = 64


def peak_memory_mb() -> float:
    """This process's peak resident memory (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def build_datasets(counts: list[int], work: Path) -> dict[int, Path]:
    """The synthetic photos of the largest count, and a prepared dataset of each count (reused when present)."""
    from onelook.data.prepare import prepare_dataset
    from onelook.data.synthetic import generate

    largest = max(counts)
    synth = work / f"synth-{largest}"
    if not (synth / "synth.json").is_file():
        start = time.perf_counter()
        generate(largest, SIZE, seed=11, out=synth, category="heads")
        print(f"onelook synth: {largest / (time.perf_counter() - start):.0f} images/s", flush=True)
    landmarks = json.loads((synth / "landmarks.json").read_text())
    datasets = {}
    for count in sorted(counts):
        out = work / f"dataset-{count}"
        datasets[count] = out
        if (out / "transforms.json").is_file():
            continue
        images = work / f"images-{count}"  # the first `count` photos, as links
        images.mkdir(exist_ok=True)
        names = sorted(landmarks)[:count]
        for name in names:
            if not (images / name).exists():
                (images / name).symlink_to((synth / "images" / name).resolve())
        subset = work / f"landmarks-{count}.json"
        subset.write_text(json.dumps({name: landmarks[name] for name in names}))
        start = time.perf_counter()
        prepare_dataset(images, out, landmarks=subset, masks=synth / "masks", size=SIZE)
        print(f"onelook prepare, {count} photos: {count / (time.perf_counter() - start):.0f} images/s", flush=True)
    return datasets


def train_steps(dataset: Path, steps: int, threads: int) -> dict:
    """Runs in a child process: `lolnerf-small` steps on `dataset`; rays/s after the first 10 steps."""
    import torch

    from onelook.configs import lolnerf_small_method

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = copy.deepcopy(lolnerf_small_method.config)
    config.pipeline.datamanager.data = dataset
    pipeline = config.pipeline.setup(device="cpu", test_mode="val")
    groups = pipeline.get_param_groups()
    optimizer = torch.optim.Adam([{"params": params, "lr": 1e-3} for params in groups.values()])
    rays = config.pipeline.datamanager.train_num_rays_per_batch
    pipeline.train()
    for step in range(steps):
        if step == 10:
            start = time.perf_counter()
        optimizer.zero_grad()
        _, loss_dict, _ = pipeline.get_train_loss_dict(step)
        sum(loss_dict.values()).backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    return {
        "images": len(pipeline.datamanager.train_dataset),
        "rays_per_second": rays * (steps - 10) / seconds,
        "peak_memory_mb": peak_memory_mb(),
        "images_in_memory": config.pipeline.datamanager.train_num_images_to_sample_from,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/onelook-lolnerf-scale"))
    parser.add_argument("--clean", action="store_true", help="delete the generated datasets at the end")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(train_steps(args.child, args.steps, args.threads)))
        return

    args.work.mkdir(parents=True, exist_ok=True)
    datasets = build_datasets(args.counts, args.work)
    rows = {}
    for count, dataset in datasets.items():
        command = [sys.executable, __file__, "--child", str(dataset), "--steps", str(args.steps)]
        out = subprocess.run(command + ["--threads", str(args.threads)], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-3000:])
        rows[count] = json.loads(out.stdout.strip().splitlines()[-1])
        r = rows[count]
        print(
            f"{r['images']:>6d} photos at {SIZE} px: peak {r['peak_memory_mb']:7.0f} MB, "
            f"{r['rays_per_second']:7.0f} rays/s ({args.steps} steps, {r['images_in_memory']} images in memory)",
            flush=True,
        )
    small, large = rows[min(rows)], rows[max(rows)]
    memory_ratio = large["peak_memory_mb"] / small["peak_memory_mb"]
    speed_ratio = large["rays_per_second"] / small["rays_per_second"]
    print(f"{large['images']} / {small['images']} photos: peak memory x{memory_ratio:.2f}, rays/s x{speed_ratio:.2f}")

    # FFHQ: 70,000 photos at 256 px with the `lolnerf` preset's 256-d latent table.
    from onelook.configs import lolnerf_method, lolnerf_small_method

    per_photo_mb = (large["peak_memory_mb"] - small["peak_memory_mb"]) / (large["images"] - small["images"])
    subset = large["images_in_memory"]
    image_mb = lambda side: side * side * (3 * 4 + 1) / 2**20  # noqa: E731 - float RGB and a bool mask per pixel
    extra_dims = lolnerf_method.config.pipeline.model.latent_dim - lolnerf_small_method.config.pipeline.model.latent_dim
    latent_mb = 70_000 * extra_dims * 4 * 3 / 2**20  # weights and Adam's two moments
    projected = (
        large["peak_memory_mb"]
        + max(per_photo_mb, 0.0) * (70_000 - large["images"])
        + subset * (image_mb(256) - image_mb(SIZE))
        + latent_mb
    )
    print(
        f"projection, 70,000 photos at 256 px: {projected / 1024:.1f} GB (growth {per_photo_mb * 1024:.1f} KB per "
        f"photo, {subset} images of {image_mb(256):.2f} MB in memory, 256-d latents +{latent_mb:.0f} MB)"
    )
    if args.clean:
        shutil.rmtree(args.work)


if __name__ == "__main__":
    main()
