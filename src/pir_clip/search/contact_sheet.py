"""A contact sheet of hits: the query on top, then a grid of the hit images with rank, score and source.

Images come from :meth:`SearchIndex.item_image` (the shared decoder; a chip is read as its window), fitted
into square cells. Drawn with PIL only; the same hits give the same pixels.
"""
import os
from typing import Sequence

from PIL import Image, ImageDraw, ImageOps

from ..evaluation.visualize import _font, _wrap

BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)
MUTED = (90, 90, 90)
MISSING = (235, 200, 200)


def save_contact_sheet(index, hits: Sequence, path: str, title: str = "", *, columns: int = 5,
                       thumb: int = 160) -> str:
    """Draws ``hits`` of ``index`` into a PNG (or any format PIL writes, by extension) at ``path``."""
    columns = max(1, min(columns, len(hits) or 1))
    rows = max(1, -(-len(hits) // columns))
    margin, gap, line = 12, 8, 15
    font = _font()
    title_lines = _wrap(font, title, columns * (thumb + gap) - gap, 2) if title else []
    label_height = 3 * line
    width = 2 * margin + columns * thumb + (columns - 1) * gap
    top = margin + len(title_lines) * line + (gap if title_lines else 0)
    height = top + rows * (thumb + label_height + gap) - gap + margin
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for i, text in enumerate(title_lines):
        draw.text((margin, margin + i * line), text, fill=INK, font=font)
    for n, hit in enumerate(hits):
        x = margin + (n % columns) * (thumb + gap)
        y = top + (n // columns) * (thumb + label_height + gap)
        try:
            image = ImageOps.contain(index.item_image(hit.id), (thumb, thumb))
            sheet.paste(image, (x + (thumb - image.width) // 2, y + (thumb - image.height) // 2))
        except (ValueError, OSError) as exc:  # a source that vanished or changed: say so in the cell
            draw.rectangle((x, y, x + thumb - 1, y + thumb - 1), fill=MISSING)
            for i, text in enumerate(_wrap(font, f"unavailable: {exc}", thumb - 8, 6)):
                draw.text((x + 4, y + 4 + i * line), text, fill=INK, font=font)
        label = f"#{hit.rank}  {hit.score:.3f}  id {hit.id}"
        where = os.path.basename(hit.source.split("#")[0]) + (f"#{hit.key}" if hit.key else "")
        if hit.window is not None:
            where += f" @{hit.window[0]},{hit.window[1]}"
        draw.text((x, y + thumb + 2), label, fill=INK, font=font)
        for i, text in enumerate(_wrap(font, where, thumb, 2)):
            draw.text((x, y + thumb + 2 + (i + 1) * line), text, fill=MUTED, font=font)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sheet.save(path)
    return path
