"""Cameras that hold when every identity's keypoints differ: the landmarks' marginal likelihood.

Least squares with one rigid canonical shape (`fit_cameras`' first stages) lets each image's pose absorb what
is really its identity's own shape, and the shared shape drifts to whatever makes that easiest (measured: a
face layout whose keypoints vary by 10% of its size came out 0.76x as deep as the truth, and its poses had
1.6-1.7x the error of the mean-shape oracle). Here each identity's keypoints are the canonical ones plus a
random deformation, integrated out after linearising the projection: its width and height stretched (one
variance each, along world x and z of the frame `fit_cameras` returns: +Z up, the front facing -Y) and every
keypoint moved on its own (one isotropic variance). Each image's residual is then judged by the covariance its
own pose gives the deformation. Poses, canonical keypoints, the variances, the landmark noise and (when it is
estimated) the focal length are fitted together by L-BFGS (scipy), from the least-squares fit. The variances
are the data's: with no variation between identities they go to zero and this is least squares again.

A stretch in depth is left to the isotropic part on purpose: measured, a depth-stretch variance trades with
the mean shape's depth and the focal length, and the fit then prefers focal lengths 0.5-0.7x the truth with
70-90% depth stretch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.optimize
import torch

from onelook.cameras.geometry import skew

# Starting widths: each identity's stretch (a fraction of its width and height) and a keypoint's own offset
# (a fraction of the canonical keypoints' RMS radius).
INITIAL_STRETCH_STD = 0.15
INITIAL_OFFSET_STD = 0.04
STRETCH_AXES = (0, 2)  # world x (width) and z (height)
# The landmark noise is at least this fraction of the larger image side (keeps the covariance invertible when
# the landmarks are exact).
NOISE_FLOOR = 1e-4
ITERATIONS = 300


@dataclass
class VariationFit:
    """Cameras and canonical keypoints fitted with the deformation integrated out; world frame of the input."""

    camera_to_world: np.ndarray  # (N, 4, 4) OpenGL
    canonical_points: np.ndarray  # (K, 3) centroid at the origin, the input's RMS radius
    focal_length: np.ndarray  # (N,) pixels
    stretch_std: np.ndarray  # (2,) std of each identity's stretch of its width and height (fractions)
    offset_std: float  # std of each keypoint's own offset per axis, world units
    noise_px: float  # std of the landmark noise per coordinate, pixels
    negative_log_likelihood: float  # of all the images' landmarks, up to a constant


def _rotation(axis_angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula, batched, differentiable at zero."""
    theta2 = axis_angle.square().sum(dim=-1, keepdim=True)[..., None]
    theta = (theta2 + 1e-30).sqrt()
    k = skew(axis_angle)
    small = theta2 < 1e-12
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / theta2.clamp(min=1e-30))
    return torch.eye(3, dtype=axis_angle.dtype) + a * k + b * (k @ k)


def _block_diagonal(blocks: torch.Tensor) -> torch.Tensor:
    """(N, K, 2, 2) blocks -> (N, 2K, 2K) block-diagonal matrices."""
    n_images, n_points = blocks.shape[:2]
    eye = torch.eye(n_points, dtype=blocks.dtype)
    full = eye[None, :, None, :, None] * blocks[:, :, :, None, :]  # (N, K, 2, K, 2)
    return full.reshape(n_images, 2 * n_points, 2 * n_points)


class _Likelihood:
    """The landmarks' negative log-likelihood as a function of the packed parameters: canonical keypoints,
    per-image rotation updates and translations, the stds of stretch, offset and noise (bounded below by 0, so
    that they can reach it: exact landmarks of a rigid shape are least squares exactly), log focal update."""

    def __init__(
        self,
        landmarks: np.ndarray,
        weights: np.ndarray,
        image_size: tuple[int, int],
        focal: np.ndarray,
        camera_to_world: np.ndarray,
        canonical_points: np.ndarray,
        estimate_focal: bool,
    ):
        height, width = image_size
        self.side = float(max(height, width))
        self.estimate_focal = estimate_focal
        valid = weights > 0
        # Pixels from the image centre in units of the larger side (well scaled for the optimiser), y up.
        centre = np.array([width / 2.0, height / 2.0])
        obs = np.where(valid[..., None], (np.nan_to_num(landmarks) - centre) / self.side, 0.0) * [1.0, -1.0]
        self.obs = torch.from_numpy(obs)
        self.valid = torch.from_numpy(valid)
        self.inv_weight = torch.from_numpy(1.0 / np.where(valid, weights, 1.0))
        self.focal = torch.from_numpy(np.broadcast_to(focal, (len(obs),)) / self.side)
        c2w = torch.from_numpy(camera_to_world)
        self.base_rot = c2w[:, :3, :3].transpose(1, 2)  # world-to-camera, OpenGL axes
        self.radius = float(np.sqrt(np.square(canonical_points - canonical_points.mean(0)).sum(1).mean()))
        self.start = [
            torch.from_numpy(canonical_points.copy()),
            torch.zeros(len(obs), 3, dtype=torch.float64),
            -(self.base_rot @ c2w[:, :3, 3:])[..., 0],
            torch.full((len(STRETCH_AXES),), INITIAL_STRETCH_STD, dtype=torch.float64),
            torch.tensor([INITIAL_OFFSET_STD * self.radius], dtype=torch.float64),
            torch.tensor([0.5 / self.side], dtype=torch.float64),
            torch.zeros(1, dtype=torch.float64),
        ]
        self.shapes = [p.shape for p in self.start]

    def pack(self, params: list[torch.Tensor]) -> np.ndarray:
        return torch.cat([p.reshape(-1) for p in params]).detach().numpy()

    def unpack(self, x: np.ndarray) -> list[torch.Tensor]:
        params, offset = [], 0
        for shape in self.shapes:
            n = int(np.prod(shape))
            params.append(torch.from_numpy(x[offset : offset + n]).reshape(shape))
            offset += n
        return params

    def geometry(self, params: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(canonical keypoints at the input's RMS radius, world-to-camera rotations, translations, focal)."""
        points, rot_update, trans, *_, log_focal = params
        centred = points - points.mean(dim=0)
        canonical = centred * (self.radius / centred.square().sum(dim=1).mean().sqrt())
        focal = self.focal * log_focal.exp() if self.estimate_focal else self.focal
        return canonical, _rotation(rot_update) @ self.base_rot, trans, focal

    def per_image(self, params: list[torch.Tensor]) -> torch.Tensor:
        """(N,) negative log-likelihood of each image's landmarks (constant terms dropped)."""
        canonical, rot, trans, focal = self.geometry(params)
        stretch_std, offset_std, noise_std = params[3:6]
        n_images, n_points = self.valid.shape
        cam = torch.einsum("nij,kj->nki", rot, canonical) + trans[:, None]
        depth = -cam[..., 2]
        inv = focal[:, None] / depth
        mask = self.valid.repeat_interleave(2, dim=1)  # (N, 2K)
        residual = torch.where(mask, (self.obs - inv[..., None] * cam[..., :2]).reshape(n_images, -1), 0.0)
        zero = torch.zeros_like(depth)
        d_proj = torch.stack(
            [
                torch.stack([inv, zero, inv * cam[..., 0] / depth], dim=-1),
                torch.stack([zero, inv, inv * cam[..., 1] / depth], dim=-1),
            ],
            dim=-2,
        )  # (N, K, 2, 3): d projection / d camera coordinates
        d_point = d_proj @ rot[:, None]  # (N, K, 2, 3): d projection / d the identity's own keypoint (world)
        # Covariance of an image's 2K coordinates: noise (diagonal), offsets (2x2 blocks), stretch (low rank).
        noise = NOISE_FLOOR**2 + noise_std.square()
        cov = torch.diag_embed(torch.where(mask, noise * self.inv_weight.repeat_interleave(2, dim=1), 1.0))
        offsets = offset_std.square() * (d_point @ d_point.transpose(-1, -2))
        cov = cov + _block_diagonal(torch.where(self.valid[..., None, None], offsets, 0.0))
        axes = list(STRETCH_AXES)
        stretch = (d_point[..., axes] * canonical[None, :, None, axes]).reshape(n_images, 2 * n_points, len(axes))
        stretch = torch.where(mask[..., None], stretch, 0.0)
        cov = cov + (stretch * stretch_std.square()) @ stretch.transpose(1, 2)
        chol = torch.linalg.cholesky(cov)
        solved = torch.cholesky_solve(residual[..., None], chol)[..., 0]
        log_det = 2.0 * torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(dim=1)
        return 0.5 * ((residual * solved).sum(dim=1) + log_det)

    def value_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        params = [p.requires_grad_(True) for p in self.unpack(x)]
        try:
            value = self.per_image(params).sum()
        except torch.linalg.LinAlgError:  # a step too far: the line search backs off
            return 1e30, np.zeros_like(x)
        if not torch.isfinite(value):
            return 1e30, np.zeros_like(x)
        value.backward()
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]  # unused: a focal held fixed
        return value.item(), torch.cat([g.reshape(-1) for g in grads]).numpy()


def fit_with_variation(
    landmarks: np.ndarray,
    image_size: tuple[int, int],
    focal_length: float | np.ndarray,
    camera_to_world: np.ndarray,
    canonical_points: np.ndarray,
    weights: np.ndarray | None = None,
    estimate_focal: bool = False,
    iterations: int = ITERATIONS,
) -> VariationFit:
    """Refines a rigid fit (`camera_to_world`, `canonical_points` in `fit_cameras`' world frame) of `landmarks`
    (N, K, 2; NaN for missing) with each identity's deformation integrated out. With `estimate_focal`, one
    factor on `focal_length` is fitted too (a local refinement: start from a sensible estimate)."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    valid = np.isfinite(landmarks).all(axis=2)
    weights = np.where(valid, 1.0 if weights is None else np.asarray(weights, dtype=np.float64), 0.0)
    problem = _Likelihood(
        landmarks,
        weights,
        image_size,
        np.asarray(focal_length, dtype=np.float64),
        np.asarray(camera_to_world, dtype=np.float64),
        np.asarray(canonical_points, dtype=np.float64),
        estimate_focal,
    )
    start = problem.pack(problem.start)
    stds = slice(start.size - 1 - len(STRETCH_AXES) - 2, start.size - 1)
    bounds = [(None, None)] * start.size
    bounds[stds] = [(0.0, None)] * (stds.stop - stds.start)
    result = scipy.optimize.minimize(
        problem.value_and_grad,
        start,
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={"maxiter": iterations, "maxcor": 30, "ftol": 1e-15, "gtol": 1e-12},
    )
    params = problem.unpack(result.x)
    with torch.no_grad():
        canonical, rot, trans, focal = problem.geometry(params)
        value = float(problem.per_image(params).sum())
    c2w = np.tile(np.eye(4), (len(rot), 1, 1))
    c2w[:, :3, :3] = rot.transpose(1, 2).numpy()
    c2w[:, :3, 3] = -(rot.transpose(1, 2) @ trans[..., None])[..., 0].numpy()
    return VariationFit(
        camera_to_world=c2w,
        canonical_points=canonical.numpy(),
        focal_length=focal.numpy() * problem.side,
        stretch_std=params[3].numpy().copy(),
        offset_std=float(params[4][0]),
        noise_px=float(np.sqrt(NOISE_FLOOR**2 + float(params[5][0]) ** 2) * problem.side),
        negative_log_likelihood=value,
    )
