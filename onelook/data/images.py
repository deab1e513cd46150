"""Loading user images robustly: any mode, bit depth or orientation becomes 8-bit RGB, or a clear `ImageError`."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

MIN_SIDE = 32  # smaller images hold too little of an object to be useful
MAX_SIDE = 4096  # larger images are downscaled on load (the methods work at a few hundred pixels)
# Refused before decoding: a flat 40000x40000 PNG is a few MB on disk but 4.8 GB once decoded. 120 M pixels
# (e.g. 12000x10000) decode to at most about 0.5 GB, and are reduced straight away.
MAX_PIXELS = 120_000_000
_HIGH_BIT_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I", "F")
_BAND_ROWS = 512  # rows converted at a time from high bit depths
# EXIF's FocalLengthIn35mmFilm is the focal length that gives a 36x24 mm film frame the photo's field of view
# across the diagonal; it converts to pixels through the photo's own diagonal.
_FILM_DIAGONAL_MM = float(np.hypot(36.0, 24.0))
_EXIF_IFD, _FOCAL_35MM, _EXIF_WIDTH, _EXIF_HEIGHT = 0x8769, 0xA405, 0xA002, 0xA003
_EXIF_TRANSPOSE = {  # EXIF orientation tag -> the transpose that turns the image upright (as ImageOps does)
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class ImageError(ValueError):
    """An input image that cannot be used; the message says why, in words for the user."""


@dataclass
class LoadedImage:
    rgb: np.ndarray  # (H, W, 3) uint8
    original_size: tuple[int, int]  # (W, H) upright, before any downscaling: user coordinates refer to it
    alpha: np.ndarray | None = None  # (H, W) float in [0, 1] when the file had transparency
    notes: list[str] = field(default_factory=list)  # what was changed on load (rotation, conversion, ...)
    focal_length: float | None = None  # pixels of `rgb`, from EXIF; None when it has none or it cannot be trusted


def load_image(path: str | Path, max_side: int = MAX_SIDE) -> LoadedImage:
    """Reads an image file: EXIF rotation applied, converted to RGB (alpha kept apart), downscaled so that its
    longer side is at most `max_side`. The pixel count is checked from the header, before anything is decoded;
    JPEGs decode straight at a reduced scale, other formats are reduced before any conversion."""
    path = Path(path)
    _check_file(path)
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # MAX_PIXELS decides, below
            img = Image.open(path)
        full_size = img.size  # draft() may decode a JPEG at 1/2, 1/4 or 1/8 of this
        if full_size[0] * full_size[1] > MAX_PIXELS:
            raise ImageError(_too_large(*full_size))
        if getattr(img, "is_animated", False):
            notes.append(f"animated {img.format}: used its first frame")
        img.draft("RGB", (max_side, max_side))
        img.load()
    except Image.DecompressionBombError as exc:  # Pillow's own limit, above ours: raised from the header alone
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(pixels[1]) / 1e6:.0f} M pixels" if pixels else str(exc)
        raise ImageError(f"image is too large ({size}); at most {MAX_PIXELS // 10**6} M pixels are accepted") from exc
    except UnidentifiedImageError as exc:
        raise ImageError("not an image file, or a format that cannot be read") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated or corrupt data
        if isinstance(exc, ImageError):
            raise
        raise ImageError(f"corrupt or unreadable image: {exc}") from exc

    orientation = _exif_orientation(img)
    focal_35mm = _exif_focal_35mm(img, notes)
    if orientation not in (None, 1):
        notes.append(f"turned upright by its EXIF orientation tag ({orientation})")
        if orientation in (5, 6, 7, 8):  # quarter turns swap the sides
            full_size = full_size[::-1]
    width, height = full_size
    if min(width, height) < MIN_SIDE:
        raise ImageError(f"image is too small ({width}x{height}); need at least {MIN_SIDE} pixels per side")

    source_mode = img.mode
    img = _reduce(_to_8_bit(img, notes), max_side)
    if orientation in _EXIF_TRANSPOSE:
        img = img.transpose(_EXIF_TRANSPOSE[orientation])  # after reducing: the tag is not carried over
    rgb, alpha = _to_rgb(img, source_mode, notes)
    if max(width, height) > max_side:
        factor = max_side / max(width, height)  # relative to the full size, whatever draft() decoded
        new_size = (max(1, round(width * factor)), max(1, round(height * factor)))
        if (rgb.shape[1], rgb.shape[0]) != new_size:
            rgb = np.asarray(Image.fromarray(rgb).resize(new_size, Image.Resampling.LANCZOS))
            if alpha is not None:
                alpha = np.asarray(Image.fromarray(alpha).resize(new_size, Image.Resampling.BILINEAR))
        notes.append(f"downscaled from {width}x{height} to {new_size[0]}x{new_size[1]}")
    focal = None if focal_35mm is None else focal_35mm * float(np.hypot(*rgb.shape[:2])) / _FILM_DIAGONAL_MM
    return LoadedImage(rgb=rgb, original_size=(width, height), alpha=alpha, notes=notes, focal_length=focal)


def _too_large(width: int, height: int) -> str:
    return (
        f"image is too large ({width}x{height} = {width * height / 1e6:.0f} M pixels); "
        f"at most {MAX_PIXELS // 10**6} M pixels are accepted"
    )


def _check_file(path: Path) -> None:
    """Errors that say what the file is, for the files people upload by mistake."""
    try:
        with open(path, "rb") as f:
            head = f.read(1024)
    except IsADirectoryError as exc:
        raise ImageError(f"{path.name} is a folder, not an image file") from exc
    except OSError as exc:
        raise ImageError(f"cannot read {path.name}: {exc.strerror}") from exc
    if not head:
        raise ImageError("not an image: the file is empty (0 bytes)")
    if head.startswith(b"%PDF"):
        raise ImageError("not an image but a PDF document: export the page as PNG or JPEG")
    if b"<svg" in head.lower():
        raise ImageError("not an image but an SVG (vector) drawing: export it as PNG or JPEG")


def _reduce(img: Image.Image, max_side: int) -> Image.Image:
    """Shrinks by a whole factor (cheap, box filter) towards `max_side`; the exact size is set later."""
    factor = max(img.size) // max_side
    if factor < 2:
        return img
    if img.mode in ("P", "1"):
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    return img.reduce(factor)


def _to_8_bit(img: Image.Image, notes: list[str]) -> Image.Image:
    """High bit depth grayscale as 8-bit "L", a band of rows at a time (no whole-image copies beyond the 8-bit
    result): 16-bit keeps its top byte, other depths are scaled to their range."""
    mode = img.mode
    if mode not in _HIGH_BIT_DEPTH_MODES:
        return img
    width, height = img.size
    sixteen = mode.startswith("I;16")
    top = 65535.0
    if not sixteen:
        low, high = img.getextrema()
        top = max(float(high), 1e-12) if mode == "F" else (65535.0 if high > 255 else 255.0)
    gray = np.empty((height, width), np.uint8)
    for row in range(0, height, _BAND_ROWS):
        band = np.asarray(img.crop((0, row, width, min(row + _BAND_ROWS, height))))
        if sixteen:
            gray[row : row + _BAND_ROWS] = band.astype(np.uint16, copy=False) >> 8
        else:
            gray[row : row + _BAND_ROWS] = np.clip(band.astype(np.float32) * np.float32(255.0 / top), 0, 255).round()
    depth = "16-bit" if top == 65535.0 else "high bit depth"
    notes.append(f"converted {mode} ({depth}) grayscale to 8-bit RGB")
    return Image.fromarray(gray, mode="L")


def _exif_orientation(img: Image.Image) -> int | None:
    try:
        return img.getexif().get(0x0112)
    except Exception:  # malformed EXIF is not worth failing over
        return None


def _exif_focal_35mm(img: Image.Image, notes: list[str]) -> float | None:
    """The 35 mm equivalent focal length the camera wrote, if the image still shows the whole frame it took: a
    crop keeps the tag but narrows the view, so an image whose aspect ratio differs from the one EXIF records
    is not trusted (a resize keeps the ratio, and the conversion through the diagonal holds)."""
    try:
        exif = img.getexif().get_ifd(_EXIF_IFD)
        focal = float(exif.get(_FOCAL_35MM) or 0.0)
        recorded = (int(exif.get(_EXIF_WIDTH) or 0), int(exif.get(_EXIF_HEIGHT) or 0))
    except Exception:  # malformed EXIF is not worth failing over
        return None
    if not 1.0 <= focal <= 2000.0:
        return None
    if (
        min(recorded) > 0
        and abs(recorded[0] / recorded[1] - img.size[0] / img.size[1]) > 0.01 * img.size[0] / img.size[1]
    ):
        notes.append("EXIF focal length not used: the image was cropped after it was taken")
        return None
    return focal


def focal_length_exif(focal_px: float, width: int, height: int) -> Image.Exif:
    """EXIF recording a focal length the way a camera does (35 mm equivalent, whole frame), so that
    `load_image` and `onelook prepare` read `focal_px` back from an image of `width` x `height` saved with it.
    The tag holds whole millimetres: at 64 px a long lens comes back within 0.5%, a short one within 2%."""
    exif = Image.Exif()
    focal_35mm = focal_px * _FILM_DIAGONAL_MM / float(np.hypot(width, height))
    exif[_EXIF_IFD] = {_FOCAL_35MM: max(1, round(focal_35mm)), _EXIF_WIDTH: width, _EXIF_HEIGHT: height}
    return exif


def _to_rgb(img: Image.Image, source_mode: str, notes: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W, 3) uint8 and the alpha channel (None when opaque); `source_mode` is the file's own mode."""
    mode = img.mode
    alpha = None
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"))
        alpha = rgba[..., 3].astype(np.float32) / 255.0
        if alpha.min() >= 1.0:
            alpha = None
        img = img.convert("RGB")
    if source_mode not in ("RGB", "RGBA", *_HIGH_BIT_DEPTH_MODES):
        notes.append(f"converted from mode {source_mode} to RGB")
    rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(rgb), alpha
