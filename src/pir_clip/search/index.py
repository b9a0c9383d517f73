"""Searching an index folder: :class:`SearchIndex`, the library API under ``pir-clip search`` and the server.

    from pir_clip.search import SearchIndex
    index = SearchIndex.open("index/")
    for hit in index.search_text("storage tanks next to a river", k=10):
        print(hit.rank, hit.score, hit.source, hit.window, hit.bounds_wgs84)

Ids are the rows of ``metadata.parquet`` (0 .. N-1) of this build (``manifest["build_id"]``); a rebuild
with other inputs may renumber them. The model is loaded on the first query that needs it, once, from the
manifest's model name and checkpoint, whose SHA-256 must still match. All read methods are safe to call
from several threads at once (the model runs one query at a time).
"""
import os
import threading
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from ..data.images import ImageDecodeError, decode_image, to_rgb8
from . import manifest as layout
from .model import LoadedModel, ModelSpec, load_model
from .sources import item_pixels
from .vector_index import IndexSpec, VectorIndex

ImageQuery = Union[Image.Image, bytes, bytearray, str, "os.PathLike[str]"]
_PIL_CONVERTED = ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1")


def _tuple(value) -> Optional[Tuple]:
    return tuple(value) if value is not None else None


@dataclass(frozen=True)
class ItemInfo:
    """Metadata of one indexed item (a row of ``metadata.parquet``)."""
    id: int
    source: str  # the image file, the scene of a chip, or SHARD.tar#KEY
    kind: str  # image, shard or chip
    path: str  # the file on disk (image, shard or scene)
    key: Optional[str]  # shard sample key
    name: Optional[str]  # image file name where known
    window: Optional[Tuple[int, int, int, int]]  # chip: col, row, width, height (pixels)
    crs: Optional[str]  # chip: the scene's CRS, e.g. EPSG:32633
    bounds: Optional[Tuple[float, float, float, float]]  # chip: left, bottom, right, top in crs
    bounds_wgs84: Optional[Tuple[float, float, float, float]]  # chip: west, south, east, north (degrees)
    footprint_wgs84: Optional[Tuple[float, ...]]  # chip corners lon, lat x4: top-left, top-right, bottom-right, bottom-left
    caption: Optional[str]  # shard sample caption, if the shard has one

    @classmethod
    def from_row(cls, row: Dict[str, Any]) -> "ItemInfo":
        return cls(id=int(row["id"]), source=row["source"], kind=row["kind"], path=row["path"], key=row["key"],
                   name=row["name"], window=_tuple(row["window"]), crs=row["crs"], bounds=_tuple(row["bounds"]),
                   bounds_wgs84=_tuple(row["bounds_wgs84"]), footprint_wgs84=_tuple(row["footprint_wgs84"]),
                   caption=row["caption"])

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        for name in ("window", "bounds", "bounds_wgs84", "footprint_wgs84"):
            d[name] = list(d[name]) if d[name] is not None else None
        return d


@dataclass(frozen=True)
class Hit(ItemInfo):
    """A search result: an item with its ``rank`` (1 = best) and ``score`` (cosine similarity)."""
    rank: int
    score: float

    def to_dict(self) -> Dict[str, Any]:
        """The hit as JSON: rank, id, score, source, window, bounds_wgs84, then the other metadata."""
        d = super().to_dict()
        front = {k: d.pop(k) for k in ("rank", "id", "score", "source", "window", "bounds_wgs84")}
        return {**front, **d}


def _as_rgb(image: Image.Image) -> Image.Image:
    """A PIL image a caller already decoded -> 8-bit RGB by the shared decoder's rule (deep data stretched)."""
    pixels = np.asarray(image.convert("RGBA" if image.mode in ("P", "PA") else "RGB")
                        if image.mode in _PIL_CONVERTED else image)
    return Image.fromarray(to_rgb8(pixels, name="query image"), "RGB")


class SearchIndex:
    """An index folder opened for search (see the module docstring). Use :meth:`open`."""

    def __init__(self, index_dir: str, manifest: Dict[str, Any], metadata, vectors: VectorIndex,
                 model_spec: ModelSpec, device: Optional[str] = None, precision: str = "fp32"):
        self.index_dir = index_dir
        self.manifest = manifest
        self.model_spec = model_spec
        self.device = device or ("cuda" if _cuda_available() else "cpu")
        self.precision = precision
        self._metadata = metadata
        self._vectors = vectors
        self._bands = manifest["preprocessing"].get("bands")
        self._model: Optional[LoadedModel] = None
        self._model_lock = threading.Lock()
        self._encode_lock = threading.Lock()

    @classmethod
    def open(cls, index_dir: Union[str, "os.PathLike[str]"], *, device: Optional[str] = None,
             precision: str = "fp32", model_name: Optional[str] = None, checkpoint: Optional[str] = None,
             prior_pretrained: Optional[str] = None) -> "SearchIndex":
        """Opens ``index_dir`` (checks the manifest's format version, that the build finished, and that the
        files agree on the item count). ``model_name`` / ``checkpoint`` / ``prior_pretrained``: the query
        model when it is not where the manifest says (a moved checkpoint); it must be the index's model, or
        :class:`~pir_clip.search.model.ModelMismatchError` names both."""
        index_dir = os.fspath(index_dir)
        manifest = layout.read_manifest(index_dir)
        layout.require_files(index_dir, layout.EMBEDDINGS, layout.METADATA, layout.FAISS_INDEX)
        count, dim = manifest["embeddings"]["count"], manifest["embeddings"]["dim"]
        embeddings = np.load(os.path.join(index_dir, layout.EMBEDDINGS), mmap_mode="r")
        metadata = pq.read_table(os.path.join(index_dir, layout.METADATA))
        if embeddings.shape != (count, dim) or len(metadata) != count:
            raise layout.IndexFormatError(
                f"index {index_dir} is inconsistent: the manifest says {count} x {dim}, {layout.EMBEDDINGS} holds "
                f"{embeddings.shape} and {layout.METADATA} {len(metadata)} rows; run pir-clip index again")
        info = manifest["index"]
        spec = IndexSpec(info["type"], info["factory"], info.get("build", {}), info.get("search", {}), info.get("note"))
        vectors = VectorIndex.load(os.path.join(index_dir, layout.FAISS_INDEX), embeddings, spec)
        built_with = ModelSpec.from_dict(manifest["model"])
        query_model = built_with
        if model_name or checkpoint or prior_pretrained:
            query_model = ModelSpec.from_files(model_name or built_with.name, checkpoint or built_with.checkpoint,
                                               prior_pretrained or built_with.prior_pretrained)
            built_with.require_same(query_model, f"index {index_dir}")
        return cls(index_dir, manifest, metadata, vectors, query_model, device=device, precision=precision)

    # ------------------------------------------------------------------------------------ metadata

    def __len__(self) -> int:
        return len(self._vectors)

    @property
    def dim(self) -> int:
        return self._vectors.dim

    def _check_id(self, item_id: int) -> int:
        if isinstance(item_id, bool) or not isinstance(item_id, (int, np.integer)):
            raise TypeError(f"item id must be an integer, not {type(item_id).__name__}")
        if not 0 <= item_id < len(self):
            raise KeyError(f"no item {item_id} in index {self.index_dir} (ids are 0 to {len(self) - 1})")
        return int(item_id)

    def item(self, item_id: int) -> ItemInfo:
        """Metadata of item ``item_id``; ``KeyError`` for an id outside 0..len-1."""
        return self.items([item_id])[0]

    def items(self, item_ids: Sequence[int]) -> List[ItemInfo]:
        ids = [self._check_id(i) for i in item_ids]
        return [ItemInfo.from_row(row) for row in self._metadata.take(ids).to_pylist()] if ids else []

    def embedding(self, item_id: int) -> np.ndarray:
        """The stored (D,) embedding of an item, as float32."""
        return np.asarray(self._vectors.embeddings[self._check_id(item_id)], dtype=np.float32)

    def item_image(self, item_id: int) -> Image.Image:
        """The item's pixels as 8-bit RGB through the shared decoder, with the index's bands; a chip is read as
        its window of the scene. Raises :class:`~pir_clip.search.manifest.IndexFormatError` when the source
        file changed since indexing."""
        item_id = self._check_id(item_id)
        row = self._metadata.slice(item_id, 1).to_pylist()[0]
        try:
            st = os.stat(row["path"])
        except OSError as exc:
            raise layout.IndexFormatError(f"item {item_id}: {row['path']} is gone ({exc.strerror})") from exc
        if (st.st_size, st.st_mtime_ns) != (row["size"], row["mtime_ns"]):
            raise layout.IndexFormatError(f"item {item_id}: {row['path']} changed since it was indexed; run "
                                          "pir-clip index again")
        image = item_pixels(row["kind"], row["path"], bands=self._bands, key=row["key"],
                            member_offset=row["member_offset"], member_size=row["member_size"],
                            window=_tuple(row["window"]))
        if image is None:  # a chip that became all nodata cannot be in the index; be safe anyway
            window = row["window"]
            image = Image.new("RGB", (window[2], window[3]))
        return image

    # ------------------------------------------------------------------------------------ model

    def _loaded(self) -> LoadedModel:
        with self._model_lock:
            if self._model is None:
                spec = self.model_spec
                if spec.checkpoint and spec.checkpoint_sha256:
                    for path in (spec.checkpoint, spec.prior_pretrained):
                        if path and not os.path.isfile(path):
                            raise layout.IndexFormatError(
                                f"the model weights of index {self.index_dir} are gone from {path}; pass where they "
                                "are now (pir-clip search --checkpoint / --prior-pretrained, or "
                                "SearchIndex.open(checkpoint=...))")
                    now = ModelSpec.from_files(spec.name, spec.checkpoint, spec.prior_pretrained)
                    ModelSpec.from_dict(self.manifest["model"]).require_same(
                        now, f"index {self.index_dir} (its checkpoint file changed since)")
                self._model = load_model(spec, device=self.device, precision=self.precision)
                if self._model.embed_dim != self.dim:
                    raise layout.IndexFormatError(f"{spec.describe()} embeds into {self._model.embed_dim} dimensions "
                                                  f"but the index holds {self.dim}")
            return self._model

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (n, D) float32 L2-normalised embeddings with the index's model."""
        from ..evaluation.encode import encode_texts
        texts = list(texts)
        for text in texts:
            if not isinstance(text, str) or not text.strip():
                raise ValueError("a text query must be a non-empty string")
        loaded = self._loaded()
        with self._encode_lock:
            return encode_texts(loaded.model, texts, loaded.tokenizer, device=self.device, precision=self.precision,
                                progress=False).numpy()

    def embed_image(self, image: ImageQuery, bands: Optional[Sequence[int]] = None) -> np.ndarray:
        """A PIL image, encoded image bytes or an image file -> (D,) float32 L2-normalised embedding.
        Bytes and files go through the shared decoder (``bands`` as ``--bands``)."""
        from ..evaluation.encode import encode_pixels
        if isinstance(image, Image.Image):
            rgb = _as_rgb(image)
        elif isinstance(image, (bytes, bytearray, memoryview)):
            rgb = decode_image(image, bands, name="query image")
        elif isinstance(image, (str, os.PathLike)):
            rgb = decode_image(image, bands)
        else:
            raise ImageDecodeError(f"an image query must be a PIL image, image bytes or a file path, not "
                                   f"{type(image).__name__}")
        loaded = self._loaded()
        with self._encode_lock:
            pixels = loaded.preprocess(rgb).unsqueeze(0)
            return encode_pixels(loaded.model, pixels, self.device, self.precision)[0].numpy()

    # ------------------------------------------------------------------------------------ search

    def search_embedding(self, vector: np.ndarray, k: int = 10, *, model: Optional[ModelSpec] = None,
                         exclude: Optional[int] = None, nprobe: Optional[int] = None,
                         ef_search: Optional[int] = None, rerank: Optional[int] = None) -> List[Hit]:
        """Hits for a query embedding (D,). ``model``: the model that embedded it; refused with a message
        naming both when it is not the index's. ``exclude``: an id to leave out."""
        if model is not None:
            ModelSpec.from_dict(self.manifest["model"]).require_same(model, f"index {self.index_dir}")
        vector = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        if vector.shape[1] != self.dim:
            raise ValueError(f"the query embedding has {vector.shape[1]} dimensions, the index {self.dim}: it was "
                             f"not embedded with {ModelSpec.from_dict(self.manifest['model']).describe()}")
        norm = float(np.linalg.norm(vector))
        if not np.isfinite(norm) or norm == 0:
            raise ValueError("the query embedding is zero or not finite")
        k = int(k)
        if k < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        scores, ids = self._vectors.search(vector / norm, k, nprobe=nprobe, ef_search=ef_search, rerank=rerank,
                                           exclude=None if exclude is None else np.array([exclude]))
        keep = ids[0] >= 0
        found_ids, found_scores = ids[0][keep], scores[0][keep]
        infos = self.items(found_ids.tolist())
        return [Hit(**{f.name: getattr(info, f.name) for f in fields(ItemInfo)}, rank=rank, score=float(score))
                for rank, (info, score) in enumerate(zip(infos, found_scores), start=1)]

    def search_text(self, query: str, k: int = 10, **params) -> List[Hit]:
        """The ``k`` items most similar to a text query (``params``: nprobe, ef_search, rerank)."""
        return self.search_embedding(self.embed_texts([query])[0], k, **params)

    def search_image(self, image: ImageQuery, k: int = 10, *, bands: Optional[Sequence[int]] = None,
                     **params) -> List[Hit]:
        """The ``k`` items most similar to an image: a PIL image, encoded bytes, or a file path."""
        return self.search_embedding(self.embed_image(image, bands), k, **params)

    def search_like(self, item_id: int, k: int = 10, **params) -> List[Hit]:
        """More like this: the ``k`` items most similar to item ``item_id`` (by its stored embedding), the item
        itself left out."""
        return self.search_embedding(self.embedding(item_id), k, exclude=int(item_id), **params)


def _cuda_available() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False
