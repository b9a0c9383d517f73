"""A picture of retrieval results: what a model actually returns for a few sample queries.

Top part, text -> image: for each sampled caption, the caption, then its top-k images, each framed green
when it is the caption's own image and red otherwise. Bottom part, image -> text: each sampled image (blue
frame), then its top-k captions, each with a green square and green text when it belongs to that image and
red otherwise. Drawn with PIL only; the same inputs and seed give the same pixels.
"""
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple, Union

from PIL import Image, ImageDraw, ImageFont, ImageOps

from ..data.annotations import DataFormatError, RetrievalSet
from ..data.images import ImageDecodeError, decode_image
from .metrics import DEFAULT_CHUNK_SIZE, EmbeddingLike, topk

CORRECT = (0, 150, 0)
WRONG = (210, 0, 0)
QUERY = (40, 90, 210)
INK = (0, 0, 0)
BACKGROUND = (255, 255, 255)
_FONT_SIZE = 12

Box = Tuple[int, int, int, int]


@dataclass(frozen=True)
class RetrievalFigureLayout:
    """Pixel geometry of the figure; boxes are ``(x0, y0, x1, y1)`` with x1, y1 exclusive.

    A thumbnail cell is ``thumb + 2 * border`` pixels square; the frame colour fills its outer ``border``
    pixels. Captions take at most ``caption_lines`` lines (cut with "..."), so the size never depends on
    the text.
    """
    n_text_queries: int
    n_image_queries: int
    k: int
    thumb: int = 112
    line_height: int = 15
    margin: int = 12
    gap: int = 8
    border: int = 4
    caption_lines: int = 2

    @property
    def cell(self) -> int:
        return self.thumb + 2 * self.border

    @property
    def width(self) -> int:
        return 2 * self.margin + self.k * self.cell + (self.k - 1) * self.gap

    @property
    def title_height(self) -> int:
        return self.line_height + self.gap

    @property
    def text_block_height(self) -> int:
        # caption lines, the row of images, a rank/score line under them, spacing
        return self.caption_lines * self.line_height + self.cell + self.line_height + 2 * self.gap

    @property
    def caption_slot_height(self) -> int:
        return self.caption_lines * self.line_height + 2

    @property
    def image_block_height(self) -> int:
        return self.line_height + max(self.cell, self.k * self.caption_slot_height) + self.gap

    @property
    def image_section_top(self) -> int:
        return self.margin + self.title_height + self.n_text_queries * self.text_block_height + self.title_height

    @property
    def height(self) -> int:
        return self.image_section_top + self.n_image_queries * self.image_block_height + self.margin

    @property
    def size(self) -> Tuple[int, int]:
        return self.width, self.height

    def text_query_top(self, q: int) -> int:
        return self.margin + self.title_height + q * self.text_block_height

    def retrieved_image_box(self, q: int, rank: int) -> Box:
        """Cell of the ``rank``-th (0-based) image retrieved for text query ``q``."""
        x0 = self.margin + rank * (self.cell + self.gap)
        y0 = self.text_query_top(q) + self.caption_lines * self.line_height + self.gap // 2
        return x0, y0, x0 + self.cell, y0 + self.cell

    def query_image_box(self, q: int) -> Box:
        y0 = self.image_section_top + q * self.image_block_height + self.line_height
        return self.margin, y0, self.margin + self.cell, y0 + self.cell

    @property
    def caption_column_left(self) -> int:
        return self.margin + self.cell + 2 * self.gap

    def caption_marker_box(self, q: int, rank: int) -> Box:
        """Square before the ``rank``-th (0-based) caption retrieved for image query ``q``."""
        x0 = self.caption_column_left
        y0 = self.query_image_box(q)[1] + rank * self.caption_slot_height + 2
        side = self.line_height - 4
        return x0, y0, x0 + side, y0 + side


def _font(size: int = _FONT_SIZE) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _text_width(font, text: str) -> float:
    return font.getlength(text)


def _wrap(font, text: str, width: float, max_lines: int) -> List[str]:
    """Greedy word wrap to ``width`` pixels; the last kept line ends in "..." when text is cut."""
    lines: List[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if _text_width(font, candidate) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        while len(word) > 1 and _text_width(font, word) > width:  # split a word wider than the line
            cut = 1
            while cut < len(word) and _text_width(font, word[:cut + 1]) <= width:
                cut += 1
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and _text_width(font, last + "...") > width:
            last = last[:-1]
        lines = lines[:max_lines - 1] + [last.rstrip() + "..."]
    return lines


def _thumbnail(path: str, size: int, bands=None) -> Image.Image:
    try:
        rgb = decode_image(path, bands)
    except ImageDecodeError as e:
        raise DataFormatError(f"{e} (for the retrieval figure); check the file") from e
    return ImageOps.fit(rgb, (size, size))


def _check_embeddings(retrieval_set: RetrievalSet, image_embeddings, text_embeddings) -> None:
    if len(image_embeddings) != retrieval_set.num_images:
        raise ValueError(f"image_embeddings has {len(image_embeddings)} rows but {retrieval_set.summary()}; "
                         "encode the set's images in its order")
    if len(text_embeddings) != retrieval_set.num_texts:
        raise ValueError(f"text_embeddings has {len(text_embeddings)} rows but {retrieval_set.summary()}; "
                         "encode the set's captions in its order")


def retrieval_figure_layout(retrieval_set: RetrievalSet, n_queries: int = 3, k: int = 5,
                            thumb_size: int = 112) -> RetrievalFigureLayout:
    """The geometry ``save_retrieval_figure`` uses for these arguments."""
    font = _font()
    ascent, descent = font.getmetrics()
    return RetrievalFigureLayout(n_text_queries=min(n_queries, retrieval_set.num_texts),
                                 n_image_queries=min(n_queries, retrieval_set.num_images),
                                 k=min(k, retrieval_set.num_images, retrieval_set.num_texts),
                                 thumb=thumb_size, line_height=ascent + descent + 2)


def sample_queries(retrieval_set: RetrievalSet, n_queries: int, seed: int) -> Tuple[List[int], List[int]]:
    """(caption indices, image indices) shown in the figure: a seeded sample, so reruns show the same."""
    rng = random.Random(seed)
    texts = rng.sample(range(retrieval_set.num_texts), min(n_queries, retrieval_set.num_texts))
    images = rng.sample(range(retrieval_set.num_images), min(n_queries, retrieval_set.num_images))
    return texts, images


def save_retrieval_figure(out_png: Union[str, os.PathLike], retrieval_set: RetrievalSet,
                          image_embeddings: EmbeddingLike, text_embeddings: EmbeddingLike, n_queries: int = 3,
                          k: int = 5, seed: int = 0, thumb_size: int = 112,
                          chunk_size: int = DEFAULT_CHUNK_SIZE, bands=None) -> Path:
    """Draw top-k retrievals for ``n_queries`` sampled captions and images; returns the PNG's path.

    image_embeddings: ``(N_images, D)``; text_embeddings: ``(N_texts, D)``, both in ``retrieval_set``'s
    order. Retrieval uses ``metrics.topk`` (same scores and tie order as the metrics).
    """
    if n_queries < 1 or k < 1:
        raise ValueError(f"n_queries and k must be positive, got n_queries={n_queries}, k={k}")
    _check_embeddings(retrieval_set, image_embeddings, text_embeddings)
    layout = retrieval_figure_layout(retrieval_set, n_queries, k, thumb_size)
    text_queries, image_queries = sample_queries(retrieval_set, n_queries, seed)
    text_hits = topk(text_embeddings[text_queries], image_embeddings, layout.k, chunk_size)
    image_hits = topk(image_embeddings[image_queries], text_embeddings, layout.k, chunk_size)

    font = _font()
    figure = Image.new("RGB", layout.size, BACKGROUND)
    draw = ImageDraw.Draw(figure)
    thumbs: Dict[int, Image.Image] = {}

    def thumb_of(image_index: int) -> Image.Image:
        if image_index not in thumbs:
            thumbs[image_index] = _thumbnail(retrieval_set.image_paths[image_index], layout.thumb, bands)
        return thumbs[image_index]

    def framed(image_index: int, box: Box, colour: Tuple[int, int, int]) -> None:
        draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=colour)
        figure.paste(thumb_of(image_index), (box[0] + layout.border, box[1] + layout.border))

    full_width = layout.width - 2 * layout.margin
    draw.text((layout.margin, layout.margin), f"Text -> image: top-{layout.k} images per caption "
              "(green frame = the caption's image)", font=font, fill=INK)
    for q, text_index in enumerate(text_queries):
        top = layout.text_query_top(q)
        truth = retrieval_set.text_to_image[text_index]
        lines = _wrap(font, f"caption {text_index}: {retrieval_set.captions[text_index]}", full_width,
                      layout.caption_lines)
        for n, line in enumerate(lines):
            draw.text((layout.margin, top + n * layout.line_height), line, font=font, fill=INK)
        for rank in range(layout.k):
            image_index = int(text_hits.indices[q, rank])
            box = layout.retrieved_image_box(q, rank)
            colour = CORRECT if image_index == truth else WRONG
            framed(image_index, box, colour)
            draw.text((box[0], box[3] + 1), f"#{rank + 1}  {float(text_hits.scores[q, rank]):.3f}", font=font,
                      fill=colour)

    title_top = layout.image_section_top - layout.title_height
    draw.text((layout.margin, title_top), f"Image -> text: top-{layout.k} captions per image "
              "(green = one of the image's captions)", font=font, fill=INK)
    caption_width = layout.width - layout.margin - layout.caption_column_left - layout.line_height
    for q, image_index in enumerate(image_queries):
        box = layout.query_image_box(q)
        name = os.path.basename(retrieval_set.image_paths[image_index])
        draw.text((layout.margin, box[1] - layout.line_height), f"image {image_index}: {name}", font=font, fill=INK)
        framed(image_index, box, QUERY)
        for rank in range(layout.k):
            text_index = int(image_hits.indices[q, rank])
            colour = CORRECT if retrieval_set.text_to_image[text_index] == image_index else WRONG
            marker = layout.caption_marker_box(q, rank)
            draw.rectangle((marker[0], marker[1], marker[2] - 1, marker[3] - 1), fill=colour)
            score = float(image_hits.scores[q, rank])
            lines = _wrap(font, f"#{rank + 1} ({score:.3f}) {retrieval_set.captions[text_index]}", caption_width,
                          layout.caption_lines)
            for n, line in enumerate(lines):
                draw.text((marker[2] + 4, marker[1] - 2 + n * layout.line_height), line, font=font, fill=colour)

    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.save(out, format="PNG")
    return out
