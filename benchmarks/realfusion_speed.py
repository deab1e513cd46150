"""RealFusion speed on this machine's CPU with the tiny prior, and the work the real prior adds.

1. Seconds per training iteration at 64x64 and 128x128 prior-view renders (reference crop of the same size),
   split into render (reference + prior view, forward), SDS (VAE encode + UNet, forward) and backward, with
   the process's peak memory; each size runs in its own process so that peaks do not mix.
2. FLOPs of Stable Diffusion 1.5's UNet (one 64x64-latent forward) and VAE encoder (512x512), counted by
   torch's FlopCounterMode on the meta device: the real architecture, no weights, nothing computed.

Run: `.venv/bin/python benchmarks/realfusion_speed.py [--iterations 6]`.
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
SAMPLES = 12  # coarse and again fine samples per ray: at 128 px more than this exceeds 24 GB (see README)
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


def time_iterations(size: int, iterations: int) -> dict:
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
    model.num_coarse_samples = model.num_fine_samples = SAMPLES
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
        if step == 1:  # the first step pays one-off costs
            phases = dict.fromkeys(phases, 0.0)
            start_all = time.perf_counter()
        start = time.perf_counter()
        _, loss_dict, _ = pipeline.get_train_loss_dict(step)
        forward = time.perf_counter() - start
        start = time.perf_counter()
        optimizer.zero_grad()
        sum(loss_dict.values()).backward()
        optimizer.step()
        phases["backward"] += time.perf_counter() - start
        phases["render"] += forward
    total = time.perf_counter() - start_all
    phases["render"] -= phases["sds"]
    return {
        "size": size,
        "seconds_per_iteration": total / iterations,
        **{f"{k}_s": v / iterations for k, v in phases.items()},
        "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(time_iterations(args.child, args.iterations)))
        return
    rows = []
    for size in (64, 128):
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(size), "--iterations", str(args.iterations)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"CPU, 2 threads, tiny prior, 4096 reference rays, {SAMPLES}+{SAMPLES} samples per ray, shaded prior views")
    print(f"{'render':>8s} {'s/iter':>8s} {'render':>8s} {'SDS':>8s} {'backward':>9s} {'peak MB':>8s}")
    for r in rows:
        print(
            f"{r['size']:>5d} px {r['seconds_per_iteration']:8.2f} {r['render_s']:8.2f} {r['sds_s']:8.3f} "
            f"{r['backward_s']:9.2f} {r['peak_memory_mb']:8.0f}"
        )
    flops = sd15_flops()
    per_iteration = 2 * flops["unet_forward"] + 3 * flops["vae_encode_forward"]  # CFG pair; encoder fwd+bwd
    print(
        f"SD 1.5 per SDS step: UNet forward {flops['unet_forward'] / 1e12:.2f} TFLOP (x2 for guidance), VAE encode "
        f"{flops['vae_encode_forward'] / 1e12:.2f} TFLOP (x3 with its backward): {per_iteration / 1e12:.2f} TFLOP"
    )


if __name__ == "__main__":
    main()
