"""The RealFusion settings a diffusion prior's folder recommends for itself.

RealFusion's defaults are Stable Diffusion 1.5's (guidance 100, t up to 0.98, random views at 1.0-1.5 with a
40-70 degree field of view). A small prior trained by `onelook train-prior` needs others: its conditional and
unconditional predictions differ by more than knowledge, so guidance multiplies its errors, and it has only seen
its family from one distance. So a prior folder may hold `onelook_realfusion.json`:

    {"model": {RealFusionModelConfig field: value}, "datamanager": {PriorViewDataManagerConfig field: value}}

which `onelook.realfusion.train.train_realfusion` (the app, `onelook eval-realfusion`) applies before the caller's
own options. `onelook train-prior` writes it. `ns-train realfusion` does not read it: give its values as flags.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onelook.guidance.stable_diffusion import model_source

SETTINGS_FILE = "onelook_realfusion.json"


@dataclass
class PriorSettings:
    model: dict[str, Any] = field(default_factory=dict)  # fields of RealFusionModelConfig
    datamanager: dict[str, Any] = field(default_factory=dict)  # fields of PriorViewDataManagerConfig


def read_prior_settings(sd_model: str | Path) -> PriorSettings:
    """The settings `sd_model`'s folder recommends; none for a hub id or a folder without the file."""
    path = Path(model_source(sd_model)) / SETTINGS_FILE
    if not path.is_file():
        return PriorSettings()
    try:
        settings = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(settings, dict) or not set(settings) <= {"model", "datamanager"}:
        raise ValueError(f"{path} must hold an object of 'model' and 'datamanager' settings")
    # JSON has no tuples; the configs' ranges (t_range, prior_distance_range, ...) are tuples.
    as_tuples = {
        part: {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        for part, values in settings.items()
    }
    return PriorSettings(**as_tuples)


def write_prior_settings(folder: Path, settings: PriorSettings) -> Path:
    path = Path(folder) / SETTINGS_FILE
    path.write_text(json.dumps({"model": settings.model, "datamanager": settings.datamanager}, indent=1))
    return path
