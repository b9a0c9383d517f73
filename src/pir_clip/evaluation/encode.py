"""Encoding image files and caption sets with a model, and scoring retrieval with the RS protocol.

Shared by ``retrieval.py``, ``pir-clip zeroshot`` / ``linear-probe`` and validation during training, so all
report the same numbers.
"""
import logging
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from open_clip import get_input_dtype
from open_clip_train.precision import get_autocast
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..data.annotations import RetrievalSet
from ..data.images import ImageDecodeError, decode_image
from .metrics import retrieval_metrics


class ImageFiles(Dataset):
    """Image files -> preprocessed tensors through the shared decoder (:mod:`pir_clip.data.images`).

    By default an unreadable image is an error (skipping it would change retrieval metrics), reported with its
    path. With ``skip_unreadable`` an item is ``(tensor, error)``: ``error`` is "" for a good image, else the
    decoder's message, and the tensor is a black placeholder the caller must drop.
    """

    def __init__(self, paths: Sequence[str], transform: Callable, bands: Optional[Sequence[int]] = None,
                 skip_unreadable: bool = False):
        self.paths = list(paths)
        self.transform = transform
        self.bands = bands
        self.skip_unreadable = skip_unreadable

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        if not self.skip_unreadable:
            return self.transform(decode_image(self.paths[index], self.bands))
        try:
            return self.transform(decode_image(self.paths[index], self.bands)), ""
        except ImageDecodeError as exc:
            return self.transform(Image.new("RGB", (8, 8))), str(exc) or "unreadable"


class EncodedImages(NamedTuple):
    """features: ``(N, D)`` L2-normalised float32 on the CPU (rows of unreadable images are placeholders);
    errors: ``(N,)`` "" for each decoded image, else why it could not be decoded."""
    features: torch.Tensor
    errors: List[str]

    @property
    def readable(self) -> torch.Tensor:
        """``(N,)`` bool: the rows to use."""
        return torch.tensor([not e for e in self.errors], dtype=torch.bool)


@torch.no_grad()
def encode_pixels(model: nn.Module, images: torch.Tensor, device="cpu", precision: str = "fp32") -> torch.Tensor:
    """Preprocessed images ``(B, 3, H, W)`` -> L2-normalised embeddings ``(B, D)``, float32 on the CPU: the one
    image-encoding step of evaluation, zero-shot, indexing and search (input dtype and autocast by
    ``precision``, as open_clip_train does)."""
    device = torch.device(device)
    with get_autocast(precision, device_type=device.type)():
        features = model.encode_image(images.to(device=device, dtype=get_input_dtype(precision)))
    return F.normalize(features.float(), dim=-1).cpu()


def _encode_batches(model: nn.Module, loader: DataLoader, device, precision: str, progress: bool, desc: str,
                    with_errors: bool) -> Tuple[torch.Tensor, List[str]]:
    out, errors = [], []
    for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress):
        out.append(encode_pixels(model, batch[0] if with_errors else batch, device, precision))
        if with_errors:
            errors += list(batch[1])
    return torch.cat(out), errors


@torch.no_grad()
def encode_images(model: nn.Module, paths: Sequence[str], preprocess: Callable, *, batch_size: int = 64,
                  workers: int = 0, device="cpu", precision: str = "fp32", progress: bool = True,
                  bands: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Image files -> L2-normalised embeddings (N, D), float32 on the CPU. ``bands``: see ``decode_image``."""
    loader = DataLoader(ImageFiles(paths, preprocess, bands), batch_size=batch_size, num_workers=workers)
    return _encode_batches(model, loader, device, precision, progress, "encoding images", with_errors=False)[0]


@torch.no_grad()
def encode_images_skipping(model: nn.Module, paths: Sequence[str], preprocess: Callable, *, batch_size: int = 64,
                           workers: int = 0, device="cpu", precision: str = "fp32", progress: bool = True,
                           bands: Optional[Sequence[int]] = None) -> EncodedImages:
    """As :func:`encode_images`, but an image the decoder cannot read is skipped and its error kept."""
    loader = DataLoader(ImageFiles(paths, preprocess, bands, skip_unreadable=True), batch_size=batch_size,
                        num_workers=workers)
    return EncodedImages(*_encode_batches(model, loader, device, precision, progress, "encoding images",
                                          with_errors=True))


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


def load_model_for_evaluation(args) -> Tuple[nn.Module, Callable, str]:
    """The model the evaluation commands' ``--model-name``, ``--checkpoint``, ``--prior-pretrained``,
    ``--precision`` and ``--device`` name -> (model in eval mode, its inference preprocess, device); prints
    what was loaded."""
    from ..models.factory import create_model_and_transforms
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, _, preprocess = create_model_and_transforms(
        args.model_name, args.checkpoint, prior_pretrained=args.prior_pretrained, precision=args.precision,
        device=device)
    model.eval()
    print(f"Model: {args.model_name} ({type(model).__name__}) from {args.checkpoint or 'random initialisation'} "
          f"on {device}", flush=True)
    return model, preprocess, device


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
