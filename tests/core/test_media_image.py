"""Images: EXIF orientation, RGB/RGBA, decoder failures; resize-to-cover with Lanczos up, area down, centre crop."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tuner_core.errors import DataError
from tuner_core.media.image import image_size, load_image
from tuner_core.media.resize import area_downscale, resize_to_cover


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)  # left half red
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # stored turned: display after a 90 degree clockwise turn
    path = tmp_path / "turned.jpg"
    image.save(path, exif=exif.tobytes(), quality=95)
    assert image_size(path) == (20, 40)
    upright = load_image(path)
    assert upright.shape == (40, 20, 3)
    # the red left half ends up on top after the clockwise turn
    assert upright[:15, :, 0].mean() > 200 and upright[25:, :, 0].mean() < 50


def test_rgb_unless_alpha_is_kept(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 3] = 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.png").shape == (8, 8, 3)
    kept = load_image(tmp_path / "a.png", keep_alpha=True)
    assert kept.shape == (8, 8, 4) and (kept[..., 3] == 128).all()
    Image.new("L", (8, 8), 50).save(tmp_path / "gray.png")
    assert load_image(tmp_path / "gray.png", keep_alpha=True).shape == (8, 8, 3)
    palette = Image.new("P", (8, 8), 1)
    palette.info["transparency"] = 1
    palette.save(tmp_path / "p.png", transparency=1)
    assert load_image(tmp_path / "p.png", keep_alpha=True).shape == (8, 8, 4)
    assert load_image(tmp_path / "p.png").flags.writeable


def test_image_the_decoder_rejects(tmp_path):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not a png at all")
    with pytest.raises(DataError, match="garbage.png"):
        image_size(garbage)
    with pytest.raises(DataError, match="garbage.png"):
        load_image(garbage)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        tmp_path / "whole.jpg"
    )
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    assert image_size(tmp_path / "cut.jpg") == (64, 64)  # the header is intact
    with pytest.raises(DataError, match=r"cut\.jpg.*decode"):
        load_image(tmp_path / "cut.jpg")


def slow_area(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area averaging written out cell by cell: each output is the coverage-weighted mean of the input."""
    in_h, in_w = pixels.shape[:2]
    sy, sx = in_h / height, in_w / width
    out = np.zeros((height, width, pixels.shape[2]))
    for j in range(height):
        for i in range(width):
            total = np.zeros(pixels.shape[2])
            for y in range(in_h):
                cover_y = max(0.0, min(y + 1, (j + 1) * sy) - max(y, j * sy))
                if cover_y == 0:
                    continue
                for x in range(in_w):
                    cover_x = max(0.0, min(x + 1, (i + 1) * sx) - max(x, i * sx))
                    total += cover_y * cover_x * pixels[y, x]
            out[j, i] = total / (sx * sy)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(("size", "out"), [((12, 9), (6, 3)), ((10, 7), (4, 5)), ((9, 9), (7, 2))])
def test_area_downscale_is_pixel_area_averaging(size, out):
    pixels = np.random.default_rng(1).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    got = area_downscale(pixels, out)
    assert got.shape == (out[1], out[0], 3) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - slow_area(pixels, *out)).max() <= 1


def test_area_downscale_by_integer_factor_is_block_mean():
    pixels = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    got = area_downscale(pixels, (3, 2))
    expected = pixels.reshape(2, 2, 3, 2, 3).astype(float).mean(axis=(1, 3))
    assert np.array_equal(got, np.rint(expected).astype(np.uint8))


def test_resize_to_cover_crops_the_centre():
    pixels = np.zeros((40, 80, 3), np.uint8)
    pixels[:, 30:50] = 255  # a white band in the middle third
    out = resize_to_cover(pixels, (20, 20))  # scale 0.5 -> 40x20, crop 10 px each side
    assert out.shape == (20, 20, 3)
    assert out[:, 5:15].min() == 255 and out[:, :5].max() == 0 and out[:, 15:].max() == 0


def test_resize_to_cover_odd_crop_and_identity():
    pixels = np.random.default_rng(2).integers(0, 256, (10, 15, 3), dtype=np.uint8)
    assert resize_to_cover(pixels, (15, 10)) is pixels
    out = resize_to_cover(pixels, (14, 10))  # no scaling needed beyond 1:1, one column cropped at the right
    assert np.array_equal(out, pixels[:, :14])


def test_upscaling_uses_lanczos():
    pixels = np.random.default_rng(3).integers(0, 256, (10, 16, 3), dtype=np.uint8)
    out = resize_to_cover(pixels, (32, 16))  # scale 2 -> 32x20, crop 2 rows top and bottom
    lanczos = np.asarray(Image.fromarray(pixels).resize((32, 20), Image.Resampling.LANCZOS))
    assert np.array_equal(out, lanczos[2:18])


def test_downscaling_uses_area_not_lanczos():
    pixels = np.random.default_rng(4).integers(0, 256, (20, 40, 3), dtype=np.uint8)
    out = resize_to_cover(pixels, (20, 10))
    assert np.array_equal(out, area_downscale(pixels, (20, 10)))


def test_rgba_controls_resize_with_alpha():
    pixels = np.full((20, 20, 4), 200, np.uint8)
    assert resize_to_cover(pixels, (10, 10)).shape == (10, 10, 4)
    assert resize_to_cover(pixels, (40, 40)).shape == (40, 40, 4)
