"""RealFusion speed and memory on this machine's CPU with the tiny prior, and the work the real prior adds.

1. Seconds per training iteration at 64x64 and 128x128 prior-view renders (reference crop of the same size),
   split into render (reference + prior view, forward), SDS (VAE encode + UNet, forward) and backward, with
   the process's peak memory; the prior view rendered in two passes (the default) and in one autograd graph
   (`--pipeline.model.prior-view-chunk 0`), side by side. Each case runs in its own process so that peaks do
   not mix.
2. Peak memory of a training iteration with 48+48 samples per ray at 64, 128 and 256 px prior views, one pass
   against two passes. Each case runs in a process limited to MEMORY_LIMIT_GB of address space: a case that
   needs more is reported as out of memory instead of taking the machine down.
3. FLOPs of Stable Diffusion 1.5's UNet (one 64x64-latent forward) and VAE encoder (512x512), counted by
   torch's FlopCounterMode on the meta device: the real architecture, no weights, nothing computed.

Run: `.venv/bin/python benchmarks/realfusion_speed.py [--iterations 6] [--skip-memory]`.
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
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# Stable Diffusion 1.5's UNet and VAE configurations (diffusers' config.json of the released model).
SAMPLES = 12  # coarse and again fine samples per ray in the speed table (one pass at 128 px and 24+24: > 24 GB)
MEMORY_SAMPLES = 48  # the "standard" quality's samples, in the memory table
MEMORY_LIMIT_GB = 20
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


def time_iterations(size: int, iterations: int, samples: int, chunk: int) -> dict:
    """Runs in a child process: the tiny-prior pipeline at `size` px, timed by phase."""
    from skimage import data

    from onelook.configs import realfusion_method
    from onelook.guidance.tiny import build_tiny_stable_diffusion

    torch.set_num_threads(2)
    tmp = Path(tempfile.mkdtemp())
    photo = tmp / "cup.png"
    Image.fromarray(np.asarray(Image.fromarray(data.coffee()).resize((160, 120)))).save(photo)
    config = copy.deepcopy(realfusion_method.config)
    config.pipeline.datamanager.data = photo
    config.pipeline.datamanager.dataparser.image_size = size
    config.pipeline.datamanager.dataparser.cache_dir = tmp / "cache"
    config.pipeline.datamanager.prior_view_size = size
    config.pipeline.datamanager.train_num_rays_per_batch = 4096
    model = config.pipeline.model
    model.sd_model = str(build_tiny_stable_diffusion(tmp / "tiny-sd"))
    model.inversion_steps, model.implementation = 2, "torch"
    model.num_coarse_samples = model.num_fine_samples = samples
    model.prior_view_chunk = chunk
    model.albedo_steps = 0  # shaded views, as after the first 1000 iterations
    pipeline = config.pipeline.setup(device="cpu", test_mode="val")
    model = pipeline.model
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
    params = [p for group in pipeline.get_param_groups().values() for p in group]
    optimizer = torch.optim.Adam(params, lr=1e-3)
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
    return {
        "size": size,
        "seconds_per_iteration": total / iterations,
        **{f"{k}_s": v / iterations for k, v in phases.items()},
        "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_case(size: int, iterations: int, samples: int, chunk: int, memory_limit_gb: float | None = None) -> dict:
    """One case in its own process (its peak memory is its own); `out_of_memory` when it hit the limit."""
    command = [sys.executable, __file__, "--child", str(size), "--iterations", str(iterations)]
    command += ["--samples", str(samples), "--chunk", str(chunk)]
    if memory_limit_gb:
        command += ["--memory-limit-gb", str(memory_limit_gb)]
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        if "can't allocate memory" in out.stderr or "MemoryError" in out.stderr or out.returncode == -9:
            return {"chunk": chunk, "out_of_memory": True}
        raise RuntimeError(out.stderr[-3000:])
    return {"chunk": chunk, "out_of_memory": False, **json.loads(out.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=int, default=SAMPLES, help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--memory-limit-gb", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.memory_limit_gb:
            limit = int(args.memory_limit_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        print(json.dumps(time_iterations(args.child, args.iterations, args.samples, args.chunk)))
        return
    from onelook.models.realfusion import RealFusionModelConfig

    two_pass = RealFusionModelConfig().prior_view_chunk
    print(f"CPU, 2 threads, tiny prior, 4096 reference rays, {SAMPLES}+{SAMPLES} samples per ray, shaded prior views")
    print(f"{'view':>8s} {'passes':>7s} {'s/iter':>8s} {'render':>8s} {'SDS':>8s} {'backward':>9s} {'peak MB':>8s}")
    for size in (64, 128):
        rows = [run_case(size, args.iterations, SAMPLES, chunk) for chunk in (two_pass, 0)]
        for r in rows:
            print(
                f"{size:>5d} px {'two' if r['chunk'] else 'one':>7s} {r['seconds_per_iteration']:8.2f} "
                f"{r['render_s']:8.2f} {r['sds_s']:8.3f} {r['backward_s']:9.2f} {r['peak_memory_mb']:8.0f}"
            )
        ratio = rows[0]["seconds_per_iteration"] / rows[1]["seconds_per_iteration"]
        print(f"{size:>5d} px two passes / one pass: time x{ratio:.2f}")
    if not args.skip_memory:
        print(
            f"\npeak memory of an iteration, {MEMORY_SAMPLES}+{MEMORY_SAMPLES} samples per ray, each case limited "
            f"to {MEMORY_LIMIT_GB} GB of address space"
        )
        print(f"{'view':>8s} {'one pass MB':>12s} {'two passes MB':>14s} {'s/step (two)':>13s}")
        for size in (64, 128, 256):
            # One step each (the first, with its one-off costs): the peak is what counts here.
            one, two = (run_case(size, 0, MEMORY_SAMPLES, chunk, MEMORY_LIMIT_GB) for chunk in (0, two_pass))

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
