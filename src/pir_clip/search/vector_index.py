"""The vector index: FAISS over L2-normalised embeddings, inner product (= cosine similarity).

Index types (``--index-type``), each a FAISS ``index_factory`` string chosen from the embedding count N and
width D:

- ``flat`` (default): ``Flat``, exact. Scores equal a brute-force dot product over the stored embeddings.
- ``ivf-pq``: ``IVF{nlist},PQ{m}x4fs`` -- an inverted file over ``nlist`` k-means cells (about sqrt(N),
  a power of two) with 4-bit fast-scan product-quantised codes of ``m = D/8`` sub-vectors. Queries visit
  ``nprobe`` cells; the best ``rerank x k`` candidates are then scored exactly with the stored embeddings
  (a memory-mapped ``embeddings.npy``), so the returned scores are exact and the codes only choose
  candidates. The index file holds the codes alone (~D/16 bytes a vector).
- ``hnsw``: ``HNSW{M},SQfp16`` (``HNSW{M},Flat`` for float32 embeddings) -- a graph over the vectors
  themselves; queries explore ``ef_search`` candidates. Scores are exact already.
- ``--index-factory STRING``: any other FAISS factory string, with the same rerank step.

Defaults (``nlist``, ``m``, ``nprobe``, ``rerank``, ``M``, ``ef_search``) come from
``scripts/bench_search.py`` at 1M x 512 on 2 cores (README, "Search performance"). Query-time parameters
are passed per call (FAISS ``SearchParameters``), so concurrent searches with different settings are safe.
Results are ordered by score, ties by id, whatever the index.
"""
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np

INDEX_TYPES = ("flat", "ivf-pq", "hnsw")
DEFAULT_NPROBE = 32
DEFAULT_RERANK = 10
DEFAULT_HNSW_M = 32
DEFAULT_EF_CONSTRUCTION = 100
DEFAULT_EF_SEARCH = 256
# Below this many vectors an approximate index is no faster than an exact one (and k-means has too few
# points to train on), so the exact index is built instead.
MIN_APPROXIMATE = 1000
TRAIN_POINTS_PER_CELL = 64
ADD_CHUNK = 65536
PARALLEL_MIN_QUERIES = 16  # fewer queries than this are searched on the calling thread only
RERANK_CHUNK = 64  # queries re-ranked at once (bounds the gathered candidate vectors)


def _faiss():
    import faiss
    return faiss


@dataclass
class IndexSpec:
    """What to build and how to query it; recorded in the manifest."""
    type: str
    factory: str
    build: Dict[str, int] = field(default_factory=dict)  # nlist, pq_m, hnsw_m, ef_construction
    search: Dict[str, int] = field(default_factory=dict)  # nprobe, ef_search, rerank defaults
    note: Optional[str] = None

    def to_dict(self) -> Dict:
        return asdict(self)

    @property
    def reranks(self) -> bool:
        return self.search.get("rerank", 0) > 0


def default_nlist(n: int) -> int:
    """About sqrt(N) cells, a power of two, with enough points per cell for k-means."""
    target = 2 ** round(math.log2(max(1.0, math.sqrt(n))))
    return int(max(1, min(target, n // 39, 65536)))


def default_pq_m(dim: int) -> int:
    """D/8 sub-quantizers (8 dimensions each), the largest even divisor of D not above it."""
    for m in range(max(2, dim // 8), 1, -1):
        if dim % m == 0 and m % 2 == 0:
            return m
    raise ValueError(f"embedding width {dim} has no even divisor for product quantisation; use --index-type "
                     "flat or hnsw")


def index_spec(index_type: str, n: int, dim: int, dtype: str = "float16", *, factory: Optional[str] = None,
               nlist: Optional[int] = None, pq_m: Optional[int] = None, hnsw_m: Optional[int] = None,
               ef_construction: Optional[int] = None, nprobe: Optional[int] = None,
               ef_search: Optional[int] = None, rerank: Optional[int] = None) -> IndexSpec:
    """The spec for ``index_type`` (or a raw ``factory`` string) over ``n`` vectors of width ``dim``."""
    if factory:
        return IndexSpec("factory", factory, {}, {"nprobe": nprobe or DEFAULT_NPROBE,
                                                  "ef_search": ef_search or DEFAULT_EF_SEARCH,
                                                  "rerank": DEFAULT_RERANK if rerank is None else rerank})
    if index_type not in INDEX_TYPES:
        raise ValueError(f"--index-type {index_type!r}: choose one of {', '.join(INDEX_TYPES)}")
    if index_type != "flat" and n < MIN_APPROXIMATE:
        return IndexSpec("flat", "Flat", note=f"{n} vectors: built an exact index instead of {index_type} "
                                               f"(approximate indexes pay off from {MIN_APPROXIMATE:,} vectors)")
    if index_type == "flat":
        return IndexSpec("flat", "Flat")
    if index_type == "ivf-pq":
        nlist = nlist or default_nlist(n)
        pq_m = pq_m or default_pq_m(dim)
        if dim % pq_m:
            raise ValueError(f"--pq-m {pq_m} must divide the embedding width {dim}")
        return IndexSpec("ivf-pq", f"IVF{nlist},PQ{pq_m}x4fs", {"nlist": nlist, "pq_m": pq_m},
                         {"nprobe": nprobe or DEFAULT_NPROBE, "rerank": DEFAULT_RERANK if rerank is None else rerank})
    hnsw_m = hnsw_m or DEFAULT_HNSW_M
    storage = "SQfp16" if dtype == "float16" else "Flat"  # fp16 vectors are stored exactly by SQfp16
    return IndexSpec("hnsw", f"HNSW{hnsw_m},{storage}",
                     {"hnsw_m": hnsw_m, "ef_construction": ef_construction or DEFAULT_EF_CONSTRUCTION},
                     {"ef_search": ef_search or DEFAULT_EF_SEARCH, "rerank": 0 if rerank is None else rerank})


def _float32_rows(embeddings: np.ndarray, start: int, stop: int) -> np.ndarray:
    return np.ascontiguousarray(embeddings[start:stop], dtype=np.float32)


def build_faiss_index(embeddings: np.ndarray, spec: IndexSpec, *, progress: bool = True, seed: int = 0,
                      reuse=None):
    """Builds the FAISS index of ``embeddings`` (N, D) float16/float32 per ``spec``.

    ``reuse``: a trained index of the same factory string (the previous build); its trained quantizers are
    kept and only the vectors are added again, which skips k-means for IVF indexes.
    """
    from tqdm import tqdm
    faiss = _faiss()
    n, dim = embeddings.shape
    if spec.factory == "Flat":
        return _build_flat(embeddings)
    if reuse is not None and reuse.is_trained and reuse.d == dim and not _is_hnsw(reuse):
        index = reuse
        index.reset()
    else:
        index = faiss.index_factory(dim, spec.factory, faiss.METRIC_INNER_PRODUCT)
        if spec.type == "hnsw":
            faiss.downcast_index(index).hnsw.efConstruction = spec.build.get("ef_construction",
                                                                             DEFAULT_EF_CONSTRUCTION)
        if not index.is_trained:
            nlist = spec.build.get("nlist", 256)
            sample = min(n, max(TRAIN_POINTS_PER_CELL * nlist, 10_000))
            rows = np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))
            ivf = _find_ivf(index)
            if ivf is not None:
                ivf.cp.max_points_per_centroid = TRAIN_POINTS_PER_CELL
                ivf.cp.seed = seed
            index.train(np.ascontiguousarray(embeddings[rows], dtype=np.float32))
    with tqdm(total=n, desc=f"adding to {spec.factory}", unit="vec", disable=not progress) as bar:
        for start in range(0, n, ADD_CHUNK):
            stop = min(n, start + ADD_CHUNK)
            index.add(_float32_rows(embeddings, start, stop))
            bar.update(stop - start)
    return index


def _build_flat(embeddings: np.ndarray):
    """The exact index, filled in place: its float32 storage is sized once and written chunk by chunk, so
    memory peaks at the index itself (adding chunks would grow the storage by doubling, and adding all at
    once needs a float32 copy of everything)."""
    faiss = _faiss()
    n, dim = embeddings.shape
    index = faiss.IndexFlatIP(dim)
    index.codes.resize(n * dim * 4)
    if n:
        storage = faiss.rev_swig_ptr(index.codes.data(), n * dim * 4).view(np.float32).reshape(n, dim)
        for start in range(0, n, ADD_CHUNK):
            storage[start:start + ADD_CHUNK] = embeddings[start:start + ADD_CHUNK]
    index.ntotal = n
    return index


def _find_ivf(index):
    faiss = _faiss()
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _is_hnsw(index) -> bool:
    faiss = _faiss()
    return isinstance(faiss.downcast_index(index), faiss.IndexHNSW)


def _search_parameters(index, nprobe: int, ef_search: int, keep: list):
    """Per-call FAISS SearchParameters for ``index`` (``keep`` holds nested objects alive)."""
    faiss = _faiss()
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        inner = _search_parameters(index.index, nprobe, ef_search, keep)
        if inner is None:
            return None
        keep.append(inner)
        params = faiss.SearchParametersPreTransform()
        params.index_params = inner
        return params
    if isinstance(index, faiss.IndexIVF):
        return faiss.SearchParametersIVF(nprobe=int(nprobe))
    if isinstance(index, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(efSearch=int(ef_search))
    return None


class VectorIndex:
    """A FAISS index plus the embeddings it was built from (for exact re-ranking and "more like this")."""

    def __init__(self, index, embeddings: np.ndarray, spec: IndexSpec):
        if index.ntotal != len(embeddings):
            raise ValueError(f"the FAISS index holds {index.ntotal} vectors but there are {len(embeddings)} "
                             "embeddings; the index folder is inconsistent: run pir-clip index again")
        self.index, self.embeddings, self.spec = index, embeddings, spec

    @classmethod
    def build(cls, embeddings: np.ndarray, spec: IndexSpec, **kwargs) -> "VectorIndex":
        return cls(build_faiss_index(embeddings, spec, **kwargs), embeddings, spec)

    @classmethod
    def load(cls, index_path: str, embeddings: np.ndarray, spec: IndexSpec) -> "VectorIndex":
        faiss = _faiss()
        return cls(faiss.read_index(os.fspath(index_path)), embeddings, spec)

    def save(self, path: str) -> None:
        _faiss().write_index(self.index, os.fspath(path))

    def __len__(self) -> int:
        return len(self.embeddings)

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    def search(self, queries: np.ndarray, k: int, *, nprobe: Optional[int] = None, ef_search: Optional[int] = None,
               rerank: Optional[int] = None, exclude: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, ids), each (Q, k') with k' = min(k, N), best first (ties by id); where an
        approximate index found fewer than k' results for a query, its row ends with id -1, score -inf.

        ``queries`` (Q, D) float, L2-normalised. ``exclude`` (Q,): one id per query to leave out (the item
        itself for "more like this"), or -1. Parameters left ``None`` take the spec's defaults.
        """
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.shape[1] != self.dim:
            raise ValueError(f"query width {queries.shape[1]} does not match the index's {self.dim}")
        n = len(self)
        k = max(0, min(int(k), n - (0 if exclude is None else 1)))
        if k == 0 or n == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        defaults = self.spec.search
        rerank = defaults.get("rerank", 0) if rerank is None else rerank
        want = k + (exclude is not None)
        fetch = min(n, want * rerank) if rerank > 0 else want
        keep: list = []
        params = _search_parameters(self.index, nprobe or defaults.get("nprobe", DEFAULT_NPROBE),
                                    ef_search or defaults.get("ef_search", DEFAULT_EF_SEARCH), keep)
        scores, ids = self._faiss_search(queries, fetch, params)
        if rerank > 0:
            scores = self.exact_scores(queries, ids)
        if exclude is not None:
            scores = np.where(ids == np.asarray(exclude)[:, None], -np.inf, scores)
        scores = np.where(ids < 0, -np.inf, scores)
        order = np.lexsort((ids, -scores), axis=1)[:, :k]
        top_scores = np.take_along_axis(scores, order, 1).astype(np.float32)
        top_ids = np.where(np.isfinite(top_scores), np.take_along_axis(ids, order, 1), -1).astype(np.int64)
        return top_scores, top_ids

    def _faiss_search(self, queries: np.ndarray, k: int, params):
        # A few queries are answered on this thread alone: OpenMP's fork/join costs more than it saves on them
        # (a single flat query over 20k vectors took 24 ms on 2 busy cores with 2 threads, 2.6 ms with 1), and
        # a server answers concurrent queries on concurrent threads. The setting is per calling thread.
        faiss = _faiss()
        if len(queries) >= PARALLEL_MIN_QUERIES:
            return self.index.search(queries, k, params=params)
        previous = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            return self.index.search(queries, k, params=params)
        finally:
            faiss.omp_set_num_threads(previous)

    def exact_scores(self, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Inner products of each query with the stored embeddings of its candidate ``ids`` (Q, C)."""
        safe = np.where(ids < 0, 0, ids)
        out = np.empty(ids.shape, dtype=np.float32)
        for start in range(0, len(queries), RERANK_CHUNK):
            block = safe[start:start + RERANK_CHUNK]
            wanted = np.unique(block)
            vectors = np.asarray(self.embeddings[wanted], dtype=np.float32)  # one gather from the memory map
            rows = np.searchsorted(wanted, block)
            out[start:start + RERANK_CHUNK] = np.einsum("qd,qcd->qc", queries[start:start + RERANK_CHUNK],
                                                        vectors[rows])
        return out
