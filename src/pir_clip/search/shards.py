"""Embedding shards: the durable output of the inference step, from which the index files are built.

A shard is one Parquet file in ``INDEX_DIR/shards/`` holding a run of processed items: their metadata
columns (:data:`ITEM_COLUMNS`), a ``status`` (``ok``, ``nodata`` or ``error``), an ``error`` message, and
the ``embedding`` as ``fixed_size_binary`` (D little-endian float16 or float32 values; zeros unless ok).
The file's key-value metadata records the settings that produced it (model, preprocessing, chips, dtype),
so embeddings of another model are never mixed in.

A shard is written to a hidden temporary name and renamed into place when complete, so a killed run leaves
at most a temporary file, which is never read and is removed by the next run. Shards are only ever added,
or replaced by a smaller shard without rows that no longer match the inputs (compaction).
"""
import glob
import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .sources import Item

SETTINGS_KEY = b"pir_clip_settings"
OK, NODATA, ERROR = "ok", "nodata", "error"
SHARD_GLOB = "*.parquet"
TEMP_PREFIX = ".tmp-"

_BOUNDS = pa.list_(pa.float64(), 4)
ITEM_FIELDS = [
    pa.field("path", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("size", pa.int64(), nullable=False),
    pa.field("mtime_ns", pa.int64(), nullable=False),
    pa.field("item_index", pa.int32(), nullable=False),
    pa.field("item_count", pa.int32(), nullable=False),
    pa.field("key", pa.string()),
    pa.field("name", pa.string()),
    pa.field("member_offset", pa.int64()),
    pa.field("member_size", pa.int64()),
    pa.field("caption", pa.string()),
    pa.field("window", pa.list_(pa.int32(), 4)),
    pa.field("crs", pa.string()),
    pa.field("bounds", _BOUNDS),
    pa.field("bounds_wgs84", _BOUNDS),
    pa.field("footprint_wgs84", pa.list_(pa.float64(), 8)),
]
ITEM_COLUMNS = [f.name for f in ITEM_FIELDS]
# The columns needed to know which items are done (cheap to read from every shard).
PROGRESS_COLUMNS = ["path", "size", "mtime_ns", "item_index", "item_count", "status"]


def shard_schema(dim: int, dtype: str) -> pa.Schema:
    width = dim * np.dtype(dtype).itemsize
    return pa.schema(ITEM_FIELDS + [pa.field("status", pa.string(), nullable=False), pa.field("error", pa.string()),
                                    pa.field("embedding", pa.binary(width), nullable=False)])


def items_table(items: Sequence[Item], statuses: Sequence[str], errors: Sequence[Optional[str]],
                embeddings: np.ndarray, dtype: str) -> pa.Table:
    """Rows for processed ``items``; ``embeddings`` (len(items), D) float, zeros where not ok."""
    n, dim = embeddings.shape
    columns: Dict[str, list] = {name: [getattr(item, name) for item in items] for name in ITEM_COLUMNS}
    columns["status"], columns["error"] = list(statuses), list(errors)
    raw = np.ascontiguousarray(embeddings, dtype=np.dtype(dtype).newbyteorder("<"))
    schema = shard_schema(dim, dtype)
    arrays = [pa.array(columns[f.name], type=f.type) for f in schema if f.name != "embedding"]
    arrays.append(pa.FixedSizeBinaryArray.from_buffers(schema.field("embedding").type, n,
                                                       [None, pa.py_buffer(raw.tobytes())]))
    return pa.Table.from_arrays(arrays, schema=schema)


def table_embeddings(table: pa.Table, dtype: str) -> np.ndarray:
    """The ``embedding`` column as an (N, D) array of ``dtype``."""
    column = table.column("embedding").combine_chunks()
    width = column.type.byte_width
    itemsize = np.dtype(dtype).itemsize
    data = np.frombuffer(column.buffers()[1], dtype=np.dtype(dtype).newbyteorder("<"),
                         count=len(column) * width // itemsize, offset=column.offset * width)
    return data.reshape(len(column), width // itemsize).astype(dtype, copy=False)


def write_shard(path: str, table: pa.Table, settings: Dict) -> None:
    """Writes ``table`` to ``path`` atomically (temporary name, fsync, rename)."""
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, TEMP_PREFIX + name)
    table = table.replace_schema_metadata({SETTINGS_KEY: json.dumps(settings, sort_keys=True).encode()})
    with open(tmp, "wb") as f:
        pq.write_table(table, f, compression="zstd", use_dictionary=["path", "kind", "crs", "status"],
                       write_statistics=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def list_shards(shard_dir: str) -> List[str]:
    """Finished shards, in name order (temporary files of interrupted writes are not listed)."""
    return sorted(p for p in glob.glob(os.path.join(shard_dir, SHARD_GLOB))
                  if not os.path.basename(p).startswith(TEMP_PREFIX))


def remove_temporary(shard_dir: str) -> int:
    """Deletes half-written shards left by a killed run; returns how many."""
    stale = glob.glob(os.path.join(shard_dir, TEMP_PREFIX + "*"))
    for path in stale:
        os.remove(path)
    return len(stale)


def shard_settings(path: str) -> Dict:
    metadata = pq.read_schema(path).metadata or {}
    try:
        return json.loads(metadata[SETTINGS_KEY])
    except (KeyError, ValueError):
        return {}


def read_shards(paths: Sequence[str], columns: Optional[Sequence[str]] = None) -> Optional[pa.Table]:
    """The rows of ``paths`` concatenated (``None`` when there are none)."""
    tables = [pq.read_table(p, columns=list(columns) if columns else None) for p in paths]
    if not tables:
        return None
    return pa.concat_tables([t.replace_schema_metadata(None) for t in tables])


class ShardWriter:
    """Collects processed items and writes a shard every ``rows_per_shard`` rows (and at :meth:`close`)."""

    def __init__(self, shard_dir: str, prefix: str, settings: Dict, dim: int, dtype: str, rows_per_shard: int):
        self.shard_dir, self.prefix, self.settings = shard_dir, prefix, settings
        self.dim, self.dtype, self.rows_per_shard = dim, dtype, max(1, rows_per_shard)
        self.written: List[str] = []
        self._pending: List[pa.Table] = []
        self._rows = 0

    def add(self, items: Sequence[Item], statuses: Sequence[str], errors: Sequence[Optional[str]],
            embeddings: np.ndarray) -> None:
        if not items:
            return
        self._pending.append(items_table(items, statuses, errors, embeddings, self.dtype))
        self._rows += len(items)
        while self._rows >= self.rows_per_shard:
            table = pa.concat_tables(self._pending)
            self._write(table.slice(0, self.rows_per_shard))
            rest = table.slice(self.rows_per_shard)
            self._pending, self._rows = ([rest] if len(rest) else []), len(rest)

    def close(self) -> None:
        if self._rows:
            self._write(pa.concat_tables(self._pending))
        self._pending, self._rows = [], 0

    def _write(self, table: pa.Table) -> None:
        path = os.path.join(self.shard_dir, f"{self.prefix}-{len(self.written):05d}.parquet")
        write_shard(path, table, self.settings)
        self.written.append(path)
