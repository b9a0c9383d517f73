"""The shared image decoder: every kind of file RS users have, one documented rule, checked value by value."""
import io
import warnings

import numpy as np
import pytest
from PIL import Image

from pir_clip.data.images import (
    ImageDecodeError, decode_image, parse_bands, read_pixels, stretch_to_uint8, to_rgb8,
)

rasterio = pytest.importorskip("rasterio")


def write_tiff(path, bands_first: np.ndarray, nodata=None):
    count, height, width = bands_first.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path, "w", driver="GTiff", height=height, width=width, count=count,
                           dtype=bands_first.dtype, nodata=nodata) as dst:
            dst.write(bands_first)
    return path


def naive_stretch(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The rule written out: 2nd/98th percentile of the valid pixels -> 0/255, clipped, invalid -> 0."""
    low, high = np.percentile(values[valid].astype(np.float64), [2, 98])
    out = np.zeros(values.shape, dtype=np.uint8)
    for index in np.ndindex(values.shape):
        if valid[index]:
            v = (float(values[index]) - low) * 255.0 / (high - low)
            out[index] = int(np.round(min(max(v, 0.0), 255.0)))
    return out


RNG = np.random.default_rng(0)
RGB8 = RNG.integers(0, 256, (12, 10, 3), dtype=np.uint8)


def test_8bit_rgb_is_unchanged(tmp_path):
    for ext in ("png", "tif", "bmp"):
        path = tmp_path / f"a.{ext}"
        Image.fromarray(RGB8).save(path)
        assert np.array_equal(np.asarray(decode_image(path)), RGB8), ext
    # bytes decode to the same pixels as the file
    assert np.array_equal(np.asarray(decode_image((tmp_path / "a.png").read_bytes())), RGB8)


def test_grayscale_palette_rgba_cmyk(tmp_path):
    grey = RGB8[:, :, 0]
    Image.fromarray(grey, "L").save(tmp_path / "g.png")
    assert np.array_equal(np.asarray(decode_image(tmp_path / "g.png")), np.stack([grey] * 3, axis=-1))

    rgba = np.concatenate([RGB8, np.full((12, 10, 1), 7, np.uint8)], axis=-1)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert np.array_equal(np.asarray(decode_image(tmp_path / "a.png")), RGB8)  # alpha dropped, RGB unchanged

    palette = Image.fromarray(RGB8).quantize(16)
    palette.save(tmp_path / "p.png")
    assert np.array_equal(np.asarray(decode_image(tmp_path / "p.png")), np.asarray(palette.convert("RGB")))

    cmyk = Image.fromarray(RGB8).convert("CMYK")
    cmyk.save(tmp_path / "c.tif")
    assert np.array_equal(np.asarray(decode_image(tmp_path / "c.tif")), np.asarray(cmyk.convert("RGB")))


@pytest.mark.parametrize("dtype", ["uint16", "int16", "int32", "float32", "float64"])
@pytest.mark.parametrize("bands", [1, 3])
def test_deep_data_is_stretched_by_the_percentile_rule(tmp_path, dtype, bands):
    values = (RNG.random((bands, 9, 11)) * 3000 - (500 if dtype.startswith("int") or "float" in dtype else 0))
    values = values.astype(dtype)
    path = write_tiff(tmp_path / "deep.tif", values)
    expected = naive_stretch(np.moveaxis(values, 0, -1), np.ones((9, 11, bands), bool))
    if bands == 1:
        expected = np.repeat(expected, 3, axis=-1)
    got = np.asarray(decode_image(path))
    assert got.dtype == np.uint8 and got.shape == (9, 11, 3)
    assert np.array_equal(got, expected)


def test_multiband_first_three_and_band_selection(tmp_path):
    stack = (RNG.random((13, 8, 8)) * 4000).astype(np.uint16)
    path = write_tiff(tmp_path / "s2.tif", stack)
    pixels, _ = read_pixels(path)
    assert pixels.shape == (8, 8, 13) and np.array_equal(np.moveaxis(pixels, -1, 0), stack)
    first = np.asarray(decode_image(path))
    assert np.array_equal(first, naive_stretch(np.moveaxis(stack[:3], 0, -1), np.ones((8, 8, 3), bool)))
    true_colour = np.asarray(decode_image(path, bands=(4, 3, 2)))
    assert np.array_equal(true_colour, naive_stretch(np.moveaxis(stack[[3, 2, 1]], 0, -1),
                                                     np.ones((8, 8, 3), bool)))
    # 8-bit multi-band: chosen bands pass unchanged
    stack8 = RNG.integers(0, 256, (5, 6, 6), dtype=np.uint8)
    path8 = write_tiff(tmp_path / "m8.tif", stack8)
    assert np.array_equal(np.asarray(decode_image(path8)), np.moveaxis(stack8[:3], 0, -1))
    assert np.array_equal(np.asarray(decode_image(path8.read_bytes(), bands=(5, 4, 1))),
                          np.moveaxis(stack8[[4, 3, 0]], 0, -1))
    grey = np.asarray(decode_image(path8, bands=(2,)))
    assert np.array_equal(grey, np.repeat(stack8[1][:, :, None], 3, axis=-1))


def test_nan_and_nodata_are_left_out(tmp_path):
    values = (RNG.random((1, 10, 10)) * 100).astype(np.float32)
    values[0, 0, :4] = np.nan
    values[0, 1, :3] = -9999
    path = write_tiff(tmp_path / "nd.tif", values, nodata=-9999)
    valid = np.isfinite(values[0]) & (values[0] != -9999)
    expected = naive_stretch(values[0], valid)
    got = np.asarray(decode_image(path))[:, :, 0]
    assert np.array_equal(got, expected)
    assert (got[~valid] == 0).all()


def test_constant_and_empty_images():
    assert (stretch_to_uint8(np.full((4, 4, 3), 500, np.uint16)) == 0).all()
    assert (stretch_to_uint8(np.full((4, 4, 1), np.nan, np.float32)) == 0).all()
    assert to_rgb8(np.ones((3, 3), bool)).max() == 255


def test_bad_input_names_the_file_or_flag(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not an image at all")
    with pytest.raises(ImageDecodeError, match="broken.jpg"):
        decode_image(tmp_path / "broken.jpg")
    with pytest.raises(ImageDecodeError, match="missing.png"):
        decode_image(tmp_path / "missing.png")
    with pytest.raises(ImageDecodeError, match="shard.tar#k1"):
        decode_image(b"II*\x00 truncated tiff", name="shard.tar#k1")
    Image.fromarray(RGB8).save(tmp_path / "rgb.png")
    with pytest.raises(ImageDecodeError, match="band 4"):
        decode_image(tmp_path / "rgb.png", bands=(4, 3, 2))
    # A truncated JPEG is an error, not a silently grey image
    buffer = io.BytesIO()
    Image.fromarray(RGB8).save(buffer, "JPEG")
    with pytest.raises(ImageDecodeError):
        decode_image(buffer.getvalue()[:100], name="cut.jpg")


@pytest.mark.parametrize("spec,expected", [(None, None), ("4,3,2", (4, 3, 2)), ("2", (2,)), ([8, 4, 3], (8, 4, 3))])
def test_parse_bands(spec, expected):
    assert parse_bands(spec) == expected


@pytest.mark.parametrize("spec", ["4,3", "0,1,2", "a,b,c", "1,2,3,4"])
def test_parse_bands_refuses(spec):
    with pytest.raises(ImageDecodeError, match="--bands"):
        parse_bands(spec)
