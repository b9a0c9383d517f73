"""GeoTIFF chipping: the chip grid (edges included), both sets of bounds, nodata, windowed reads, and chips
decoded exactly as the same pixels would be from a file of their own."""
import numpy as np
import pytest
import rasterio
from rasterio.warp import transform as warp_transform

from pir_clip.data.geotiff import chip_offsets, chip_windows, read_chip, render_chip, scene_chips, scene_info
from pir_clip.data.images import decode_image
from search_helpers import ORIGIN_X, ORIGIN_Y, PIXEL, UTM_33N, write_scene


@pytest.mark.parametrize("length,chip,stride,expected", [
    (100, 32, 32, [0, 32, 64, 68]),  # not a multiple of the stride: one more chip flush with the edge
    (70, 32, 32, [0, 32, 38]),
    (64, 32, 32, [0, 32]),  # an exact multiple: no extra chip
    (100, 32, 16, [0, 16, 32, 48, 64, 68]),  # overlapping chips
    (100, 32, 48, [0, 48, 68]),  # gaps between chips, still ending at the edge
    (20, 32, 32, [0]),  # smaller than a chip: one chip of the scene's size
    (32, 32, 32, [0]),
])
def test_chip_offsets(length, chip, stride, expected):
    assert chip_offsets(length, chip, stride) == expected


def test_chip_offsets_rejects_nonpositive_sizes():
    with pytest.raises(ValueError, match="--chip-size 0"):
        chip_offsets(10, 0, 5)


def test_windows_and_both_bounds_of_a_utm_scene(tmp_path):
    path = write_scene(tmp_path / "scene.tif", width=100, height=70)
    info = scene_info(path)
    assert info.crs == UTM_33N and (info.width, info.height, info.count) == (100, 70, 3)
    chips = scene_chips(info, 32, 32)
    expected_windows = [(c, r, 32, 32) for r in (0, 32, 38) for c in (0, 32, 64, 68)]
    assert [chip.window for chip in chips] == expected_windows
    for chip in chips:
        col, row, w, h = chip.window
        left, top = ORIGIN_X + PIXEL * col, ORIGIN_Y - PIXEL * row
        assert chip.bounds == pytest.approx((left, top - PIXEL * h, left + PIXEL * w, top), abs=1e-6)
        # WGS84: the four corners transformed independently (a 320 m UTM square is a lat/lon quadrilateral).
        xs = [left, left + PIXEL * w, left + PIXEL * w, left]
        ys = [top, top, top - PIXEL * h, top - PIXEL * h]
        lons, lats = warp_transform(UTM_33N, "EPSG:4326", xs, ys)
        assert chip.footprint_wgs84 == pytest.approx([v for pair in zip(lons, lats) for v in pair], abs=1e-9)
        west, south, east, north = chip.bounds_wgs84
        assert (west, south, east, north) == pytest.approx((min(lons), min(lats), max(lons), max(lats)), abs=1e-7)
        assert west < east and south < north
    # Known values: easting 500 000 m is zone 33's central meridian (15 E); northing 4 650 000 m is ~42.0 N,
    # and 320 m of longitude at 42 N is 320 / (111 320 cos 42 deg) degrees.
    first = chips[0]
    assert first.bounds_wgs84[0] == pytest.approx(15.0, abs=1e-9)
    assert first.bounds_wgs84[3] == pytest.approx(42.002, abs=1e-3)
    assert first.bounds_wgs84[2] - 15.0 == pytest.approx(320 / (111_320 * np.cos(np.radians(42.0))), rel=3e-3)
    # The edge chip overlaps its neighbour by 28 columns: its west edge is 68 pixels (680 m) from the origin.
    assert chips[3].bounds[0] == ORIGIN_X + 680 and chips[3].bounds[2] == ORIGIN_X + 1000


def test_scene_without_crs_has_windows_but_no_bounds(tmp_path):
    path = write_scene(tmp_path / "plain.tif", width=40, height=20, crs=None, nodata=None)
    chips = scene_chips(scene_info(path), 32, 32)
    assert [c.window for c in chips] == [(0, 0, 32, 20), (8, 0, 32, 20)]
    assert all(c.bounds is None and c.bounds_wgs84 is None and c.footprint_wgs84 is None for c in chips)


def test_nodata_chips_are_empty_and_partial_ones_are_kept(tmp_path):
    # Rows 32.. and columns ..36 are nodata: chips (0, 32) and (0, 38) are all nodata, (32, 32) partly.
    path = write_scene(tmp_path / "holes.tif", nodata_block=(32, 70, 0, 36))
    windows = chip_windows(100, 70, 32, 32)
    with rasterio.open(path) as dataset:
        empty = [w for w in windows if read_chip(dataset, w) is None]
        partial = read_chip(dataset, (32, 32, 32, 32))
    assert empty == [(0, 32, 32, 32), (0, 38, 32, 32)]
    assert partial.shape == (32, 32, 3) and (partial[:, :4] == 0).all() and (partial[:, 4:] > 0).all()


def test_float_scene_of_nan_is_nodata(tmp_path):
    path = write_scene(tmp_path / "f.tif", width=40, height=32, dtype="float32", nodata=None)
    with rasterio.open(path, "r+") as dataset:
        pixels = dataset.read()
        pixels[:, :, :32] = np.nan
        dataset.write(pixels)
    with rasterio.open(path) as dataset:
        assert read_chip(dataset, (0, 0, 32, 32)) is None
        assert read_chip(dataset, (8, 0, 32, 32)) is not None


def test_chips_are_read_window_by_window(tmp_path, monkeypatch):
    path = write_scene(tmp_path / "scene.tif", width=100, height=70)
    calls = []
    original = rasterio.io.DatasetReader.read

    def recording_read(self, *args, **kwargs):
        calls.append(kwargs.get("window"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", recording_read)
    for chip in scene_chips(scene_info(path), 32, 32):
        render_chip(path, chip.window)
    assert len(calls) == 12
    assert all(w is not None and (w.width, w.height) == (32, 32) for w in calls)


@pytest.mark.parametrize("dtype,count,bands", [("uint16", 3, None), ("uint16", 4, (4, 3, 2)), ("uint8", 4, (2,)),
                                               ("float32", 3, None)])
def test_a_chip_decodes_like_the_same_pixels_in_a_file_of_their_own(tmp_path, dtype, count, bands):
    path = write_scene(tmp_path / "deep.tif", width=60, height=50, count=count, dtype=dtype, nodata=None)
    window = (28, 18, 32, 32)
    with rasterio.open(path) as dataset:
        pixels = dataset.read(window=rasterio.windows.Window(*window))
        profile = dict(dataset.profile, width=32, height=32,
                       transform=rasterio.windows.transform(rasterio.windows.Window(*window), dataset.transform))
    crop = tmp_path / "crop.tif"
    with rasterio.open(crop, "w", **profile) as out:
        out.write(pixels)
    chip = render_chip(path, window, bands)
    assert chip.shape == (32, 32, 3) and chip.dtype == np.uint8
    np.testing.assert_array_equal(chip, np.asarray(decode_image(str(crop), bands)))
