"""The synthetic category: deterministic, and its ground truth is self-consistent."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from onelook.cameras.geometry import project
from onelook.data.synthetic import FOCAL_FACTOR, generate, identity, render


def test_deterministic_for_a_seed(tmp_path):
    a = generate(3, 32, seed=5, out=tmp_path / "a", progress=False)
    b = generate(3, 32, seed=5, out=tmp_path / "b", progress=False)
    c = generate(3, 32, seed=6, out=tmp_path / "c", progress=False)
    for name in ("00000.png", "00002.png"):
        assert (a / "images" / name).read_bytes() == (b / "images" / name).read_bytes()
        assert (a / "images" / name).read_bytes() != (c / "images" / name).read_bytes()
    assert (a / "synth.json").read_text() == (b / "synth.json").read_text()


def test_ground_truth_is_consistent(synth_dir):
    meta = json.loads((synth_dir / "synth.json").read_text())
    size = meta["image_size"][0]
    for frame in meta["frames"][:10]:
        stem = frame["file"][:-4]
        mask = np.array(Image.open(synth_dir / "masks" / frame["file"])) > 0
        depth = np.load(synth_dir / "depth" / f"{stem}.npy")
        assert ((depth > 0) == mask).all()
        assert 0.1 < mask.mean() < 0.9
        c2w = np.array(frame["camera_to_world"])
        uv, kp_depth = project(np.array(frame["keypoints_3d"]), c2w[None], meta["focal_length"], (size, size))
        np.testing.assert_allclose(uv[0], frame["keypoints_2d"])
        # The nose tip is the nearest surface point around its pixel, and the depth map agrees.
        x, y = uv[0, 2].astype(int)
        around = depth[y - 1 : y + 2, x - 1 : x + 2]
        around = around[around > 0]  # in profile the tip is on the silhouette
        assert mask[y, x]
        assert abs(around.min() - kp_depth[0, 2]) < 0.1 and around.min() > kp_depth[0, 2] - 1e-3


def test_any_camera_can_be_rendered_for_an_identity():
    head, c2w, _ = identity(seed=7, index=3)
    view = render(head, c2w, FOCAL_FACTOR * 48, 48)
    assert view.rgb.shape == (48, 48, 3) and view.mask.any()
    # The background of a view is exactly the identity's flat colour.
    np.testing.assert_allclose(view.rgb[0, 0], head.background)
