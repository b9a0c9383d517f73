"""Archive search, split as clip-retrieval does, each step restartable from files:

- inference (:mod:`.sources`, :mod:`.embed`, :mod:`.shards`, :mod:`.ranks`): image folders, webdataset shards
  and GeoTIFF scenes -> embedding shards, resumable, one slice per torchrun rank;
- index (:mod:`.build`, :mod:`.vector_index`, :mod:`.manifest`): shards -> embeddings, metadata, FAISS index;
- search (:mod:`.index`: :class:`SearchIndex`; :mod:`.geojson`, :mod:`.contact_sheet`, :mod:`.query`).

Heavy dependencies (torch models, FAISS) load on first use, so ``from pir_clip.search import SearchIndex``
is cheap.
"""
from .geojson import hits_to_geojson
from .index import Hit, ItemInfo, SearchIndex
from .manifest import IndexFormatError
from .model import ModelMismatchError, ModelSpec

__all__ = ["SearchIndex", "Hit", "ItemInfo", "hits_to_geojson", "IndexFormatError", "ModelMismatchError",
           "ModelSpec"]
