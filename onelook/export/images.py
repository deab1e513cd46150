"""Writing renders: colour-mapped depth, normal maps from depth, and videos."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import matplotlib
import numpy as np
from PIL import Image


def to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)


def depth_to_rgb(depth: np.ndarray, alpha: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Near is bright; the background (opacity below `threshold`) is black."""
    depth, alpha = np.squeeze(depth, -1) if depth.ndim == 3 else depth, np.squeeze(alpha)
    fg = alpha > threshold
    out = np.zeros((*depth.shape, 3))
    if fg.any():
        lo, hi = np.percentile(depth[fg], [1, 99])
        t = np.clip((hi - depth) / max(hi - lo, 1e-6), 0.0, 1.0)
        out[fg] = matplotlib.colormaps["turbo"](t[fg])[:, :3]
    return out


def depth_to_normals(depth: np.ndarray, focal: float, alpha: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Camera-space normals (OpenGL axes, mapped to [0, 1] RGB) from a depth map along the optical axis."""
    depth = np.squeeze(depth)
    height, width = depth.shape
    v, u = np.mgrid[0:height, 0:width] + 0.5
    points = np.stack([(u - width / 2) / focal * depth, -(v - height / 2) / focal * depth, -depth], axis=-1)
    du = np.gradient(points, axis=1)
    dv = np.gradient(points, axis=0)
    normals = np.cross(du, dv)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True).clip(min=1e-9)
    normals[normals[..., 2] < 0] *= -1  # face the camera
    out = (normals + 1.0) / 2.0
    out[np.squeeze(alpha) <= threshold] = 0.0
    return out


def save_png(image: np.ndarray, path: Path) -> Path:
    Image.fromarray(to_uint8(image) if image.dtype != np.uint8 else image).save(path)
    return path


def write_video(frames: list[np.ndarray], path: Path, fps: int = 12) -> Path:
    """MP4 (H.264, yuv420p: plays in browsers) or GIF, chosen by the file's suffix."""
    path = Path(path)
    stack = np.stack([to_uint8(f) if f.dtype != np.uint8 else f for f in frames])
    if path.suffix.lower() == ".gif":
        images = [Image.fromarray(f) for f in stack]
        images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
        return path
    height, width = stack.shape[1:3]
    stack = np.pad(stack, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")  # yuv420p: even sides
    iio.imwrite(path, stack, plugin="pyav", codec="libx264", fps=fps, out_pixel_format="yuv420p")
    return path
