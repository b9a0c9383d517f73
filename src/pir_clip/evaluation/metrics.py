"""Remote-sensing image-text retrieval metrics, scored in bounded-memory chunks.

Protocol (METHOD.md section 6). Scores are cosine similarities of L2-normalised embeddings.

* image -> text R@K: an image is a hit when ANY of its captions is among its top K texts.
* text -> image R@K: a caption is a hit when its image is among its top K images.
* R@1/5/10 both ways in percent, and mR (their mean), under RemoteCLIP's names (``RECALL_NAMES``).

Exact, chunk-independent scores
-------------------------------
BLAS computes a float32 dot product differently depending on how the matrix is blocked, so a score matrix
built in chunks can differ in the last bit from the full matrix, and that flips exact or near ties
(duplicate captions are common in RSICD). Here every embedding is L2-normalised in float64 and rounded to a
fixed-point grid of ``2**-SCORE_FRACTION_BITS`` (``quantize_embeddings``); scores are integer dot products
of those grids, evaluated in float64. For unit vectors every partial sum is an integer below 2**51, so
float64 adds it exactly: the score of a pair is the same bit pattern whatever the chunking, the summation
order, the BLAS library or the device. The rounding moves a cosine by at most ``2 * sqrt(D) * 2**-26``
(7e-7 at D = 512, typically 1e-8), the size of float32's own error on these dot products. Reported scores
are ``integer / 2**(2 * SCORE_FRACTION_BITS)``.

Tie order (documented, used everywhere in this module)
------------------------------------------------------
Gallery items are ordered by score descending, then by index ascending. So the 0-based rank of a gallery
item j for a query is ``#{i : s_i > s_j} + #{i : s_i == s_j and i < j}``. For image -> text the image's
best-ranked ground-truth caption j* is the one with the highest score, the lowest index among equal
scores, and the image's rank is that caption's rank. R@K counts queries with rank < K.
"""
import math
from typing import Dict, NamedTuple, Sequence, Tuple, Union

import numpy as np
import torch
from tqdm import tqdm

SCORE_FRACTION_BITS = 25
# Normalised vectors have |x_i| <= 1, so grid values fit in int32 and, by Cauchy-Schwarz, every partial
# sum of a dot product stays below 2**51: float64 holds it exactly, and half-integers next to it too.
_GRID = float(2 ** SCORE_FRACTION_BITS)
_SCORE_SCALE = float(2 ** (2 * SCORE_FRACTION_BITS))
# Rows normalised per call: bounds the float64 temporary for the embeddings themselves.
_NORMALISE_ROWS = 8192

# Blocks of 2048 x 2048 scores: ~50 MB of temporaries, and no slower than 4096 on CPU (the float64 GEMM
# dominates either way).
DEFAULT_CHUNK_SIZE = 2048
DEFAULT_RECALL_AT = (1, 5, 10)

RECALL_NAMES = (
    "retrieval-image2text-R@1",
    "retrieval-image2text-R@5",
    "retrieval-image2text-R@10",
    "retrieval-text2image-R@1",
    "retrieval-text2image-R@5",
    "retrieval-text2image-R@10",
)
MEAN_RECALL_NAME = "retrieval-mean-recall"

EmbeddingLike = Union[torch.Tensor, np.ndarray]


class RetrievalRanks(NamedTuple):
    """0-based ranks under the module's tie order.

    image2text: ``(N_images,)`` int64, the rank of each image's best-ranked caption among all texts.
    text2image: ``(N_texts,)`` int64, the rank of each caption's image among all images.
    """
    image2text: torch.Tensor
    text2image: torch.Tensor


class TopK(NamedTuple):
    """Top-K gallery items per query, best first, ties by ascending gallery index.

    scores: ``(Q, K)`` float64 cosine similarities; indices: ``(Q, K)`` int64 gallery indices.
    """
    scores: torch.Tensor
    indices: torch.Tensor


def quantize_embeddings(embeddings: EmbeddingLike, name: str = "embeddings") -> torch.Tensor:
    """L2-normalise rows and round them to the fixed-point score grid.

    embeddings: ``(N, D)`` float tensor (float32/float16/bfloat16/float64) or array, any device.
    Returns ``(N, D)`` int32 on the same device, ``round(x / |x| * 2**SCORE_FRACTION_BITS)``.
    ``name`` is used in error messages.
    """
    x = torch.as_tensor(embeddings).detach()
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, D) tensor of embeddings, got shape {tuple(x.shape)}")
    if not (x.is_floating_point() or x.dtype in (torch.int8, torch.int16, torch.int32, torch.int64)):
        raise ValueError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); encode at least one item")
    out = torch.empty(x.shape, dtype=torch.int32, device=x.device)
    for start in range(0, x.shape[0], _NORMALISE_ROWS):
        block = x[start:start + _NORMALISE_ROWS].to(torch.float64, copy=True)
        norms = block.norm(dim=1, keepdim=True)
        # A NaN/Inf anywhere in a row makes its float64 norm non-finite: one check per row, not per value.
        if not torch.isfinite(norms).all():
            bad = start + int((~torch.isfinite(norms[:, 0])).nonzero()[0])
            raise ValueError(f"{name} row {bad} contains NaN or Inf; check the model's output (e.g. fp16 overflow)")
        if (norms == 0).any():
            bad = start + int((norms[:, 0] == 0).nonzero()[0])
            raise ValueError(f"{name} row {bad} is all zeros and has no direction; cosine similarity is undefined")
        out[start:start + block.shape[0]] = block.mul_(_GRID / norms).round_().to(torch.int32)
    return out


def _check_pair(queries: torch.Tensor, gallery: torch.Tensor, qname: str, gname: str) -> torch.Tensor:
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"{qname} have width {queries.shape[1]} but {gname} have width {gallery.shape[1]}; "
                         "encode both with the same model")
    # Scoring runs on the queries' device; the grid is exact, so moving the gallery changes no score.
    return gallery.to(queries.device)


def _check_chunk_size(chunk_size: int) -> int:
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    return int(chunk_size)


def _block_scores(query_grid: torch.Tensor, gallery_grid: torch.Tensor) -> torch.Tensor:
    """(Q, D) int32 x (G, D) int32 -> (Q, G) float64 exact integer scores."""
    return query_grid.to(torch.float64) @ gallery_grid.to(torch.float64).T


def similarity_matrix(queries: EmbeddingLike, gallery: EmbeddingLike) -> torch.Tensor:
    """The full cosine-similarity matrix, with the same exact scores the chunked functions use.

    queries: ``(Q, D)``, gallery: ``(G, D)``. Returns ``(Q, G)`` float64. Materialises Q x G values: for
    small sets, tests and plots only; use ``topk`` or ``retrieval_ranks`` for large ones.
    """
    q = quantize_embeddings(queries, "queries")
    g = _check_pair(q, quantize_embeddings(gallery, "gallery"), "queries", "gallery")
    return _block_scores(q, g) / _SCORE_SCALE


def _pair_scores(text_grid: torch.Tensor, image_grid: torch.Tensor, text_to_image: torch.Tensor,
                 chunk_size: int) -> torch.Tensor:
    """Score of every caption with its own image, ``(N_texts,)`` float64: exact, so bit-equal to the
    corresponding entries of any score block."""
    out = torch.empty(text_grid.shape[0], dtype=torch.float64, device=text_grid.device)
    for start in range(0, text_grid.shape[0], chunk_size):
        texts = text_grid[start:start + chunk_size].to(torch.float64)
        images = image_grid[text_to_image[start:start + chunk_size]].to(torch.float64)
        out[start:start + texts.shape[0]] = (texts * images).sum(dim=1)
    return out


def _text_to_image_tensor(text_to_image, num_images: int, num_texts: int, device) -> torch.Tensor:
    t2i = torch.as_tensor(text_to_image, dtype=torch.int64).to(device)
    if t2i.ndim != 1 or t2i.shape[0] != num_texts:
        raise ValueError(f"text_to_image must list one image index per caption: expected {num_texts} entries "
                         f"(rows of text_embeddings), got shape {tuple(t2i.shape)}")
    if num_texts and (int(t2i.min()) < 0 or int(t2i.max()) >= num_images):
        raise ValueError(f"text_to_image holds image indices in [{int(t2i.min())}, {int(t2i.max())}] but "
                         f"image_embeddings has {num_images} rows; indices must lie in [0, {num_images})")
    captions_per_image = torch.bincount(t2i, minlength=num_images)
    if (captions_per_image == 0).any():
        missing = (captions_per_image == 0).nonzero()[:, 0].tolist()
        raise ValueError(f"{len(missing)} image(s) have no caption in text_to_image (first indices: "
                         f"{missing[:5]}); image->text recall is undefined for them, drop them from the set")
    return t2i


def retrieval_ranks(image_embeddings: EmbeddingLike, text_embeddings: EmbeddingLike,
                    text_to_image: Union[Sequence[int], torch.Tensor],
                    chunk_size: int = DEFAULT_CHUNK_SIZE, progress: bool = False) -> RetrievalRanks:
    """0-based ranks of the ground truth in both directions, without the full score matrix.

    image_embeddings: ``(N_images, D)``; text_embeddings: ``(N_texts, D)``; text_to_image: ``(N_texts,)``
    image index of each caption. Every image needs at least one caption. Scores one
    ``chunk_size x chunk_size`` block of the image-text matrix at a time and counts, for both directions at
    once, how many gallery items are ordered before the ground truth (module docstring: tie order). Extra
    memory is about ``chunk_size**2 * 12`` bytes (a float64 block and masks; 50 MB at the default 2048)
    plus ``(N_images + N_texts) * D * 4`` bytes for the quantised embeddings.
    The result does not depend on ``chunk_size``. ``progress``: show a tqdm bar over the blocks.
    """
    chunk_size = _check_chunk_size(chunk_size)
    images = quantize_embeddings(image_embeddings, "image_embeddings")
    texts = _check_pair(images, quantize_embeddings(text_embeddings, "text_embeddings"),
                        "image_embeddings", "text_embeddings")
    num_images, num_texts = images.shape[0], texts.shape[0]
    device = images.device
    t2i = _text_to_image_tensor(text_to_image, num_images, num_texts, device)

    # The ground-truth score of caption j is the same pair score for both directions.
    truth_scores = _pair_scores(texts, images, t2i, chunk_size)
    best_scores = torch.full((num_images,), -math.inf, dtype=torch.float64, device=device)
    best_scores.scatter_reduce_(0, t2i, truth_scores, reduce="amax")
    text_ids = torch.arange(num_texts, device=device)
    is_best = truth_scores == best_scores[t2i]
    best_texts = torch.full((num_images,), num_texts, dtype=torch.int64, device=device)
    best_texts.scatter_reduce_(0, t2i, torch.where(is_best, text_ids, num_texts), reduce="amin")

    image2text = torch.zeros(num_images, dtype=torch.int64, device=device)
    text2image = torch.zeros(num_texts, dtype=torch.int64, device=device)
    bar = tqdm(total=math.ceil(num_images / chunk_size) * math.ceil(num_texts / chunk_size), unit="block",
               desc="scoring", disable=not progress)
    for i0 in range(0, num_images, chunk_size):
        image_block = images[i0:i0 + chunk_size].to(torch.float64)
        i1 = i0 + image_block.shape[0]
        row_best, row_best_text = best_scores[i0:i1], best_texts[i0:i1]
        for t0 in range(0, num_texts, chunk_size):
            t1 = min(t0 + chunk_size, num_texts)
            scores = image_block @ texts[t0:t1].to(torch.float64).T  # (images, texts), exact integers
            image2text[i0:i1] += _count_ahead(scores, row_best, row_best_text, t0, t1, dim=1)
            text2image[t0:t1] += _count_ahead(scores, truth_scores[t0:t1], t2i[t0:t1], i0, i1, dim=0)
            bar.update()
    bar.close()
    return RetrievalRanks(image2text=image2text, text2image=text2image)


def _count_ahead(scores: torch.Tensor, truth: torch.Tensor, truth_index: torch.Tensor, start: int, stop: int,
                 dim: int) -> torch.Tensor:
    """How many gallery items of one block are ordered before each query's ground truth.

    scores: ``(A, B)`` exact integer scores of one block; the gallery runs along ``dim`` and covers gallery
    indices ``[start, stop)``. truth, truth_index: ``(queries,)`` the ground truth's score and gallery index.
    Counts ``s > truth`` plus ``s == truth`` at indices below ``truth_index`` (the module's tie order).
    """
    # Scores are integers and |score| < 2**51, so "s >= t" is "s > t - 0.5", exactly. Queries whose ground
    # truth lies after the whole block count its ties as ahead in the same single comparison.
    threshold = truth - 0.5 * (truth_index >= stop)
    threshold = threshold[:, None] if dim == 1 else threshold[None, :]
    counts = _count_true(scores > threshold, dim)
    # Queries whose ground truth lies inside the block count ties only below its index. Equal scores are
    # rare (the ground truth itself, duplicate captions), so list them sparsely instead of building more
    # full-block masks; even a collapsed model with all scores equal costs 16 bytes per block entry.
    inside = (truth_index > start) & (truth_index < stop)
    if inside.any():
        pairs = (scores == (truth[:, None] if dim == 1 else truth[None, :])).nonzero()
        query, gallery = (pairs[:, 0], pairs[:, 1]) if dim == 1 else (pairs[:, 1], pairs[:, 0])
        keep = inside[query] & (gallery + start < truth_index[query])
        counts += torch.bincount(query[keep], minlength=counts.numel())
    return counts


def _count_true(mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Number of True entries along ``dim``, int64. Reducing a bool tensor first casts all of it to the
    accumulator type; int16 keeps that copy at twice the mask's size instead of eight times."""
    dtype = torch.int16 if mask.shape[dim] <= torch.iinfo(torch.int16).max else torch.int32
    return mask.sum(dim=dim, dtype=dtype).to(torch.int64)


def metrics_from_ranks(ranks: RetrievalRanks, recall_at: Sequence[int] = DEFAULT_RECALL_AT) -> Dict[str, float]:
    """Recall@K in percent, mR, and mean/median 1-based ranks from ``retrieval_ranks``' output.

    Keys: ``retrieval-{image2text,text2image}-R@K`` for K in ``recall_at``, ``retrieval-mean-recall`` (mean of
    all those recalls), ``retrieval-{image2text,text2image}-{mean,median}-rank`` (1 = best; the median of an
    even count is the mean of the two middle ranks).
    """
    metrics: Dict[str, float] = {}
    recalls = []
    for direction, rank in (("image2text", ranks.image2text), ("text2image", ranks.text2image)):
        rank = rank.detach().cpu()
        for k in recall_at:
            value = 100.0 * (rank < k).double().mean().item()
            metrics[f"retrieval-{direction}-R@{k}"] = value
            recalls.append(value)
    metrics[MEAN_RECALL_NAME] = float(np.mean(recalls))
    for direction, rank in (("image2text", ranks.image2text), ("text2image", ranks.text2image)):
        one_based = rank.detach().cpu().numpy() + 1
        metrics[f"retrieval-{direction}-mean-rank"] = float(one_based.mean())
        metrics[f"retrieval-{direction}-median-rank"] = float(np.median(one_based))
    return metrics


def retrieval_metrics(image_embeddings: EmbeddingLike, text_embeddings: EmbeddingLike,
                      text_to_image: Union[Sequence[int], torch.Tensor],
                      chunk_size: int = DEFAULT_CHUNK_SIZE,
                      recall_at: Sequence[int] = DEFAULT_RECALL_AT, progress: bool = False) -> Dict[str, float]:
    """RS retrieval metrics (R@1/5/10 both ways, mR, mean/median rank) for one evaluation set.

    image_embeddings: ``(N_images, D)``; text_embeddings: ``(N_texts, D)``; text_to_image: ``(N_texts,)``.
    See ``retrieval_ranks`` for memory and ``metrics_from_ranks`` for the keys.
    """
    ranks = retrieval_ranks(image_embeddings, text_embeddings, text_to_image, chunk_size, progress)
    return metrics_from_ranks(ranks, recall_at)


def _ordered_block_topk(scores: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Top-k of each row of ``(Q, G)`` scores in the module's tie order -> ``(Q, k)`` scores, indices.

    torch.topk returns the right k-th value but an unspecified choice among tied items, so take everything
    above the k-th value plus the lowest-index items equal to it, then sort stably by score.
    """
    kth = torch.topk(scores, k, dim=1).values[:, -1:]
    above = scores > kth
    at_kth = scores == kth
    still_needed = k - above.sum(dim=1, keepdim=True)
    take = above | (at_kth & (at_kth.cumsum(dim=1) <= still_needed))
    # nonzero is row-major, so each row's k columns come out in ascending index order.
    cols = take.nonzero()[:, 1].view(scores.shape[0], k)
    values = scores.gather(1, cols)
    order = torch.sort(values, dim=1, descending=True, stable=True).indices
    return values.gather(1, order), cols.gather(1, order)


def topk(queries: EmbeddingLike, gallery: EmbeddingLike, k: int,
         chunk_size: int = DEFAULT_CHUNK_SIZE) -> TopK:
    """The ``min(k, G)`` best gallery items per query, best first, ties by ascending gallery index.

    queries: ``(Q, D)``, gallery: ``(G, D)``. Returns ``TopK(scores (Q, k) float64, indices (Q, k) int64)``
    on the queries' device. Scores one ``chunk_size x chunk_size`` block at a time; the result does not
    depend on ``chunk_size``.
    """
    chunk_size = _check_chunk_size(chunk_size)
    if int(k) < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    q = quantize_embeddings(queries, "queries")
    g = _check_pair(q, quantize_embeddings(gallery, "gallery"), "queries", "gallery")
    k = min(int(k), g.shape[0])
    out_scores = torch.empty((q.shape[0], k), dtype=torch.float64, device=q.device)
    out_indices = torch.empty((q.shape[0], k), dtype=torch.int64, device=q.device)
    for q0 in range(0, q.shape[0], chunk_size):
        query_block = q[q0:q0 + chunk_size].to(torch.float64)
        best_scores = best_indices = None
        for g0 in range(0, g.shape[0], chunk_size):
            block = query_block @ g[g0:g0 + chunk_size].to(torch.float64).T
            scores, indices = _ordered_block_topk(block, min(k, block.shape[1]))
            indices = indices + g0
            if best_scores is None:
                best_scores, best_indices = scores, indices
                continue
            # Earlier blocks hold lower indices, so putting them first keeps ties index-ascending under a
            # stable sort.
            scores = torch.cat([best_scores, scores], dim=1)
            indices = torch.cat([best_indices, indices], dim=1)
            order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
            best_scores, best_indices = scores.gather(1, order), indices.gather(1, order)
        out_scores[q0:q0 + query_block.shape[0]] = best_scores / _SCORE_SCALE
        out_indices[q0:q0 + query_block.shape[0]] = best_indices
    return TopK(scores=out_scores, indices=out_indices)


def chance_recall(num_images: int, captions_per_image: int, k: int) -> Tuple[float, float]:
    """Expected (image->text, text->image) R@K in percent for random embeddings.

    With n images of c captions each: text->image = k / n; image->text = 1 - C(n*c - c, k) / C(n*c, k)
    (probability that at least one of the c captions lands in a random top k of n*c texts).
    """
    n_texts = num_images * captions_per_image
    t2i = min(k, num_images) / num_images
    i2t = 1.0 - math.comb(n_texts - captions_per_image, k) / math.comb(n_texts, k) if k <= n_texts else 1.0
    return 100.0 * i2t, 100.0 * t2i
