"""Encoding an evaluation set with a model, and scoring it with the RS retrieval protocol.

Shared by ``retrieval.py`` and by validation during training, so both report the same numbers.
"""
import logging
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from open_clip import get_input_dtype
from open_clip_train.precision import get_autocast
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..data.annotations import RetrievalSet
from ..data.images import decode_image
from .metrics import retrieval_metrics


class ImageFiles(Dataset):
    """Image files -> preprocessed tensors through the shared decoder (:mod:`pir_clip.data.images`); an
    unreadable image is an error (skipping it would change the metrics), reported with its path."""

    def __init__(self, paths: Sequence[str], transform: Callable, bands: Optional[Sequence[int]] = None):
        self.paths = list(paths)
        self.transform = transform
        self.bands = bands

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(decode_image(self.paths[index], self.bands))


@torch.no_grad()
def encode_images(model: nn.Module, paths: Sequence[str], preprocess: Callable, *, batch_size: int = 64,
                  workers: int = 0, device="cpu", precision: str = "fp32", progress: bool = True,
                  bands: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Image files -> L2-normalised embeddings (N, D), float32 on the CPU. ``bands``: see ``decode_image``."""
    device = torch.device(device)
    autocast, dtype = get_autocast(precision, device_type=device.type), get_input_dtype(precision)
    loader = DataLoader(ImageFiles(paths, preprocess, bands), batch_size=batch_size, num_workers=workers)
    out = []
    for images in tqdm(loader, desc="encoding images", unit="batch", disable=not progress):
        with autocast():
            features = model.encode_image(images.to(device=device, dtype=dtype))
        out.append(F.normalize(features.float(), dim=-1).cpu())
    return torch.cat(out)


@torch.no_grad()
def encode_texts(model: nn.Module, captions: Sequence[str], tokenizer: Callable, *, batch_size: int = 256,
                 device="cpu", precision: str = "fp32", progress: bool = True) -> torch.Tensor:
    """Captions -> L2-normalised embeddings (M, D), float32 on the CPU. Duplicate captions (common in
    RSICD) are encoded once."""
    device = torch.device(device)
    autocast = get_autocast(precision, device_type=device.type)
    unique: Dict[str, int] = {}
    for caption in captions:
        unique.setdefault(caption, len(unique))
    texts: List[str] = list(unique)
    out = []
    for start in tqdm(range(0, len(texts), batch_size), desc="encoding captions", unit="batch", disable=not progress):
        tokens = tokenizer(texts[start:start + batch_size]).to(device)
        with autocast():
            features = model.encode_text(tokens)
        out.append(F.normalize(features.float(), dim=-1).cpu())
    embeddings = torch.cat(out)
    return embeddings[torch.tensor([unique[c] for c in captions])]


def encode_retrieval_set(model: nn.Module, data: RetrievalSet, preprocess: Callable, tokenizer: Callable, *,
                         batch_size: int = 64, workers: int = 0, device="cpu", precision: str = "fp32",
                         progress: bool = True, bands: Optional[Sequence[int]] = None
                         ) -> Tuple[torch.Tensor, torch.Tensor]:
    model = getattr(model, "module", model)  # DDP
    was_training = model.training
    model.eval()
    try:
        images = encode_images(model, data.image_paths, preprocess, batch_size=batch_size, workers=workers,
                               device=device, precision=precision, progress=progress, bands=bands)
        texts = encode_texts(model, data.captions, tokenizer, batch_size=max(batch_size, 64), device=device,
                             precision=precision, progress=progress)
    finally:
        model.train(was_training)
    return images, texts


def evaluate_retrieval(model: nn.Module, data: RetrievalSet, preprocess: Callable, tokenizer: Callable,
                       **kwargs) -> Tuple[Dict[str, float], torch.Tensor, torch.Tensor]:
    """Encodes ``data`` and returns (metrics, image embeddings, text embeddings)."""
    images, texts = encode_retrieval_set(model, data, preprocess, tokenizer, **kwargs)
    metrics = retrieval_metrics(images, texts, data.text_to_image)
    logging.debug(f"evaluated {data.summary()}")
    return metrics, images, texts
