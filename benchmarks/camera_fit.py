"""Camera estimation benchmark: onelook's joint fit against a per-image PnP oracle, in one run.

10,000 synthetic views of a 5-keypoint face-like shape, landmark noise of 1% of the image width, 2% gross
outliers (all five landmarks of an image replaced by random points). The oracle knows the true canonical
shape and focal length and runs OpenCV's SQPnP per image; onelook's `fit_cameras` knows neither the shape nor
which images are outliers. Run: `.venv/bin/python benchmarks/camera_fit.py [--n 10000] [--threads 2]`.
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import torch

from onelook.cameras import fit_cameras
from onelook.cameras.geometry import look_at, orbit_positions, project, rotation_errors_deg

SHAPE = np.array([[-0.45, 0.0, 0.15], [0.45, 0.0, 0.15], [0.0, -0.35, -0.1], [-0.3, -0.1, -0.35], [0.3, -0.1, -0.35]])
SIZE = 128
FOCAL = 2.0 * SIZE


def make_views(n: int, noise: float, outliers: float, seed: int):
    rng = np.random.default_rng(seed)
    positions = orbit_positions(rng.uniform(-40, 40, n), rng.uniform(-20, 20, n), rng.uniform(3.5, 4.5, n))
    c2w = look_at(positions + rng.normal(0, 0.05, (n, 3)))
    uv, _ = project(SHAPE, c2w, FOCAL, (SIZE, SIZE))
    uv = uv + rng.normal(0, noise * SIZE, uv.shape)
    bad = rng.random(n) < outliers
    uv[bad] = rng.uniform(0, SIZE, (bad.sum(), len(SHAPE), 2))
    return uv, c2w, bad


def oracle(uv: np.ndarray) -> np.ndarray:
    """Per-image SQPnP with the true shape and intrinsics; returns OpenGL camera-to-world rotations."""
    intrinsics = np.array([[FOCAL, 0, SIZE / 2], [0, FOCAL, SIZE / 2], [0, 0, 1.0]])
    cv_to_gl = np.diag([1.0, -1.0, -1.0])
    rotations = np.empty((len(uv), 3, 3))
    for i, points in enumerate(uv):
        # OpenCV's pixel centres sit at integer coordinates: ours (corner origin) minus 0.5.
        _, rvec, _ = cv2.solvePnP(SHAPE, points - 0.5, intrinsics, None, flags=cv2.SOLVEPNP_SQPNP)
        rotations[i] = cv2.Rodrigues(rvec)[0].T @ cv_to_gl
    return rotations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--noise", type=float, default=0.01, help="landmark noise, fraction of the width")
    parser.add_argument("--outliers", type=float, default=0.02)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    uv, c2w, bad = make_views(args.n, args.noise, args.outliers, args.seed)
    fit_cameras(uv[:200], (SIZE, SIZE), focal_length=FOCAL)  # warm-up (first-call costs in torch)

    start = time.perf_counter()
    oracle_rot = oracle(uv)
    oracle_s = time.perf_counter() - start
    oracle_err = rotation_errors_deg(np.concatenate([oracle_rot, np.zeros((args.n, 3, 1))], axis=2), c2w, SHAPE, SHAPE)[
        ~bad
    ]

    rows = []
    for label, focal in (("onelook fit_cameras, focal given", FOCAL), ("onelook fit_cameras, focal estimated", None)):
        start = time.perf_counter()
        fit = fit_cameras(uv, (SIZE, SIZE), focal_length=focal)
        seconds = time.perf_counter() - start
        err = rotation_errors_deg(fit.camera_to_world[~bad], c2w[~bad], fit.canonical_points, SHAPE)
        recall = (~fit.inlier[bad]).mean()
        false_alarm = (~fit.inlier[~bad]).mean()
        rows.append((label, seconds, np.median(err), recall, false_alarm))

    print(f"{args.n} views, {args.noise:.0%} landmark noise, {bad.sum()} gross outliers, {args.threads} threads")
    print(f"{'method':40s} {'seconds':>8s} {'median rot err':>15s} {'vs oracle':>10s} {'outliers flagged':>17s}")
    print(f"{'oracle: SQPnP per image, true shape':40s} {oracle_s:8.2f} {np.median(oracle_err):14.2f}° {1.0:10.3f}")
    for label, seconds, median, recall, false_alarm in rows:
        print(
            f"{label:40s} {seconds:8.2f} {median:14.2f}° {median / np.median(oracle_err):10.3f}"
            f" {recall:9.1%} (false {false_alarm:.2%})"
        )


if __name__ == "__main__":
    main()
