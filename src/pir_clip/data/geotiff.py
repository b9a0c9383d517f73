"""GeoTIFF scenes as chips: a scene is tiled into windows that are read one by one with rasterio.

A scene (a GeoTIFF, or any raster GDAL reads) is never loaded whole: :func:`scene_chips` computes the chip
grid from the scene's size alone, and :func:`read_chip` reads one window of the bands it needs. Every chip
carries where it came from:

- ``window``: the pixel window ``(col, row, width, height)`` in the scene;
- ``bounds``: the window's bounds ``(left, bottom, right, top)`` in the scene's CRS (``crs``, as a string
  such as ``EPSG:32633``), from the scene's affine transform;
- ``bounds_wgs84``: ``(west, south, east, north)`` in degrees (EPSG:4326, longitude first), from
  ``rasterio.warp.transform_bounds`` with densified edges, so a chip whose edges curve in geographic
  coordinates is still enclosed; ``west > east`` when the chip crosses the antimeridian;
- ``footprint_wgs84``: the chip's four corners (top-left, top-right, bottom-right, bottom-left) as
  ``(lon, lat)``, the polygon a GIS draws (a projected square is not a lat/lon rectangle).

A scene without a CRS (a plain TIFF) has pixel windows but no bounds (all three are ``None``).

**The grid.** Chips are ``chip_size`` square and start every ``stride`` pixels from the top-left corner.
When the scene is not a multiple of the stride, one more chip is placed flush with the right (bottom) edge,
overlapping its neighbour, so every pixel is covered and every chip has the full size the model was
trained on (a padded partial chip would show the model black borders it never saw). A scene smaller than
``chip_size`` along an axis gives one chip of the scene's size along it.

**Nodata.** A chip whose pixels are all masked in the chosen bands (GDAL's masks: the nodata value, an alpha
band or an internal mask; for float data also NaN) is reported as empty by :func:`read_chip` and skipped by
the indexer, which counts it. Partly masked chips are kept; their masked pixels are left out of the
decoder's contrast stretch (:func:`pir_clip.data.images.to_rgb8`, which turns the window into RGB exactly as
any other image).
"""
import os
import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .images import ImageDecodeError, band_indices, to_rgb8

WGS84 = "EPSG:4326"
Bounds = Tuple[float, float, float, float]
Window = Tuple[int, int, int, int]  # col, row, width, height


class SceneError(ImageDecodeError):
    """A scene that cannot be opened or read; the message names the file."""


@dataclass(frozen=True)
class SceneInfo:
    """What the chip grid needs to know about a scene, read from its header only."""
    path: str
    width: int
    height: int
    count: int
    dtype: str
    crs: Optional[str]
    transform: Tuple[float, ...]  # affine a, b, c, d, e, f
    nodata: Optional[float]


@dataclass(frozen=True)
class Chip:
    """One window of a scene (see the module docstring for the coordinate conventions)."""
    window: Window
    bounds: Optional[Bounds]
    bounds_wgs84: Optional[Bounds]
    footprint_wgs84: Optional[Tuple[float, ...]]  # lon0, lat0, ..., lon3, lat3: TL, TR, BR, BL


def _rasterio():
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning
    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
    return rasterio


def open_scene(path: str):
    """An open rasterio dataset; :class:`SceneError` naming the file when GDAL cannot read it."""
    rasterio = _rasterio()
    from rasterio.errors import RasterioIOError
    try:
        return rasterio.open(os.fspath(path))
    except (RasterioIOError, OSError, ValueError) as exc:
        raise SceneError(f"cannot open scene {path}: {exc}") from exc


def scene_info(path: str) -> SceneInfo:
    """Reads a scene's header (size, bands, CRS, transform, nodata); no pixels."""
    with open_scene(path) as dataset:
        crs = dataset.crs.to_string() if dataset.crs else None
        return SceneInfo(path=os.fspath(path), width=dataset.width, height=dataset.height, count=dataset.count,
                         dtype=dataset.dtypes[0], crs=crs, transform=tuple(dataset.transform)[:6],
                         nodata=dataset.nodata)


def chip_offsets(length: int, chip_size: int, stride: int) -> List[int]:
    """Start offsets along one axis: every ``stride`` pixels, plus one flush with the far edge when the
    last regular chip stops short of it (see the module docstring)."""
    if chip_size < 1 or stride < 1:
        raise ValueError(f"--chip-size {chip_size} and --stride {stride} must be positive")
    if length <= chip_size:
        return [0]
    offsets = list(range(0, length - chip_size + 1, stride))
    if offsets[-1] + chip_size < length:
        offsets.append(length - chip_size)
    return offsets


def chip_windows(width: int, height: int, chip_size: int, stride: int) -> List[Window]:
    """Row-major ``(col, row, width, height)`` windows covering a ``width`` x ``height`` scene."""
    w, h = min(chip_size, width), min(chip_size, height)
    return [(col, row, w, h) for row in chip_offsets(height, chip_size, stride)
            for col in chip_offsets(width, chip_size, stride)]


def pixel_to_crs(transform: Sequence[float], cols, rows):
    """Affine ``(a, b, c, d, e, f)``: pixel corners (cols, rows) -> CRS coordinates (xs, ys)."""
    a, b, c, d, e, f = transform[:6]
    cols, rows = np.asarray(cols, dtype=np.float64), np.asarray(rows, dtype=np.float64)
    return a * cols + b * rows + c, d * cols + e * rows + f


def window_bounds(window: Window, transform: Sequence[float]) -> Bounds:
    """CRS bounds ``(left, bottom, right, top)`` of a pixel window under an affine transform."""
    col, row, w, h = window
    xs, ys = pixel_to_crs(transform, [col, col + w, col + w, col], [row, row, row + h, row + h])
    return (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))


def scene_chips(info: SceneInfo, chip_size: int, stride: int) -> List[Chip]:
    """The chips of a scene with their windows and bounds (module docstring); no pixels are read."""
    windows = chip_windows(info.width, info.height, chip_size, stride)
    if info.crs is None:
        return [Chip(window, None, None, None) for window in windows]
    from rasterio.warp import transform, transform_bounds
    # The four corners of every chip, transformed to WGS84 in one call.
    cols = np.array([[c, c + w, c + w, c] for c, _, w, _ in windows], dtype=np.float64).ravel()
    rows = np.array([[r, r, r + h, r + h] for _, r, _, h in windows], dtype=np.float64).ravel()
    xs, ys = pixel_to_crs(info.transform, cols, rows)
    lons, lats = transform(info.crs, WGS84, list(xs), list(ys))
    corners = np.stack([lons, lats], axis=1).reshape(len(windows), 8)
    chips = []
    for window, footprint in zip(windows, corners):
        bounds = window_bounds(window, info.transform)
        bounds_wgs84 = tuple(float(v) for v in transform_bounds(info.crs, WGS84, *bounds, densify_pts=21))
        chips.append(Chip(window, bounds, bounds_wgs84, tuple(float(v) for v in footprint)))
    return chips


def read_chip(dataset, window: Window, bands: Optional[Sequence[int]] = None) -> Optional[np.ndarray]:
    """One window of an open scene -> (H, W, 3) uint8 through the shared decoder's rule, or ``None`` when
    every pixel of the chosen bands is masked (nodata). Only the chosen bands of the window are read."""
    from rasterio.windows import Window as RioWindow
    picked = band_indices(dataset.count, bands, dataset.name)
    needed = sorted(set(picked))
    indexes = [i + 1 for i in needed]
    rio_window = RioWindow(*window)
    try:
        masks = dataset.read_masks(indexes, window=rio_window)
        if not masks.any():
            return None
        pixels = np.moveaxis(dataset.read(indexes, window=rio_window), 0, -1)
    except Exception as exc:  # GDAL raises RasterioIOError (and CPLE_* errors) on damaged blocks
        cause = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
        raise SceneError(f"cannot read window {tuple(window)} of scene {dataset.name}: {exc}{cause}") from exc
    if pixels.dtype.kind == "f" and not np.isfinite(pixels).any():
        return None
    # The bands were read in ``needed`` order; select them again 1-based within what was read.
    local_bands = tuple(needed.index(i) + 1 for i in picked)
    nodata = dataset.nodata
    if pixels.dtype != np.uint8 and not masks.all():
        # Masked pixels that are not the nodata value (alpha, internal masks) are left out too.
        pixels = pixels.astype(np.float64)
        pixels[np.moveaxis(masks, 0, -1) == 0] = np.nan
    return to_rgb8(pixels, local_bands, nodata=nodata, name=f"{dataset.name} window {tuple(window)}")


def render_chip(path: str, window: Window, bands: Optional[Sequence[int]] = None) -> np.ndarray:
    """Reads and decodes one chip of the scene at ``path`` -> (H, W, 3) uint8; a nodata chip is black."""
    with open_scene(path) as dataset:
        pixels = read_chip(dataset, window, bands)
    if pixels is None:
        return np.zeros((window[3], window[2], 3), dtype=np.uint8)
    return pixels
