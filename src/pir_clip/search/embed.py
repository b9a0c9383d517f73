"""The inference step: items -> L2-normalised image embeddings, in batches, with per-item outcomes.

Items are decoded in DataLoader workers by :func:`pir_clip.search.sources.item_pixels` (the shared decoder;
GeoTIFF chips read window by window, each worker keeping its scenes open) and transformed with the model's
validation transform, so an indexed image gets the pixels and preprocessing ``pir-clip retrieval`` gives
it. An item that does not decode is an ``error`` and a chip with no valid pixel is ``nodata``: both are
reported, neither stops the run.
"""
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..evaluation.encode import encode_pixels

from .shards import ERROR, NODATA, OK
from .sources import Item, SceneCache, item_pixels


class ItemImages(Dataset):
    """``items[i]`` -> ``(i, tensor (3, H, W) or None, status, error message or None)``."""

    def __init__(self, items: Sequence[Item], transform: Callable, bands: Optional[Sequence[int]] = None):
        self.items, self.transform, self.bands = list(items), transform, bands
        self._scenes: Optional[SceneCache] = None  # opened lazily, in the worker that reads

    def __len__(self) -> int:
        return len(self.items)

    def __del__(self):
        if self._scenes is not None:
            self._scenes.close()

    def __getitem__(self, index: int):
        item = self.items[index]
        if self._scenes is None:
            self._scenes = SceneCache()
        try:
            image = item_pixels(item.kind, item.path, bands=self.bands, key=item.key, member_offset=item.member_offset,
                                member_size=item.member_size, window=item.window, scenes=self._scenes)
        except Exception as exc:  # decoders raise many types on damaged data; the item is reported, not fatal
            message = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            return index, None, ERROR, message
        if image is None:
            return index, None, NODATA, None
        return index, self.transform(image), OK, None


def collate_items(batch):
    positions = [b[0] for b in batch]
    ok = [b[1] for b in batch if b[1] is not None]
    return positions, (torch.stack(ok) if ok else None), [b[2] for b in batch], [b[3] for b in batch]


@dataclass
class EmbeddedBatch:
    positions: List[int]  # indices into the items given to embed_items
    statuses: List[str]
    errors: List[Optional[str]]
    embeddings: np.ndarray  # (len(positions), D) float32, zeros where status is not ok


@torch.no_grad()
def embed_items(model, preprocess: Callable, items: Sequence[Item], dim: int, *, batch_size: int = 64, workers: int = 2,
                device="cpu", precision: str = "fp32", bands: Optional[Sequence[int]] = None, progress: bool = True,
                desc: str = "embedding") -> Iterator[EmbeddedBatch]:
    """Yields :class:`EmbeddedBatch` es covering ``items`` in order; ``dim`` is the embedding width."""
    loader = DataLoader(ItemImages(items, preprocess, bands), batch_size=batch_size, num_workers=workers,
                        collate_fn=collate_items, persistent_workers=False)
    with tqdm(total=len(items), desc=desc, unit="img", disable=not progress, smoothing=0.1) as bar:
        for positions, images, statuses, errors in loader:
            out = np.zeros((len(positions), dim), dtype=np.float32)
            if images is not None:
                out[[i for i, s in enumerate(statuses) if s == OK]] = encode_pixels(model, images, device,
                                                                                    precision).numpy()
            bar.update(len(positions))
            yield EmbeddedBatch(positions, statuses, errors, out)
