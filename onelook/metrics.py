"""Image and surface metrics against exact ground truth, shared by LOLNeRF's and RealFusion's evaluations."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree
from skimage.metrics import structural_similarity


def masked_psnr(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float:
    """PSNR in dB of images in [0, 1] over the pixels of `mask` (the true foreground)."""
    return float(-10 * np.log10(np.mean((pred[mask] - target[mask]) ** 2) + 1e-12))


def masked_ssim(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float:
    """Mean SSIM (scikit-image) of (H, W, 3) images in [0, 1] over the pixels of `mask`."""
    _, ssim_map = structural_similarity(pred, target, channel_axis=2, data_range=1.0, full=True)
    return float(ssim_map.mean(axis=2)[mask].mean())


def chamfer_and_fscore(predicted: np.ndarray, truth: np.ndarray, threshold: float) -> tuple[float, float]:
    """Symmetric Chamfer distance (mean of the nearest-point distances both ways, halved) between two point
    samples of surfaces (P, 3) and (Q, 3), and the F-score at `threshold` (the harmonic mean of the shares of
    predicted points near the truth and of true points near the prediction)."""
    to_truth = cKDTree(truth).query(predicted)[0]
    to_prediction = cKDTree(predicted).query(truth)[0]
    precision, recall = float((to_truth <= threshold).mean()), float((to_prediction <= threshold).mean())
    fscore = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return float(0.5 * (to_truth.mean() + to_prediction.mean())), fscore


def surface_points(vertices: np.ndarray, faces: np.ndarray, count: int = 20_000) -> np.ndarray:
    """`count` points uniformly on a triangle mesh's surface, the same ones every run (for Chamfer distances
    that repeat)."""
    import trimesh

    mesh = trimesh.Trimesh(np.asarray(vertices), np.asarray(faces))
    return np.asarray(trimesh.sample.sample_surface(mesh, count, seed=0)[0])
