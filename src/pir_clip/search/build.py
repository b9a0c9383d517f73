"""``pir-clip index``: image folders, shards and GeoTIFF scenes -> embeddings, metadata and a FAISS index.

    pir-clip index data/tiles shards/rs5m-{000000..000009}.tar --scenes scene1.tif scene2.tif \\
        --out index/ --model-name PIR --checkpoint checkpoints/pir.pt

Two steps, as in clip-retrieval, each restartable from files:

1. **Inference.** Files are listed and fingerprinted (path, size, mtime; :mod:`.sources`). Items of files
   already embedded with the same settings are taken from the shards of earlier runs; only new or changed
   files (and the unfinished rest of an interrupted run) are embedded, in shards written atomically
   (:mod:`.shards`). Under ``torchrun`` each rank embeds a contiguous slice (:mod:`.ranks`).
2. **Index.** Rank 0 merges the shard rows that match the current files, in a fixed order (by path, then
   item number; the id of an item is its row), and writes ``embeddings.npy``, ``metadata.parquet``,
   ``skipped.parquet``, ``index.faiss`` and, last, ``manifest.json`` (:mod:`.manifest`).

A killed run loses at most the shard being written; running the same command again resumes, and the result
equals a clean build. Files indexed earlier but not among this run's inputs are left out of the index; their
embeddings stay in the shards for a later run.
"""
import fcntl
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from ..data.geotiff import SceneError
from ..data.images import parse_bands
from . import manifest as layout
from .model import ModelSpec, load_model
from .ranks import Ranks, split_evenly
from .shards import (ERROR, ITEM_COLUMNS, NODATA, OK, PROGRESS_COLUMNS, ShardWriter, list_shards, read_shards,
                     remove_temporary, shard_settings, table_embeddings, write_shard)
from .sources import CHIP, IMAGE, SHARD_SAMPLE, InputError, InputFile, Item, ShardError, collect_files, enumerate_items
from .vector_index import VectorIndex, index_spec

DTYPES = ("float16", "float32")
DEFAULT_SHARD_SIZE = 2048
SHOW_ERRORS = 10
MANIFEST_ERRORS = 1000


class IndexBuildError(ValueError):
    """A problem the user must fix before indexing can go on; nothing already indexed is changed."""


@dataclass
class WorkPlan:
    """What this run has to do: the current files, and the items still to embed."""
    files: List[InputFile]
    pending: List[Item]
    unreadable: List[Tuple[str, str]] = field(default_factory=list)  # (path, error)
    warnings: List[str] = field(default_factory=list)
    ignored: int = 0

    def files_digest(self) -> str:
        """The inputs' identity: every file's path, size and mtime."""
        h = hashlib.sha256()
        for f in self.files:
            h.update(f"{f.path}\0{f.size}\0{f.mtime_ns}\n".encode())
        return h.hexdigest()

    def digest(self) -> str:
        """The work's identity: the inputs and the items still to embed (all ranks must agree on it)."""
        h = hashlib.sha256(self.files_digest().encode())
        for item in self.pending:
            h.update(f"{item.path}\0{item.item_index}\n".encode())
        return h.hexdigest()


def index_settings(spec: ModelSpec, preprocess_cfg: Dict, bands, chip_size: int, stride: int, dtype: str) -> Dict:
    """Everything that determines an embedding; shards with other settings are not reused."""
    return {"format_version": layout.VERSION, "model": spec.to_dict(), "preprocess": _jsonable(preprocess_cfg),
            "bands": list(bands) if bands else None, "chip_size": chip_size, "stride": stride, "dtype": dtype}


def settings_digest(settings: Dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _requested_index(args) -> Dict:
    """The index options of the command line, to tell whether the last build used the same ones."""
    return {name: getattr(args, name) for name in ("index_type", "index_factory", "nlist", "pq_m", "hnsw_m",
                                                    "ef_construction", "nprobe", "ef_search", "rerank")}


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


def _describe_difference(old: Dict, new: Dict) -> str:
    diffs = []
    for key in ("format_version", "model", "preprocess", "bands", "chip_size", "stride", "dtype"):
        if old.get(key) != new.get(key):
            if key == "model":
                diffs.append(f"model {ModelSpec.from_dict(old.get('model') or {'name': '?'}).describe()} "
                             f"-> {ModelSpec.from_dict(new['model']).describe()}")
            else:
                diffs.append(f"{key.replace('_', ' ')} {old.get(key)} -> {new.get(key)}")
    return "; ".join(diffs) or "unknown settings"


# ------------------------------------------------------------------------------------------- progress


def _file_progress(shard_paths: Sequence[str]) -> Dict[Tuple[str, int, int], Optional[set]]:
    """{(path, size, mtime_ns): None when all its items are in the shards, else the set of item_index that
    are (a file an interrupted run left half done)}, from the shards' progress columns."""
    table = read_shards(shard_paths, PROGRESS_COLUMNS)
    if table is None:
        return {}
    grouped = table.group_by(["path", "size", "mtime_ns"]).aggregate(
        [("item_index", "count_distinct"), ("item_count", "max")])
    progress: Dict[Tuple[str, int, int], Optional[set]] = {}
    for row in grouped.to_pylist():
        complete = row["item_index_count_distinct"] >= row["item_count_max"]
        progress[(row["path"], row["size"], row["mtime_ns"])] = None if complete else set()
    partial = [p for p, done in progress.items() if done is not None]
    if partial:
        wanted = pa.array([p for p, _, _ in partial])
        for row in table.filter(pc.is_in(table.column("path"), value_set=wanted)).to_pylist():
            done = progress.get((row["path"], row["size"], row["mtime_ns"]))
            if done is not None:
                done.add(row["item_index"])
    return progress


def plan_work(files: Sequence[InputFile], progress: Dict, chip_size: int, stride: int,
              show_progress: bool) -> WorkPlan:
    """The items of new, changed or unfinished files that still need embedding, in canonical order."""
    plan = WorkPlan(files=list(files), pending=[])
    todo = [f for f in files if progress.get(f.fingerprint, set()) is not None]
    for file in tqdm(todo, desc="listing items", unit="file", disable=not show_progress or len(todo) < 50):
        try:
            items, warning = enumerate_items(file, chip_size, stride)
        except (SceneError, ShardError) as exc:
            plan.unreadable.append((file.path, str(exc)))
            continue
        if warning:
            plan.warnings.append(warning)
        done = progress.get(file.fingerprint) or set()
        plan.pending.extend(item for item in items if item.item_index not in done)
    return plan


# ------------------------------------------------------------------------------------------- merge


def _current_rows(table: pa.Table, files: Sequence[InputFile]) -> np.ndarray:
    """Boolean mask of shard rows whose file is among ``files`` with the same size and mtime."""
    current = {f.path: (f.size, f.mtime_ns) for f in files}
    paths = table.column("path").combine_chunks().dictionary_encode()
    names = paths.dictionary.to_pylist()
    expected_size = np.array([current.get(p, (-1, -1))[0] for p in names], dtype=np.int64)
    expected_mtime = np.array([current.get(p, (-1, -1))[1] for p in names], dtype=np.int64)
    codes = paths.indices.to_numpy()
    return ((table.column("size").to_numpy() == expected_size[codes])
            & (table.column("mtime_ns").to_numpy() == expected_mtime[codes]))


def merge_shards(shard_paths: Sequence[str], files: Sequence[InputFile]) -> Tuple[pa.Table, Dict[str, int]]:
    """The rows of the current files, one per item, sorted by (path, item_index); and which shards hold
    rows of changed files ({shard path: stale rows})."""
    tables, stale = [], {}
    for path in tqdm(shard_paths, desc="reading shards", unit="shard", disable=len(shard_paths) < 20):
        table = pq.read_table(path).replace_schema_metadata(None)
        keep = _current_rows(table, files)
        changed = (~keep) & pc.is_in(table.column("path"), value_set=pa.array([f.path for f in files])).to_numpy(
            zero_copy_only=False)
        if changed.any():
            stale[path] = int(changed.sum())
        tables.append(table.filter(pa.array(keep)))
    merged = pa.concat_tables(tables) if tables else None
    if merged is None or len(merged) == 0:
        return merged, stale
    merged = merged.sort_by([("path", "ascending"), ("item_index", "ascending")])
    path_codes = merged.column("path").combine_chunks().dictionary_encode().indices.to_numpy()
    index = merged.column("item_index").to_numpy()
    duplicate = np.zeros(len(merged), dtype=bool)
    duplicate[1:] = (path_codes[1:] == path_codes[:-1]) & (index[1:] == index[:-1])
    if duplicate.any():
        merged = merged.filter(pa.array(~duplicate))
    return merged, stale


def compact_shards(stale: Dict[str, int], files: Sequence[InputFile]) -> None:
    """Rewrites shards holding rows of files that have changed since, without those rows."""
    for path in stale:
        table = pq.read_table(path)
        settings = json.loads((table.schema.metadata or {}).get(b"pir_clip_settings", b"{}"))
        on_input = pc.is_in(table.column("path"), value_set=pa.array([f.path for f in files])).to_numpy(
            zero_copy_only=False)
        keep = _current_rows(table, files) | ~on_input  # rows of files not in this run are kept for later runs
        if keep.all():
            continue
        if keep.any():
            base, ext = os.path.splitext(path)
            write_shard(f"{base}c{ext}", table.filter(pa.array(keep)).replace_schema_metadata(None), settings)
        os.remove(path)


# ------------------------------------------------------------------------------------------- outputs


def _save_npy_atomic(path: str, array: np.ndarray) -> str:
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def _write_parquet_tmp(path: str, table: pa.Table) -> str:
    tmp = f"{path}.tmp"
    pq.write_table(table, tmp, compression="zstd")
    return tmp


def metadata_table(rows: pa.Table) -> pa.Table:
    """The ``metadata.parquet`` table: ``id``, ``source`` and the item columns of indexed rows."""
    kinds = rows.column("kind").to_pylist()
    paths, keys = rows.column("path").to_pylist(), rows.column("key").to_pylist()
    sources = [f"{p}#{k}" if kind == SHARD_SAMPLE else p for p, k, kind in zip(paths, keys, kinds)]
    columns = {"id": pa.array(np.arange(len(rows), dtype=np.int64)), "source": pa.array(sources, pa.string())}
    columns.update({name: rows.column(name) for name in ITEM_COLUMNS})
    return pa.table(columns)


def skipped_table(rows: pa.Table) -> pa.Table:
    kinds = rows.column("kind").to_pylist()
    sources = [f"{p}#{k}" if kind == SHARD_SAMPLE else p
               for p, k, kind in zip(rows.column("path").to_pylist(), rows.column("key").to_pylist(), kinds)]
    return pa.table({"source": pa.array(sources, pa.string()), "path": rows.column("path"),
                     "kind": rows.column("kind"), "item_index": rows.column("item_index"),
                     "window": rows.column("window"), "status": rows.column("status"),
                     "error": rows.column("error")})


def _counts(meta: pa.Table, skipped: pa.Table, files: Sequence[InputFile]) -> Dict[str, int]:
    kinds = pc.value_counts(meta.column("kind")).to_pylist() if len(meta) else []
    by_kind = {d["values"]: d["counts"] for d in kinds}
    status = {d["values"]: d["counts"] for d in pc.value_counts(skipped.column("status")).to_pylist()} \
        if len(skipped) else {}
    return {"items": len(meta), "images": by_kind.get(IMAGE, 0), "shard_samples": by_kind.get(SHARD_SAMPLE, 0),
            "chips": by_kind.get(CHIP, 0), "files": len(files),
            "image_files": sum(f.kind == "image" for f in files), "shards": sum(f.kind == "shard" for f in files),
            "scenes": sum(f.kind == "scene" for f in files), "nodata_chips": status.get(NODATA, 0),
            "errors": status.get(ERROR, 0)}


def _previous_index(out: str, factory: str, n: int):
    """The previous build's trained index, when it can be reused (same factory, similar size)."""
    try:
        old = layout.read_manifest(out)
    except layout.IndexFormatError:
        return None
    if old["index"]["factory"] != factory or old["index"]["type"] == "flat" or not 0 < n <= 2 * old["counts"]["items"]:
        return None
    try:
        import faiss
        return faiss.read_index(os.path.join(out, layout.FAISS_INDEX))
    except RuntimeError:
        return None


def write_outputs(out: str, merged: pa.Table, plan: WorkPlan, settings: Dict, args, run_stats: Dict,
                  progress: bool) -> Dict:
    """Writes embeddings, metadata, skipped items, the FAISS index and the manifest; returns the manifest."""
    status = merged.column("status")
    ok_rows = merged.filter(pc.equal(status, OK))
    skipped = skipped_table(merged.filter(pc.not_equal(status, OK)))
    meta = metadata_table(ok_rows)
    dtype = settings["dtype"]
    embeddings = table_embeddings(ok_rows, dtype)
    if len(meta) == 0:
        raise IndexBuildError(f"none of the {len(merged):,} items could be indexed (all nodata or undecodable; see "
                              f"{layout.SKIPPED} after fixing the inputs); the index in {out} is unchanged")
    spec = index_spec(args.index_type, len(meta), embeddings.shape[1], dtype, factory=args.index_factory,
                      nlist=args.nlist, pq_m=args.pq_m, hnsw_m=args.hnsw_m, ef_construction=args.ef_construction,
                      nprobe=args.nprobe, ef_search=args.ef_search, rerank=args.rerank)
    start = time.time()
    vectors = VectorIndex.build(embeddings, spec, progress=progress,
                                reuse=_previous_index(out, spec.factory, len(meta)))
    build_seconds = time.time() - start
    paths = {name: os.path.join(out, name) for name in
             (layout.EMBEDDINGS, layout.METADATA, layout.SKIPPED, layout.FAISS_INDEX)}
    temporary = {
        layout.EMBEDDINGS: _save_npy_atomic(paths[layout.EMBEDDINGS], embeddings),
        layout.METADATA: _write_parquet_tmp(paths[layout.METADATA], meta),
        layout.SKIPPED: _write_parquet_tmp(paths[layout.SKIPPED], skipped),
    }
    temporary[layout.FAISS_INDEX] = paths[layout.FAISS_INDEX] + ".tmp"
    vectors.save(temporary[layout.FAISS_INDEX])
    errors = [{"source": s, "error": e} for s, e in zip(skipped.column("source").to_pylist(),
                                                        skipped.column("error").to_pylist()) if e]
    manifest = {
        "format": layout.FORMAT, "version": layout.VERSION, "state": layout.WRITING,
        "build_id": run_stats["run_id"], "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": settings["model"], "embed_dim": int(embeddings.shape[1]),
        "preprocessing": {"transform": settings["preprocess"], "bands": settings["bands"],
                          "decoder": "pir_clip.data.images (8-bit unchanged, deeper data 2-98% stretched)"},
        "chips": {"chip_size": settings["chip_size"], "stride": settings["stride"]},
        "embeddings": {"file": layout.EMBEDDINGS, "dtype": dtype, "count": len(meta), "dim": int(embeddings.shape[1]),
                       "normalized": True},
        "metadata": {"file": layout.METADATA, "skipped_file": layout.SKIPPED},
        "index": {"file": layout.FAISS_INDEX, "type": spec.type, "factory": spec.factory, "metric": "inner_product",
                  "build": spec.build, "search": spec.search, "note": spec.note, "requested": _requested_index(args),
                  "build_seconds": round(build_seconds, 3)},
        "counts": _counts(meta, skipped, plan.files),
        "errors": errors[:MANIFEST_ERRORS],
        "unreadable_files": [{"path": p, "error": e} for p, e in plan.unreadable],
        "inputs": {"paths": [os.path.abspath(p) if "{" not in p else p for p in args.paths],
                   "scenes": [os.path.abspath(p) for p in (args.scenes or [])], "digest": plan.files_digest()},
        "settings_digest": settings_digest(settings),
        "last_run": run_stats,
    }
    # Readers see "writing" (refused with a message) until every file is in place.
    layout.write_json_atomic(os.path.join(out, layout.MANIFEST), manifest)
    for name, tmp in temporary.items():
        os.replace(tmp, paths[name])
    manifest["state"] = layout.COMPLETE
    layout.write_json_atomic(os.path.join(out, layout.MANIFEST), manifest)
    return manifest


# ------------------------------------------------------------------------------------------- run


def _check_existing(out: str, shard_dir: str, settings: Dict, rebuild: bool) -> List[str]:
    """Finished shards usable with ``settings``; refuses (unless ``rebuild``) an index of another version or
    other settings, before anything is changed."""
    manifest_path = os.path.join(out, layout.MANIFEST)
    if os.path.isfile(manifest_path) and not rebuild:
        layout.read_manifest(out, require_complete=False)  # raises on another format version
    shards = list_shards(shard_dir)
    if rebuild:
        return shards
    for path in shards:
        old = shard_settings(path)
        if old != settings:
            raise IndexBuildError(
                f"{out} was built with other settings ({_describe_difference(old, settings)}); index with the same "
                "model and settings to update it, pass --rebuild to re-embed everything with the new ones, or "
                "choose another --out")
    return shards


def _lock(out: str):
    handle = open(os.path.join(out, ".lock"), "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise IndexBuildError(f"another 'pir-clip index' is writing {out}; wait for it to finish") from None
    return handle


def _remove_outputs(out: str, shard_dir: str) -> None:
    for name in (layout.MANIFEST, layout.EMBEDDINGS, layout.METADATA, layout.SKIPPED, layout.FAISS_INDEX):
        if os.path.exists(os.path.join(out, name)):
            os.remove(os.path.join(out, name))
    shutil.rmtree(shard_dir, ignore_errors=True)
    os.makedirs(shard_dir, exist_ok=True)


def _embed_slice(items: List[Item], ranks: Ranks, shard_dir: str, settings: Dict, loaded, args, device: str,
                 progress: bool) -> int:
    from .embed import embed_items
    writer = ShardWriter(shard_dir, f"{ranks.run_id}-r{ranks.rank:03d}", settings, loaded.embed_dim,
                         settings["dtype"], args.shard_size)
    desc = "embedding" if not ranks.distributed else f"embedding (rank {ranks.rank})"
    for batch in embed_items(loaded.model, loaded.preprocess, items, loaded.embed_dim, batch_size=args.batch_size,
                             workers=args.workers, device=device, precision=args.precision,
                             bands=settings["bands"], progress=progress, desc=desc):
        writer.add([items[i] for i in batch.positions], batch.statuses, batch.errors, batch.embeddings)
        ranks.heartbeat()
    writer.close()
    return len(items)


def run(args) -> Optional[Dict]:
    """Runs ``pir-clip index`` for parsed arguments (see :func:`pir_clip.cli.index_arguments`); returns the
    manifest on rank 0."""
    start = time.time()
    out = os.path.abspath(args.out)
    if args.dtype not in DTYPES:
        raise IndexBuildError(f"--dtype {args.dtype}: choose float16 or float32")
    if not args.paths and not args.scenes:
        raise InputError("nothing to index: give image folders, images or shards as PATH, and/or --scenes FILE...")
    listing = collect_files(args.paths, args.scenes or (), exclude=[out])
    if not listing.files:
        raise InputError(f"no images, .tar shards or scenes found in {', '.join(list(args.paths) + list(args.scenes or []))}"
                         f" ({listing.ignored} other files); nothing to index"
                         + (f" (the index in {args.out} is unchanged)" if os.path.exists(args.out) else ""))
    bands = parse_bands(args.bands)
    model_spec = ModelSpec.from_files(args.model_name, args.checkpoint, args.prior_pretrained)
    shard_dir = os.path.join(out, layout.SHARDS)
    os.makedirs(shard_dir, exist_ok=True)
    ranks = Ranks.from_env(shard_dir, timeout=args.rank_timeout)
    progress = not args.quiet and ranks.rank == 0
    device = args.device or _default_device(ranks)
    lock = _lock(out) if ranks.rank == 0 else None
    try:
        try:
            loaded = load_model(model_spec, device=device, precision=args.precision)
            settings = index_settings(model_spec, loaded.preprocess_cfg, bands, args.chip_size, args.stride, args.dtype)
            shards = _check_existing(out, shard_dir, settings, args.rebuild)
            if ranks.rank == 0:
                if args.rebuild:
                    _remove_outputs(out, shard_dir)
                removed = remove_temporary(shard_dir)
                if removed:
                    print(f"Removed {removed} half-written shard(s) of an interrupted run.", flush=True)
            if ranks.distributed:
                import torch.distributed as dist
                dist.barrier()  # no rank plans or writes while rank 0 removes old files
            shards = [] if args.rebuild else shards
            plan = plan_work(listing.files, _file_progress(shards), args.chip_size, args.stride, progress)
            plan.ignored = listing.ignored
            ranks.check_same(plan.digest(), "inputs")
            mine = [plan.pending[i] for i in split_evenly(len(plan.pending), ranks.world_size)[ranks.rank]]
            if mine:
                _embed_slice(mine, ranks, shard_dir, settings, loaded, args, device, progress)
        except BaseException as exc:
            ranks.failed(exc)
            raise
        ranks.finished()
        if ranks.rank != 0:
            return None
        ranks.wait_for_others()
        ranks.cleanup()
        return _finish(out, shard_dir, plan, settings, args, ranks, start, progress)
    finally:
        ranks.close()
        if lock is not None:
            lock.close()


def _default_device(ranks: Ranks) -> str:
    import torch
    if torch.cuda.is_available():
        return f"cuda:{ranks.local_rank % torch.cuda.device_count()}"
    return "cpu"


def _finish(out: str, shard_dir: str, plan: WorkPlan, settings: Dict, args, ranks: Ranks, start: float,
            progress: bool) -> Dict:
    shards = list_shards(shard_dir)
    previous = None
    if not plan.pending and not args.rebuild:
        try:
            previous = layout.read_manifest(out)
            layout.require_files(out, layout.EMBEDDINGS, layout.METADATA, layout.SKIPPED, layout.FAISS_INDEX)
        except layout.IndexFormatError:
            previous = None
    if previous is not None and previous["inputs"]["digest"] == plan.files_digest() \
            and previous.get("settings_digest") == settings_digest(settings) \
            and previous["index"].get("requested") == _requested_index(args):
        print(f"{out} is up to date: {previous['counts']['items']:,} items, nothing new or changed in the inputs.")
        return previous
    merged, stale = merge_shards(shards, plan.files)
    if merged is None or len(merged) == 0:
        raise IndexBuildError("no items were found in the inputs (empty shards or scenes?)"
                              + _unreadable_text(plan.unreadable) + f"; the index in {out} is unchanged")
    missing = _missing_items(merged, plan)
    if missing:
        raise IndexBuildError(f"{missing} items have no embedding although every rank finished; run the same "
                              "command again to embed them")
    run_stats = {"run_id": ranks.run_id, "embedded": len(plan.pending), "reused": len(merged) - len(plan.pending),
                 "world_size": ranks.world_size, "seconds": None}
    manifest = write_outputs(out, merged, plan, settings, args, run_stats, progress)
    compact_shards(stale, plan.files)
    run_stats["seconds"] = round(time.time() - start, 2)
    manifest["last_run"] = run_stats
    layout.write_json_atomic(os.path.join(out, layout.MANIFEST), manifest)
    print_summary(out, manifest, plan)
    return manifest


def _missing_items(merged: pa.Table, plan: WorkPlan) -> int:
    counts = merged.group_by(["path"]).aggregate([("item_index", "count"), ("item_count", "max")])
    present = {r["path"]: (r["item_index_count"], r["item_count_max"]) for r in counts.to_pylist()}
    unreadable = {p for p, _ in plan.unreadable}
    missing = sum(max(0, total - have) for have, total in present.values())
    # A file with no rows at all was unreadable or has no items (an empty shard), never half done.
    return missing + sum(1 for item in plan.pending if item.path not in present and item.path not in unreadable)


def _unreadable_text(unreadable: Sequence[Tuple[str, str]]) -> str:
    if not unreadable:
        return ""
    return f"; {len(unreadable)} file(s) could not be read, e.g. {unreadable[0][1]}"


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def print_summary(out: str, manifest: Dict, plan: WorkPlan) -> None:
    counts, run = manifest["counts"], manifest["last_run"]
    parts = [_plural(counts["images"], "image")] if counts["images"] else []
    if counts["shard_samples"]:
        parts.append(f"{_plural(counts['shard_samples'], 'shard sample')} from {_plural(counts['shards'], 'shard')}")
    if counts["chips"]:
        parts.append(f"{_plural(counts['chips'], 'chip')} from {_plural(counts['scenes'], 'scene')}")
    lines = [f"Index {out}: {counts['items']:,} items ({', '.join(parts)})"]
    rate = f" ({run['embedded'] / run['seconds']:.1f} items/s)" if run["embedded"] and run["seconds"] else ""
    ranks_text = f" on {run['world_size']} ranks" if run["world_size"] > 1 else ""
    lines.append(f"  this run: embedded {run['embedded']:,} new items{ranks_text}, reused {run['reused']:,} from "
                 f"earlier runs; {run['seconds']:.1f} s{rate}")
    if counts["nodata_chips"]:
        lines.append(f"  skipped {_plural(counts['nodata_chips'], 'nodata chip')}")
    if counts["errors"]:
        lines.append(f"  skipped {_plural(counts['errors'], 'image')} that did not decode:")
        lines += [f"    {e['source']}: {e['error']}" for e in manifest["errors"][:SHOW_ERRORS]]
        if counts["errors"] > SHOW_ERRORS:
            lines.append(f"    ... all of them in {os.path.join(out, layout.SKIPPED)}")
    if plan.unreadable:
        lines.append(f"  skipped {_plural(len(plan.unreadable), 'file')} that could not be read:")
        lines += [f"    {error}" for _, error in plan.unreadable[:SHOW_ERRORS]]
    lines += [f"  warning: {w}" for w in plan.warnings[:SHOW_ERRORS]]
    index = manifest["index"]
    kind = "exact inner product" if index["type"] == "flat" else "approximate, re-ranked exactly" \
        if index["search"].get("rerank") else "approximate"
    lines.append(f"  index: {index['type']} ({index['factory']}, {kind}) over {counts['items']:,} x "
                 f"{manifest['embed_dim']} {manifest['embeddings']['dtype']} embeddings, built in "
                 f"{index['build_seconds']:.1f} s" + (f"; {index['note']}" if index.get("note") else ""))
    lines.append(f"  wrote {layout.MANIFEST}, {layout.EMBEDDINGS}, {layout.METADATA}, {layout.SKIPPED}, "
                 f"{layout.FAISS_INDEX}; search it with: pir-clip search {out} --text \"...\"")
    print("\n".join(lines), flush=True)
