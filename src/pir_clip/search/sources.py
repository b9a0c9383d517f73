"""What ``pir-clip index`` reads: image folders, webdataset shards and GeoTIFF scenes, as files and items.

A **file** is the unit of change: an image, a ``.tar`` shard, or a scene, fingerprinted by (absolute path,
size, mtime). An **item** is the unit of search: one image, one image-bearing sample of a shard, or one chip
of a scene, numbered within its file (``item_index``) in a fixed order, so the same file always yields the
same items.

- ``PATH`` arguments: a folder (searched recursively for images in :data:`IMAGE_SUFFIXES` and ``.tar``
  shards; hidden entries and the index's own folder are left out), an image file, a ``.tar`` shard, or a
  brace spec of shards (``shards/train-{000000..000009}.tar``).
- ``--scenes``: GeoTIFF files (or folders of ``.tif``/``.tiff``), each tiled into chips
  (:mod:`pir_clip.data.geotiff`). A file given both ways is a scene.

Shard samples follow webdataset's naming (key = member path up to the first dot of its base name) with
RS5M keys (``img_content``, ``caption``, ``img_name``) or open_clip keys (``jpg``/``png``/... + ``txt``).
The image member's byte offset is kept, so one sample is read back without scanning the shard (plain,
uncompressed tar, as webdataset writes). Every pixel is decoded by :mod:`pir_clip.data.images`.
"""
import os
import tarfile
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import braceexpand
from PIL import Image as PILImage
from webdataset.tariterators import base_plus_ext

from ..data.geotiff import Bounds, Window, open_scene, read_chip, scene_chips, scene_info
from ..data.images import decode_image

IMAGE, SHARD_SAMPLE, CHIP = "image", "shard", "chip"
# The raster formats users keep imagery in, restricted below to those this PIL build can open.
_COMMON_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".webp", ".bmp", ".dib", ".gif", ".tif",
                    ".tiff", ".jp2", ".j2k", ".jpx", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".avif", ".qoi")
SCENE_SUFFIXES = (".tif", ".tiff")
SHARD_SUFFIX = ".tar"
# Image fields of a shard sample, in order of preference (RS5M's first), and the text fields.
SHARD_IMAGE_FIELDS = ("img_content", "jpg", "jpeg", "png", "webp", "tif", "tiff")
SHARD_CAPTION_FIELDS = ("caption", "txt")
SHARD_NAME_FIELD = "img_name"


def _image_suffixes() -> Tuple[str, ...]:
    PILImage.init()
    readable = {ext for ext, fmt in PILImage.registered_extensions().items() if fmt in PILImage.OPEN}
    return tuple(s for s in _COMMON_SUFFIXES if s in readable)


IMAGE_SUFFIXES = _image_suffixes()


class InputError(ValueError):
    """An input path that does not exist or is not something ``pir-clip index`` reads."""


@dataclass(frozen=True)
class InputFile:
    """A file to index: ``kind`` is ``image``, ``shard`` or ``scene``; ``path`` is absolute."""
    path: str
    kind: str
    size: int
    mtime_ns: int

    @property
    def fingerprint(self) -> Tuple[str, int, int]:
        return self.path, self.size, self.mtime_ns


@dataclass
class Item:
    """One searchable image: a file, a shard sample or a scene chip (module docstring)."""
    path: str
    kind: str  # IMAGE, SHARD_SAMPLE or CHIP
    size: int
    mtime_ns: int
    item_index: int
    item_count: int
    key: Optional[str] = None  # shard sample key
    name: Optional[str] = None  # image file name (shards: img_name or key + extension; chips: scene name)
    member_offset: Optional[int] = None  # shard: byte offset and size of the image member
    member_size: Optional[int] = None
    caption: Optional[str] = None  # shard: the sample's caption, if any
    window: Optional[Window] = None  # chip: (col, row, width, height)
    crs: Optional[str] = None
    bounds: Optional[Bounds] = None
    bounds_wgs84: Optional[Bounds] = None
    footprint_wgs84: Optional[Tuple[float, ...]] = None

    @property
    def source(self) -> str:
        """The image file, the scene file of a chip, or ``SHARD.tar#KEY``."""
        return f"{self.path}#{self.key}" if self.kind == SHARD_SAMPLE else self.path


@dataclass
class FileListing:
    files: List[InputFile] = field(default_factory=list)
    ignored: int = 0  # files in folders that are neither images nor shards


def _stat(path: str, kind: str) -> InputFile:
    st = os.stat(path)
    return InputFile(os.path.abspath(path), kind, st.st_size, st.st_mtime_ns)


def _expand(spec: str, flag: str) -> List[str]:
    expanded = list(braceexpand.braceexpand(spec)) if "{" in spec else [spec]
    missing = [p for p in expanded if not os.path.exists(p)]
    if missing:
        what = f"{len(missing)} of the {len(expanded)} paths of {spec!r}" if len(expanded) > 1 else repr(spec)
        raise InputError(f"{flag}: {what} do{'es' if len(expanded) == 1 else ''} not exist (e.g. {missing[0]}); "
                         "check the path")
    return expanded


def _walk(folder: str, exclude: Sequence[str]) -> Iterable[str]:
    seen = set()  # real paths of folders visited: symbolic links are followed, but never round in a loop
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and os.path.abspath(os.path.join(root, d)) not in exclude)
        for name in sorted(names):
            if not name.startswith("."):
                yield os.path.join(root, name)


def _kind_of(path: str) -> Optional[str]:
    lower = path.lower()
    if lower.endswith(SHARD_SUFFIX):
        return "shard"
    if lower.endswith(IMAGE_SUFFIXES):
        return "image"
    return None


def collect_files(paths: Sequence[str], scenes: Sequence[str] = (), exclude: Sequence[str] = ()) -> FileListing:
    """The files named by ``PATH`` arguments and ``--scenes``, sorted by path, each once (module docstring).

    ``exclude``: folders never searched (the index's own). Raises :class:`InputError` for a path that does not
    exist or a file of a kind that cannot be indexed.
    """
    exclude = [os.path.abspath(e) for e in exclude]
    found: Dict[str, InputFile] = {}
    listing = FileListing()
    for spec in paths:
        for path in _expand(spec, "PATH"):
            if os.path.isdir(path):
                for file in _walk(path, exclude):
                    kind = _kind_of(file)
                    if kind is None:
                        listing.ignored += 1
                    else:
                        found.setdefault(os.path.abspath(file), _stat(file, kind))
                continue
            kind = _kind_of(path)
            if kind is None:
                lower = path.lower()
                hint = (" Compressed shards are not supported: decompress them to .tar."
                        if lower.endswith((".tar.gz", ".tgz", ".tar.zst", ".tar.bz2", ".tar.xz")) else "")
                raise InputError(f"PATH {path} is neither a folder, an image ({', '.join(IMAGE_SUFFIXES[:8])}, ...) "
                                 f"nor a .tar shard.{hint}")
            found[os.path.abspath(path)] = _stat(path, kind)
    for spec in scenes:
        for path in _expand(spec, "--scenes"):
            files = [f for f in _walk(path, exclude) if f.lower().endswith(SCENE_SUFFIXES)] \
                if os.path.isdir(path) else [path]
            for file in files:
                found[os.path.abspath(file)] = _stat(file, "scene")  # a scene wins over an image of the same path
    listing.files = [found[p] for p in sorted(found)]
    return listing


# ---------------------------------------------------------------------------------------------- items


class ShardError(ValueError):
    """A shard that cannot be read (or is compressed); the message names the file."""


def _text(data: bytes) -> Optional[str]:
    try:
        return data.decode("utf-8").strip() or None
    except UnicodeDecodeError:
        return None


def shard_items(file: InputFile) -> Tuple[List[Item], Optional[str]]:
    """The image-bearing samples of a plain ``.tar`` shard, and an error message if it is damaged (the
    samples before the damage are kept). Samples without an image field are left out."""
    samples: List[Dict[str, object]] = []
    error = None
    try:
        with tarfile.open(file.path, mode="r:") as tar:
            sample: Optional[Dict[str, object]] = None
            for member in tar:
                if not member.isreg():
                    continue
                key, suffix = base_plus_ext(member.name)
                if key is None:
                    continue
                suffix = suffix.lower()
                if sample is None or key != sample["__key__"] or suffix in sample:
                    sample = {"__key__": key}
                    samples.append(sample)
                if suffix in SHARD_IMAGE_FIELDS:
                    sample[suffix] = (member.offset_data, member.size)
                elif suffix in SHARD_CAPTION_FIELDS + (SHARD_NAME_FIELD,):
                    sample[suffix] = _text(tar.extractfile(member).read())
    except (tarfile.TarError, OSError, EOFError) as exc:
        error = f"cannot read shard {file.path}: {exc}"
        if not samples:
            raise ShardError(error + " (is it a plain, uncompressed tar?)") from exc
    items = []
    for sample in samples:
        field_name = next((f for f in SHARD_IMAGE_FIELDS if f in sample), None)
        if field_name is None:
            continue
        offset, size = sample[field_name]
        key = str(sample["__key__"])
        name = sample.get(SHARD_NAME_FIELD) or (None if field_name == "img_content"
                                                else f"{key.rpartition('/')[2]}.{field_name}")
        caption = next((sample[f] for f in SHARD_CAPTION_FIELDS if sample.get(f)), None)
        items.append(Item(file.path, SHARD_SAMPLE, file.size, file.mtime_ns, len(items), 0, key=key, name=name,
                          member_offset=offset, member_size=size, caption=caption))
    for item in items:
        item.item_count = len(items)
    return items, error


def enumerate_items(file: InputFile, chip_size: int, stride: int) -> Tuple[List[Item], Optional[str]]:
    """The items of one file, in their fixed order, and a warning for a partly readable shard.

    Raises :class:`~pir_clip.data.geotiff.SceneError` or :class:`ShardError` for a file that cannot be read
    at all. Images are not decoded here (that is the embedding step's work).
    """
    if file.kind == "image":
        return [Item(file.path, IMAGE, file.size, file.mtime_ns, 0, 1, name=os.path.basename(file.path))], None
    if file.kind == "shard":
        return shard_items(file)
    info = scene_info(file.path)
    chips = scene_chips(info, chip_size, stride)
    name = os.path.basename(file.path)
    return [Item(file.path, CHIP, file.size, file.mtime_ns, i, len(chips), name=name, window=chip.window,
                 crs=info.crs, bounds=chip.bounds, bounds_wgs84=chip.bounds_wgs84,
                 footprint_wgs84=chip.footprint_wgs84) for i, chip in enumerate(chips)], None


# ---------------------------------------------------------------------------------------------- pixels


def read_shard_member(path: str, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise ShardError(f"shard {path} is shorter than its index says (member at byte {offset}); "
                         "it changed since it was indexed: run pir-clip index again")
    return data


class SceneCache:
    """Open scene datasets, reused across the chips of a scene (one per process or DataLoader worker)."""

    def __init__(self, max_open: int = 8):
        self.max_open = max_open
        self._open: Dict[str, object] = {}

    def get(self, path: str):
        if path not in self._open:
            if len(self._open) >= self.max_open:
                self._open.pop(next(iter(self._open))).close()
            self._open[path] = open_scene(path)
        return self._open[path]

    def close(self) -> None:
        for dataset in self._open.values():
            dataset.close()
        self._open.clear()


def item_pixels(kind: str, path: str, *, bands=None, key: Optional[str] = None, member_offset: Optional[int] = None,
                member_size: Optional[int] = None, window: Optional[Window] = None,
                scenes: Optional[SceneCache] = None) -> Optional[PILImage.Image]:
    """One item's image as 8-bit RGB through the shared decoder, or ``None`` for a nodata chip.

    Raises :class:`~pir_clip.data.images.ImageDecodeError` (or a subclass) naming the item when it cannot
    be decoded.
    """
    if kind == IMAGE:
        return decode_image(path, bands)
    if kind == SHARD_SAMPLE:
        return decode_image(read_shard_member(path, member_offset, member_size), bands, name=f"{path}#{key}")
    if scenes is None:
        with open_scene(path) as dataset:
            pixels = read_chip(dataset, window, bands)
    else:
        pixels = read_chip(scenes.get(path), window, bands)
    return None if pixels is None else PILImage.fromarray(pixels, "RGB")
