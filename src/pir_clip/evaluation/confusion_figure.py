"""A confusion-matrix picture that stays readable at 45 classes (RESISC45), drawn with PIL only.

Rows are true classes, columns predicted classes, both in label order; every class name is written in
full (cut with "..." past ``max_label_width`` pixels) on the left and, turned upright, above the columns.
A cell is shaded by the fraction of its row (white 0 -> dark blue 1), so classes of different sizes read
alike, and carries its count; the column on the right gives each row's recall in percent ("-" for a
class with no image). The same inputs give the same pixels.
"""
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Tuple, Union

import torch
from PIL import Image, ImageDraw

from .visualize import INK, BACKGROUND, _font, _text_width

EMPTY_RGB = (255, 255, 255)
FULL_RGB = (8, 48, 107)
GRID_RGB = (210, 210, 210)
DIAGONAL_RGB = (0, 0, 0)

Box = Tuple[int, int, int, int]


def shade(fraction: float) -> Tuple[int, int, int]:
    """Cell colour for a row fraction in [0, 1]: linear from white to dark blue."""
    f = min(max(fraction, 0.0), 1.0)
    return tuple(round(e + (full - e) * f) for e, full in zip(EMPTY_RGB, FULL_RGB))


@dataclass(frozen=True)
class ConfusionLayout:
    """Pixel geometry; boxes are ``(x0, y0, x1, y1)``, x1 and y1 exclusive."""
    num_classes: int
    label_width: int
    cell: int = 22
    margin: int = 12
    line_height: int = 15
    title_lines: int = 2
    recall_width: int = 52
    min_width: int = 0  # e.g. the title's width

    @property
    def grid_left(self) -> int:
        return self.margin + self.line_height + self.label_width + 6

    @property
    def grid_top(self) -> int:
        return self.margin + (self.title_lines + 1) * self.line_height + self.label_width + 6

    @property
    def width(self) -> int:
        return max(self.grid_left + self.num_classes * self.cell + self.recall_width, self.min_width) + self.margin

    @property
    def height(self) -> int:
        return self.grid_top + self.num_classes * self.cell + self.margin

    def cell_box(self, row: int, column: int) -> Box:
        x0, y0 = self.grid_left + column * self.cell, self.grid_top + row * self.cell
        return x0, y0, x0 + self.cell, y0 + self.cell


def _fit(font, text: str, width: int) -> str:
    if _text_width(font, text) <= width:
        return text
    while text and _text_width(font, text + "...") > width:
        text = text[:-1]
    return text.rstrip() + "..."


def _upright_text(draw_target: Image.Image, text: str, font, bottom_left: Tuple[int, int], fill) -> None:
    """Text turned 90 degrees (read bottom to top) with its baseline end at ``bottom_left``."""
    width = int(_text_width(font, text)) + 2
    ascent, descent = font.getmetrics()
    mask = Image.new("L", (width, ascent + descent), 0)
    ImageDraw.Draw(mask).text((0, 0), text, font=font, fill=255)
    mask = mask.rotate(90, expand=True)
    x, y = bottom_left
    draw_target.paste(Image.new("RGB", mask.size, fill), (x, y - mask.size[1]), mask)


def save_confusion_figure(out_png: Union[str, os.PathLike], confusion: torch.Tensor, class_names: Sequence[str],
                          title: str = "", max_label_width: int = 200) -> Path:
    """Draw ``confusion`` ``(C, C)`` (row true, column predicted) with ``class_names`` ``(C,)``; returns the path."""
    confusion = torch.as_tensor(confusion).long().cpu()
    num_classes = len(class_names)
    if confusion.shape != (num_classes, num_classes):
        raise ValueError(f"confusion matrix {tuple(confusion.shape)} does not match {num_classes} class names")
    font, small = _font(12), _font(10)
    labels = [_fit(font, name, max_label_width) for name in class_names]
    title_lines = (title or "Confusion matrix").split("\n")
    layout = confusion_layout(class_names, max_label_width, title_lines)
    figure = Image.new("RGB", (layout.width, layout.height), BACKGROUND)
    draw = ImageDraw.Draw(figure)

    top = layout.margin
    for line in title_lines:
        draw.text((layout.margin, top), line, font=font, fill=INK)
        top += layout.line_height
    draw.text((layout.grid_left, top), "predicted class ->", font=font, fill=INK)
    axis_label = "true class ->"
    grid_height = num_classes * layout.cell
    _upright_text(figure, axis_label, font,
                  (layout.margin, layout.grid_top + (grid_height + int(_text_width(font, axis_label))) // 2), INK)

    totals = confusion.sum(dim=1)
    for row in range(num_classes):
        x0, y0, _, y1 = layout.cell_box(row, 0)
        draw.text((x0 - 4 - _text_width(font, labels[row]), y0 + (layout.cell - layout.line_height) // 2 + 1),
                  labels[row], font=font, fill=INK)
        _upright_text(figure, labels[row], font, (layout.cell_box(0, row)[0] + (layout.cell - layout.line_height) // 2,
                                                  layout.grid_top - 4), INK)
        total = int(totals[row])
        for column in range(num_classes):
            box = layout.cell_box(row, column)
            count = int(confusion[row, column])
            fraction = count / total if total else 0.0
            draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=shade(fraction),
                           outline=DIAGONAL_RGB if row == column else GRID_RGB)
            if count:
                text = str(count)
                colour = BACKGROUND if fraction > 0.5 else INK
                text_font = small if _text_width(small, text) <= layout.cell - 2 else _font(7)
                draw.text((box[0] + (layout.cell - _text_width(text_font, text)) / 2, box[1] + 5), text,
                          font=text_font, fill=colour)
        recall = f"{100.0 * int(confusion[row, row]) / total:.0f}%" if total else "-"
        draw.text((layout.cell_box(row, num_classes - 1)[2] + 6, y0 + 4), recall, font=small, fill=INK)
    draw.text((layout.cell_box(0, num_classes - 1)[2] + 6, layout.grid_top - layout.line_height - 2), "recall",
              font=small, fill=INK)

    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.save(out, format="PNG")
    return out


def confusion_layout(class_names: Sequence[str], max_label_width: int = 200,
                     title_lines: Sequence[str] = ("Confusion matrix",)) -> ConfusionLayout:
    """The geometry :func:`save_confusion_figure` uses for these names and title (for tests and callers)."""
    font = _font(12)
    ascent, descent = font.getmetrics()
    widths = [_text_width(font, _fit(font, name, max_label_width)) for name in class_names]
    return ConfusionLayout(len(class_names), label_width=int(max(widths)) + 2, line_height=ascent + descent + 2,
                           title_lines=len(title_lines),
                           min_width=ConfusionLayout.margin + int(max(_text_width(font, t) for t in title_lines)))
