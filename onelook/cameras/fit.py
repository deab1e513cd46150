"""Joint fit of shared canonical 3D keypoints and one pinhole camera per image (LOLNeRF's camera estimation).

The fit minimises the robust (Cauchy) reprojection error of K canonical points seen in N images. It starts from
a scaled-orthographic factorisation (Tomasi-Kanade with a metric upgrade), tries both mirror solutions that
factorisation cannot tell apart, and refines everything with Levenberg-Marquardt on the full perspective model.
The normal equations are solved with a Schur complement over the (6 parameters per image) x (3K shared
parameters) block structure, so one iteration is a handful of batched 6x6 solves: 10,000 images take well
under a second per iteration on two CPU cores. Last, the poses, keypoints and focal length are refined with
each identity's own deformation integrated out (`onelook.cameras.shape_variation`): one rigid shape is the
right model only when every object's keypoints are the same; before and after that, each image's pose flip is
resolved by where the other cameras stand (`onelook.cameras.pose_flips`).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from nerfstudio.cameras.lie_groups import exp_map_SO3xR3

from onelook.cameras.geometry import CV_TO_GL, project, skew
from onelook.cameras.pose import estimate_pose
from onelook.cameras.pose_flips import resolve_flips
from onelook.cameras.shape_variation import fit_with_variation

# Canonical keypoints are scaled so that their RMS distance from their centroid is this, in world units. With
# the five face keypoints this puts a whole head inside the [-1, 1]^3 scene box.
CANONICAL_RMS_RADIUS = 0.25
# With `focal_length=None` one focal length shared by all images is estimated. The data decide it: the search
# starts from each of these multiples of the larger image side (fields of view from 106 to 10 degrees) and the
# log-normal prior around DEFAULT_FOCAL_FACTOR only settles directions the landmarks leave flat (it weighs as
# one landmark observation would, whatever the noise level).
DEFAULT_FOCAL_FACTOR = 2.0
FOCAL_PRIOR_LOG_SIGMA = 0.7
FOCAL_SEARCH_FACTORS = (0.375, 0.6, 0.9, 1.35, 2.0, 3.0, 4.5, 6.0)
SEARCH_IMAGES = 400  # images the starting point is chosen on
# The focal length counts as undetermined by the landmarks when its log has a standard deviation above this.
FOCAL_UNDETERMINED_LOG_STD = 0.15
# Images whose mean reprojection error exceeds this multiple of the median image's are flagged as outliers.
OUTLIER_FACTOR = 4.0
# Width of the per-image Cauchy loss, in RMS reprojection errors of the median image; wider (nearly least
# squares) for the final refinement, once gross outliers are flagged and no longer shape the keypoints.
ROBUST_WIDTH = 2.0
FINAL_LOSS_WIDTH = 4.0
# Levenberg-Marquardt stops when an iteration lowers the cost by less than this fraction.
COST_TOLERANCE = 1e-6


@dataclass
class CameraFit:
    """Result of `fit_cameras`; the world frame is nerfstudio's (+Z up), the object's front faces -Y."""

    canonical_points: np.ndarray  # (K, 3) shared 3D keypoints, centroid at the origin
    camera_to_world: np.ndarray  # (N, 4, 4) OpenGL convention: the camera looks down -Z, +Y up
    focal_length: np.ndarray  # (N,) pixels
    residual_px: np.ndarray  # (N,) mean reprojection error over an image's weighted keypoints
    inlier: np.ndarray  # (N,) bool: False for images whose residual stayed high
    outlier_threshold_px: float
    focal_log_std: float = 0.0  # uncertainty of an estimated focal length (std of its log); 0 when given

    @property
    def focal_determined(self) -> bool:
        """False when the landmarks hardly constrain the estimated focal length (give it, e.g. from EXIF)."""
        return self.focal_log_std <= FOCAL_UNDETERMINED_LOG_STD

    def summary(self) -> str:
        n_out = int((~self.inlier).sum())
        med = float(np.median(self.residual_px[self.inlier])) if self.inlier.any() else float("nan")
        text = (
            f"{len(self.inlier)} images, {n_out} flagged as outliers (residual > {self.outlier_threshold_px:.2f} px), "
            f"median residual of inliers {med:.2f} px"
        )
        if self.focal_log_std > 0:
            text += f"; focal length {np.median(self.focal_length):.1f} px (x/ {np.exp(self.focal_log_std):.2f})"
            if not self.focal_determined:
                text += ": the landmarks hardly determine it, give --focal-length if it is known"
        return text


def fit_cameras(
    landmarks: np.ndarray,
    image_size: tuple[int, int],
    focal_length: float | np.ndarray | None = None,
    weights: np.ndarray | None = None,
    *,
    iterations: int = 60,
    outlier_threshold_px: float | None = None,
    shape_variation: bool = True,
) -> CameraFit:
    """Fit shared canonical keypoints and a camera per image to 2D landmarks.

    Args:
        landmarks: (N, K, 2) pixel coordinates, x right, y down, origin at the top-left pixel corner. NaN marks
            a missing keypoint.
        image_size: (H, W) of every image; the principal point is the image centre.
        focal_length: pixels, one for all images or one per image, held fixed. None: one focal length shared
            by all images is estimated jointly, with a weak prior at `DEFAULT_FOCAL_FACTOR * max(H, W)`
            (perspective cues from 5 points are weak, so the prior keeps it sane on near-frontal data).
        weights: (N, K) non-negative confidence per keypoint (0 = missing).
        iterations: Levenberg-Marquardt iterations of the final refinement.
        outlier_threshold_px: images with a larger mean residual are flagged; default `OUTLIER_FACTOR` times
            the median image's residual (at least 1 px).
        shape_variation: end with the fit that integrates out each identity's own deformation
            (`onelook.cameras.shape_variation`); False: rigid least squares only.
    """
    obs, w_user, scale = _validate(landmarks, image_size, weights)
    n_images, _, _ = obs.shape
    side = float(max(image_size))
    if focal_length is None:
        f_init = torch.full((n_images,), DEFAULT_FOCAL_FACTOR * side / scale, dtype=torch.float64)
    else:
        f_arr = np.broadcast_to(np.asarray(focal_length, dtype=np.float64), (n_images,))
        if not np.all(np.isfinite(f_arr)) or np.any(f_arr <= 0):
            raise ValueError(f"focal_length must be positive pixels, got {focal_length!r}")
        f_init = torch.from_numpy(f_arr.copy()) / scale
    problem = _Problem(obs, w_user, f_init, estimate_focal=focal_length is None)

    shape = _factorise(obs, w_user)
    focal_starts = [torch.full_like(f_init, factor * side / scale) for factor in FOCAL_SEARCH_FACTORS]
    if focal_length is not None:
        focal_starts.append(f_init)
    # The starting point (focal length, which of the two mirror-image shapes) is chosen on a subset of images.
    search = problem.subset(torch.linspace(0, n_images - 1, min(n_images, SEARCH_IMAGES)).long())
    candidates = []
    for focal_start in focal_starts:
        for mirrored in (False, True):
            s = shape * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64) if mirrored else shape
            state = search.initial_state(s, focal_start[search.images])
            state = search.refine(search.global_poses(state), iterations=15, fixed_focal=True)
            if focal_length is not None and focal_start is not f_init:
                # A given wide lens leaves the scaled-orthographic start far from the truth (the fit ended in
                # nonsense): a shape found at another focal length starts the given one too.
                state = search.initial_state(state.points, f_init[search.images])
                state = search.refine(search.global_poses(state), iterations=15, fixed_focal=True)
            candidates.append(state)
    # The best start of each mirror image (candidates differ in their robust scale: compared by the median
    # image's error), each refined on every image; the lower cost at a common scale wins. A few iterations on
    # a subset cannot tell the two apart once landmarks are noisy: the other one is a local minimum.
    finalists = []
    for mirrored in (False, True):
        best = min(candidates[int(mirrored) :: 2], key=search.median_image_error)
        focal = f_init if focal_length is not None else best.log_focal[0].exp().expand(n_images).clone()
        state = problem.initial_state(best.points, focal)
        # Every camera at its best pose for the shape so far, then all jointly.
        finalists.append(problem.refine(problem.global_poses(state), iterations=iterations))
    common_scale = min(problem.robust_scale(state) for state in finalists)
    state = min(finalists, key=lambda state: problem.cost(state, common_scale))

    residual = problem.image_residuals(state) * scale
    threshold = outlier_threshold_px
    if threshold is None:
        threshold = max(OUTLIER_FACTOR * float(np.median(residual)), 1.0)
    inlier = residual <= threshold
    if inlier.sum() >= 3:
        # With gross outliers flagged, a wider loss is nearly least squares on the inliers, which estimates
        # each camera from its few keypoints more efficiently; flagged images no longer shape the keypoints.
        state = problem.refine(
            problem.global_poses(state),
            iterations=iterations // 2,
            shape_mask=torch.from_numpy(inlier),
            loss_width=FINAL_LOSS_WIDTH,
        )
        residual = problem.image_residuals(state) * scale
        inlier = residual <= threshold
    focal_log_std = problem.focal_log_std(state) if focal_length is None else 0.0
    fit = _to_world(state, inlier, residual, scale, threshold, focal_log_std)
    if not shape_variation:
        return fit
    return _with_shape_variation(
        fit, np.asarray(landmarks, dtype=np.float64), image_size, weights, focal_length is None
    )


def _with_shape_variation(
    fit: CameraFit, landmarks: np.ndarray, image_size: tuple[int, int], weights, estimate_focal: bool
) -> CameraFit:
    """The rigid fit refined with each identity's deformation integrated out, on the inliers; the images flagged
    as outliers are then placed on the refined keypoints by SQPnP. Pose flips are resolved before (so that the
    flipped cameras do not flatten the keypoints) and after."""
    inlier = fit.inlier if fit.inlier.sum() >= 3 else np.ones_like(fit.inlier)
    # Every image, the flagged ones too: a flipped pose's residual is what gets some images flagged.
    start, _ = resolve_flips(
        fit.canonical_points, fit.camera_to_world, fit.focal_length, landmarks, image_size, weights
    )
    refined = fit_with_variation(
        landmarks[inlier],
        image_size,
        fit.focal_length[inlier],
        start[inlier],
        fit.canonical_points,
        None if weights is None else np.asarray(weights, dtype=np.float64)[inlier],
        estimate_focal=estimate_focal,
    )
    focal = np.full(len(inlier), refined.focal_length[0]) if estimate_focal else fit.focal_length
    camera_to_world = fit.camera_to_world.copy()
    camera_to_world[inlier] = refined.camera_to_world
    for i in np.flatnonzero(~inlier):
        camera_to_world[i] = estimate_pose(refined.canonical_points, landmarks[i], focal[i], image_size)[0]
    camera_to_world, _ = resolve_flips(refined.canonical_points, camera_to_world, focal, landmarks, image_size, weights)
    projected, _ = project(refined.canonical_points, camera_to_world, focal, image_size)
    valid = np.isfinite(landmarks).all(axis=2)
    w = valid * (1.0 if weights is None else np.asarray(weights, dtype=np.float64))
    error = np.linalg.norm(np.nan_to_num(projected - landmarks), axis=2)
    return CameraFit(
        canonical_points=refined.canonical_points,
        camera_to_world=camera_to_world,
        focal_length=focal,
        residual_px=(error * w).sum(axis=1) / w.sum(axis=1),
        inlier=fit.inlier,
        outlier_threshold_px=fit.outlier_threshold_px,
        focal_log_std=fit.focal_log_std,
    )


def _validate(
    landmarks: np.ndarray, image_size: tuple[int, int], weights: np.ndarray | None
) -> tuple[torch.Tensor, torch.Tensor, float]:
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.ndim != 3 or lm.shape[2] != 2:
        raise ValueError(f"landmarks must have shape (N, K, 2), got {lm.shape}")
    n_images, n_points, _ = lm.shape
    if n_points < 5:
        raise ValueError(f"need at least 5 keypoints per image, got {n_points}")
    if n_images < 3:
        raise ValueError(f"need at least 3 images to fit a shared canonical shape, got {n_images}")
    if len(image_size) != 2 or min(image_size) <= 0:
        raise ValueError(f"image_size must be (H, W) with positive sides, got {image_size!r}")
    w = np.ones(lm.shape[:2]) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != lm.shape[:2]:
        raise ValueError(f"weights must have shape {lm.shape[:2]}, got {w.shape}")
    if np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError("weights must be finite and non-negative")
    missing = ~np.isfinite(lm).all(axis=2)
    w = np.where(missing, 0.0, w)
    if np.any((w > 0).sum(axis=1) < 4):
        bad = np.flatnonzero((w > 0).sum(axis=1) < 4)[:5]
        raise ValueError(f"every image needs at least 4 keypoints with positive weight; images {bad.tolist()} do not")
    if ((w > 0).all(axis=1)).sum() < 3:
        raise ValueError("at least 3 images must have all keypoints present to initialise the canonical shape")
    height, width = image_size
    centre = np.array([width / 2.0, height / 2.0])
    scale = max(height, width) / 2.0
    obs = np.where(missing[..., None], 0.0, (lm - centre) / scale)
    return torch.from_numpy(obs), torch.from_numpy(w), scale


def _factorise(obs: torch.Tensor, w_user: torch.Tensor) -> torch.Tensor:
    """Scaled-orthographic factorisation of images with every keypoint present; returns (K, 3), RMS radius 1."""
    complete = (w_user > 0).all(dim=1)
    x = obs[complete]  # (M, K, 2)
    keep = torch.ones(len(x), dtype=torch.bool)
    for _ in range(2):  # the second pass drops images that do not fit a rank-3 model (gross misdetections)
        xc = x[keep] - x[keep].mean(dim=1, keepdim=True)
        meas = xc.permute(0, 2, 1).reshape(-1, x.shape[1])  # (2M, K)
        u, s, vh = torch.linalg.svd(meas, full_matrices=False)
        motion = u[:, :3] * s[:3].sqrt()
        shape_affine = s[:3].sqrt()[:, None] * vh[:3]  # (3, K)
        xc_all = x - x.mean(dim=1, keepdim=True)
        proj = torch.linalg.lstsq(shape_affine.T[None].expand(len(x), -1, -1), xc_all).solution  # (M, 3, 2)
        err = (shape_affine.T @ proj - xc_all).norm(dim=2).mean(dim=1)
        keep = err <= 3.0 * err.median() + 1e-12
    a, b = motion[0::2], motion[1::2]  # rows of each image's 2x3 affine camera

    def quad(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        # Coefficients of p^T L q in the 6 unknowns of symmetric L.
        return torch.stack(
            [
                p[:, 0] * q[:, 0],
                p[:, 0] * q[:, 1] + p[:, 1] * q[:, 0],
                p[:, 0] * q[:, 2] + p[:, 2] * q[:, 0],
                p[:, 1] * q[:, 1],
                p[:, 1] * q[:, 2] + p[:, 2] * q[:, 1],
                p[:, 2] * q[:, 2],
            ],
            dim=1,
        )

    rows = torch.cat([quad(a, a) - quad(b, b), quad(a, b), quad(a, a).mean(dim=0, keepdim=True)])
    rhs = torch.zeros(len(rows), dtype=torch.float64)
    rhs[-1] = 1.0
    rows[-1] *= len(a)  # weight the scale constraint like all the others together
    rhs[-1] *= len(a)
    ell = torch.linalg.lstsq(rows, rhs[:, None]).solution[:, 0]
    mat = torch.stack(
        [
            torch.stack([ell[0], ell[1], ell[2]]),
            torch.stack([ell[1], ell[3], ell[4]]),
            torch.stack([ell[2], ell[4], ell[5]]),
        ]
    )
    evals, evecs = torch.linalg.eigh(mat)
    evals = evals.clamp(min=evals.max() * 1e-3)
    upgrade = evecs * evals.sqrt()  # Q with Q Q^T = L
    shape = torch.linalg.solve(upgrade, shape_affine).T  # (K, 3)
    shape = shape - shape.mean(dim=0)
    return shape / shape.square().sum(dim=1).mean().sqrt()


@dataclass
class _State:
    rot: torch.Tensor  # (N, 3, 3) world-to-camera rotation, OpenCV axes
    trans: torch.Tensor  # (N, 3)
    points: torch.Tensor  # (K, 3)
    log_focal: torch.Tensor  # (N,) normalised focal lengths, log


class _Problem:
    """The robust least-squares problem; all coordinates normalised by half the larger image side."""

    def __init__(self, obs: torch.Tensor, w_user: torch.Tensor, focal: torch.Tensor, estimate_focal: bool):
        self.images = torch.arange(len(obs))  # which of the caller's images these are
        self.obs = obs
        self.w_user = w_user
        self.log_focal_prior = focal.log()
        self.estimate_focal = estimate_focal

    def subset(self, images: torch.Tensor) -> _Problem:
        part = _Problem(self.obs[images], self.w_user[images], self.log_focal_prior[images].exp(), self.estimate_focal)
        part.images = images
        return part

    def initial_state(self, shape: torch.Tensor, focal: torch.Tensor) -> _State:
        """Cameras from a weighted affine fit of each image to the shape, then lifted to perspective at `focal`."""
        n_images, n_points, _ = self.obs.shape
        homog = torch.cat([shape, torch.ones(n_points, 1, dtype=torch.float64)], dim=1)  # (K, 4)
        sw = self.w_user.sqrt()[..., None]
        aff = torch.linalg.lstsq(sw * homog[None], sw * self.obs).solution  # (N, 4, 2)
        m = aff[:, :3].transpose(1, 2)  # (N, 2, 3)
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
        r12 = u @ vh
        rot = torch.cat([r12, torch.cross(r12[:, 0], r12[:, 1], dim=1)[:, None]], dim=1)
        scale = s.mean(dim=1)
        tz = focal / scale
        txy = aff[:, 3] * tz[:, None] / focal[:, None]
        return _State(rot, torch.cat([txy, tz[:, None]], dim=1), shape.clone(), focal.log())

    def global_poses(self, state: _State) -> _State:
        """Each camera moved to the globally best pose for the current shape and focal length (OpenCV's SQPnP),
        where that fits its keypoints better: a joint descent cannot leave a wrong local minimum (a pose flip
        that near-planar keypoints allow) by itself."""
        points = state.points.numpy()
        focal = state.log_focal.exp().numpy()
        obs, valid = self.obs.numpy(), (self.w_user > 0).numpy()
        current = self._image_sq_errors(state)
        rot, trans = state.rot.numpy().copy(), state.trans.numpy().copy()
        for i in range(len(obs)):
            intrinsics = np.array([[focal[i], 0.0, 0.0], [0.0, focal[i], 0.0], [0.0, 0.0, 1.0]])
            seen = valid[i]
            try:
                ok, rvec, tvec = cv2.solvePnP(points[seen], obs[i, seen], intrinsics, None, flags=cv2.SOLVEPNP_SQPNP)
            except cv2.error:  # SQPnP asserts on a degenerate shape (a losing start can collapse): keep the pose
                continue
            if ok and tvec[2, 0] > 0:
                rot[i], trans[i] = cv2.Rodrigues(rvec)[0], tvec[:, 0]
        rot, trans = torch.from_numpy(rot), torch.from_numpy(trans)
        candidate = _State(rot, trans, state.points, state.log_focal)
        better = (self._image_sq_errors(candidate) < current)[:, None]
        return _State(
            torch.where(better[..., None], rot, state.rot),
            torch.where(better, trans, state.trans),
            state.points,
            state.log_focal,
        )

    def median_image_error(self, state: _State) -> float:
        return float(self._image_sq_errors(state).median().sqrt())

    def _project(self, state: _State) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cam = state.points @ state.rot.transpose(1, 2) + state.trans[:, None]  # (N, K, 3)
        depth = cam[..., 2].clamp(min=1e-6)
        uv = state.log_focal.exp()[:, None, None] * cam[..., :2] / depth[..., None]
        return cam, depth, uv

    def _image_sq_errors(self, state: _State) -> torch.Tensor:
        """(N,) weighted mean squared reprojection error of each image."""
        err2 = (self._project(state)[2] - self.obs).square().sum(dim=2)
        return (err2 * self.w_user).sum(dim=1) / self.w_user.sum(dim=1)

    def robust_scale(self, state: _State, loss_width: float = 1.0) -> float:
        # Robustness is per image (gross misdetections): with 2K equations for 6 camera parameters no image
        # can fit its keypoints exactly, so this scale cannot collapse the way a per-keypoint scale does.
        typical = self._image_sq_errors(state).median().sqrt()
        return float(loss_width * ROBUST_WIDTH * typical.clamp(min=1e-6))

    def _focal_prior_weight(self, c: float, loss_width: float) -> float:
        """The prior's weight: one observation's worth at the data's own noise level (c is ROBUST_WIDTH *
        loss_width typical errors), so the landmarks decide the focal length wherever they can."""
        return (c / (ROBUST_WIDTH * loss_width)) ** 2 / FOCAL_PRIOR_LOG_SIGMA**2

    def cost(self, state: _State, c: float, loss_width: float = 1.0) -> float:
        n_obs = self.w_user.sum(dim=1)
        cost = 0.5 * c**2 * (n_obs * torch.log1p(self._image_sq_errors(state) / c**2)).sum()
        if self.estimate_focal:
            offset = state.log_focal[0] - self.log_focal_prior[0]
            cost = cost + 0.5 * self._focal_prior_weight(c, loss_width) * offset**2
        return float(cost)

    def image_residuals(self, state: _State) -> np.ndarray:
        err = (self._project(state)[2] - self.obs).square().sum(dim=2).sqrt()
        return ((err * self.w_user).sum(dim=1) / self.w_user.sum(dim=1)).numpy()

    def refine(
        self,
        state: _State,
        iterations: int,
        shape_mask: torch.Tensor | None = None,
        loss_width: float = 1.0,
        fixed_focal: bool = False,
    ) -> _State:
        lam = 1e-3
        estimate_focal = self.estimate_focal and not fixed_focal
        for _ in range(iterations):
            c = self.robust_scale(state, loss_width)
            cost = self.cost(state, c, loss_width)
            step = self._normal_equations(state, c, loss_width, shape_mask, estimate_focal)
            improved = False
            for _ in range(8):
                candidate = self._apply(state, *step(lam), estimate_focal)
                new_cost = self.cost(candidate, c, loss_width)
                if new_cost < cost:
                    lam = max(lam / 3.0, 1e-9)
                    improved = True
                    break
                lam *= 4.0
            if not improved:
                break
            state = candidate
            if cost - new_cost < COST_TOLERANCE * cost:
                break
        return state

    def focal_log_std(self, state: _State) -> float:
        """Standard deviation of the estimated log focal length (Gauss-Newton, at the data's noise level), with
        every camera and keypoint free."""
        c = self.robust_scale(state)
        reduced = self._normal_equations(state, c, 1.0, None, True)(0.0, reduced_hessian=True)
        # The keypoints' gauge (7 directions) leaves the reduced Hessian singular; the focal length is not part
        # of it, so the pseudo-inverse gives its variance.
        covariance = torch.linalg.pinv(reduced, hermitian=True, rtol=1e-10)
        noise_variance = (c / ROBUST_WIDTH) ** 2 / 2  # per coordinate
        return float((covariance[-1, -1] * noise_variance).clamp(min=0).sqrt())

    def _normal_equations(
        self, state: _State, c: float, loss_width: float, shape_mask: torch.Tensor | None, estimate_focal: bool
    ):
        """Builds the Gauss-Newton system; returns a function giving the damped step for a damping factor."""
        n_images, n_points, _ = self.obs.shape
        cam, depth, uv = self._project(state)
        res = uv - self.obs  # (N, K, 2)
        image_weight = 1.0 / (1.0 + self._image_sq_errors(state) / c**2)  # IRLS weights of the Cauchy loss
        w = self.w_user * image_weight[:, None]
        focal = state.log_focal.exp()[:, None]
        zero = torch.zeros_like(depth)
        inv_z = focal / depth
        d_proj = torch.stack(
            [
                torch.stack([inv_z, zero, -inv_z * cam[..., 0] / depth], dim=-1),
                torch.stack([zero, inv_z, -inv_z * cam[..., 1] / depth], dim=-1),
            ],
            dim=-2,
        )  # (N, K, 2, 3)
        rotated = state.points @ state.rot.transpose(1, 2)
        d_rot = -d_proj @ skew(rotated)  # left-multiplied rotation update
        j_cam = torch.cat([d_rot, d_proj], dim=-1)  # (N, K, 2, 6)
        j_pts = d_proj @ state.rot[:, None]  # (N, K, 2, 3): derivative wrt the image's own keypoint
        n_global = 3 * n_points + int(estimate_focal)
        j_glob = torch.zeros(n_images, n_points, 2, n_global, dtype=torch.float64)
        for k in range(n_points):
            j_glob[:, k, :, 3 * k : 3 * k + 3] = j_pts[:, k]
        if estimate_focal:
            j_glob[..., -1] = uv
        if shape_mask is not None:
            j_glob = j_glob * shape_mask[:, None, None, None].to(j_glob)

        # Flattened over (keypoint, axis) rows the blocks are plain batched matrix products.
        rows = 2 * n_points
        jc = j_cam.reshape(n_images, rows, 6)
        jg = j_glob.reshape(n_images, rows, n_global)
        wr = w.repeat_interleave(2, dim=1)[..., None]  # (N, 2K, 1)
        r = res.reshape(n_images, rows, 1)
        jc_w = (jc * wr).transpose(1, 2)  # (N, 6, 2K)
        jg_w = (jg * wr).reshape(-1, n_global).T  # (G, N*2K)
        u_blk = jc_w @ jc
        w_blk = jc_w @ jg
        v_blk = jg_w @ jg.reshape(-1, n_global)
        b_cam = (jc_w @ r)[..., 0]
        b_glob = jg_w @ r.reshape(-1)
        if estimate_focal:  # the log-normal prior on the focal length
            prior_weight = self._focal_prior_weight(c, loss_width)
            v_blk[-1, -1] += prior_weight
            b_glob[-1] += prior_weight * (state.log_focal[0] - self.log_focal_prior[0])
        eye6 = torch.eye(6, dtype=torch.float64)
        eye_g = torch.eye(n_global, dtype=torch.float64)

        def step(lam: float, reduced_hessian: bool = False):
            u_d = u_blk + lam * (torch.diagonal(u_blk, dim1=1, dim2=2)[..., None] * eye6) + 1e-12 * eye6
            # The shape's 7 gauge directions have no curvature: the small constant keeps the system solvable.
            v_d = v_blk + lam * torch.diag(torch.diagonal(v_blk)) + 1e-8 * eye_g
            u_inv = torch.linalg.inv(u_d)
            u_inv_w = u_inv @ w_blk  # (N, 6, G)
            # Sums over images as single matrix products (much faster than batched einsums on the CPU).
            schur = v_d - w_blk.reshape(-1, n_global).T @ u_inv_w.reshape(-1, n_global)
            if reduced_hessian:
                return schur
            rhs = b_glob - u_inv_w.reshape(-1, n_global).T @ b_cam.reshape(-1)
            d_glob = -torch.linalg.solve(schur, rhs)
            d_cam = -(u_inv @ (b_cam + w_blk @ d_glob)[..., None])[..., 0]
            return d_cam, d_glob

        return step

    def _apply(self, state: _State, d_cam: torch.Tensor, d_glob: torch.Tensor, estimate_focal: bool) -> _State:
        n_points = state.points.shape[0]
        delta = exp_map_SO3xR3(torch.cat([torch.zeros_like(d_cam[:, :3]), d_cam[:, :3]], dim=1))[:, :, :3]
        rot = delta @ state.rot
        trans = state.trans + d_cam[:, 3:]
        points = state.points + d_glob[: 3 * n_points].reshape(n_points, 3)
        log_focal = state.log_focal + (d_glob[-1] if estimate_focal else 0.0)
        # Fix the gauge: keypoint centroid at the origin, RMS radius 1 (projections are unchanged).
        centroid = points.mean(dim=0)
        points = points - centroid
        trans = trans + rot @ centroid
        radius = points.square().sum(dim=1).mean().sqrt()
        return _State(rot, trans / radius, points / radius, log_focal)


def _to_world(
    state: _State, inlier: np.ndarray, residual: np.ndarray, scale: float, threshold: float, focal_log_std: float
) -> CameraFit:
    """Turns the fit into nerfstudio's world: +Z is the cameras' mean up, cameras sit on average at -Y."""
    rot_t = state.rot.transpose(1, 2)  # camera-to-world rotation (OpenCV axes)
    centres = -(rot_t @ state.trans[..., None])[..., 0]
    sel = torch.from_numpy(inlier) if inlier.any() else torch.ones(len(inlier), dtype=torch.bool)
    up = -rot_t[sel, :, 1].mean(dim=0)
    up = up / up.norm()
    back = centres[sel].mean(dim=0)
    back = back - (back @ up) * up
    y_axis = -back / back.norm()
    x_axis = torch.cross(y_axis, up, dim=0)
    align = torch.stack([x_axis, y_axis, up])  # rows: the new axes in the fit's frame
    c2w = torch.zeros(len(inlier), 4, 4, dtype=torch.float64)
    c2w[:, :3, :3] = align @ rot_t @ torch.from_numpy(CV_TO_GL)
    c2w[:, :3, 3] = (centres @ align.T) * CANONICAL_RMS_RADIUS
    c2w[:, 3, 3] = 1.0
    return CameraFit(
        canonical_points=((state.points @ align.T) * CANONICAL_RMS_RADIUS).numpy(),
        camera_to_world=c2w.numpy(),
        focal_length=(state.log_focal.exp() * scale).numpy(),
        residual_px=residual,
        inlier=inlier,
        outlier_threshold_px=float(threshold),
        focal_log_std=float(focal_log_std),
    )
