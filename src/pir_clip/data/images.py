"""The one image decoder: every file or byte string an RS user has -> an 8-bit RGB ``PIL.Image``.

Training, ``retrieval.py``, zero-shot classification, the retrieval figure, archive indexing and the search
page all decode through :func:`decode_image` (or :func:`to_rgb8` for pixel arrays already read, such as a
GeoTIFF window), so a model sees the same pixels whichever tool feeds it. The rule:

1. **Bands.** ``bands=None`` takes the first three bands; a one-band image is repeated to grey RGB, and a
   two-band image (grey + alpha) uses its first band. ``bands=(4, 3, 2)`` picks those bands, 1-based as GDAL
   and ``--bands`` count them (e.g. Sentinel-2 true colour from a 13-band stack); one index gives grey.
   An alpha band is a band like any other: ``RGBA`` keeps R, G, B.
2. **8-bit data is unchanged.** ``uint8`` pixels (RGB, grey, the chosen bands of a multi-band stack) pass
   through as they are. Palette images are expanded through their palette, CMYK and YCbCr converted to RGB
   by PIL, bilevel images become 0/255.
3. **Anything deeper is stretched per image.** 16-bit, 32-bit integer and floating-point data are mapped
   linearly so the 2nd percentile of the chosen bands (together, so colour balance is kept) becomes 0 and
   the 98th becomes 255, clipping outside; NaN and infinite pixels (and ``nodata`` where given) are left
   out of the percentiles and become 0. A constant image becomes 0.

Formats: anything PIL reads (JPEG, PNG, WebP, BMP, 8-bit TIFF, ...); TIFFs PIL cannot represent (multi-band,
16-bit or float RGB, GeoTIFF with unusual layouts) are read with rasterio (GDAL), imported only when needed.
Errors are :class:`ImageDecodeError` naming the file (or the caller's ``name`` for bytes).
"""
import io
import os
import warnings
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

ImageSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview]

STRETCH_PERCENTILES = (2.0, 98.0)
GDAL_NODATA_TAG = 42113
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
# PIL modes that hold more than 8 bits per sample: read as arrays and stretched.
_DEEP_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I;16S", "I;32", "I", "F")
# PIL modes PIL itself converts to RGB without loss of meaning (colour models and palettes).
_CONVERTED_MODES = ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1")


class ImageDecodeError(ValueError):
    """An image that cannot be decoded, or a band selection it does not have; the message names the file."""


def parse_bands(spec: Union[None, str, Sequence[int]]) -> Optional[Tuple[int, ...]]:
    """``"4,3,2"`` or ``[4, 3, 2]`` -> ``(4, 3, 2)``; 1-based band indices, one or three of them."""
    if spec is None or spec == "":
        return None
    if isinstance(spec, str):
        try:
            values = tuple(int(part) for part in spec.replace(" ", "").split(","))
        except ValueError:
            raise ImageDecodeError(f"--bands {spec!r}: give 1-based band numbers separated by commas, "
                                   "e.g. --bands 4,3,2") from None
    else:
        values = tuple(int(v) for v in spec)
    if len(values) not in (1, 3) or min(values) < 1:
        raise ImageDecodeError(f"--bands {spec!r}: give one band (grey) or three (red,green,blue), numbered "
                               "from 1, e.g. --bands 4,3,2")
    return values


def band_indices(count: int, bands: Optional[Sequence[int]], name: str = "image") -> List[int]:
    """0-based indices of the three output channels for an image of ``count`` bands (rule 1)."""
    if bands is None:
        return [0, 1, 2] if count >= 3 else [0, 0, 0]
    if max(bands) > count:
        raise ImageDecodeError(f"{name} has {count} band(s); --bands {','.join(map(str, bands))} asks for "
                               f"band {max(bands)}")
    return [b - 1 for b in bands] * (3 if len(bands) == 1 else 1)


def stretch_to_uint8(array: np.ndarray, percentiles: Tuple[float, float] = STRETCH_PERCENTILES,
                     nodata: Optional[float] = None) -> np.ndarray:
    """Any numeric (H, W, C) array -> uint8, linearly mapping the given percentiles of its valid pixels to
    0 and 255 (rule 3). Invalid pixels (NaN, inf, ``nodata``) become 0."""
    values = array.astype(np.float64, copy=False)
    valid = np.isfinite(values)
    if nodata is not None and not np.isnan(nodata):
        valid &= values != nodata
    if not valid.any():
        return np.zeros(array.shape, dtype=np.uint8)
    low, high = np.percentile(values[valid], percentiles)
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    scaled = np.clip((values - low) * 255.0 / (high - low), 0.0, 255.0)
    scaled[~valid] = 0.0
    return np.round(scaled).astype(np.uint8)


def to_rgb8(array: np.ndarray, bands: Optional[Sequence[int]] = None, nodata: Optional[float] = None,
            name: str = "image") -> np.ndarray:
    """Pixels (H, W) or (H, W, C) of any dtype -> (H, W, 3) uint8 by the module's rule.

    Used directly for arrays read elsewhere (a GeoTIFF window, bands-first arrays transposed by the caller).
    """
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] < 1:
        raise ImageDecodeError(f"{name}: expected pixels shaped (H, W) or (H, W, C), got {array.shape}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    picked = band_indices(array.shape[2], bands, name)
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array[:, :, picked])
    # Stretch each distinct band once, so a grey band repeated to RGB does not weigh three times.
    distinct = sorted(set(picked))
    stretched = stretch_to_uint8(array[:, :, distinct], nodata=nodata)
    return np.ascontiguousarray(stretched[:, :, [distinct.index(i) for i in picked]])


def _pil_pixels(image: Image.Image) -> np.ndarray:
    """An opened PIL image -> (H, W, C) array in its own bit depth (rule 2's conversions applied)."""
    mode = image.mode
    if mode in _CONVERTED_MODES:
        # Palette transparency and colour models: PIL's own conversions give the colours the file means.
        image = image.convert("RGBA" if mode in ("P", "PA") else "RGB")
    elif mode in _DEEP_MODES:
        return np.asarray(image)
    elif mode not in ("L", "LA", "RGB", "RGBA", "RGBX", "RGBa", "La"):
        image = image.convert("RGB")
    return np.asarray(image)


def _gdal_nodata(tag: object) -> Optional[float]:
    """GDAL writes a GeoTIFF's nodata value as an ASCII tag; PIL hands it over undecoded."""
    if tag is None:
        return None
    try:
        return float(str(tag).strip().strip("\x00"))
    except ValueError:
        return None


def _is_tiff(head: bytes) -> bool:
    return head[:4] in TIFF_MAGIC


def _read_with_rasterio(source: ImageSource, name: str) -> Tuple[np.ndarray, Optional[float]]:
    """A TIFF PIL cannot represent -> (H, W, C) array in its own dtype, and its nodata value."""
    try:
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
    except ImportError as exc:  # pragma: no cover - rasterio is a dependency
        raise ImageDecodeError(f"{name}: a multi-band or high-bit-depth TIFF needs rasterio "
                               "(pip install rasterio)") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            if isinstance(source, (bytes, bytearray, memoryview)):
                with rasterio.MemoryFile(bytes(source)) as memfile, memfile.open() as dataset:
                    pixels, nodata = dataset.read(), dataset.nodata
            else:
                with rasterio.open(os.fspath(source)) as dataset:
                    pixels, nodata = dataset.read(), dataset.nodata
    except (RasterioIOError, ValueError, OSError) as exc:
        raise ImageDecodeError(f"cannot decode image {name}: a damaged or unsupported TIFF ({exc})") from exc
    return np.moveaxis(pixels, 0, -1), nodata


def read_pixels(source: ImageSource, name: Optional[str] = None) -> Tuple[np.ndarray, Optional[float]]:
    """A file path or encoded bytes -> ((H, W, C) pixels in the file's own dtype, nodata or None)."""
    is_bytes = isinstance(source, (bytes, bytearray, memoryview))
    name = name or ("<image bytes>" if is_bytes else os.fspath(source))
    try:
        if is_bytes:
            head = bytes(source[:4])
        else:
            with open(source, "rb") as f:
                head = f.read(4)
    except OSError as exc:
        raise ImageDecodeError(f"cannot read image {name}: {exc.strerror or exc}") from exc
    pil_error = ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns on damaged metadata; damage that matters raises
            with Image.open(io.BytesIO(bytes(source)) if is_bytes else source) as image:
                image.load()
                pixels = _pil_pixels(image)
                tags = getattr(image, "tag_v2", {})
                samples = int(tags.get(277, 1))
                nodata = _gdal_nodata(tags.get(GDAL_NODATA_TAG))
        # PIL opens some TIFFs it cannot represent (extra samples) with fewer bands than the file holds;
        # GDAL reads every band.
        if not (_is_tiff(head) and samples > (pixels.shape[2] if pixels.ndim == 3 else 1)):
            return pixels, nodata
    except UnidentifiedImageError:
        pil_error = "not an image format PIL or GDAL reads"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        pil_error = f"{type(exc).__name__}: {exc}"
    if _is_tiff(head):
        return _read_with_rasterio(source, name)
    raise ImageDecodeError(f"cannot decode image {name}: {pil_error}")


def decode_image(source: ImageSource, bands: Optional[Sequence[int]] = None, name: Optional[str] = None
                 ) -> Image.Image:
    """A file path or encoded bytes -> 8-bit RGB ``PIL.Image`` by the module's rule.

    ``bands``: 1-based band numbers (one or three), default the first three. ``name`` names the source in
    errors (default: the path). Raises :class:`ImageDecodeError`.
    """
    label = name or ("<image bytes>" if isinstance(source, (bytes, bytearray, memoryview)) else os.fspath(source))
    pixels, nodata = read_pixels(source, label)
    return Image.fromarray(to_rgb8(pixels, bands, nodata=nodata, name=label), "RGB")
