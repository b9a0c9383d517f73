import numpy as np
import pytest
import torch
from PIL import Image

from pir_clip.data.annotations import RetrievalSet
from pir_clip.evaluation.visualize import (CORRECT, QUERY, WRONG, _thumbnail, retrieval_figure_layout, sample_queries,
                                save_retrieval_figure)

NUM_IMAGES = 6
COLOURS = [(230, 30, 30), (30, 200, 30), (30, 30, 230), (220, 220, 40), (40, 210, 210), (200, 40, 200)]
SUFFIXES = [".tif", ".jpg", ".png", ".tif", ".jpg", ".png"]


@pytest.fixture
def constructed(tmp_path):
    """Six solid-colour images, two captions each, with embeddings whose rankings are known by design.

    Image i is the unit vector e_i. Caption 2i+1 points at its own image (e_i + 0.5 e_{i+1}); caption 2i
    points first at the next image (e_{i+1} + 0.5 e_i), so it retrieves a wrong image at rank 1 and its
    own at rank 2. All other scores are 0 and tie, ordered by index.
    """
    paths = []
    for i, (colour, suffix) in enumerate(zip(COLOURS, SUFFIXES)):
        path = tmp_path / "images" / f"scene_{i}{suffix}"
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (40, 30), colour).save(path)
        paths.append(str(path))
    captions, text_to_image, texts = [], [], []
    for i in range(NUM_IMAGES):
        nxt = (i + 1) % NUM_IMAGES
        for primary, secondary in ((nxt, i), (i, nxt)):
            vector = torch.zeros(8)
            vector[primary], vector[secondary] = 1.0, 0.5
            texts.append(vector)
            captions.append(f"caption of scene {i} pointing at scene {primary} " + "with many words " * 8)
            text_to_image.append(i)
    rs = RetrievalSet(paths, captions, text_to_image, source="constructed", split="test")
    return rs, torch.eye(NUM_IMAGES, 8), torch.stack(texts)


def expected_order(scores_row):
    return sorted(range(len(scores_row)), key=lambda j: (-scores_row[j], j))


def test_figure_marks_correct_retrievals(constructed, tmp_path):
    rs, images, texts = constructed
    k, n = 5, 3
    out = save_retrieval_figure(tmp_path / "out" / "fig.png", rs, images, texts, n_queries=n, k=k, seed=0)
    assert out.exists()
    figure = Image.open(out).convert("RGB")
    layout = retrieval_figure_layout(rs, n, k)
    assert figure.size == layout.size
    assert figure.size[0] == 2 * layout.margin + k * (layout.thumb + 2 * layout.border) + (k - 1) * layout.gap

    scores = (torch.nn.functional.normalize(texts, dim=1) @ images.T).tolist()  # (texts, images)
    text_queries, image_queries = sample_queries(rs, n, seed=0)
    saw = set()
    for q, t in enumerate(text_queries):
        for rank, image_index in enumerate(expected_order(scores[t])[:k]):
            x0, y0, x1, y1 = layout.retrieved_image_box(q, rank)
            correct = image_index == rs.text_to_image[t]
            assert figure.getpixel((x0 + 1, y0 + 1)) == (CORRECT if correct else WRONG), (q, rank)
            assert figure.getpixel((x1 - 2, y1 - 2)) == (CORRECT if correct else WRONG)
            centre = figure.getpixel(((x0 + x1) // 2, (y0 + y1) // 2))
            assert np.abs(np.subtract(centre, COLOURS[image_index])).max() < 12  # the right thumbnail (JPEG: ~)
            saw.add(correct)
    for q, i in enumerate(image_queries):
        x0, y0, x1, y1 = layout.query_image_box(q)
        assert figure.getpixel((x0, y0)) == QUERY
        column = [row[i] for row in scores]
        for rank, t in enumerate(expected_order(column)[:k]):
            mx0, my0, mx1, my1 = layout.caption_marker_box(q, rank)
            correct = rs.text_to_image[t] == i
            assert figure.getpixel(((mx0 + mx1) // 2, (my0 + my1) // 2)) == (CORRECT if correct else WRONG)
            saw.add(correct)
    assert saw == {True, False}  # the constructed case exercises both marks


def test_figure_is_deterministic_and_seeded(constructed, tmp_path):
    rs, images, texts = constructed
    a = save_retrieval_figure(tmp_path / "a.png", rs, images, texts, seed=1)
    b = save_retrieval_figure(tmp_path / "b.png", rs, images.half(), texts.half(), seed=1, chunk_size=2)
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    assert sample_queries(rs, 3, seed=1) != sample_queries(rs, 3, seed=2)


def test_small_sets_and_bad_inputs(constructed, tmp_path):
    rs, images, texts = constructed
    out = save_retrieval_figure(tmp_path / "k.png", rs, images, texts, n_queries=50, k=20)
    layout = retrieval_figure_layout(rs, 50, 20)
    assert (layout.n_text_queries, layout.n_image_queries, layout.k) == (rs.num_texts, NUM_IMAGES, NUM_IMAGES)
    assert Image.open(out).size == layout.size
    with pytest.raises(ValueError, match="text_embeddings has 11 rows but constructed"):
        save_retrieval_figure(tmp_path / "x.png", rs, images, texts[:-1])


def test_16_bit_tiff_thumbnail(tmp_path):
    # RS imagery often comes as 16-bit TIFF; it is stretched to 0..255 rather than clipped to white.
    values = np.tile(np.arange(0, 4000, 100, dtype=np.uint16), (40, 1))
    path = tmp_path / "dem.tif"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I;16")
    thumb = np.asarray(_thumbnail(str(path), 20))
    assert thumb.shape == (20, 20, 3)
    assert thumb[:, 0].max() < 20 and thumb[:, -1].min() > 235
