"""What RealFusion's settings and budget could reach with a perfect prior, on held-out objects of the synthetic
family: each object is reconstructed from its front photo as `onelook eval-realfusion` does (quick preset, the
packaged prior's settings), but distilled from the exact prior of its own lit renders from all around
(`ExemplarPrior`, in the packaged prior's VAE latent space), side by side with the reference view alone, and
scored by the evaluation's metrics. If even the exact prior does not beat the reference view alone, a better
trained prior cannot either at these settings: the limit is the settings, the budget or the baseline.

Run: `.venv/bin/python benchmarks/realfusion_exact_prior_ceiling.py [--objects 2] [--seed 1000]
[--model-option sds_loss_weight=0.01 ...]` (about 6 minutes per object on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler

from onelook.assets import OBJECT_PRIOR
from onelook.data.object_family import family_object, front_photo, sector_views
from onelook.guidance.exemplar_prior import ExemplarPrior
from onelook.guidance.prior_settings import read_prior_settings
from onelook.realfusion.evaluate import score
from onelook.realfusion.train import QUALITY, train_realfusion

METRICS = ("psnr_90", "psnr_180", "psnr_270", "psnr_overhead", "ssim_180", "depth_error", "chamfer", "fscore")


def exact_prior(thing, size: int, vae, alphas_cumprod: torch.Tensor) -> ExemplarPrior:
    """The ideal denoiser of `thing`'s lit renders (as the prior's training renders are lit), by view word."""
    views = sector_views(thing, size, lit=True)
    exemplars = {label: torch.from_numpy(v).permute(0, 3, 1, 2).float() for label, v in views.items()}
    return ExemplarPrior(exemplars, alphas_cumprod, vae=vae)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--model-option", action="append", default=[], metavar="NAME=VALUE", help="VALUE in JSON")
    args = parser.parse_args()
    quality = QUALITY["quick"]
    settings = read_prior_settings(OBJECT_PRIOR)
    options = {**settings.model}
    for option in args.model_option:
        name, _, value = option.partition("=")
        value = json.loads(value)
        options[name] = tuple(value) if isinstance(value, list) else value  # ranges are tuples, as the CLI gives them
    vae = AutoencoderKL.from_pretrained(OBJECT_PRIOR, subfolder="vae").float()
    alphas_cumprod = DDPMScheduler.from_pretrained(OBJECT_PRIOR, subfolder="scheduler").alphas_cumprod
    print("settings:", json.dumps(options))
    print("| object | variant | " + " | ".join(METRICS) + " |")
    rows = {"reference view alone": [], "exact prior": []}
    with tempfile.TemporaryDirectory(prefix="exact-prior-ceiling-") as scratch:
        for index in range(args.objects):
            thing = family_object(args.seed, index)
            photo = front_photo(thing, quality.image_size)
            runs = {
                "reference view alone": (None, {**options, "sds_loss_weight": 0.0}),
                "exact prior": (exact_prior(thing, quality.prior_view_size, vae, alphas_cumprod), options),
            }
            for variant, (prior, model_options) in runs.items():
                *_, done = train_realfusion(
                    photo,
                    Path(scratch) / f"{index}-{variant}",
                    quality,
                    str(OBJECT_PRIOR),
                    seed=args.seed,
                    device="cpu",
                    prior=prior,
                    model_options={**model_options, "class_word": thing.kind},
                    datamanager_options=settings.datamanager,
                )
                metrics, _ = score(done.result, thing, quality.image_size, quality.mesh_resolution)
                rows[variant].append(metrics)
                values = " | ".join(f"{metrics[k]:.3f}" if metrics[k] is not None else "none" for k in METRICS)
                print(f"| {args.seed}-{index:03d}-{thing.kind} | {variant} | {values} |", flush=True)
    for variant, metrics in rows.items():
        means = [np.mean([m[k] for m in metrics if m[k] is not None]) for k in METRICS]
        print(f"| mean | {variant} | " + " | ".join(f"{v:.3f}" for v in means) + " |")


if __name__ == "__main__":
    main()
