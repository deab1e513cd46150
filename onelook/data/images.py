"""Loading user images robustly: any mode, bit depth or orientation becomes 8-bit RGB, or a clear `ImageError`."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MIN_SIDE = 32  # smaller images hold too little of an object to be useful
MAX_SIDE = 4096  # larger images are downscaled on load (the methods work at a few hundred pixels)
MAX_PIXELS = 40000 * 40000  # past this, decoding alone could exhaust memory: refused


class ImageError(ValueError):
    """An input image that cannot be used; the message says why, in words for the user."""


@dataclass
class LoadedImage:
    rgb: np.ndarray  # (H, W, 3) uint8
    original_size: tuple[int, int]  # (W, H) upright, before any downscaling: user coordinates refer to it
    alpha: np.ndarray | None = None  # (H, W) float in [0, 1] when the file had transparency
    notes: list[str] = field(default_factory=list)  # what was changed on load (rotation, conversion, ...)


def load_image(path: str | Path) -> LoadedImage:
    """Reads an image file: EXIF rotation applied, converted to RGB (alpha kept apart), downscaled if huge."""
    path = Path(path)
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, MAX_PIXELS
            try:
                img = Image.open(path)
                full_size = img.size  # draft() may decode a JPEG at 1/2, 1/4 or 1/8 of this
                img.draft("RGB", (MAX_SIDE, MAX_SIDE))  # JPEGs decode straight at a reduced size
                img.load()
            finally:
                Image.MAX_IMAGE_PIXELS = previous
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image is too large to decode safely ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageError("not an image file, or a format that cannot be read") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise ImageError(f"corrupt or unreadable image: {exc}") from exc

    orientation = _exif_orientation(img)
    if orientation not in (None, 1):
        notes.append(f"turned upright by its EXIF orientation tag ({orientation})")
        img = ImageOps.exif_transpose(img)
        if orientation in (5, 6, 7, 8):  # quarter turns swap the sides
            full_size = full_size[::-1]
    width, height = full_size
    if min(width, height) < MIN_SIDE:
        raise ImageError(f"image is too small ({width}x{height}); need at least {MIN_SIDE} pixels per side")

    rgb, alpha = _to_rgb(img, notes)
    if max(width, height) > MAX_SIDE:
        factor = MAX_SIDE / max(width, height)  # relative to the full size, whatever draft() decoded
        new_size = (max(1, round(width * factor)), max(1, round(height * factor)))
        rgb = np.asarray(Image.fromarray(rgb).resize(new_size, Image.Resampling.LANCZOS))
        if alpha is not None:
            alpha = np.asarray(Image.fromarray(alpha).resize(new_size, Image.Resampling.BILINEAR))
        notes.append(f"downscaled from {width}x{height} to {new_size[0]}x{new_size[1]}")
    return LoadedImage(rgb=rgb, original_size=(width, height), alpha=alpha, notes=notes)


def _exif_orientation(img: Image.Image) -> int | None:
    try:
        return img.getexif().get(0x0112)
    except Exception:  # malformed EXIF is not worth failing over
        return None


def _to_rgb(img: Image.Image, notes: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        data = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or data.max() > 255 else 255.0
        if mode == "F":
            top = max(float(data.max()), 1e-12)
        gray = np.clip(data / top * 255.0, 0, 255).round().astype(np.uint8)
        notes.append(f"converted {mode} ({'16-bit' if top == 65535.0 else 'high bit depth'}) grayscale to 8-bit RGB")
        return np.repeat(gray[..., None], 3, axis=2), None
    alpha = None
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"))
        alpha = rgba[..., 3].astype(np.float32) / 255.0
        if alpha.min() >= 1.0:
            alpha = None
        img = img.convert("RGB")
    if mode not in ("RGB", "RGBA"):
        notes.append(f"converted from mode {mode} to RGB")
    rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(rgb), alpha
