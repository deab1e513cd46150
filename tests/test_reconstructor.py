"""Using a trained LOLNeRF run: safe loading, fitting a held-out photo, rendering, meshes, the CLI."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from onelook.cli import main
from onelook.data.synthetic import FOCAL_FACTOR, identity, render
from onelook.lolnerf import Reconstructor
from onelook.runs import find_run, load_checkpoint, load_run_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reconstructor(trained_run):
    return Reconstructor.from_run(trained_run, device="cpu")


@pytest.fixture(scope="module")
def held_out(synth_dir):
    """An identity the model never saw (index past the training set), with its true keypoints and mask."""
    meta = json.loads((synth_dir / "synth.json").read_text())
    head, c2w, _ = identity(meta["seed"], len(meta["frames"]) + 5)
    size = 96  # a photo at another resolution than the 64 px training crops
    view = render(head, c2w, FOCAL_FACTOR * size, size)
    from onelook.cameras.geometry import project

    keypoints = project(head.keypoints(), c2w[None], FOCAL_FACTOR * size, (size, size))[0][0]
    return (view.rgb * 255).round().astype(np.uint8), keypoints, view.mask


def test_run_loads_safely_after_a_restart(trained_run, reconstructor):
    config_path, checkpoint = find_run(trained_run)
    assert load_run_config(config_path).method_name == "lolnerf-small"
    assert "pipeline" in load_checkpoint(checkpoint)
    # A fresh load gives the same model.
    again = Reconstructor.from_run(trained_run.parent, device="cpu")  # one folder above works too
    for a, b in zip(reconstructor.model.state_dict().values(), again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert reconstructor.canonical_keypoints.shape == (5, 3)


def test_checkpoint_with_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("owned",))

    torch.save({"pipeline": Payload()}, tmp_path / "evil.ckpt")
    with pytest.raises(Exception, match="Weights only load failed"):
        load_checkpoint(tmp_path / "evil.ckpt")


def test_fit_improves_over_the_mean_latent(reconstructor, held_out):
    photo, keypoints, mask = held_out
    result = reconstructor.fit(photo, landmarks=keypoints, mask=mask, steps=60, show_progress=False)
    assert result.image_size == (96, 96)
    mean = reconstructor.reconstruction(reconstructor.model.latents.mean())
    target = photo / 255.0

    def psnr(latent):
        rgb = reconstructor.render(latent, result.camera_to_world, result.focal_length, 96)["rgb"]
        return -10 * np.log10(np.mean((rgb - target) ** 2))

    assert psnr(result.latent) > psnr(mean.latent) + 0.5
    assert result.fit_losses[-1] < result.fit_losses[0]


def test_render_any_camera(reconstructor, held_out):
    photo, keypoints, mask = held_out
    result = reconstructor.fit(photo, landmarks=keypoints, mask=mask, steps=5, show_progress=False)
    c2w, focal = result.camera_at(30.0, 10.0)
    out = result.render(c2w, focal, (40, 56))
    assert out["rgb"].shape == (40, 56, 3) and out["depth"].shape == (40, 56) and out["alpha"].shape == (40, 56)
    assert 0.0 <= out["rgb"].min() and out["rgb"].max() <= 1.0
    # Depth along the optical axis: about the camera's distance to the object's centre, where it is opaque.
    distance = np.linalg.norm(c2w[:3, 3])
    solid = out["alpha"] > 0.5
    assert solid.any()
    assert abs(np.median(out["depth"][solid]) - distance) < 0.5 * distance


def test_mesh_export_in_three_formats(reconstructor, tmp_path):
    from onelook.export.mesh import save_mesh

    mesh = reconstructor.reconstruction(reconstructor.model.latents.mean()).mesh(resolution=48)
    assert len(mesh.faces) > 100
    paths = save_mesh(mesh, tmp_path)
    for ext in ("glb", "obj", "ply"):
        loaded = trimesh.load(paths[ext], force="mesh")
        assert len(loaded.faces) == len(mesh.faces)
    # Watertight-ish: few boundary edges relative to the mesh.
    edges = trimesh.grouping.group_rows(mesh.edges_sorted, require_count=1)
    assert len(edges) < 0.05 * len(mesh.edges_unique)
    # The GLB is turned +Y up: the model's +Z extent becomes its +Y extent.
    glb = trimesh.load(paths["glb"], force="mesh")
    np.testing.assert_allclose(glb.bounds[:, 1], mesh.bounds[:, 2], atol=1e-5)


def test_cli_fit_writes_everything(trained_run, held_out, tmp_path):
    photo, keypoints, _ = held_out
    Image.fromarray(photo).save(tmp_path / "photo.png")
    (tmp_path / "lm.json").write_text(json.dumps({"photo.png": keypoints.tolist()}))
    out = tmp_path / "out"
    argv = ["fit", str(trained_run), str(tmp_path / "photo.png"), "--out", str(out), "--landmarks"]
    assert main([*argv, str(tmp_path / "lm.json"), "--steps", "5", "--frames", "4", "--mesh-resolution", "40"]) == 0
    for name in ("view.png", "depth.png", "normals.png", "turntable.mp4", "mesh.glb", "mesh.obj", "mesh.ply"):
        assert (out / name).stat().st_size > 0, name
    assert len(list((out / "views").glob("*.png"))) == 4
    import imageio.v3 as iio

    assert iio.imread(out / "turntable.mp4", plugin="pyav").shape == (4, 96, 96, 3)


def test_onelook_export_of_a_lolnerf_run_is_the_categorys_mean_object(trained_run, tmp_path):
    from onelook.runs import load_result

    mean = load_result(trained_run, "cpu")
    torch.testing.assert_close(mean.latent, Reconstructor.from_run(trained_run, device="cpu").model.latents.mean())
    assert main(["export", str(trained_run), "--out", str(tmp_path), "--frames", "2", "--mesh-resolution", "32"]) == 0
    assert (tmp_path / "view.png").is_file() and (tmp_path / "mesh.glb").stat().st_size > 0


def test_cli_sample_and_interpolate(trained_run, held_out, tmp_path):
    assert main(["sample", str(trained_run), "--out", str(tmp_path / "s"), "--n", "3"]) == 0
    assert Image.open(tmp_path / "s" / "samples.png").size == (3 * 64, 64)
    photo, keypoints, _ = held_out
    Image.fromarray(photo).save(tmp_path / "a.png")
    Image.fromarray(photo[:, ::-1]).save(tmp_path / "b.png")
    mirrored = keypoints.copy()
    mirrored[:, 0] = 96 - mirrored[:, 0]
    mirrored = mirrored[[1, 0, 2, 4, 3]]  # left and right swap in a mirror
    (tmp_path / "lm.json").write_text(json.dumps({"a.png": keypoints.tolist(), "b.png": mirrored.tolist()}))
    argv = ["interpolate", str(trained_run), str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    assert main([*argv, "--out", str(tmp_path / "i"), "--landmarks", str(tmp_path / "lm.json"), "--steps", "3"]) == 0
    assert (tmp_path / "i" / "interpolation.mp4").stat().st_size > 0


def test_fit_rejects_wrong_keypoint_count(reconstructor, held_out):
    photo, keypoints, _ = held_out
    with pytest.raises(ValueError, match="5 keypoints"):
        reconstructor.fit(photo, landmarks=keypoints[:4], steps=1, show_progress=False)


def test_eval_measures_against_the_truth(trained_run, synth_dir, synth_dataset, tmp_path):
    from onelook.lolnerf.evaluate import evaluate, write_report

    report = evaluate(
        trained_run, synth_dir, synth_dataset, held_out=1, train_images=3, fit_steps=3, mesh_resolution=32
    )
    json_path, md_path = write_report(report, tmp_path)
    data = json.loads(json_path.read_text())
    assert set(data["novel"]) == {"(-30, +0)", "(+30, +0)", "(+0, -15)", "(+0, +15)"}
    for row in data["novel"].values():
        # Copying the input is a real baseline: far from perfect inside the foreground at another view.
        assert 8.0 < row["psnr_copy"] < 25.0
        assert np.isfinite(row["psnr"]) and -1.0 <= row["ssim"] <= 1.0
    assert 0.0 < data["depth_error"] < 1.0 and 0.0 < data["chamfer"] <= 1.0
    assert 5.0 < data["train_psnr"] < 60.0
    # The cameras against the truth: the training fit on exact keypoints of the project's own category is good
    # to a few degrees (a mismatch of frames and true cameras would give tens); the fitted photo is placed
    # (within an object's size: the estimated focal length, 0.8x the truth here, sets the camera's distance).
    median, p90 = data["train_rotation_error_deg"]
    assert median < 5.0 and p90 < 15.0
    assert 0.7 < data["train_focal_ratio"] < 1.4
    assert data["fit_rotation_error_deg"][0] < 15.0 and 0.0 <= data["fit_position_error"] < 1.0
    assert "| (+30, +0) |" in md_path.read_text() and "Training cameras" in md_path.read_text()


def test_a_photo_is_placed_at_its_own_focal_length(reconstructor, held_out, tmp_path):
    """A photo file whose EXIF gives its focal length is fitted at it (the camera's distance follows); an array,
    or a file without EXIF, at the training crops' focal length."""
    photo, keypoints, mask = held_out  # 96 px, rendered at 2x its side: 192 px
    exif = Image.Exif()
    exif[0x8769] = {0xA405: 40}  # 35 mm equivalent, a wide lens: 40 * hypot(96, 96) / hypot(36, 24) = 126 px
    Image.fromarray(photo).save(tmp_path / "photo.jpg", exif=exif, quality=95)
    from_exif = reconstructor.fit(tmp_path / "photo.jpg", landmarks=keypoints, mask=mask, steps=1, show_progress=False)
    assert from_exif.focal_length == pytest.approx(40 * np.hypot(96, 96) / np.hypot(36, 24))
    from_array = reconstructor.fit(photo, landmarks=keypoints, mask=mask, steps=1, show_progress=False)
    assert from_array.focal_length == pytest.approx(reconstructor.locate(keypoints, (96, 96)).focal_length)
    # The training crops' (estimated from their keypoints, 0.8x the true 2x the side): not the EXIF one.
    assert from_array.focal_length > 1.1 * from_exif.focal_length
    given = reconstructor.fit(photo, landmarks=keypoints, mask=mask, steps=1, show_progress=False, focal_length=250.0)
    # The same keypoints at a longer focal length: the camera sits about proportionally farther away.
    ratio = np.linalg.norm(given.camera_to_world[:3, 3]) / np.linalg.norm(from_exif.camera_to_world[:3, 3])
    assert ratio == pytest.approx(250.0 / from_exif.focal_length, rel=0.15)
    with pytest.raises(ValueError, match="focal_length"):
        reconstructor.locate(keypoints, (96, 96), focal_length=float("nan"))


def test_a_known_placement_replaces_the_keypoints(reconstructor, held_out):
    """A photo fitted with the placement its keypoints give is fitted exactly as from the keypoints; a given
    placement's camera is the result's (in the model frame), with no keypoints at all."""
    photo, keypoints, mask = held_out
    placement = reconstructor.locate(keypoints, (96, 96))
    from_keypoints = reconstructor.fit(photo, landmarks=keypoints, mask=mask, steps=3, show_progress=False)
    from_placement = reconstructor.fit(photo, mask=mask, steps=3, show_progress=False, placement=placement)
    assert torch.equal(from_keypoints.latent, from_placement.latent)
    moved = np.array(placement.camera_to_world)
    moved[:3, 3] *= 1.1
    elsewhere = replace(placement, camera_to_world=moved)
    result = reconstructor.fit(photo, mask=mask, steps=3, show_progress=False, placement=elsewhere)
    assert np.allclose(result.camera_to_world, reconstructor.to_model_frame(moved))
    assert not torch.equal(result.latent, from_keypoints.latent)


def test_more_views_of_the_object_fit_one_latent(reconstructor, synth_dir):
    """Other photos of the same object at known placements (a rig) join the fit: the latent explains a second
    view better than the latent fitted on the first photo alone."""
    from onelook.cameras.geometry import project, turn_about_origin
    from onelook.lolnerf.reconstructor import PlacedPhoto
    from onelook.metrics import masked_psnr

    meta = json.loads((synth_dir / "synth.json").read_text())
    head, c2w, _ = identity(meta["seed"], len(meta["frames"]) + 2)
    size, focal = 80, FOCAL_FACTOR * 80
    photos = []
    for camera in (c2w, turn_about_origin(c2w, 35.0, 10.0)):
        view = render(head, camera, focal, size)
        keypoints = project(head.keypoints(), camera[None], focal, (size, size))[0][0]
        rgb = (view.rgb * 255).round().astype(np.uint8)
        photos.append(PlacedPhoto(rgb, reconstructor.locate(keypoints, (size, size), focal), view.mask))
    first, second = photos
    options = {"mask": first.mask, "placement": first.placement, "steps": 40, "show_progress": False}
    alone = reconstructor.fit(first.rgb, **options)
    together = reconstructor.fit(first.rgb, more_views=[second], **options)
    assert np.allclose(together.camera_to_world, alone.camera_to_world)  # the result keeps the first camera

    def second_view_psnr(latent: torch.Tensor) -> float:
        c2w_model = reconstructor.to_model_frame(second.placement.camera_to_world)
        rgb = reconstructor.render(latent, c2w_model, focal, size)["rgb"]
        return masked_psnr(rgb, second.rgb / 255.0, second.mask)

    assert second_view_psnr(together.latent) > second_view_psnr(alone.latent) + 0.3
