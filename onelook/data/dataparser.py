"""LOLNeRF's dataparser (`onelook-data`): reads the transforms.json written by `onelook prepare`.

Every frame is a training image with its own latent code, so evaluation frames are a subset of the training
frames that keep their training latent index. The index travels in `Cameras.metadata["latent_idx"]`: at
evaluation nerfstudio renders with camera index 0, and only camera metadata reaches the ray bundle intact.
Kept light (no models, no trainer imports): nerfstudio imports every dataparser plugin at start-up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.utils.rich_utils import CONSOLE

from onelook.data import TRANSFORMS
from onelook.data.crop import DEFAULT_CROP_SCALE

# `onelook prepare` scales canonical keypoints to an RMS radius of 0.25 around their centroid; objects extend
# well behind that centroid (a head behind its face), so the scene reaches 1.5 on every side.
SCENE_BOUND = 1.5


@dataclass
class OnelookDataParserConfig(DataParserConfig):
    """Single-view collection prepared by `onelook prepare` (or any transforms.json in its format)."""

    _target: type = field(default_factory=lambda: OnelookDataParser)
    data: Path = Path()
    """Dataset folder holding transforms.json (or the transforms.json file itself)."""
    eval_every: int = 8
    """Every n-th training image is also used for evaluation (reconstruction of training views)."""


@dataclass
class OnelookDataParser(DataParser):
    config: OnelookDataParserConfig

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        path = self.config.data
        if path.is_dir():
            path = path / TRANSFORMS
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: make a dataset with `onelook prepare IMAGES --out DIR`")
        root = path.parent
        meta = json.loads(path.read_text())
        frames = meta["frames"]
        if not frames:
            raise ValueError(f"{path} has no frames")
        indices = list(range(len(frames)))
        if split != "train":
            indices = indices[:: max(1, self.config.eval_every)]
        chosen = [frames[i] for i in indices]

        def column(key: str) -> torch.Tensor:
            return torch.tensor([float(f[key]) for f in chosen], dtype=torch.float32)[:, None]

        cameras = Cameras(
            camera_to_worlds=torch.tensor([f["transform_matrix"] for f in chosen], dtype=torch.float32)[:, :3],
            fx=column("fl_x"),
            fy=column("fl_y"),
            cx=column("cx"),
            cy=column("cy"),
            width=column("w").long(),
            height=column("h").long(),
            camera_type=CameraType.PERSPECTIVE,
            metadata={"latent_idx": torch.tensor(indices, dtype=torch.long)[:, None]},
        )
        mask_paths = [f.get("mask_path") for f in chosen]
        mask_filenames = None
        if all(mask_paths):
            mask_filenames = [root / m for m in mask_paths]
        elif any(mask_paths):
            CONSOLE.print(f"[yellow]{path}: only some frames have masks; training without masks")
        bound = SCENE_BOUND
        return DataparserOutputs(
            image_filenames=[root / f["file_path"] for f in chosen],
            cameras=cameras,
            scene_box=SceneBox(aabb=torch.tensor([[-bound] * 3, [bound] * 3], dtype=torch.float32)),
            mask_filenames=mask_filenames,
            metadata={
                "num_latents": len(frames),
                "canonical_keypoints": torch.tensor(meta.get("canonical_keypoints", []), dtype=torch.float32),
                "crop_scale": float(meta.get("crop", {}).get("scale", DEFAULT_CROP_SCALE)),
                "crop_focal": float(cameras.fx.median()),
                "crop_size": int(meta.get("crop", {}).get("size", int(cameras.width[0]))),
            },
        )
