"""LOLNeRF speed, side by side in one run (2 CPU cores by default).

1. Training rays per second of the LOLNeRF foreground field + volume rendering (forward, loss, backward)
   against nerfstudio's own NeRFField with the same MLP width, depth and skip, the same positional
   encoding and the same samples per ray. nerfstudio's field has no latent but a view-dependent colour head
   (one layer of the same width), the closest like-for-like it offers.
2. The field MLP's achieved FLOP/s (analytic count of its matrix products) against torch's matmul FLOP/s on
   this machine for the same layer shapes.
3. With `--run RUN_DIR` (a trained lolnerf run): seconds for fit + 24-view turntable + 128^3 mesh at 64x64.

Run: `.venv/bin/python benchmarks/lolnerf_speed.py [--run RUN_DIR] [--threads 2]`.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.field_components.encodings import Identity, NeRFEncoding
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.fields.vanilla_nerf_field import NeRFField
from nerfstudio.model_components.ray_samplers import UniformSampler
from nerfstudio.model_components.renderers import RGBRenderer

from onelook.fields.lolnerf_field import LOLNeRFField


def rays(num: int) -> RayBundle:
    origins = torch.tensor([0.0, -4.0, 0.0]).expand(num, 3)
    directions = torch.nn.functional.normalize(torch.randn(num, 3) * 0.1 + torch.tensor([0.0, 1.0, 0.0]), dim=-1)
    return RayBundle(
        origins=origins,
        directions=directions,
        pixel_area=torch.full((num, 1), 1e-4),
        nears=torch.full((num, 1), 2.5),
        fars=torch.full((num, 1), 5.5),
        camera_indices=torch.zeros(num, 1, dtype=torch.long),
    )


def train_rate(field, bundle: RayBundle, samples: int, latent: torch.Tensor | None, repeats: int) -> float:
    """Rays per second of sample -> field -> render -> MSE -> backward."""
    sampler, renderer = UniformSampler(num_samples=samples), RGBRenderer(background_color="black")
    params = list(field.parameters())
    target = torch.rand(len(bundle), 3)

    def step() -> None:
        if latent is not None:
            bundle.metadata = {"latent": latent}
        ray_samples = sampler(bundle)
        out = field(ray_samples)
        rgb = renderer(rgb=out[FieldHeadNames.RGB], weights=ray_samples.get_weights(out[FieldHeadNames.DENSITY]))
        loss = torch.mean((rgb - target) ** 2)
        torch.autograd.grad(loss, params)

    step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return repeats * len(bundle) / (time.perf_counter() - start)


def mlp_flops_per_sample(field: LOLNeRFField) -> float:
    """Forward + backward (x3) FLOPs of the field's per-sample matrix products (2 per multiply-add)."""
    macs = sum(layer.in_features * layer.out_features for layer in field.mlp.layers)
    macs += field.density_head.in_features + field.rgb_head.in_features * 3
    return 3 * 2 * macs


def matmul_rate(rows: int, width: int, repeats: int) -> float:
    a, b = torch.randn(rows, width), torch.randn(width, width)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return repeats * 2 * rows * width * width / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rays", type=int, default=1024)
    parser.add_argument("--samples", type=int, default=48, help="samples per ray (lolnerf-small's fine pass)")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--latent-dim", type=int, default=64)
    parser.add_argument("--frequencies", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--run", help="a trained lolnerf run, for the fit + turntable + mesh timing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    skip = (args.layers // 2,)
    ours = LOLNeRFField(args.latent_dim, args.layers, args.width, skip, args.frequencies, position_scale=1.5)
    encoding = NeRFEncoding(3, args.frequencies, 0.0, args.frequencies - 2, include_input=True)
    theirs = NeRFField(
        position_encoding=encoding,
        direction_encoding=Identity(in_dim=3),
        base_mlp_num_layers=args.layers,
        base_mlp_layer_width=args.width,
        head_mlp_num_layers=1,
        head_mlp_layer_width=args.width,
        skip_connections=skip,
    )
    bundle = rays(args.rays)
    latent = torch.randn(args.rays, args.latent_dim) * 0.01
    ours_rate = train_rate(ours, bundle, args.samples, latent, args.repeats)
    theirs_rate = train_rate(theirs, bundle, args.samples, None, args.repeats)

    flops = mlp_flops_per_sample(ours) * args.samples * ours_rate
    peak = matmul_rate(args.rays * args.samples, args.width, args.repeats)
    print(f"{args.threads} threads, {args.rays} rays x {args.samples} samples, MLP {args.layers}x{args.width}")
    print(f"{'':44s} {'train rays/s':>12s} {'ratio':>7s}")
    print(f"{'nerfstudio NeRFField (reference)':44s} {theirs_rate:12.0f} {1.0:7.2f}")
    print(f"{'onelook LOLNeRFField (latent-conditioned)':44s} {ours_rate:12.0f} {ours_rate / theirs_rate:7.2f}")
    print(f"MLP achieved {flops / 1e9:.1f} GFLOP/s vs torch matmul {peak / 1e9:.1f} GFLOP/s: {flops / peak:.0%}")

    if args.run:
        from onelook.cameras.geometry import project
        from onelook.data.synthetic import FOCAL_FACTOR, identity, render
        from onelook.lolnerf import Reconstructor

        recon = Reconstructor.from_run(args.run, device="cpu")
        head, c2w, _ = identity(12345, 0)
        view = render(head, c2w, FOCAL_FACTOR * 64, 64)
        keypoints = project(head.keypoints(), c2w[None], FOCAL_FACTOR * 64, (64, 64))[0][0]
        photo = (view.rgb * 255).round().astype(np.uint8)
        start = time.perf_counter()
        result = recon.fit(photo, landmarks=keypoints, mask=view.mask, steps=200, show_progress=False)
        fitted = time.perf_counter()
        result.turntable(frames=24, size=64)
        turned = time.perf_counter()
        result.mesh(resolution=128)
        done = time.perf_counter()
        print(
            f"fit (200 steps) {fitted - start:.1f} s + 24-view turntable {turned - fitted:.1f} s + 128^3 mesh "
            f"{done - turned:.1f} s = {done - start:.1f} s at 64x64"
        )


if __name__ == "__main__":
    main()
