"""Clustered unit vectors shaped like an archive's image embeddings, for index tests and benchmarks.

Embeddings of real imagery are not uniform on the sphere: tiles of one kind of place crowd together, and
within a crowd they vary along a few directions (season, viewing angle, density) more than along the rest.
:func:`clustered_unit_vectors` draws that: clusters of about ``cluster_size`` vectors around random centres,
each cluster spread along its own random ``intrinsic``-dimensional subspace (``spread``) plus isotropic
noise (``noise``), normalised. With the defaults, at D = 512 a vector's nearest neighbour has cosine about
0.82 and its 10th about 0.74, while unrelated vectors are near 0. Held-out draws from the same clusters
(``queries``) play the queries. Deterministic per ``seed``.
"""
from typing import Tuple

import numpy as np


def clustered_unit_vectors(n: int, dim: int, *, queries: int = 0, cluster_size: int = 100, intrinsic: int = 16,
                           spread: float = 0.7, noise: float = 0.3, seed: int = 0,
                           dtype=np.float16) -> Tuple[np.ndarray, np.ndarray]:
    """``(vectors (n, dim), queries (queries, dim))``, L2-normalised, in ``dtype`` (queries float32)."""
    rng = np.random.default_rng(seed)
    total = n + queries
    n_clusters = max(1, total // cluster_size)
    sizes = np.bincount(rng.integers(0, n_clusters, total), minlength=n_clusters)
    slots = rng.permutation(total)  # rows of each cluster are scattered, as in a real archive
    out = np.empty((total, dim), dtype=np.float32 if queries else dtype)
    start = 0
    for size in sizes:
        centre = rng.standard_normal(dim).astype(np.float32)
        centre /= np.linalg.norm(centre)
        basis = rng.standard_normal((intrinsic, dim)).astype(np.float32) / np.sqrt(intrinsic * dim)
        x = (centre + spread * (rng.standard_normal((size, intrinsic)).astype(np.float32) @ basis)
             + noise / np.sqrt(dim) * rng.standard_normal((size, dim)).astype(np.float32))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[slots[start:start + size]] = x
        start += size
    if not queries:
        return out, np.zeros((0, dim), np.float32)
    return out[queries:].astype(dtype), np.ascontiguousarray(out[:queries])
