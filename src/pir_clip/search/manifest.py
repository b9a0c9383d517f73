"""The index folder's layout and its manifest: what was indexed, with which model, into which files.

``INDEX_DIR/``::

    manifest.json      this file's contents (format, version, state, model, preprocessing, counts, index)
    embeddings.npy     (N, D) float16 (or float32), L2-normalised; row i is item id i
    metadata.parquet   one row per item id: source, kind, path, key, name, window, crs, bounds,
                       bounds_wgs84, footprint_wgs84, caption, size, mtime_ns, item_index
    skipped.parquet    items that were not indexed: nodata chips and images that did not decode (+ error)
    index.faiss        the FAISS index over embeddings.npy
    shards/            embedding shards of the inference step (the durable record the outputs are built
                       from; kept for incremental runs)

The manifest is written last, atomically; ``state`` is ``"complete"`` only after every output file is in
place, so a reader never mistakes an interrupted build for a finished one.
"""
import json
import os
from typing import Any, Dict

FORMAT = "pir-clip-index"
VERSION = 1
MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.npy"
METADATA = "metadata.parquet"
SKIPPED = "skipped.parquet"
FAISS_INDEX = "index.faiss"
SHARDS = "shards"
COMPLETE, WRITING = "complete", "writing"


class IndexFormatError(ValueError):
    """An index folder that is missing, incomplete, inconsistent, or of another format version."""


def write_json_atomic(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_manifest(index_dir: str, *, require_complete: bool = True) -> Dict[str, Any]:
    """The manifest of ``index_dir``, checked for format, version and (by default) completeness."""
    path = os.path.join(index_dir, MANIFEST)
    if not os.path.isdir(index_dir):
        raise IndexFormatError(f"index folder {index_dir} does not exist; build one with "
                               f"'pir-clip index PATH... --out {index_dir}'")
    if not os.path.isfile(path):
        raise IndexFormatError(f"{index_dir} has no {MANIFEST}: it is not a pir-clip index (or its first build "
                               f"did not finish); build it with 'pir-clip index PATH... --out {index_dir}'")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as exc:
        raise IndexFormatError(f"{path} is not readable JSON ({exc}); run pir-clip index again to rewrite it") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexFormatError(f"{path} is not a pir-clip index manifest (no \"format\": \"{FORMAT}\")")
    version = manifest.get("version")
    if version != VERSION:
        raise IndexFormatError(
            f"{path} is index format version {version}, but this pir-clip reads version {VERSION}; rebuild the "
            f"index with this pir-clip ('pir-clip index ... --out {index_dir} --rebuild') or use the pir-clip "
            "release that built it")
    if require_complete and manifest.get("state") != COMPLETE:
        raise IndexFormatError(f"the last 'pir-clip index' run into {index_dir} stopped while writing the index "
                               "files; run the same command again to finish it (embeddings already computed are "
                               "kept)")
    return manifest


def require_files(index_dir: str, *names: str) -> None:
    missing = [n for n in names if not os.path.isfile(os.path.join(index_dir, n))]
    if missing:
        raise IndexFormatError(f"index {index_dir} is missing {', '.join(missing)}; run 'pir-clip index' into it "
                               "again to rebuild the files from its shards")
