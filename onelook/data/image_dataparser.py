"""The `onelook-image` dataparser: one photo of an object and its reference camera (RealFusion).

The photo is segmented and centred (`onelook.data.object_image`), written as image and mask files (nerfstudio
datasets read files), and given the released code's reference camera: 1.8 from the centre, 15 degrees above
the horizon, a 55 degree field of view, looking at the object's front (from -Y; world +Z up).
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.scene_box import SceneBox
from PIL import Image

from onelook.cameras.geometry import orbit_camera

if TYPE_CHECKING:
    from onelook.data.object_image import ObjectImage

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


def reference_camera(distance: float, elevation: float, fov: float, size: int) -> tuple[np.ndarray, float]:
    """Camera-to-world (4, 4) and focal length (pixels) of the input photo's camera."""
    return orbit_camera(0.0, elevation, distance, fov, size)


PREPARED_IMAGE, PREPARED_MASK, INVERSION_IMAGE = "image.png", "mask.png", "inversion.png"
INVERSION_IMAGE_SIZE = 512  # Stable Diffusion 1.x's resolution: textual inversion learns from this crop


def write_prepared_object(prepared: ObjectImage, folder: Path) -> Path:
    """Writes a prepared photo where the dataparser reads it (nerfstudio datasets read files): the crop and its
    mask, and the object on white at INVERSION_IMAGE_SIZE cut from the photo itself (textual inversion learns
    from it; upscaling the small crop would teach it a blurry object). Returns `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(prepared.rgb).save(folder / PREPARED_IMAGE)
    Image.fromarray(prepared.mask.astype(np.uint8) * 255).save(folder / PREPARED_MASK)
    Image.fromarray(prepared.resized(INVERSION_IMAGE_SIZE).on_white()).save(folder / INVERSION_IMAGE)
    return folder


@dataclass
class ObjectImageDataParserConfig(DataParserConfig):
    """One photo of an object (RealFusion)."""

    _target: type = field(default_factory=lambda: ObjectImageDataParser)
    data: Path = Path()
    """The photo, or a folder holding exactly one photo (and optionally mask.png)."""
    mask: Path | None = None
    """Foreground mask file (default: the photo's alpha, mask.png beside it, rembg if installed, GrabCut)."""
    image_size: int = 128
    """Side of the square crop the NeRF is fitted to, in pixels."""
    object_fraction: float = 0.75
    """How much of the square crop the object's longer side fills."""
    reference_distance: float = 1.8
    """Distance of the photo's camera from the object's centre (the released code's)."""
    reference_elevation: float = 15.0
    """Degrees above the horizon the photo is assumed taken from."""
    reference_fov: float = 55.0
    """Field of view assumed for the photo, in degrees."""
    cache_dir: Path | None = None
    """Where the prepared crop and mask are written (default: a folder in the system's temporary folder)."""
    prepared: bool = False
    """`data` is a folder that `write_prepared_object` wrote (image.png, mask.png at image_size, inversion.png):
    used as is."""


@dataclass
class ObjectImageDataParser(DataParser):
    config: ObjectImageDataParserConfig

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        from onelook.data.object_image import prepare_object_image

        cfg = self.config
        if cfg.prepared:
            photo = cache = Path(cfg.data)
        else:
            photo, mask = self._find_inputs()
            digest = hashlib.sha1(f"{photo.resolve()}:{photo.stat().st_mtime}:{cfg}".encode()).hexdigest()[:12]
            cache = (cfg.cache_dir or Path(tempfile.gettempdir()) / "onelook-images") / f"{photo.stem}-{digest}"
            if not all((cache / name).is_file() for name in (PREPARED_IMAGE, PREPARED_MASK, INVERSION_IMAGE)):
                write_prepared_object(prepare_object_image(photo, mask, cfg.image_size, cfg.object_fraction), cache)
        image_path, mask_path = cache / PREPARED_IMAGE, cache / PREPARED_MASK
        size = Image.open(image_path).size
        if size != (cfg.image_size, cfg.image_size):
            raise ValueError(f"{image_path} is {size[0]}x{size[1]}, not the {cfg.image_size} px square image_size")
        c2w, focal = reference_camera(
            cfg.reference_distance, cfg.reference_elevation, cfg.reference_fov, cfg.image_size
        )
        cameras = Cameras(
            camera_to_worlds=torch.as_tensor(c2w[:3], dtype=torch.float32)[None],
            fx=focal,
            fy=focal,
            cx=cfg.image_size / 2,
            cy=cfg.image_size / 2,
            width=cfg.image_size,
            height=cfg.image_size,
            camera_type=CameraType.PERSPECTIVE,
        )
        return DataparserOutputs(
            image_filenames=[image_path],
            cameras=cameras,
            scene_box=SceneBox(aabb=torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])),
            mask_filenames=[mask_path],
            metadata={
                "source_image": str(photo),
                "image_path": str(image_path),
                "mask_path": str(mask_path),
                "inversion_path": str(cache / INVERSION_IMAGE),
            },
        )

    def _find_inputs(self) -> tuple[Path, Path | None]:
        path, mask = Path(self.config.data), self.config.mask
        if path.is_dir():
            photos = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.stem != "mask")
            if len(photos) != 1:
                raise ValueError(f"{path} must hold exactly one photo (and optionally mask.png); found {len(photos)}")
            if mask is None and (path / "mask.png").is_file():
                mask = path / "mask.png"
            path = photos[0]
        if not path.is_file():
            raise FileNotFoundError(f"photo not found: {path}")
        return path, mask
