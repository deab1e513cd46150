"""RealFusion's held-out evaluation (`onelook eval-realfusion`): objects of the synthetic family, each
reconstructed from its front photo alone by three variants with the same budget, scored against the truth.

Variants: `reference_only` (no prior: what the photo alone gives), `class_word` (score distillation prompted
with the object's kind, no textual inversion) and `realfusion` (the word learned from the photo). The family
is rendered in RealFusion's own frame (`onelook.data.object_family`), so every metric compares the same
cameras with no alignment: masked PSNR at 90, 180 and 270 degrees of yaw and from overhead, SSIM at 180,
depth error at those views, and the exported mesh's Chamfer distance and F-score (at 5% of the object's
size) against the true mesh. Distances are fractions of the object's size (its bounding sphere's diameter).
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from onelook.data.object_family import (
    OBJECT_RADIUS,
    OVERHEAD_ELEVATION,
    REFERENCE_ELEVATION,
    family_object,
    front_photo,
    render_orbit_view,
)
from onelook.data.prior_views import PriorViewDataManagerConfig
from onelook.guidance.prior_settings import read_prior_settings
from onelook.metrics import chamfer_and_fscore, masked_psnr, masked_ssim, surface_points
from onelook.models.realfusion import RealFusionModelConfig
from onelook.realfusion.result import RealFusionResult
from onelook.realfusion.train import QUALITY, Quality, check_options, train_realfusion

VARIANTS = ("reference_only", "class_word", "realfusion")
VIEWS = {
    "90": (90.0, REFERENCE_ELEVATION),
    "180": (180.0, REFERENCE_ELEVATION),
    "270": (270.0, REFERENCE_ELEVATION),
    "overhead": (0.0, OVERHEAD_ELEVATION),
}
OBJECT_SIZE = 2 * OBJECT_RADIUS
FSCORE_THRESHOLD = 0.05  # of the object's size
SURFACE_SAMPLES = 20_000


def score(result: RealFusionResult, thing, size: int, mesh_resolution: int) -> tuple[dict[str, float], list]:
    """The metrics of one reconstruction against the truth, and its renders of VIEWS (for the contact sheet)."""
    metrics: dict[str, float | None] = {}
    depth_errors, renders = [], []
    for name, (azimuth, elevation) in VIEWS.items():
        truth, c2w, focal = render_orbit_view(thing, azimuth, elevation, size)
        view = result.render(c2w, focal, size)
        renders.append(view["rgb"])
        metrics[f"psnr_{name}"] = masked_psnr(view["rgb"], truth.rgb, truth.mask)
        if name == "180":
            metrics["ssim_180"] = masked_ssim(view["rgb"], truth.rgb, truth.mask)
        both = truth.mask & (view["alpha"] > 0.5)
        # Where the reconstruction has no surface the error counts as the object's size.
        errors = np.where(both, np.abs(view["depth"] - truth.depth), OBJECT_SIZE)[truth.mask]
        depth_errors.append(float(errors.mean()) / OBJECT_SIZE)
    metrics["depth_error"] = float(np.mean(depth_errors))
    true = thing.mesh()
    true_points = surface_points(true.vertices, true.triangles, SURFACE_SAMPLES)
    try:
        mesh = result.mesh(resolution=mesh_resolution)
        predicted = surface_points(mesh.vertices, mesh.faces, SURFACE_SAMPLES)
        chamfer, fscore = chamfer_and_fscore(predicted, true_points, FSCORE_THRESHOLD * OBJECT_SIZE)
        metrics["chamfer"], metrics["fscore"] = chamfer / OBJECT_SIZE, fscore
    except ValueError:  # no surface at all
        metrics["chamfer"], metrics["fscore"] = None, 0.0
    return metrics, renders


def evaluate_realfusion(
    prior: str,
    objects: int,
    seed: int,
    out: Path,
    quality: str | Quality = "quick",
    variants: tuple[str, ...] = VARIANTS,
    device: str | None = None,
    show_progress: bool = True,
    sds_options: dict[str, Any] | None = None,
    runs: int = 1,
    view_options: dict[str, Any] | None = None,
    iterations: int | None = None,
) -> dict:
    """Runs and scores every variant on `objects` objects of the family drawn with `seed`; writes
    `out/metrics.json` ({"means": {variant: metrics}, "objects": [{"name", variant: metrics}]}) and
    `out/contact_sheet.png` (a row per object: the photo, each variant's 90/180/270/overhead views, the truth).
    Every variant starts from the settings the prior's folder recommends (`onelook.guidance.prior_settings`:
    a prior trained here is scored at the settings that suit it, not SD 1.5's); `sds_options` then set fields
    of the score-distilled variants' model config (e.g. `{"guidance_scale": 7.5}`) and `view_options` fields
    of the random views' datamanager config (e.g. `{"prior_distance_range": (1.0, 1.5)}`). `runs` > 1 trains each
    variant that many times per object (seeds `seed`, `seed + 1`, ...): an object's metrics are their mean, each run's
    are kept under its "runs"; what one photo leaves unconstrained varies by several dB from seed to seed.
    `iterations` replaces the quality's training steps (the albedo and coarse-to-fine schedules scale with it)."""
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    if isinstance(quality, str):
        if quality not in QUALITY:
            raise ValueError(f"unknown quality {quality!r}; choose from {', '.join(QUALITY)}")
        quality = QUALITY[quality]
    if iterations is not None:
        if iterations < 1:
            raise ValueError(f"iterations must be at least 1, got {iterations}")
        quality = replace(quality, iterations=iterations)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sds_options, view_options = dict(sds_options or {}), dict(view_options or {})
    # Before any run: a misspelt option would only fail at the first score-distilled variant.
    check_options(RealFusionModelConfig, sds_options)
    check_options(PriorViewDataManagerConfig, view_options)
    options = {"reference_only": {"sds_loss_weight": 0.0}, "realfusion": sds_options}
    size = quality.image_size
    rows, sheet = [], []
    for index in range(objects):
        thing = family_object(seed, index)
        name = f"{seed}-{index:03d}-{thing.kind}"
        photo = front_photo(thing, size)
        row, strip = {"name": name}, [photo.rgb / 255.0]
        if runs > 1:
            row["runs"] = {}
        for variant in variants:
            model_options = options.get(variant, {**sds_options, "class_word": thing.kind})
            scores = []
            for run in range(runs):  # training seeds seed, seed + 1, ...: the unseen sides vary with them
                folder = out / name / variant / (f"run{run}" if runs > 1 else "")
                steps = train_realfusion(
                    photo,
                    folder,
                    quality,
                    prior,
                    seed=seed + run,
                    device=device,
                    model_options=model_options,
                    datamanager_options=view_options,  # random views only: the reference view alone ignores them
                )
                label = f"{index + 1}/{objects} {name} {variant}" + (f" run {run + 1}/{runs}" if runs > 1 else "")
                with tqdm(desc=label, disable=not show_progress) as bar:
                    for step in steps:
                        bar.total, bar.n = step.total, step.step
                        bar.set_postfix_str(step.stage, refresh=True)
                metrics, renders = score(step.result, thing, size, quality.mesh_resolution)
                scores.append(metrics)
                if run == 0:  # the contact sheet shows the first run
                    strip += renders
            row[variant] = _mean(scores)
            if runs > 1:
                row["runs"][variant] = scores
        strip += [render_orbit_view(thing, *view, size)[0].rgb for view in VIEWS.values()]
        rows.append(row)
        sheet.append(np.concatenate(strip, axis=1))
    means = {variant: _mean([row[variant] for row in rows]) for variant in variants}
    report = {"prior": prior, "seed": seed, "runs": runs, "quality": quality.__dict__}
    report |= {"prior_settings": asdict(read_prior_settings(prior)), "sds_options": sds_options}
    report |= {"view_options": view_options}
    report |= {"means": means, "objects": rows}
    (out / "metrics.json").write_text(json.dumps(report, indent=1))
    Image.fromarray((np.clip(np.concatenate(sheet), 0, 1) * 255).round().astype(np.uint8)).save(
        out / "contact_sheet.png"
    )
    return report


def _mean(metrics: list[dict]) -> dict[str, float | None]:
    """Per metric, the mean over objects (None where no object has a value: no surface at all)."""
    means = {}
    for key in metrics[0]:
        values = [m[key] for m in metrics if m[key] is not None]
        means[key] = float(np.mean(values)) if values else None
    return means
