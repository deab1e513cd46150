"""fit_cameras against synthetic keypoints with exact ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from onelook.cameras import fit_cameras
from onelook.cameras.fit import CANONICAL_RMS_RADIUS
from onelook.cameras.geometry import look_at, orbit_positions, project, rotation_errors_deg, similarity_align

# A face-like layout of the five keypoints (eye corners, nose tip, mouth corners), front facing -Y.
SHAPE = np.array([[-0.45, 0.0, 0.15], [0.45, 0.0, 0.15], [0.0, -0.35, -0.1], [-0.3, -0.1, -0.35], [0.3, -0.1, -0.35]])
SIZE = (120, 160)  # (H, W): not square, so that x/y mix-ups show
FOCAL = 2.0 * 160


def make_views(n: int, noise_frac: float = 0.0, outlier_frac: float = 0.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    positions = orbit_positions(rng.uniform(-40, 40, n), rng.uniform(-20, 25, n), rng.uniform(3.5, 4.5, n))
    c2w = look_at(positions + rng.normal(0, 0.05, (n, 3)))
    uv, _ = project(SHAPE, c2w, FOCAL, SIZE)
    uv = uv + rng.normal(0, noise_frac * SIZE[1], uv.shape)
    outlier = rng.random(n) < outlier_frac
    uv[outlier] = rng.uniform(0, SIZE[1], (outlier.sum(), 5, 2))
    return uv, c2w, outlier


def test_exact_keypoints_give_exact_cameras():
    uv, c2w, _ = make_views(60)
    fit = fit_cameras(uv, SIZE, focal_length=FOCAL)
    err = rotation_errors_deg(fit.camera_to_world, c2w, fit.canonical_points, SHAPE)
    assert err.max() < 0.05
    assert fit.residual_px.max() < 0.01
    assert fit.inlier.all()
    scale, rot, trans = similarity_align(fit.canonical_points, SHAPE)
    np.testing.assert_allclose(scale * fit.canonical_points @ rot.T + trans, SHAPE, atol=1e-4)


@pytest.mark.parametrize("focal", [60.0, 480.0])
def test_a_photo_pose_is_exact_on_exact_landmarks(focal):
    """`estimate_pose` (one photo against known keypoints) shares `project`'s pixel frame: exact landmarks give
    the exact camera, with the object off-centre in a non-square image (a half-pixel slip of the principal
    point moves the camera)."""
    from onelook.cameras.pose import estimate_pose

    target = np.array([0.08, -0.05, 0.04])
    c2w = look_at(orbit_positions(np.array([25.0]), np.array([12.0]), np.array([focal / 90.0])), target)
    uv, _ = project(SHAPE, c2w, focal, SIZE)
    pose, residual = estimate_pose(SHAPE, uv[0], focal, SIZE)
    assert residual < 1e-6
    np.testing.assert_allclose(pose, c2w[0], atol=1e-6)


def test_conventions_reproject_the_landmarks():
    """OpenGL camera-to-world, pixel origin at the top-left corner: projecting the result gives the input back."""
    uv, _, _ = make_views(40, noise_frac=0.005, seed=1)
    fit = fit_cameras(uv, SIZE, focal_length=FOCAL)
    reproj, depth = project(fit.canonical_points, fit.camera_to_world, fit.focal_length, SIZE)
    assert (depth > 0).all()
    np.testing.assert_allclose(np.linalg.norm(reproj - uv, axis=2).mean(axis=1), fit.residual_px, atol=1e-6)
    # The canonical frame: centroid at the origin, RMS radius fixed, cameras on average in front (-Y), +Z up.
    np.testing.assert_allclose(fit.canonical_points.mean(0), 0.0, atol=1e-9)
    assert np.sqrt((fit.canonical_points**2).sum(1).mean()) == pytest.approx(CANONICAL_RMS_RADIUS)
    assert fit.camera_to_world[:, 1, 3].mean() < 0
    assert fit.camera_to_world[:, 2, 1].mean() > 0.9  # camera +Y (up) is world +Z on average
    assert fit.canonical_points[2, 1] < fit.canonical_points[[0, 1, 3, 4], 1].mean()  # the nose points at them


@pytest.mark.parametrize("focal", [FOCAL, None])
def test_noise_and_outliers(focal):
    uv, c2w, outlier = make_views(1500, noise_frac=0.01, outlier_frac=0.03, seed=2)
    fit = fit_cameras(uv, SIZE, focal_length=focal)
    err = rotation_errors_deg(fit.camera_to_world[~outlier], c2w[~outlier], fit.canonical_points, SHAPE)
    # 1% of the width is 1.6 px of noise on 5 points: a few degrees per camera is the floor (see the benchmark).
    assert np.median(err) < 5.0
    assert (~fit.inlier[outlier]).mean() > 0.9  # gross misdetections are flagged...
    assert (~fit.inlier[~outlier]).mean() < 0.01  # ...and good images are not
    if focal is None:
        assert np.ptp(fit.focal_length) == 0  # one focal length shared by all images
        assert 0.5 * FOCAL < fit.focal_length[0] < 2.0 * FOCAL


def test_missing_keypoints_and_weights():
    uv, c2w, _ = make_views(80, noise_frac=0.002, seed=3)
    uv[::7, 3] = np.nan  # a mouth corner not found in some images
    weights = np.ones(uv.shape[:2])
    weights[2::7, 0] = 0.0  # an eye corner with zero confidence in others
    fit = fit_cameras(uv, SIZE, focal_length=FOCAL, weights=weights)
    err = rotation_errors_deg(fit.camera_to_world, c2w, fit.canonical_points, SHAPE)
    assert np.median(err) < 1.0
    assert np.isfinite(fit.residual_px).all()


@pytest.mark.parametrize(
    "landmarks, size, message",
    [
        (np.zeros((10, 4, 2)), SIZE, "at least 5 keypoints"),
        (np.zeros((2, 5, 2)), SIZE, "at least 3 images"),
        (np.zeros((10, 5, 3)), SIZE, r"shape \(N, K, 2\)"),
        (np.zeros((10, 5, 2)), (0, 10), "image_size"),
        (np.full((10, 5, 2), np.nan), SIZE, "at least 4 keypoints"),
    ],
)
def test_bad_input_is_rejected_clearly(landmarks, size, message):
    with pytest.raises(ValueError, match=message):
        fit_cameras(landmarks, size)


def test_bad_focal_length_is_rejected():
    uv, _, _ = make_views(10)
    with pytest.raises(ValueError, match="focal_length"):
        fit_cameras(uv, SIZE, focal_length=-3.0)


@pytest.mark.parametrize("layout", ["face", "animal", "irregular"])
def test_a_given_wide_lens_is_fitted(layout):
    """A focal length of half the image side (a phone's ultra-wide lens, as EXIF gives it): the fit used to start
    only from the scaled-orthographic factorisation at that focal length, collapse the shape and stop on an
    OpenCV assertion (SQPnP on degenerate keypoints) or end with residuals of hundreds of pixels."""
    from onelook.data.keypoint_categories import LAYOUTS, make_views

    views = make_views(LAYOUTS[layout], 60, variation=0.05, focal_factor=0.5, noise=0.01, seed=2)
    fit = fit_cameras(views.landmarks, views.image_size, focal_length=views.focal_length, shape_variation=False)
    errors = rotation_errors_deg(fit.camera_to_world, views.camera_to_world, fit.canonical_points, views.mean_keypoints)
    assert np.median(fit.residual_px) < 1.5  # landmark noise 0.64 px per coordinate
    assert np.median(errors) <= 1.5 * np.median(views.oracle_rotation_errors())


@pytest.mark.parametrize("layout", ["car", "irregular", "face", "animal"])
@pytest.mark.parametrize("focal_factor", [0.8, 1.33, 3.0])
def test_shapes_that_vary_per_identity_at_any_focal_length(layout, focal_factor):
    """Every identity's keypoints differ (5% of the object's size), the focal length is unknown: the 90th
    percentile of the rotation errors stays within 1.5x of an oracle that knows the mean shape and the focal
    length, and with a wide lens (where the focal length matters most; before it was the data's, the estimate
    was about 1.9x the truth) the median within 1.2x too; except on the animal layout with a wide lens, where
    the focal estimate is 1.3x too long (90th percentile 1.54x, median 1.3-1.4x the oracle: #12, see the
    README's camera section), which this guards from getting worse."""
    from onelook.data.keypoint_categories import LAYOUTS, make_views

    views = make_views(LAYOUTS[layout], 250, variation=0.05, focal_factor=focal_factor, noise=0.01, seed=11)
    fit = fit_cameras(views.landmarks, views.image_size)
    errors = rotation_errors_deg(fit.camera_to_world, views.camera_to_world, fit.canonical_points, views.mean_keypoints)
    reference = views.oracle_rotation_errors()
    known_miss = layout == "animal" and focal_factor == 0.8
    assert np.percentile(errors, 90) <= (1.6 if known_miss else 1.5) * np.percentile(reference, 90)
    if focal_factor == 0.8 and not known_miss:
        assert np.median(errors) <= 1.2 * np.median(reference)


@pytest.mark.parametrize("focal_factor", [0.8, 1.33, 3.0])
def test_the_focal_length_is_the_datas_not_the_priors(focal_factor):
    """Rigid keypoints, exact landmarks: the estimate is the true focal length, however far from the prior's
    centre, and the fit says it is determined."""
    from onelook.data.keypoint_categories import LAYOUTS, make_views

    views = make_views(LAYOUTS["animal"], 120, variation=0.0, focal_factor=focal_factor, seed=5)
    fit = fit_cameras(views.landmarks, views.image_size)
    assert fit.focal_length[0] == pytest.approx(views.focal_length, rel=0.02)
    assert fit.focal_determined and "focal length" in fit.summary()


def test_noisy_landmarks_do_not_turn_the_shape_inside_out():
    """A long lens and noisy landmarks (2.5% of the image, about MediaPipe's): the depth-reversed shape, with
    every camera mirrored, is a local minimum that a few iterations on a subset could not tell from the right
    one. Both are refined on every image and the lower cost wins (before: a median error of 119 degrees on
    this sample; now 1.7x the oracle's, as with the focal length given: 2.4 px of noise on 200 images leaves
    the shape itself uncertain)."""
    from onelook.data.keypoint_categories import LAYOUTS, make_views

    views = make_views(LAYOUTS["animal"], 200, 0.0, 3.0, 0.025, image_size=96, seed=8)
    fit = fit_cameras(views.landmarks, views.image_size)
    errors = rotation_errors_deg(fit.camera_to_world, views.camera_to_world, fit.canonical_points, views.mean_keypoints)
    assert np.median(errors) <= 2.0 * np.median(views.oracle_rotation_errors())


def test_an_undetermined_focal_length_is_reported():
    """Far away and seen almost head-on, five points carry no perspective: the fit says so."""
    from onelook.data.keypoint_categories import LAYOUTS, make_views

    views = make_views(
        LAYOUTS["face"], 60, variation=0.05, focal_factor=12.0, noise=0.01, yaw_range=(-5, 5), pitch_range=(-3, 3)
    )
    fit = fit_cameras(views.landmarks, views.image_size)
    assert not fit.focal_determined and "give --focal-length" in fit.summary()


def test_each_identitys_own_shape_is_integrated_out():
    """Face-like keypoints that differ by 9% of the object's size from identity to identity, viewed from an
    asymmetric range. Given the focal length, the fit that integrates out each identity's deformation matches
    the mean-shape oracle, where rigid least squares (checked, so that this test can fail) is 1.4-1.6x worse;
    with the focal length estimated (1.6x too long: #12) it still beats rigid least squares by far."""
    from onelook.data.keypoint_categories import LAYOUTS, make_views

    views = make_views(
        LAYOUTS["face"], 250, 0.09, focal_factor=1.2, noise=0.005, yaw_range=(-30, 40), pitch_range=(-20, 15), seed=21
    )
    reference = views.oracle_rotation_errors()

    def errors(**options) -> np.ndarray:
        fit = fit_cameras(views.landmarks, views.image_size, **options)
        return rotation_errors_deg(
            fit.camera_to_world, views.camera_to_world, fit.canonical_points, views.mean_keypoints
        )

    given, rigid_given = (
        errors(focal_length=views.focal_length),
        errors(focal_length=views.focal_length, shape_variation=False),
    )
    assert np.median(given) <= 1.15 * np.median(reference)
    assert np.percentile(given, 90) <= 1.05 * np.percentile(reference, 90)
    assert np.median(rigid_given) >= 1.3 * np.median(reference)
    assert np.median(errors()) <= 0.85 * np.median(errors(shape_variation=False))


def test_pose_flips_are_resolved_by_where_the_other_cameras_stand():
    """Car-like keypoints (near a plane) that differ by 10% between identities, seen with a long lens: a camera
    and its mirror image through the keypoints' plane (in front and below, or behind and above) fit them about
    equally well, and the worse fit often wins. Measured on this seed without resolving the flips: 15 cameras
    more than 90 degrees off, 90th percentile 39 degrees (1.8x the mean-shape oracle's 22, which has 14 such
    cameras); resolved by the prior on viewing directions: 2 cameras, 22 degrees."""
    from onelook.cameras.pose_flips import resolve_flips
    from onelook.data.keypoint_categories import LAYOUTS, make_views

    views = make_views(LAYOUTS["car"], 250, variation=0.1, focal_factor=3.0, seed=11)
    reference = views.oracle_rotation_errors()
    fit = fit_cameras(views.landmarks, views.image_size, focal_length=views.focal_length)
    errors = rotation_errors_deg(fit.camera_to_world, views.camera_to_world, fit.canonical_points, views.mean_keypoints)
    assert (errors > 90).sum() <= (reference > 90).sum()
    assert np.percentile(errors, 90) <= 1.3 * np.percentile(reference, 90)
    # The resolved fit is a fixed point: resolving again changes (almost) nothing.
    _, changed = resolve_flips(
        fit.canonical_points, fit.camera_to_world, fit.focal_length, views.landmarks, views.image_size
    )
    assert changed.sum() <= 2


def test_exact_cameras_all_around_are_left_alone():
    """Exact landmarks of a near-planar rigid layout seen from every side (no typical view to lean on) and a
    few images missing a keypoint: resolving flips changes nothing, since every true pose fits exactly."""
    from onelook.cameras.pose_flips import resolve_flips
    from onelook.data.keypoint_categories import LAYOUTS

    rng = np.random.default_rng(4)
    points = LAYOUTS["car"].points
    c2w = look_at(orbit_positions(rng.uniform(-180, 180, 80), rng.uniform(-30, 60, 80), rng.uniform(5, 7, 80)))
    uv, _ = project(points, c2w, FOCAL, SIZE)
    uv[:5, 4] = np.nan
    resolved, changed = resolve_flips(points, c2w, np.full(80, FOCAL), uv, SIZE)
    assert not changed.any()
    np.testing.assert_array_equal(resolved, c2w)
