"""How good a diffusion prior is for score distillation, on held-out objects of the synthetic family, with no NeRF.

1. One-step predictions of the clean image, `x0 = (x_t - sqrt(1 - a) eps) / sqrt(a)`, from each object's noisy
   front, side and back views, decoded and scored (PSNR over the whole image) against the true render: by prompt
   (unconditional, the kind, the object's own colours, the same at guidance 7.5) and timestep.
2. Score distillation on pixels (the prior's resolution and camera; t in [0.02, 0.5]; 300 Adam steps) started
   from the true back view and from the front photo, against the truth's back view: does the prior hold the
   truth, and move the front towards the back? Side by side with the exact prior of the object's own renders
   (`ExemplarPrior`, in the same VAE's latent space).

Run: `.venv/bin/python benchmarks/realfusion_prior_probes.py PRIOR_FOLDER [--objects 4] [--seed 1000]`
(PRIOR_FOLDER as `onelook train-prior` writes it).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from onelook.data.object_family import ORBIT_ELEVATIONS, REFERENCE_ELEVATION, family_object, render_orbit_view
from onelook.guidance.exemplar_prior import ExemplarPrior
from onelook.guidance.stable_diffusion import StableDiffusionPrior

TIMESTEPS = (0.1, 0.3, 0.5, 0.7, 0.9)
VIEWS = {"front": 0.0, "side": 90.0, "back": 180.0}


def view(thing, azimuth: float, size: int, elevation: float = REFERENCE_ELEVATION) -> torch.Tensor:
    """(1, 3, size, size) in [0, 1]: the object's lit render."""
    return torch.from_numpy(render_orbit_view(thing, azimuth, elevation, size)[0].rgb).permute(2, 0, 1)[None].float()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10(((a - b) ** 2).mean()))


@torch.no_grad()
def clean_image_predictions(prior: StableDiffusionPrior, objects: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(0)
    scores: dict[tuple[str, float], list[float]] = {}
    for index in range(objects):
        thing = family_object(seed, index)
        for label, azimuth in VIEWS.items():
            truth = view(thing, azimuth, prior.image_size)
            latents = prior.encode_images(truth)
            prompts = {"kind": thing.kind, "own colours": thing.description()}
            text = {
                name: prior.encode_prompts([f"a photo of a {words}, {label} view"]) for name, words in prompts.items()
            }
            uncond = prior.encode_prompts([""])
            for fraction in TIMESTEPS:
                t = torch.tensor([int(fraction * len(prior.alphas_cumprod))])
                alpha_bar = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
                for _ in range(4):
                    noisy = prior.add_noise(latents, torch.randn(latents.shape, generator=generator), t)
                    eps_uncond = prior.predict_noise(noisy, t, uncond)
                    eps = {"unconditional": eps_uncond}
                    eps |= {name: prior.predict_noise(noisy, t, embedding) for name, embedding in text.items()}
                    eps["own colours, guidance 7.5"] = eps_uncond + 7.5 * (eps["own colours"] - eps_uncond)
                    for name, prediction in eps.items():
                        clean = (noisy - (1 - alpha_bar).sqrt() * prediction) / alpha_bar.sqrt()
                        image = prior.vae.decode(clean / prior.vae.config.scaling_factor).sample
                        scores.setdefault((name, fraction), []).append(psnr((image.clamp(-1, 1) + 1) / 2, truth))
    print("clean-image predictions: PSNR (dB) against the true render, by timestep " + " ".join(map(str, TIMESTEPS)))
    for name in dict.fromkeys(name for name, _ in scores):
        print(f"  {name:28s}" + " ".join(f"{np.mean(scores[name, f]):6.2f}" for f in TIMESTEPS))


def distil_pixels(prior, start: torch.Tensor, prompt: str, guidance: float, steps: int = 300) -> torch.Tensor:
    """Score distillation on an image's pixels (sigmoid logits, Adam), from `start`."""
    logits = torch.logit(start.clamp(0.01, 0.99)).clone().requires_grad_()
    optimizer = torch.optim.Adam([logits], lr=0.02)
    text, uncond = prior.encode_prompts([prompt]), prior.encode_prompts([""])
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        loss = prior.sds(torch.sigmoid(logits), text, uncond, guidance, (0.02, 0.5), generator=generator).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return torch.sigmoid(logits).detach()


def pixel_distillation(prior: StableDiffusionPrior, objects: int, seed: int) -> None:
    print("score distillation on pixels: PSNR (dB) to the true back view after 300 steps, from the truth / the front")
    size = prior.image_size
    for index in range(objects):
        thing = family_object(seed, index)
        back, front = view(thing, 180.0, size), view(thing, 0.0, size)
        sector = [view(thing, a, size, e) for a in (157.5, 180.0, 202.5) for e in ORBIT_ELEVATIONS]
        exact = ExemplarPrior({"back": torch.cat(sector), "front": front}, prior.alphas_cumprod, prior.vae, size)
        runs = [
            ("exact prior, guidance 1", exact, "back view", 1.0),
            ("own colours, guidance 1", prior, f"a photo of a {thing.description()}, back view", 1.0),
            ("kind, guidance 1", prior, f"a photo of a {thing.kind}, back view", 1.0),
            ("own colours, guidance 7.5", prior, f"a photo of a {thing.description()}, back view", 7.5),
        ]
        for name, model, prompt, guidance in runs:
            held = psnr(distil_pixels(model, back, prompt, guidance), back)
            moved = psnr(distil_pixels(model, front, prompt, guidance), back)
            print(
                f"  {seed}-{index:03d}-{thing.kind:9s} {name:26s} {held:6.2f} / "
                f"{psnr(front, back):5.2f} -> {moved:5.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prior")
    parser.add_argument("--objects", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1000, help="the family's seed (default 1000: held out)")
    args = parser.parse_args()
    prior = StableDiffusionPrior.load(args.prior, device="cpu", half_precision=False)
    clean_image_predictions(prior, args.objects, args.seed)
    pixel_distillation(prior, min(args.objects, 2), args.seed)


if __name__ == "__main__":
    main()
