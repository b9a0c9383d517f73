import math

import pytest
import torch

from pir_clip.evaluation.metrics import (MEAN_RECALL_NAME, RECALL_NAMES, chance_recall, quantize_embeddings, retrieval_metrics,
                              retrieval_ranks, similarity_matrix, topk)

CAPTIONS_PER_IMAGE = 5


def naive_metrics(image_embeddings, text_embeddings, text_to_image, ks=(1, 5, 10)):
    """Reference: the full score matrix and explicit per-query sorts in the documented tie order
    (score descending, then index ascending)."""
    scores = similarity_matrix(image_embeddings, text_embeddings).tolist()  # (images, texts)
    num_images, num_texts = len(scores), len(scores[0])
    i2t_ranks = []
    for i in range(num_images):
        order = sorted(range(num_texts), key=lambda t: (-scores[i][t], t))
        i2t_ranks.append(min(order.index(t) for t in range(num_texts) if text_to_image[t] == i))
    t2i_ranks = []
    for t in range(num_texts):
        order = sorted(range(num_images), key=lambda i: (-scores[i][t], i))
        t2i_ranks.append(order.index(text_to_image[t]))
    metrics = {}
    for name, ranks in (("image2text", i2t_ranks), ("text2image", t2i_ranks)):
        for k in ks:
            metrics[f"retrieval-{name}-R@{k}"] = 100.0 * sum(r < k for r in ranks) / len(ranks)
    metrics[MEAN_RECALL_NAME] = sum(metrics.values()) / len(metrics)
    return metrics, i2t_ranks, t2i_ranks


def tied_dataset(seed=0, num_images=24, dim=8):
    """Random embeddings with the ties real RS sets have: an image whose captions are all identical,
    captions shared between images, duplicate images, and coarse values that give equal scores."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(num_images, dim, generator=g)
    texts = images.repeat_interleave(CAPTIONS_PER_IMAGE, 0) + 1.5 * torch.randn(num_images * 5, dim, generator=g)
    texts[5:10] = texts[5]                       # image 1: five identical captions
    texts[17] = texts[40]                        # the same caption on images 3 and 8
    texts[60] = texts[61] = texts[3]             # a caption of image 0 reused twice on image 12
    images[7] = images[2]                        # two identical images
    images[11] = images[5] = images[9]
    coarse = torch.randint(-1, 2, (4, dim), generator=g).float()
    coarse[coarse.abs().sum(1) == 0, 0] = 1.0
    images[-4:] = coarse                          # small-integer vectors: many equal dot products
    texts[-20:] = coarse.repeat_interleave(CAPTIONS_PER_IMAGE, 0).roll(1, dims=1)
    text_to_image = torch.arange(num_images).repeat_interleave(CAPTIONS_PER_IMAGE).tolist()
    return images, texts, text_to_image


def test_metric_names_are_remoteclips():
    images, texts, t2i = tied_dataset()
    metrics = retrieval_metrics(images, texts, t2i)
    assert set(RECALL_NAMES) | {MEAN_RECALL_NAME} <= set(metrics)
    assert RECALL_NAMES[0] == "retrieval-image2text-R@1" and RECALL_NAMES[-1] == "retrieval-text2image-R@10"
    assert MEAN_RECALL_NAME == "retrieval-mean-recall"
    assert metrics[MEAN_RECALL_NAME] == pytest.approx(sum(metrics[n] for n in RECALL_NAMES) / 6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_naive_reference_with_ties(seed):
    images, texts, t2i = tied_dataset(seed)
    scores = similarity_matrix(images, texts)
    assert (scores[:, :, None] == scores[:, None, :]).sum() > scores.numel() + 100  # the data really has ties
    expected, i2t_ranks, t2i_ranks = naive_metrics(images, texts, t2i)
    ranks = retrieval_ranks(images, texts, t2i)
    assert ranks.image2text.tolist() == i2t_ranks
    assert ranks.text2image.tolist() == t2i_ranks
    metrics = retrieval_metrics(images, texts, t2i)
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, abs=1e-9), name


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 16, 33, 120, 1000])
def test_chunked_equals_full_matrix_exactly(chunk_size):
    images, texts, t2i = tied_dataset(seed=3)
    full = retrieval_ranks(images, texts, t2i, chunk_size=10_000)  # one block holds the whole matrix
    chunked = retrieval_ranks(images, texts, t2i, chunk_size=chunk_size)
    assert torch.equal(full.image2text, chunked.image2text)
    assert torch.equal(full.text2image, chunked.text2image)
    assert retrieval_metrics(images, texts, t2i, chunk_size=chunk_size) == retrieval_metrics(images, texts, t2i)


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 4, 5, 7, 100])
def test_all_scores_tied_break_by_lower_index(chunk_size):
    images = torch.tensor([[1.0, 0.0]]).repeat(4, 1)          # identical images
    texts = torch.tensor([[2.0, 0.0]]).repeat(10, 1)          # identical captions: every score ties
    t2i = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3]
    ranks = retrieval_ranks(images, texts, t2i, chunk_size=chunk_size)
    # text->image: the caption's image comes after every lower-indexed (tied) image
    assert ranks.text2image.tolist() == t2i
    # image->text: the best ground-truth caption is the image's lowest-indexed one, after all lower captions
    assert ranks.image2text.tolist() == [0, 3, 5, 9]


def test_perfect_alignment_gives_100():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(40, 32, generator=g)
    t2i = torch.arange(40).repeat_interleave(CAPTIONS_PER_IMAGE)
    metrics = retrieval_metrics(images, images[t2i] * 3.0, t2i, chunk_size=17)
    assert all(metrics[name] == 100.0 for name in RECALL_NAMES + (MEAN_RECALL_NAME,))
    assert metrics["retrieval-image2text-mean-rank"] == metrics["retrieval-text2image-median-rank"] == 1.0


def test_shuffled_ground_truth_is_near_chance():
    # Chance for n images x 5 captions: text->image R@K = K/n; image->text R@K = 1 - C(5n-5, K)/C(5n, K).
    # For n = 300, K = 10: text->image 3.33 %, image->text 3.30 %.
    n = 300
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 64, generator=g)
    t2i = torch.arange(n).repeat_interleave(CAPTIONS_PER_IMAGE)
    texts = images[t2i[torch.randperm(len(t2i), generator=g)]]  # each caption matches a random image
    metrics = retrieval_metrics(images, texts, t2i, chunk_size=256)
    i2t_chance, t2i_chance = chance_recall(n, CAPTIONS_PER_IMAGE, 10)
    assert t2i_chance == pytest.approx(100 * 10 / n)
    assert i2t_chance == pytest.approx(100 * (1 - math.comb(5 * n - 5, 10) / math.comb(5 * n, 10)))
    # binomial standard deviation is ~1 point for the 300 image queries; allow ~3
    assert abs(metrics["retrieval-image2text-R@10"] - i2t_chance) < 3.5
    assert abs(metrics["retrieval-text2image-R@10"] - t2i_chance) < 2.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_precision_inputs(dtype):
    images, texts, t2i = tied_dataset(seed=4)
    images, texts = images.to(dtype), texts.to(dtype)
    assert retrieval_metrics(images, texts, t2i, chunk_size=9) == retrieval_metrics(images.float(), texts.float(), t2i)


def test_scores_are_cosine_similarities():
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(30, 512, generator=g), torch.randn(50, 512, generator=g)
    reference = torch.nn.functional.normalize(a.double(), dim=1) @ torch.nn.functional.normalize(b.double(), dim=1).T
    torch.testing.assert_close(similarity_matrix(a, b), reference, atol=2e-7, rtol=0)


def test_quantization_is_row_independent():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(300, 64, generator=g)
    rows = [5, 0, 299, 5, 17]
    assert torch.equal(quantize_embeddings(x)[rows], quantize_embeddings(x[rows]))


def naive_topk(queries, gallery, k):
    scores = similarity_matrix(queries, gallery).tolist()
    return [sorted(range(len(row)), key=lambda j: (-row[j], j))[:k] for row in scores]


@pytest.mark.parametrize("chunk_size", [1, 2, 5, 64])
@pytest.mark.parametrize("k", [1, 4, 7, 500])
def test_topk_matches_naive_sort(chunk_size, k):
    images, texts, _ = tied_dataset(seed=7)
    result = topk(texts, images, k, chunk_size=chunk_size)
    expected = naive_topk(texts, images, k)
    assert result.indices.tolist() == expected
    assert result.indices.shape == (len(texts), min(k, len(images)))
    full = similarity_matrix(texts, images)
    assert torch.equal(result.scores, full.gather(1, result.indices))


def test_topk_ties_come_in_index_order():
    gallery = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.5, 0.5], [1.0, 0.0]])
    result = topk(torch.tensor([[1.0, 0.0]]), gallery, k=4, chunk_size=2)
    assert result.indices.tolist() == [[1, 2, 4, 3]]


def test_errors_name_the_problem():
    images, texts, t2i = tied_dataset()
    with pytest.raises(ValueError, match="expected 120 entries"):
        retrieval_metrics(images, texts, t2i[:-1])
    with pytest.raises(ValueError, match=r"1 image\(s\) have no caption.*\[23\]"):
        retrieval_metrics(images, texts[:-5], t2i[:-5])
    with pytest.raises(ValueError, match="width 8 but text_embeddings have width 4"):
        retrieval_metrics(images, texts[:, :4], t2i)
    zero = images.clone()
    zero[3] = 0
    with pytest.raises(ValueError, match="image_embeddings row 3 is all zeros"):
        retrieval_metrics(zero, texts, t2i)
    bad = texts.clone()
    bad[10, 1] = float("nan")
    with pytest.raises(ValueError, match="text_embeddings row 10 contains NaN"):
        retrieval_metrics(images, bad, t2i)
    with pytest.raises(ValueError, match="chunk_size"):
        retrieval_metrics(images, texts, t2i, chunk_size=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_exactly():
    images, texts, t2i = tied_dataset(seed=8)
    cpu = retrieval_ranks(images, texts, t2i, chunk_size=7)
    gpu = retrieval_ranks(images.cuda().half(), texts.cuda().half(), t2i, chunk_size=13)
    cpu_half = retrieval_ranks(images.half(), texts.half(), t2i, chunk_size=7)
    assert torch.equal(cpu_half.image2text, gpu.image2text.cpu())
    assert torch.equal(cpu_half.text2image, gpu.text2image.cpu())
    assert cpu.image2text.shape == gpu.image2text.shape
    assert topk(texts.cuda(), images.cuda(), 5, chunk_size=3).indices.cpu().tolist() == naive_topk(texts, images, 5)
