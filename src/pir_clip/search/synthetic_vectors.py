"""Clustered unit vectors shaped like an archive's image embeddings, for index tests and benchmarks.

Embeddings of real imagery are not uniform on the sphere. CLIP-style image embeddings share a common
direction (they fill a narrow cone: two unrelated images still have a cosine of 0.2-0.5), they group by theme
(kinds of place), and within a theme tiles of one place crowd together and vary along a few directions
(season, viewing angle, density) more than along the rest. :func:`clustered_unit_vectors` draws that:

- a common ``axis``, weighted ``cone``;
- ``groups`` of ``group_size`` clusters sharing a random direction, weighted ``group``;
- clusters of about ``cluster_size`` vectors around centre = normalise(cone * axis + group * group_dir +
  own_dir), each spread along its own random ``intrinsic``-dimensional subspace (``spread``) plus isotropic
  noise (``noise``); every vector is normalised.

With the defaults at D = 512: a vector's nearest neighbour has cosine ~0.82 and its 10th ~0.75; the 100th
(another cluster of its group) ~0.5; unrelated vectors ~0.24. ``cone=0, group=0`` gives unrelated clusters
(no common structure), the hardest case for graph indexes. Held-out draws from the same clusters (``queries``)
play the queries. Deterministic per ``seed``; memory is the output arrays only.
"""
from typing import Tuple

import numpy as np


def clustered_unit_vectors(n: int, dim: int, *, queries: int = 0, cluster_size: int = 100, group_size: int = 100,
                           intrinsic: int = 16, spread: float = 0.7, noise: float = 0.3, cone: float = 1.0,
                           group: float = 0.8, seed: int = 0, dtype=np.float16) -> Tuple[np.ndarray, np.ndarray]:
    """``(vectors (n, dim) dtype, queries (queries, dim) float32)``, L2-normalised (module docstring)."""
    rng = np.random.default_rng(seed)
    total = n + queries
    n_clusters = max(1, total // cluster_size)
    n_groups = max(1, n_clusters // group_size)
    axis = rng.standard_normal(dim).astype(np.float32)
    axis /= np.linalg.norm(axis)
    group_dirs = rng.standard_normal((n_groups, dim)).astype(np.float32)
    group_dirs /= np.linalg.norm(group_dirs, axis=1, keepdims=True)
    sizes = np.bincount(rng.integers(0, n_clusters, total), minlength=n_clusters)
    slots = rng.permutation(total)  # rows of a cluster are scattered, as in a real archive; the first are queries
    vectors = np.empty((n, dim), dtype=dtype)
    held_out = np.empty((queries, dim), dtype=np.float32)
    start = 0
    for cluster, size in enumerate(sizes):
        own = rng.standard_normal(dim).astype(np.float32)
        centre = cone * axis + group * group_dirs[cluster % n_groups] + own / np.linalg.norm(own)
        centre /= np.linalg.norm(centre)
        basis = rng.standard_normal((intrinsic, dim)).astype(np.float32) / np.sqrt(intrinsic * dim)
        x = (centre + spread * (rng.standard_normal((size, intrinsic)).astype(np.float32) @ basis)
             + noise / np.sqrt(dim) * rng.standard_normal((size, dim)).astype(np.float32))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        rows = slots[start:start + size]
        start += size
        is_query = rows < queries
        held_out[rows[is_query]] = x[is_query]
        vectors[rows[~is_query] - queries] = x[~is_query]
    return vectors, held_out
