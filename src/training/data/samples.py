"""What every training input format shares: class ids, the one image decoder, skip counts, full batches.

A sample is ``(image (3, H, W) float, caption str, class_id int)``; :class:`Collate` makes the batch
``(images (B, 3, H, W), tokens (B, L) long, class_ids (B,) int64)``.
"""
import logging
import multiprocessing
import re
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Union

import open_clip_train.data
import torch
from torch.utils.data import DataLoader

from pir_clip.data.images import decode_image
from pir_clip.data.labels import resolve_class_id

UNKNOWN_CLASS = -1
SKIP_REASONS = ("corrupt_image", "missing_image", "missing_caption", "undecodable_caption", "no_class",
                "unreadable_shard")


class SkipCounter:
    """Skipped samples per reason, in shared memory: made before the DataLoader starts its workers, so all
    of them add to the same counts (like open_clip's ``SharedEpoch``)."""

    def __init__(self):
        self._counts = multiprocessing.Array("q", len(SKIP_REASONS))
        self._logged: Dict[str, int] = {}

    def skip(self, reason: str, what: str) -> None:
        """Count a skipped sample and log the first three per reason and process. Returns ``None``, so a
        pipeline stage drops a sample with ``return counter.skip(...)``."""
        with self._counts.get_lock():
            self._counts[SKIP_REASONS.index(reason)] += 1
        seen = self._logged[reason] = self._logged.get(reason, 0) + 1
        if seen <= 3:
            logging.warning(f"skipping training sample ({reason.replace('_', ' ')}): {what}"
                            + (" (further ones of this kind are counted, not logged)" if seen == 3 else ""))

    def reset(self) -> None:
        self._counts[:] = [0] * len(SKIP_REASONS)

    def as_dict(self) -> Dict[str, int]:
        return dict(zip(SKIP_REASONS, self._counts[:]))


@dataclass
class DataInfo(open_clip_train.data.DataInfo):
    """open_clip's (``dataloader`` with ``num_batches`` per rank and epoch and ``num_samples``; ``set_epoch``
    reaches the sampler or the shard shuffle) with this epoch's skipped samples."""
    skip_counter: Optional[SkipCounter] = None

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.skip_counter.reset()

    def skipped(self) -> Dict[str, int]:
        """``{reason: count}`` for every reason (zeros too: every rank has the same keys), summed over this
        rank's workers since :meth:`set_epoch`; samples read ahead into a shuffle buffer count when read."""
        return self.skip_counter.as_dict()


class EpochLoader(DataLoader):
    """A DataLoader that must give ``num_batches`` batches: a rank that gave fewer would leave the others
    waiting in all-reduce forever, so here it is an error; every rank logs its count."""

    def __init__(self, dataset, *, num_batches: int, num_samples: int, rank: int, **kwargs):
        super().__init__(dataset, **kwargs)
        self.num_batches, self.num_samples, self.rank = num_batches, num_samples, rank

    def __iter__(self):
        count = 0
        for count, batch in enumerate(super().__iter__(), 1):
            yield batch
        if count != self.num_batches:
            raise RuntimeError(f"rank {self.rank}: the training data gave {count} batches, not the "
                               f"{self.num_batches} every rank must give (a bug in training.data)")
        logging.info(f"rank {self.rank}: {count} training batches this epoch")


class ClassResolver:
    """Class id from an explicit label or the image name (:mod:`pir_clip.data.labels`); without one,
    ``None`` when ``required`` (``--is_aff_loss``), else :data:`UNKNOWN_CLASS`."""

    def __init__(self, regex: Optional[str], required: bool):
        self.regex, self.required = re.compile(regex) if regex else None, bool(required)

    def __call__(self, image_name: Optional[str], label: Optional[str]) -> Optional[int]:
        try:
            return resolve_class_id(image_name=image_name, label=label, regex=self.regex)
        except ValueError:
            return None if self.required else UNKNOWN_CLASS

    def explain(self, image_name: Optional[str], label: Optional[str]) -> str:
        try:
            resolve_class_id(image_name=image_name, label=label, regex=self.regex)
            return "the class resolves"
        except ValueError as e:
            return str(e)


class TrainImage:
    """A file or image bytes -> the train transform's (3, H, W) tensor, through the one decoder
    (:func:`pir_clip.data.images.decode_image`) with ``--bands``; ``None`` if it does not decode (counted
    unless ``count`` is off)."""

    def __init__(self, transform: Callable, bands: Optional[Sequence[int]], counter: SkipCounter):
        self.transform, self.bands, self.counter = transform, bands, counter

    def __call__(self, source: Union[str, bytes], name: str, count: bool = True) -> Optional[torch.Tensor]:
        try:
            image = decode_image(source, self.bands, name=name)
        except Exception as e:  # broken files raise many types; the sample is counted and logged, not lost
            return self.counter.skip("corrupt_image", f"{name}: {e}") if count else None
        return self.transform(image)


class Collate:
    """Samples -> a batch (module docstring); captions are tokenized once per batch."""

    def __init__(self, tokenizer: Callable):
        self.tokenizer = tokenizer

    def __call__(self, samples):
        images, captions, class_ids = zip(*samples)
        return torch.stack(images), self.tokenizer(list(captions)), torch.tensor(class_ids, dtype=torch.int64)


def loader_kwargs(args) -> dict:
    return dict(num_workers=args.workers, persistent_workers=args.workers > 0, pin_memory=torch.cuda.is_available())
