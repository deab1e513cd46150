"""`onelook prepare` end to end: synthetic data with true cameras, real photos, bad files, resuming."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from skimage import data

from onelook.cameras.geometry import rotation_errors_deg
from onelook.cli import main
from onelook.data.dataparser import OnelookDataParserConfig
from onelook.data.prepare import prepare_dataset


def test_synthetic_dataset_has_true_cameras(synth_dir, synth_dataset):
    transforms = json.loads((synth_dataset / "transforms.json").read_text())
    truth = {f["file"]: f for f in json.loads((synth_dir / "synth.json").read_text())["frames"]}
    frames = transforms["frames"]
    assert len(frames) >= 34  # of 36: at most a couple flagged
    est = np.array([f["transform_matrix"] for f in frames])
    true = np.array([truth[f["source"]]["camera_to_world"] for f in frames])
    mean_shape = np.mean([truth[f["source"]]["keypoints_3d"] for f in frames], axis=0)
    err = rotation_errors_deg(est, true, np.array(transforms["canonical_keypoints"]), mean_shape)
    # Shapes vary per identity and crops move the principal point: a few degrees, not a few tenths.
    assert np.median(err) < 8.0
    for frame in frames:
        assert (synth_dataset / frame["file_path"]).is_file() and (synth_dataset / frame["mask_path"]).is_file()
        assert Image.open(synth_dataset / frame["file_path"]).size == (64, 64)


def test_dataparser_loads_images_masks_and_latent_indices(synth_dataset):
    parser = OnelookDataParserConfig(data=synth_dataset, eval_every=4).setup()
    train = parser.get_dataparser_outputs("train")
    val = parser.get_dataparser_outputs("val")
    n = len(train.image_filenames)
    assert len(train.mask_filenames) == n and train.metadata["num_latents"] == n
    assert train.cameras.metadata["latent_idx"][:, 0].tolist() == list(range(n))
    # Evaluation frames keep the latent index they have in training.
    assert val.cameras.metadata["latent_idx"][:, 0].tolist() == list(range(0, n, 4))
    assert val.image_filenames == train.image_filenames[::4]
    assert int(train.cameras.width[0]) == 64


def test_resume_skips_finished_images(synth_dir, tmp_path):
    args = dict(
        landmarks=synth_dir / "landmarks.json", masks=synth_dir / "masks", size=48, workers=1, show_progress=False
    )
    first = prepare_dataset(synth_dir / "images", tmp_path, **args)
    assert first.resumed == 0
    # An interruption: the last 5 images lost their records (and so count as not done).
    for record in sorted((tmp_path / "records").glob("*.json"))[-5:]:
        record.unlink()
    second = prepare_dataset(synth_dir / "images", tmp_path, **args)
    assert second.resumed == first.total - 5
    assert second.prepared == first.prepared
    # Other settings invalidate earlier crops.
    third = prepare_dataset(synth_dir / "images", tmp_path, **{**args, "size": 32})
    assert third.resumed == 0


@pytest.mark.slow
def test_a_killed_prepare_resumes_where_it_stopped(tmp_path):
    """`onelook prepare` killed (SIGKILL) part-way through 1,500 photos, then run again: the photos it had
    finished are reused, the rest are prepared, and the dataset has every photo."""
    import signal
    import subprocess
    import sys
    import time

    from onelook.data.synthetic import generate

    synth = generate(n=1500, size=32, seed=3, out=tmp_path / "synth", show_progress=False)
    out = tmp_path / "dataset"
    command = [sys.executable, "-m", "onelook.cli", "prepare", str(synth / "images"), "--out", str(out)]
    command += ["--landmarks", str(synth / "landmarks.json"), "--masks", str(synth / "masks"), "--size", "32"]
    process = subprocess.Popen(command + ["--workers", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    records = out / "records"
    deadline = time.monotonic() + 120
    while len(list(records.glob("*.json"))) < 20 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = len(list(records.glob("*.json")))
    assert 20 <= finished < 1500, f"killed after {finished} photos: not part-way"
    assert not (out / "transforms.json").exists()
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    reused = int(result.stdout.split(" reused from an earlier run")[0].rsplit("(", 1)[1])
    assert reused >= finished
    frames = json.loads((out / "transforms.json").read_text())["frames"]
    assert len(frames) >= 1490  # a few photos may be flagged as camera outliers


@pytest.mark.slow
def test_real_photos_and_bad_files_with_mediapipe(tmp_path, capsys, png_header_only):
    """Every kind of bad input in one folder: each is handled or reported, none stops the run."""
    photos = tmp_path / "photos"
    photos.mkdir()
    face = data.astronaut()
    Image.fromarray(face).save(photos / "astronaut.png")
    Image.fromarray(face[:, ::-1]).save(photos / "mirrored.jpg")
    Image.fromarray(face).convert("L").save(photos / "gray.png")
    Image.fromarray(face).convert("CMYK").save(photos / "cmyk.jpg")
    Image.fromarray(np.dstack([face, np.full(face.shape[:2], 255, np.uint8)])).save(photos / "rgba.png")
    Image.fromarray(face[..., 1].astype(np.uint16) * 257).save(photos / "deep16.png")
    rotated = Image.fromarray(np.rot90(face, 1).copy())  # stored sideways, EXIF says turn it back
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(photos / "phone.jpg", exif=exif)
    big = np.asarray(Image.fromarray(face).resize((4000, 4000)))
    Image.fromarray(big).save(photos / "big.jpg", quality=80)
    Image.fromarray(data.chelsea()).save(photos / "cat.jpg")
    Image.new("RGB", (8, 8)).save(photos / "tiny.png")
    (photos / "notes.txt").write_text("not an image")
    (photos / "broken.jpg").write_bytes((photos / "astronaut.png").read_bytes()[:5000])
    (photos / "empty.png").write_bytes(b"")
    (photos / "drawing.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"/>')
    (photos / "report.png").write_bytes(b"%PDF-1.7\n%%EOF")  # a PDF renamed .png
    png_header_only(photos / "claims-huge.png", 100_000, 100_000)
    frames = [Image.fromarray(np.roll(face, 2 * i, axis=1)).resize((256, 256)) for i in range(200)]
    frames[0].save(photos / "anim.gif", save_all=True, append_images=frames[1:], duration=20)
    Image.fromarray(face).save(photos / "portrait n°1 — été 東京.png")

    out = tmp_path / "dataset"
    assert main(["prepare", str(photos), "--out", str(out), "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    transforms = json.loads((out / "transforms.json").read_text())
    reasons = {e["source"]: e["reason"] for e in transforms["excluded"]}
    assert "no face" in reasons["cat.jpg"]
    assert "too small" in reasons["tiny.png"]
    assert "not an image" in reasons["notes.txt"]
    assert "corrupt" in reasons["broken.jpg"]
    assert "empty (0 bytes)" in reasons["empty.png"]
    assert "SVG" in reasons["drawing.svg"]
    assert "PDF" in reasons["report.png"]
    assert "too large" in reasons["claims-huge.png"]
    prepared = {f["source"] for f in transforms["frames"]}
    assert {
        "astronaut.png",
        "mirrored.jpg",
        "gray.png",
        "cmyk.jpg",
        "rgba.png",
        "deep16.png",
        "phone.jpg",
        "big.jpg",
        "anim.gif",
        "portrait n°1 — été 東京.png",
    } <= prepared
    assert "cat.jpg: no face found" in printed and "10 of 18 images in the dataset" in printed
    # The upright and the EXIF-rotated copy of one photo give the same crop (the rotation was applied).
    a = np.asarray(Image.open(out / "images" / "astronaut.png"), dtype=float)
    b = np.asarray(Image.open(out / "images" / "phone.png"), dtype=float)
    assert np.abs(a - b).mean() < 8
    # A re-run reuses everything and still reports the bad files.
    assert main(["prepare", str(photos), "--out", str(out), "--workers", "1"]) == 0
    assert "10 reused from an earlier run" in capsys.readouterr().out
    # The dataset loads.
    parser = OnelookDataParserConfig(data=out).setup()
    assert len(parser.get_dataparser_outputs("train").image_filenames) == 10


def test_landmarks_file_errors_are_per_image(synth_dir, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(synth_dir / "images", images)
    landmarks = json.loads((synth_dir / "landmarks.json").read_text())
    landmarks.pop("00001.png")
    landmarks["00002.png"] = [[1, 2], [3, 4]]
    landmarks["00003.png"] = [[float("nan"), float("nan")]] * 5
    landmarks["00004.png"] = landmarks["00005.png"] + [[10.0, 10.0]]  # six keypoints where the others have five
    landmarks["00006.png"] = [["left", "eye"]] * 5
    landmarks["no-such-image.png"] = landmarks["00007.png"]
    (tmp_path / "lm.json").write_text(json.dumps(landmarks))  # json writes NaN, and Python reads it back
    report = prepare_dataset(
        images, tmp_path / "out", landmarks=tmp_path / "lm.json", size=48, workers=1, show_progress=False
    )
    reasons = dict(report.errors)
    assert "no entry" in reasons["00001.png"]
    assert "at least 5 keypoints" in reasons["00002.png"]
    assert "fewer than 4 keypoints are present" in reasons["00003.png"]
    assert "has 6 keypoints where most images have 5" in reasons["00004.png"]
    assert "list of [x, y] pairs" in reasons["00006.png"]
    assert len(report.prepared) + len(report.outliers) == 31  # nothing else in the batch was lost
    assert report.unmatched_landmarks == ["no-such-image.png"] and "no-such-image.png" in str(report)


def test_cli_reports_missing_folder(tmp_path, capsys):
    assert main(["prepare", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "images folder not found" in capsys.readouterr().err


# The kernel's record of this process's most memory (VmHWM). Not getrusage's ru_maxrss: Linux carries that
# over exec from the forked parent, so a child of a big pytest process would report pytest's memory.
MEASURE_PEAK = """
import re, sys
from pathlib import Path
from onelook.cli import main
code = main(sys.argv[1:])
peak_kb = int(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text())[1])
print("PEAK_MB", peak_kb / 1024, "EXIT", code)
"""


@pytest.mark.slow
def test_huge_uploads_are_refused_or_reduced_in_little_memory(huge_images, tmp_path):
    """`onelook prepare` on a flat 40000x40000 PNG (refused from its header) and a 16-bit 12000x9000 face
    (reduced, then prepared), in one process (`--workers 1`): its peak memory, measured by the kernel, stays
    under 2 GB."""
    import subprocess
    import sys

    photos = tmp_path / "photos"
    photos.mkdir()
    for path in huge_images.values():
        shutil.copy(path, photos / path.name)
    face = data.astronaut()
    Image.fromarray(face).save(photos / "astronaut.png")
    Image.fromarray(face[:, ::-1]).save(photos / "mirrored.png")
    out = tmp_path / "dataset"
    result = subprocess.run(
        [sys.executable, "-c", MEASURE_PEAK, "prepare", str(photos), "--out", str(out), "--workers", "1"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert "EXIT 0" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]
    peak_mb = float(result.stdout.split("PEAK_MB")[1].split()[0])
    print(f"peak memory of onelook prepare: {peak_mb:.0f} MB")
    assert peak_mb < 2048
    transforms = json.loads((out / "transforms.json").read_text())
    reasons = {e["source"]: e["reason"] for e in transforms["excluded"]}
    assert "too large (1600 M pixels)" in reasons["flat.png"]
    frames = {f["source"]: f for f in transforms["frames"]}
    assert "deep16.png" in frames
    notes = json.loads((out / "records" / "deep16.json").read_text())["notes"]
    assert any("16-bit" in n for n in notes) and any("downscaled from 12000x9000" in n for n in notes)


def test_focal_lengths_from_exif_hold_the_cameras(tmp_path):
    """Photos whose EXIF gives their focal length (35 mm equivalent) are fitted at it: on the animal category,
    whose focal length the landmarks mislead (see the README's camera section), the cameras come out far
    better than with the focal length estimated, and as good as SQPnP's per image with the true mean keypoints
    and the true camera (which they can only match when each crop's principal point is the photo's centre, as
    it is written: left at the crop's centre, 1.5x the oracle's median). One photo without EXIF, and the fit
    estimates it again."""
    from onelook.cameras.pose import estimate_pose
    from onelook.data.synthetic import generate
    from onelook.lolnerf.evaluate import true_crop_focals

    synth = generate(60, 96, seed=4, out=tmp_path / "synth", category="animals", show_progress=False, exif_focal=True)
    meta = json.loads((synth / "synth.json").read_text())
    first = synth / "images" / meta["frames"][0]["file"]
    photos = tmp_path / "photos"
    shutil.copytree(synth / "images", photos)
    Image.open(first).save(photos / first.name)  # this one has lost its EXIF
    options = {"landmarks": synth / "landmarks.json", "masks": synth / "masks", "size": 64, "workers": 1}
    partial = prepare_dataset(photos, tmp_path / "partial", show_progress=False, **options)
    assert "only 59 of 60" in str(partial)

    shutil.copy(first, photos / first.name)
    report = prepare_dataset(photos, tmp_path / "exif", show_progress=False, **options)
    assert "EXIF" in str(report)

    truth = {f["file"]: np.array(f["camera_to_world"]) for f in meta["frames"]}
    true_points = np.mean([f["keypoints_3d"] for f in meta["frames"]], axis=0)
    medians = []
    for dataset in (tmp_path / "partial", tmp_path / "exif"):
        transforms = json.loads((dataset / "transforms.json").read_text())
        fitted = np.array([f["transform_matrix"] for f in transforms["frames"]])
        true = np.array([truth[f["source"]] for f in transforms["frames"]])
        points = np.array(transforms["canonical_keypoints"])
        medians.append(np.median(rotation_errors_deg(fitted, true, points, true_points)))
    frames = json.loads((tmp_path / "exif" / "transforms.json").read_text())["frames"]
    true_focals = true_crop_focals(meta, tmp_path / "exif", frames)  # what `onelook eval` compares against
    assert [f["fl_x"] for f in frames] == pytest.approx(true_focals, rel=0.03)
    assert np.ptp(true_focals) > 0.1 * np.median(true_focals)  # the crops differ in size
    for frame in frames:
        record = json.loads((tmp_path / "exif" / "records" / f"{frame['source'][:-4]}.json").read_text())
        x0, y0, side = record["crop_box"]
        assert (frame["cx"], frame["cy"]) == pytest.approx(((48 - x0) * 64 / side, (48 - y0) * 64 / side))
    oracle = np.median(
        rotation_errors_deg(
            np.array(
                [
                    estimate_pose(true_points, f["keypoints_2d"], meta["focal_length"], (96, 96))[0]
                    for f in meta["frames"]
                ]
            ),
            np.array([f["camera_to_world"] for f in meta["frames"]]),
            true_points,
            true_points,
        )
    )
    assert medians[1] < 0.85 * medians[0], medians  # measured: 6.1 against 8.7 degrees
    assert medians[1] < 1.15 * oracle, (medians, oracle)  # measured: 6.1 against 5.5 (8.3 before the principal point)
