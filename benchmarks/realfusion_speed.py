"""RealFusion speed and memory on this machine's CPU with the tiny prior, and the work the real prior adds.

1. Seconds per training iteration at 64x64 and 128x128 prior-view renders (reference crop of the same size),
   split into render (reference + prior view, forward, with the prior view's chunked backward), SDS (VAE
   encode + UNet, forward) and backward, with the process's peak memory, in two passes. Side by side: the code
   now (normals at each ray's surface, `--pipeline.model.normals surface`; our hash grid, which skips the
   levels coarse-to-fine has not switched on yet), each lever alone, and the previous code (normals at every
   sample, `--pipeline.model.normals samples`; nerfstudio's PyTorch hash grid, every level computed, then
   masked); with half the hash-grid levels on (the first 3,000 steps) and with all of them. Each case runs in
   its own process so that peaks do not mix. Then the reference view's masked PSNR after QUALITY_STEPS shaded
   training steps with each kind of normals (the same seed; the tiny prior's score distillation on, weighed down).
2. Peak memory of a training iteration with 48+48 samples per ray at 64, 128 and 256 px prior views, one pass
   (`--pipeline.model.prior-view-chunk 0`) against two passes. Each case runs in a process limited to
   MEMORY_LIMIT_GB of address space: a case that needs more is reported as out of memory instead of taking the
   machine down.
3. FLOPs of Stable Diffusion 1.5's UNet (one 64x64-latent forward) and VAE encoder (512x512), counted by
   torch's FlopCounterMode on the meta device: the real architecture, no weights, nothing computed.

Run: `.venv/bin/python benchmarks/realfusion_speed.py [--iterations 6]`; `--skip-speed`, `--skip-quality` and
`--skip-memory` leave a part out.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from nerfstudio.field_components.encodings import HashEncoding
from PIL import Image

# Stable Diffusion 1.5's UNet and VAE configurations (diffusers' config.json of the released model).
SAMPLES = 12  # coarse and again fine samples per ray in the speed table (one pass at 128 px and 24+24: > 24 GB)
MEMORY_SAMPLES = 48  # the "standard" quality's samples, in the memory table
MEMORY_LIMIT_GB = 20
QUALITY_STEPS = 300  # training steps before the reference view's PSNR is measured (32 px views, 1,024 rays)
# The tiny prior is random: at full weight its score distillation is noise that keeps any reference view from
# being learnt (about 9 dB whatever the normals), so the quality check weighs it down.
QUALITY_SDS_WEIGHT = 0.01
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8,
)  # fmt: skip
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512,
)  # fmt: skip


def sd15_flops() -> dict[str, float]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET)
        vae = AutoencoderKL(**SD15_VAE)
        latents, text = torch.randn(1, 4, 64, 64), torch.randn(1, 77, 768)
        image = torch.randn(1, 3, 512, 512)
    counts = {}
    with FlopCounterMode(display=False) as counter:
        unet(latents, torch.tensor([500], device="meta"), encoder_hidden_states=text)
    counts["unet_forward"] = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        vae.encode(image)
    counts["vae_encode_forward"] = counter.get_total_flops()
    return counts


@dataclass
class Case:
    """One measured configuration; `previous` is the code before normals at the surface and our hash grid:
    normals at every sample and nerfstudio's PyTorch hash grid computing every level (masked afterwards)."""

    size: int
    iterations: int
    samples: int = SAMPLES
    chunk: int = 1024
    normals: str = "surface"
    previous_hash_grid: bool = False
    all_levels: bool = False  # every hash-grid level on (after coarse-to-fine's switch), else the coarser half
    rays: int = 4096
    sds_loss_weight: float = 1.0


def time_iterations(case: Case) -> dict:
    """Runs in a child process: the tiny-prior pipeline at `case.size` px, timed by phase; the reference view's
    masked PSNR at the end."""
    from skimage import data

    from onelook.configs import realfusion_method
    from onelook.guidance.tiny import build_tiny_stable_diffusion

    torch.set_num_threads(2)
    tmp = Path(tempfile.mkdtemp())
    photo = tmp / "cup.png"
    Image.fromarray(np.asarray(Image.fromarray(data.coffee()).resize((160, 120)))).save(photo)
    config = copy.deepcopy(realfusion_method.config)
    config.pipeline.datamanager.data = photo
    config.pipeline.datamanager.dataparser.image_size = case.size
    config.pipeline.datamanager.dataparser.cache_dir = tmp / "cache"
    config.pipeline.datamanager.prior_view_size = case.size
    config.pipeline.datamanager.train_num_rays_per_batch = case.rays
    model = config.pipeline.model
    model.sd_model = str(build_tiny_stable_diffusion(tmp / "tiny-sd"))
    model.inversion_steps, model.implementation = 2, "torch"
    model.num_coarse_samples = model.num_fine_samples = case.samples
    model.prior_view_chunk = case.chunk
    model.normals = case.normals
    model.albedo_steps = 0  # shaded views, as after the first 1000 iterations
    model.sds_loss_weight = case.sds_loss_weight
    if case.all_levels:
        model.coarse_to_fine_step = 0
    pipeline = config.pipeline.setup(device="cpu", test_mode="val")
    model = pipeline.model
    if case.previous_hash_grid:
        field, encoding = model.field, model.field.encoding
        encoding.pytorch_fwd = lambda x: HashEncoding.pytorch_fwd(encoding, x) * field.level_mask
    torch.manual_seed(0)
    model.prior()
    prior_sds = model.prior()[0].sds
    phases = {"render": 0.0, "sds": 0.0, "backward": 0.0}

    def timed_sds(*args, **kwargs):
        start = time.perf_counter()
        out = prior_sds(*args, **kwargs)
        phases["sds"] += time.perf_counter() - start
        return out

    model.prior()[0].sds = timed_sds
    pipeline.train()
    groups = pipeline.get_param_groups()  # the method's optimisers: Adam per group at its learning rate
    optimizer = torch.optim.Adam(
        [{"params": params, "lr": config.optimizers[name]["optimizer"].lr} for name, params in groups.items()],
        eps=1e-15,
    )
    iterations = case.iterations
    for step in range(iterations + 1):
        if step == min(1, iterations):  # the first step pays one-off costs (timed alone when it is the only one)
            phases = dict.fromkeys(phases, 0.0)
            start_all = time.perf_counter()
        optimizer.zero_grad()
        start = time.perf_counter()
        _, loss_dict, _ = pipeline.get_train_loss_dict(step)  # with two passes, includes the prior view's backward
        forward = time.perf_counter() - start
        start = time.perf_counter()
        sum(loss_dict.values()).backward()
        optimizer.step()
        phases["backward"] += time.perf_counter() - start
        phases["render"] += forward
    total = time.perf_counter() - start_all
    iterations = max(iterations, 1)
    phases["render"] -= phases["sds"]
    model.eval()
    with torch.no_grad():
        outputs = model.get_outputs_for_camera(pipeline.datamanager.train_dataset.cameras[0:1])
    batch = pipeline.datamanager.train_dataset[0]
    image, mask = batch["image"][..., :3], batch["mask"][..., 0].bool()
    psnr = -10 * torch.log10(((outputs["rgb"] - image) ** 2)[mask].mean())
    return {
        "size": case.size,
        "reference_psnr": float(psnr),
        "seconds_per_iteration": total / iterations,
        **{f"{k}_s": v / iterations for k, v in phases.items()},
        "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_case(case: Case, memory_limit_gb: float | None = None) -> dict:
    """One case in its own process (its peak memory is its own); `out_of_memory` when it hit the limit."""
    command = [sys.executable, __file__, "--child", json.dumps(asdict(case))]
    if memory_limit_gb:
        command += ["--memory-limit-gb", str(memory_limit_gb)]
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        if "can't allocate memory" in out.stderr or "MemoryError" in out.stderr or out.returncode == -9:
            return {"chunk": case.chunk, "out_of_memory": True}
        raise RuntimeError(out.stderr[-3000:])
    return {"chunk": case.chunk, "out_of_memory": False, **json.loads(out.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--memory-limit-gb", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.memory_limit_gb:
            limit = int(args.memory_limit_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        print(json.dumps(time_iterations(Case(**json.loads(args.child)))))
        return

    print(f"CPU, 2 threads, tiny prior, 4096 reference rays, {SAMPLES}+{SAMPLES} samples per ray, shaded prior views")
    header = ("view", "levels", "code", "s/iter", "render", "SDS", "backward", "peak MB")
    print("{:>8s} {:>7s} {:>36s} {:>7s} {:>7s} {:>7s} {:>9s} {:>8s}".format(*header))
    variants = {
        "now: surface normals, our hash grid": {},
        "surface normals, nerfstudio's grid": {"previous_hash_grid": True},
        "sample normals, our hash grid": {"normals": "samples"},
        "previous: sample normals, ns grid": {"normals": "samples", "previous_hash_grid": True},
    }
    for size in () if args.skip_speed else (64, 128):
        for all_levels in (False, True):
            rows = {
                name: run_case(Case(size, args.iterations, all_levels=all_levels, **settings))
                for name, settings in variants.items()
            }
            for name, r in rows.items():
                print(
                    f"{size:>5d} px {'16' if all_levels else '8 of 16':>7s} {name:>36s} "
                    f"{r['seconds_per_iteration']:7.2f} {r['render_s']:7.2f} {r['sds_s']:7.3f} "
                    f"{r['backward_s']:9.2f} {r['peak_memory_mb']:8.0f}",
                    flush=True,
                )
            now, previous = (rows[name]["seconds_per_iteration"] for name in (next(iter(rows)), list(rows)[-1]))
            print(f"{size:>5d} px, {'all' if all_levels else 'half the'} levels: previous / now x{previous / now:.2f}")
    if not args.skip_quality:
        print(
            f"\nreference view after {QUALITY_STEPS} shaded steps (32 px views, 1,024 rays, {SAMPLES}+{SAMPLES}, "
            f"SDS weight {QUALITY_SDS_WEIGHT})"
        )
        for normals in ("surface", "samples"):
            r = run_case(Case(32, QUALITY_STEPS, normals=normals, rays=1024, sds_loss_weight=QUALITY_SDS_WEIGHT))
            print(
                f"normals at {normals:>8s}: reference view's masked PSNR {r['reference_psnr']:.2f} dB, "
                f"{r['seconds_per_iteration']:.2f} s/iteration",
                flush=True,
            )
    if not args.skip_memory:
        print(
            f"\npeak memory of an iteration, {MEMORY_SAMPLES}+{MEMORY_SAMPLES} samples per ray, each case limited "
            f"to {MEMORY_LIMIT_GB} GB of address space"
        )
        print(f"{'view':>8s} {'one pass MB':>12s} {'two passes MB':>14s} {'s/step (two)':>13s}")
        for size in (64, 128, 256):
            # One step each (the first, with its one-off costs): the peak is what counts here.
            one, two = (
                run_case(Case(size, 0, samples=MEMORY_SAMPLES, chunk=chunk), MEMORY_LIMIT_GB) for chunk in (0, 1024)
            )

            def peak(r: dict) -> str:
                return f"> {MEMORY_LIMIT_GB * 1024:.0f}" if r["out_of_memory"] else f"{r['peak_memory_mb']:.0f}"

            speed = "-" if two["out_of_memory"] else f"{two['seconds_per_iteration']:.1f}"
            print(f"{size:>5d} px {peak(one):>12s} {peak(two):>14s} {speed:>13s}", flush=True)
    flops = sd15_flops()
    per_iteration = 2 * flops["unet_forward"] + 3 * flops["vae_encode_forward"]  # CFG pair; encoder fwd+bwd
    print(
        f"SD 1.5 per SDS step: UNet forward {flops['unet_forward'] / 1e12:.2f} TFLOP (x2 for guidance), VAE encode "
        f"{flops['vae_encode_forward'] / 1e12:.2f} TFLOP (x3 with its backward): {per_iteration / 1e12:.2f} TFLOP"
    )


if __name__ == "__main__":
    main()
