"""One photo of an object -> a centred square RGB crop and a foreground mask (RealFusion's input).

The mask comes from, in order: the image's alpha channel; a mask file the user gives; `rembg` when it and its
model are already installed (nothing is downloaded); else OpenCV's GrabCut seeded with a centred box, which
needs no weights. The object is then centred and scaled to fill `object_fraction` of the square.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from onelook.data.crop import crop_square
from onelook.data.images import ImageError, LoadedImage, load_image

MIN_FOREGROUND, MAX_FOREGROUND = 0.01, 0.95  # fractions of the image a plausible object mask covers


@dataclass
class ObjectImage:
    rgb: np.ndarray  # (S, S, 3) uint8, the object centred
    mask: np.ndarray  # (S, S) bool
    mask_source: str  # "alpha", "mask file", "rembg" or "grabcut"
    notes: list[str] = field(default_factory=list)
    # The photo, its foreground and the square (x0, y0, side) cut from it: `resized` crops again from these.
    source: tuple[np.ndarray, np.ndarray, tuple[float, float, float]] | None = field(default=None, repr=False)

    def on_white(self) -> np.ndarray:
        """The object composited on a white background (what textual inversion sees)."""
        return np.where(self.mask[..., None], self.rgb, 255).astype(np.uint8)

    def resized(self, size: int) -> ObjectImage:
        """The same crop at `size` pixels, cut from the photo itself (not resampled from this crop)."""
        rgb, fg, box = self.source
        crop, mask = _crop(rgb, fg, box, size)
        return ObjectImage(crop, mask, self.mask_source, list(self.notes), self.source)


def prepare_object_image(
    image: str | Path | np.ndarray | LoadedImage,
    mask: str | Path | np.ndarray | None = None,
    size: int = 128,
    object_fraction: float = 0.75,
) -> ObjectImage:
    """Loads (unless given a `LoadedImage`), segments and centres one object photo; raises ImageError with the
    reason when it cannot."""
    if isinstance(image, np.ndarray):
        rgb, alpha, notes = _validated_array(image)
    else:
        loaded = image if isinstance(image, LoadedImage) else load_image(image)
        rgb, alpha, notes = loaded.rgb, loaded.alpha, list(loaded.notes)
    if float(rgb.astype(np.float32).std(axis=(0, 1)).max()) < 2.0:
        raise ImageError("the image is a single flat colour: there is no object to reconstruct")

    if alpha is not None and MIN_FOREGROUND < (alpha > 0.5).mean() < 1.0:
        fg, source = alpha > 0.5, "alpha"
    elif mask is not None:
        fg, source = _user_mask(mask, rgb.shape[:2]), "mask file"
    else:
        fg, source = _rembg_mask(rgb), "rembg"
        if fg is None:
            fg, source = _grabcut_mask(rgb), "grabcut"
    fraction = float(fg.mean())
    if not MIN_FOREGROUND < fraction < MAX_FOREGROUND:
        raise ImageError(
            f"could not separate an object from the background ({source} mask covers {fraction:.0%} of the "
            "image): give an image with an alpha channel, or a mask file"
        )

    ys, xs = np.nonzero(fg)
    x_lo, x_hi, y_lo, y_hi = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    side = max(x_hi - x_lo, y_hi - y_lo) / object_fraction
    box = ((x_lo + x_hi - side) / 2, (y_lo + y_hi - side) / 2, side)
    crop, crop_mask = _crop(rgb, fg, box, size)
    return ObjectImage(rgb=crop, mask=crop_mask, mask_source=source, notes=notes, source=(rgb, fg, box))


def _crop(rgb: np.ndarray, fg: np.ndarray, box: tuple[float, float, float], size: int) -> tuple[np.ndarray, np.ndarray]:
    """The square `box` (x0, y0, side) of the photo and its foreground at `size` pixels; pixels from outside
    the photo (edge-extended) are background."""
    x0, y0, side = box
    crop = crop_square(rgb, x0, y0, side, size)
    crop_mask = crop_square(fg.astype(np.uint8) * 255, x0, y0, side, size) >= 128
    centres = (np.arange(size) + 0.5) * side / size
    inside = np.outer(
        (centres + y0 >= 0) & (centres + y0 < rgb.shape[0]), (centres + x0 >= 0) & (centres + x0 < rgb.shape[1])
    )
    return crop, crop_mask & inside


def _validated_array(image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
        raise ImageError(f"expected an (H, W, 3 or 4) uint8 image, got {image.dtype} {image.shape}")
    if min(image.shape[:2]) < 32:
        raise ImageError(f"image is too small ({image.shape[1]}x{image.shape[0]}); need at least 32 pixels per side")
    alpha = image[..., 3].astype(np.float32) / 255.0 if image.shape[2] == 4 else None
    return np.ascontiguousarray(image[..., :3]), alpha, []


def _user_mask(mask: str | Path | np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if isinstance(mask, np.ndarray):
        values = mask.astype(np.float32)
        values = values / 255.0 if values.max() > 1.0 else values
    else:
        loaded = load_image(mask)
        values = loaded.alpha if loaded.alpha is not None else loaded.rgb.mean(axis=2) / 255.0
    if values.shape[:2] != shape:
        raise ImageError(f"the mask is {values.shape[1]}x{values.shape[0]} but the image {shape[1]}x{shape[0]}")
    return values > 0.5


def _rembg_mask(rgb: np.ndarray) -> np.ndarray | None:
    """rembg's u2net mask, only when rembg and its model file are already on this machine."""
    try:
        from rembg import new_session, remove
    except ImportError:
        return None
    model_dir = Path(os.environ.get("U2NET_HOME", Path.home() / ".u2net"))
    if not (model_dir / "u2net.onnx").is_file():
        return None
    return remove(rgb, session=new_session("u2net"), only_mask=True) > 127


def _grabcut_mask(rgb: np.ndarray, margin: float = 0.05, iterations: int = 5, max_side: int = 400) -> np.ndarray:
    """GrabCut seeded with a box inset by `margin` from the borders (objects are photographed centred); run
    at most `max_side` pixels wide (it is slow) and scaled back."""
    full_shape = rgb.shape[:2]
    factor = max_side / max(full_shape)
    if factor < 1:
        rgb = cv2.resize(rgb, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
    height, width = rgb.shape[:2]
    rect = (int(margin * width), int(margin * height), int((1 - 2 * margin) * width), int((1 - 2 * margin) * height))
    labels = np.zeros((height, width), np.uint8)
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    cv2.grabCut(bgr, labels, rect, background, foreground, iterations, cv2.GC_INIT_WITH_RECT)
    fg = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
    # Keep the largest connected part: GrabCut leaves specks.
    count, components, stats, _ = cv2.connectedComponentsWithStats(fg.astype(np.uint8))
    if count > 1:
        fg = components == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if fg.shape != full_shape:
        fg = cv2.resize(fg.astype(np.uint8), full_shape[::-1], interpolation=cv2.INTER_NEAREST) > 0
    return fg
