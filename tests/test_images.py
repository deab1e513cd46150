"""load_image turns every kind of image file into 8-bit RGB, or fails with a specific ImageError."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage import data

from onelook.data.images import MAX_SIDE, ImageError, load_image


@pytest.fixture
def astronaut() -> np.ndarray:
    return data.astronaut()


def test_rgb_roundtrip(tmp_path, astronaut):
    Image.fromarray(astronaut).save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    np.testing.assert_array_equal(loaded.rgb, astronaut)
    assert loaded.alpha is None and loaded.notes == [] and loaded.original_size == (512, 512)


def test_grayscale(tmp_path, astronaut):
    Image.fromarray(astronaut).convert("L").save(tmp_path / "g.png")
    loaded = load_image(tmp_path / "g.png")
    assert loaded.rgb.shape == (512, 512, 3)
    assert (loaded.rgb[..., 0] == loaded.rgb[..., 2]).all()
    assert "mode L" in loaded.notes[0]


def test_16_bit(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 64, dtype=np.uint16), (48, 1))
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    loaded = load_image(tmp_path / "deep.png")
    assert loaded.rgb.dtype == np.uint8 and loaded.rgb.shape == (48, 64, 3)
    assert loaded.rgb[0, 0, 0] == 0 and loaded.rgb[0, -1, 0] == 255  # the full range maps onto 8 bits
    assert "16-bit" in loaded.notes[0]


def test_rgba_keeps_alpha(tmp_path, astronaut):
    alpha = np.zeros(astronaut.shape[:2], np.uint8)
    alpha[100:300, 150:350] = 255
    Image.fromarray(np.dstack([astronaut, alpha])).save(tmp_path / "cut.png")
    loaded = load_image(tmp_path / "cut.png")
    assert loaded.rgb.shape == (512, 512, 3)
    assert loaded.alpha[200, 200] == 1.0 and loaded.alpha[10, 10] == 0.0


def test_cmyk(tmp_path, astronaut):
    Image.fromarray(astronaut).convert("CMYK").save(tmp_path / "print.jpg")
    loaded = load_image(tmp_path / "print.jpg")
    assert loaded.rgb.shape == (512, 512, 3)
    assert np.abs(loaded.rgb.astype(int) - astronaut).mean() < 20
    assert "CMYK" in loaded.notes[0]


def test_exif_rotation(tmp_path, astronaut):
    img = Image.fromarray(astronaut[:, :400])  # 512 high, 400 wide
    exif = img.getexif()
    exif[0x0112] = 6  # stored sideways: viewers turn it 90 degrees clockwise
    img.save(tmp_path / "phone.jpg", exif=exif)
    loaded = load_image(tmp_path / "phone.jpg")
    assert loaded.rgb.shape == (400, 512, 3)
    assert loaded.original_size == (512, 400)
    assert "EXIF" in loaded.notes[0]


def test_huge_image_is_downscaled(tmp_path):
    Image.new("RGB", (12000, 9000), (200, 120, 40)).save(tmp_path / "huge.jpg", quality=50)
    loaded = load_image(tmp_path / "huge.jpg")
    assert max(loaded.rgb.shape[:2]) == MAX_SIDE
    assert loaded.original_size == (12000, 9000)
    assert "downscaled from 12000x9000" in loaded.notes[-1]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"just some text, not an image", "not an image"),
        (b"", "not an image"),
    ],
)
def test_not_an_image(tmp_path, content, message):
    path = tmp_path / "fake.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=message):
        load_image(path)


def test_truncated_file(tmp_path, astronaut):
    Image.fromarray(astronaut).save(tmp_path / "full.png")
    data_bytes = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data_bytes[: len(data_bytes) // 3])
    with pytest.raises(ImageError, match="corrupt"):
        load_image(tmp_path / "cut.png")


def test_tiny_image(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "tiny.png")
    with pytest.raises(ImageError, match=r"too small \(8x8\)"):
        load_image(tmp_path / "tiny.png")


HEADER_SIZES = {"claims-huge.png": (100_000, 100_000), "just-over.png": (12_000, 10_001)}


@pytest.mark.parametrize(
    "name, make, message",
    [
        ("empty.png", lambda p: p.write_bytes(b""), r"empty \(0 bytes\)"),
        (
            "drawing.svg",
            lambda p: p.write_text('<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="64"/>'),
            "SVG",
        ),
        ("document.png", lambda p: p.write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n%%EOF"), "PDF"),
        ("claims-huge.png", None, "too large"),
        ("just-over.png", None, r"too large \(12000x10001"),
        ("folder.png", lambda p: p.mkdir(), "a folder"),
    ],
)
def test_more_bad_inputs_get_specific_errors(tmp_path, png_header_only, name, make, message):
    path = tmp_path / name
    if make is None:
        png_header_only(path, *HEADER_SIZES[name])
    else:
        make(path)
    with pytest.raises(ImageError, match=message):
        load_image(path)


def test_animated_gif_uses_its_first_frame(tmp_path, astronaut):
    frames = [Image.fromarray(np.roll(astronaut, 3 * i, axis=1)).resize((64, 64)) for i in range(200)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=20)
    loaded = load_image(tmp_path / "anim.gif")
    assert loaded.rgb.shape == (64, 64, 3)
    assert "first frame" in loaded.notes[0]


def test_path_with_spaces_and_non_ascii(tmp_path, astronaut):
    folder = tmp_path / "mes photos d'été"
    folder.mkdir()
    Image.fromarray(astronaut).save(folder / "portrait n°1 — 東京.png")
    assert load_image(folder / "portrait n°1 — 東京.png").rgb.shape == (512, 512, 3)


def test_large_images_are_reduced_to_the_size_asked_for(tmp_path, astronaut):
    Image.fromarray(astronaut).resize((3000, 2000)).save(tmp_path / "big.png")
    loaded = load_image(tmp_path / "big.png", max_side=700)
    assert loaded.rgb.shape == (467, 700, 3) and loaded.original_size == (3000, 2000)
    small = np.asarray(Image.fromarray(astronaut).resize((700, 467), Image.Resampling.LANCZOS), dtype=float)
    assert np.abs(loaded.rgb - small).mean() < 6  # a faithful downscale, not nearest-neighbour


def test_exif_rotation_of_a_reduced_image(tmp_path, astronaut):
    img = Image.fromarray(astronaut[:, :400]).resize((1600, 2048))  # 2048 high, 1600 wide
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(tmp_path / "phone.jpg", exif=exif)
    loaded = load_image(tmp_path / "phone.jpg", max_side=512)
    assert loaded.rgb.shape == (400, 512, 3) and loaded.original_size == (2048, 1600)


def test_focal_length_from_exif(tmp_path, astronaut):
    """EXIF's 35 mm equivalent focal length becomes pixels through the image's diagonal, whatever its size or
    orientation; a crop (the aspect ratio EXIF recorded is not the image's) or no tag gives None."""
    photo = Image.fromarray(astronaut[:384])  # 512 wide, 384 high
    exif = Image.Exif()
    exif[0x8769] = {0xA405: 28, 0xA002: 4032, 0xA003: 3024}  # a phone's main camera, 4:3
    photo.save(tmp_path / "a.jpg", exif=exif)
    loaded = load_image(tmp_path / "a.jpg")
    assert loaded.focal_length == pytest.approx(28 * 640 / np.hypot(36, 24))  # diagonal of 512x384: 640
    exif[0x0112] = 6  # stored sideways: turned upright, the same field of view
    photo.save(tmp_path / "b.jpg", exif=exif)
    assert load_image(tmp_path / "b.jpg").focal_length == pytest.approx(loaded.focal_length)
    assert load_image(tmp_path / "a.jpg", max_side=256).focal_length == pytest.approx(loaded.focal_length / 2, rel=0.01)

    photo.crop((0, 0, 384, 384)).save(tmp_path / "cropped.jpg", exif=exif)
    cropped = load_image(tmp_path / "cropped.jpg")
    assert cropped.focal_length is None and any("cropped" in note for note in cropped.notes)
    photo.save(tmp_path / "plain.jpg")
    assert load_image(tmp_path / "plain.jpg").focal_length is None
