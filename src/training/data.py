"""Training data: every input format yields ``(images, tokens, class_ids)`` batches.

Formats (``--dataset-type``, or ``auto`` by the ``--train-data`` extension):

* ``webdataset``: tar shards (brace spec, ``::`` between sources) with RS5M keys (``img_content`` image bytes,
  ``caption``, ``img_name``) or open_clip keys (``jpg|jpeg|png|webp|tif|tiff`` + ``txt``; the image name is
  the sample key's base name plus the image extension: key ``c3/airport_12`` + ``.tif`` -> ``airport_12.tif``).
  An optional ``label``/``cls`` member is an explicit class label.
* ``csv``: a caption table (one row per caption) with an image-path column and an optional label column.
* ``json``: a Karpathy JSON (``dataset_RSITMD.json``; one sample per caption of ``--json-split``) or a PIR-ITR
  training JSON, read directly.
* ``synthetic``: constant images and captions for smoke tests; no class ids.

Batches: ``images`` (B, 3, H, W) float from the train transform, ``tokens`` (B, L) long from the tokenizer,
``class_ids`` (B,) int64 from :func:`pir_clip.data.labels.resolve_class_id` (explicit label > ``--aff-label-regex``
> name rule), a hash of the class name and so the same class on every rank, worker and epoch;
``UNKNOWN_CLASS`` (-1) where a sample has no class and ``--is_aff_loss`` is off.

Bad samples (an undecodable image, no image, no or an empty caption, no class under ``--is_aff_loss``, an
unreadable shard) are skipped and counted per reason in shared memory, so :meth:`DataInfo.skipped` sums all
DataLoader workers; the counts restart at :meth:`DataInfo.set_epoch`. Problems the user must fix (missing
files, no shards, missing image names under ``--is_aff_loss``) raise :class:`DataFormatError` before training.
"""
import json
import logging
import math
import multiprocessing
import os
import random
import re
import tarfile
from bisect import bisect_right
from dataclasses import dataclass
from io import BytesIO
from itertools import accumulate, islice
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Pattern, Sequence, Tuple, Union

import braceexpand
import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info
from torch.utils.data.distributed import DistributedSampler

from pir_clip.data.annotations import DataFormatError, load_caption_records
from pir_clip.data.images import decode_image
from pir_clip.data.labels import resolve_class_id

__all__ = ["get_data", "DataInfo", "DataFormatError", "SKIP_REASONS", "UNKNOWN_CLASS", "SharedEpoch",
           "SkipCounter", "load_rgb", "expand_shards", "read_tar_samples"]

UNKNOWN_CLASS = -1
SKIP_REASONS = ("corrupt_image", "missing_image", "missing_caption", "undecodable_caption", "no_class",
                "unreadable_shard")
IMAGE_KEYS = ("img_content", "jpg", "jpeg", "png", "webp", "tif", "tiff")
CAPTION_KEYS = ("caption", "txt")
NAME_KEY = "img_name"
LABEL_KEYS = ("label", "cls")

# Raw (undecoded) samples are buffered, so the buffer costs bufsize x the mean image file size per worker:
# 2000 x ~200 KB RSITMD TIFFs is ~400 MB. Shards made by scripts/convert_karpathy_to_wds.py are already
# shuffled globally, so a smaller buffer than open_clip's 5000 loses little.
SAMPLE_SHUFFLE_SIZE = 2000
SAMPLE_SHUFFLE_INITIAL = 500
# How many samples of the first shard are inspected before training for the expected keys.
INSPECT_SAMPLES = 8
# A map-style sample whose image is bad is replaced by one of this many random others (see CaptionDataset).
MAX_SUBSTITUTES = 16
_SHOW = 5


# ---------------------------------------------------------------------------------------- shared state


class SharedEpoch:
    """The epoch number in shared memory, so DataLoader workers (persistent ones too) see ``set_epoch``."""

    def __init__(self, epoch: int = 0):
        self._value = multiprocessing.Value("i", epoch)

    def set_value(self, epoch: int) -> None:
        self._value.value = epoch

    def get_value(self) -> int:
        return self._value.value


class SkipCounter:
    """Skipped samples per reason in :data:`SKIP_REASONS`, in shared memory.

    Created before the DataLoader starts its workers, so every worker increments the same counters. Like
    open_clip's shared epoch, it uses the default multiprocessing context, which the DataLoader's workers
    must use too (do not pass a different ``multiprocessing_context``).
    """

    def __init__(self):
        self._counts = multiprocessing.Array("q", len(SKIP_REASONS))

    def add(self, reason: str, n: int = 1) -> None:
        index = SKIP_REASONS.index(reason)
        with self._counts.get_lock():
            self._counts[index] += n

    def reset(self) -> None:
        with self._counts.get_lock():
            for i in range(len(SKIP_REASONS)):
                self._counts[i] = 0

    def as_dict(self) -> Dict[str, int]:
        with self._counts.get_lock():
            return dict(zip(SKIP_REASONS, self._counts[:]))


_warned: Dict[str, int] = {}


def _skip(counter: SkipCounter, reason: str, what: str) -> None:
    """Count a skipped sample; the first few per reason and process are also logged."""
    counter.add(reason)
    seen = _warned[reason] = _warned.get(reason, 0) + 1
    if seen <= 3:
        logging.warning(f"skipping training sample ({reason.replace('_', ' ')}): {what}"
                        + (" (further ones of this kind are counted, not logged)" if seen == 3 else ""))


@dataclass
class DataInfo:
    """What ``get_data`` returns per split.

    ``dataloader`` yields ``(images, tokens, class_ids)`` and carries ``num_batches`` (per rank and epoch) and
    ``num_samples``. Call :meth:`set_epoch` before iterating an epoch; :meth:`skipped` then counts that
    epoch's skipped samples on this rank.
    """
    dataloader: DataLoader
    sampler: Optional[DistributedSampler] = None
    shared_epoch: Optional[SharedEpoch] = None
    skip_counter: Optional[SkipCounter] = None

    def set_epoch(self, epoch: int) -> None:
        if self.shared_epoch is not None:
            self.shared_epoch.set_value(epoch)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        if self.skip_counter is not None:
            self.skip_counter.reset()

    def skipped(self) -> Dict[str, int]:
        """``{reason: count}`` for every reason in :data:`SKIP_REASONS` (zeros included, so every rank has the
        same keys), summed over this rank's workers since :meth:`set_epoch`. Counts include samples decoded
        ahead by prefetching workers; ``unreadable_shard`` counts shards, the other reasons samples."""
        return self.skip_counter.as_dict() if self.skip_counter is not None else dict.fromkeys(SKIP_REASONS, 0)


# ---------------------------------------------------------------------------------------- samples


def load_rgb(source: Union[bytes, str]) -> Image.Image:
    """Image bytes or a file -> RGB through the shared decoder (:func:`pir_clip.data.images.decode_image`)."""
    return decode_image(source)


class ClassResolver:
    """Class id of a sample from its explicit label or image name (see :mod:`pir_clip.data.labels`).

    ``required`` (``--is_aff_loss``): returns ``None`` when there is no usable class, so the sample is skipped;
    otherwise such samples get :data:`UNKNOWN_CLASS`.
    """

    def __init__(self, regex: Optional[str], required: bool):
        self.regex: Optional[Pattern[str]] = re.compile(regex) if regex else None
        self.required = required

    def __call__(self, image_name: Optional[str], label: Optional[str]) -> Optional[int]:
        if image_name is None and label is None:
            return None if self.required else UNKNOWN_CLASS
        try:
            return resolve_class_id(image_name=image_name, label=label, regex=self.regex)
        except ValueError:
            if self.required:
                return None
            return UNKNOWN_CLASS

    def explain(self, image_name: Optional[str], label: Optional[str]) -> str:
        """Why :meth:`__call__` found no class, for error messages."""
        try:
            resolve_class_id(image_name=image_name, label=label, regex=self.regex)
        except ValueError as e:
            return str(e)
        return "the class resolves"


def collate_samples(samples: Sequence[Optional[tuple]]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack ``(image (3,H,W), tokens (L,), class_id)`` samples into ``(B,3,H,W)``, ``(B,L)``, ``(B,)`` int64.

    ``None`` markers (samples whose image could not be replaced) are dropped, so the batch gets smaller.
    """
    kept = [s for s in samples if s is not None]
    if not kept:
        raise DataFormatError(f"all {len(samples)} images of a training batch failed to decode, each after "
                              f"{MAX_SUBSTITUTES} replacement attempts; the image files are unreadable (see the "
                              "warnings above for the first ones and PIL's error)")
    images, tokens, class_ids = zip(*kept)
    return torch.stack(images), torch.stack(tokens), torch.tensor(class_ids, dtype=torch.int64)


def _tokenize(tokenizer: Callable, caption: str) -> torch.Tensor:
    return tokenizer([caption])[0]


# ---------------------------------------------------------------------------------------- map-style (CSV/JSON)


class CaptionDataset(Dataset):
    """One sample per (image file, caption) record: ``(image (3,H,W), tokens (L,), class_id)``.

    A record whose image does not decode is counted once (``corrupt_image``) and replaced by a random other
    record, so batches keep their size: under DDP every rank must contribute equal-sized batches to the
    feature all-gather. Images known to be bad in this worker are not tried again as replacements.
    """

    def __init__(self, image_paths: Sequence[str], captions: Sequence[str], class_ids: np.ndarray,
                 transform: Callable, tokenizer: Callable, counter: SkipCounter):
        self.image_paths = list(image_paths)
        self.captions = list(captions)
        self.class_ids = np.asarray(class_ids, dtype=np.int64)
        self.transform = transform
        self.tokenizer = tokenizer
        self.counter = counter
        self._bad_paths = set()

    def __len__(self) -> int:
        return len(self.captions)

    def _image(self, index: int) -> Optional[torch.Tensor]:
        path = self.image_paths[index]
        if path in self._bad_paths:
            return None
        try:
            image = load_rgb(path)
        except Exception as e:  # PIL raises many types on broken files; the sample is counted and logged
            self._bad_paths.add(path)
            logging.debug(f"cannot decode {path}: {e!r}")
            return None
        return self.transform(image)

    def __getitem__(self, index: int):
        image = self._image(index)
        if image is None:
            _skip(self.counter, "corrupt_image", f"{self.image_paths[index]} does not decode as an image")
            # Seeded by the index so a rerun draws the same replacements.
            rng = random.Random(index)
            for _ in range(MAX_SUBSTITUTES):
                index = rng.randrange(len(self))
                image = self._image(index)
                if image is not None:
                    break
            else:
                return None
        return image, _tokenize(self.tokenizer, self.captions[index]), int(self.class_ids[index])


def _with_training_flags(error: DataFormatError) -> DataFormatError:
    # pir_clip.data.annotations names the evaluation tool's flags; say which ones training uses.
    return DataFormatError(f"{error} [training flags: --train-data, --train-images-dir, --json-split, "
                           "--csv-img-key, --csv-caption-key, --csv-label-key, --csv-separator, --csv-encoding]")


def _csv_options(path: str, args) -> Dict[str, Optional[str]]:
    """Separator and columns for ``path``, with two conveniences: a comma-separated header is accepted when
    the separator flag is open_clip's default tab, and a ``filename`` column (GeoRSCLIP) stands in for the
    default ``filepath``."""
    separator = getattr(args, "csv_separator", "\t") or "\t"
    image_key = getattr(args, "csv_img_key", "filepath") or "filepath"
    encoding = getattr(args, "csv_encoding", "utf-8") or "utf-8"
    try:
        with open(path, encoding=encoding, newline="") as f:
            header = f.readline().lstrip("\ufeff").rstrip("\r\n")
    except (OSError, UnicodeDecodeError, LookupError):
        header = None  # annotations' reader reports the problem with the right wording
    if header is not None:
        if separator not in header:
            for candidate in (",", "\t", ";", "|"):
                if candidate in header:
                    logging.info(f"{path}: header has no {separator!r}; using separator {candidate!r}")
                    separator = candidate
                    break
        columns = [c.strip() for c in header.split(separator)]
        if image_key == "filepath" and "filepath" not in columns and "filename" in columns:
            image_key = "filename"
    return dict(csv_separator=separator, csv_image_key=image_key,
                csv_caption_key=getattr(args, "csv_caption_key", "title") or "title",
                csv_label_key=getattr(args, "csv_label_key", None), csv_encoding=encoding)


def load_records(path: str, dataset_type: str, args):
    """Caption records of a CSV or JSON file with resolved, existing image paths (else ``DataFormatError``)."""
    if not os.path.isfile(path):
        raise DataFormatError(f"--train-data {path} does not exist; check the path")
    images_dir = getattr(args, "train_images_dir", None)
    try:
        if dataset_type == "csv":
            return load_caption_records(path, images_dir, fmt="csv", images_flag="--train-images-dir",
                                        **_csv_options(path, args))
        return load_caption_records(path, images_dir, split=getattr(args, "json_split", "train") or "train",
                                    fmt="auto", images_flag="--train-images-dir")
    except DataFormatError as e:
        raise _with_training_flags(e) from None


def class_ids_of(names: Sequence[str], labels: Sequence[Optional[str]], resolver: ClassResolver,
                 source: str) -> np.ndarray:
    """int64 class ids, one per record; under ``--is_aff_loss`` a record without a class is an error."""
    cache: Dict[Tuple[str, Optional[str]], Optional[int]] = {}
    ids = np.empty(len(names), dtype=np.int64)
    failed: List[int] = []
    for i, (name, label) in enumerate(zip(names, labels)):
        key = (os.path.basename(name), label)
        if key not in cache:
            cache[key] = resolver(name, label)
        if cache[key] is None:
            failed.append(i)
        ids[i] = UNKNOWN_CLASS if cache[key] is None else cache[key]
    if failed:
        first = failed[0]
        examples = ", ".join(os.path.basename(names[i]) for i in failed[:_SHOW])
        raise DataFormatError(
            f"--is_aff_loss: {len(failed):,} of {len(names):,} samples in {source} have no class "
            f"(e.g. {examples}): {resolver.explain(names[first], labels[first])}. Fix --aff-label-regex, add a "
            "label column (--csv-label-key), or turn the affiliation loss off")
    return ids


def _loader_kwargs(args) -> dict:
    workers = int(getattr(args, "workers", 0) or 0)
    return dict(num_workers=workers, persistent_workers=workers > 0, pin_memory=torch.cuda.is_available())


def get_map_dataset(args, transform: Callable, epoch: int, tokenizer: Callable, dataset_type: str) -> DataInfo:
    """CSV or JSON training data as a map-style dataset, split over ranks by a DistributedSampler."""
    path = args.train_data
    records = load_records(path, dataset_type, args)
    resolver = ClassResolver(getattr(args, "aff_label_regex", None), bool(getattr(args, "is_aff_loss", False)))
    class_ids = class_ids_of([r.image_path for r in records], [r.label for r in records], resolver, path)
    counter = SkipCounter()
    dataset = CaptionDataset([r.image_path for r in records], [r.caption for r in records], class_ids, transform,
                             tokenizer, counter)
    info = map_style_info(dataset, args, epoch, counter, source=f"--train-data {path}")
    logging.info(f"training data {path}: {len(dataset):,} captions, {info.dataloader.num_batches:,} batches per "
                 "epoch and rank")
    return info


def map_style_info(dataset: Dataset, args, epoch: int, counter: SkipCounter, source: str) -> DataInfo:
    """A DataLoader of full batches over this rank's share of ``dataset``, reshuffled per epoch."""
    world_size, rank = _world(args)
    # Passing replicas and rank explicitly needs no process group; drop_last keeps the ranks' shares disjoint
    # (padding would repeat samples) and of equal length, which DDP needs.
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                 seed=int(getattr(args, "seed", 0) or 0), drop_last=True)
    sampler.set_epoch(epoch)
    if len(sampler) < args.batch_size:
        raise DataFormatError(f"{source} has {len(dataset):,} samples, {len(sampler):,} per rank, fewer than one "
                              f"batch (--batch-size {args.batch_size}); lower --batch-size")
    dataloader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, drop_last=True,
                            collate_fn=collate_samples, **_loader_kwargs(args))
    dataloader.num_samples = len(dataset)
    dataloader.num_batches = len(dataloader)
    return DataInfo(dataloader, sampler=sampler, skip_counter=counter)


# ---------------------------------------------------------------------------------------- webdataset


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def expand_shards(spec: str, weights: Optional[Union[str, Sequence[float]]] = None
                  ) -> Tuple[List[str], Optional[List[float]]]:
    """Shard urls of a ``::``-separated list of brace specs, and one weight per shard (a source's weight,
    ``--train-data-upsampling-factors``, applies to each of its shards). Local shards must exist."""
    sources = [s for s in spec.split("::") if s.strip()]
    if weights is not None:
        weights = [float(w) for w in weights.split("::")] if isinstance(weights, str) else [float(w) for w in weights]
        if len(weights) != len(sources):
            raise DataFormatError(f"--train-data-upsampling-factors has {len(weights)} values but --train-data has "
                                  f"{len(sources)} '::'-separated sources; give one factor per source")
    urls: List[str] = []
    shard_weights: List[float] = []
    for n, source in enumerate(sources):
        expanded = list(braceexpand.braceexpand(source.strip()))
        missing = [u for u in expanded if _is_local(u) and not os.path.isfile(u)]
        if len(missing) == len(expanded):
            raise DataFormatError(f"--train-data: no shard file matches {source!r} (e.g. {expanded[0]} does not "
                                  "exist); check the path and the brace range, e.g. 'out/train-{000000..000003}.tar'")
        if missing:
            raise DataFormatError(f"--train-data: {len(missing):,} of {len(expanded):,} shards of {source!r} do not "
                                  f"exist: {', '.join(missing[:_SHOW])}; fix the brace range")
        urls.extend(expanded)
        if weights is not None:
            shard_weights.extend([weights[n]] * len(expanded))
    if not urls:
        raise DataFormatError("--train-data is empty; pass shard files, e.g. 'out/train-{000000..000003}.tar'")
    return urls, (shard_weights if weights is not None else None)


def count_shard_samples(urls: Sequence[str]) -> Optional[int]:
    """Samples in ``urls`` from ``sizes.json`` ({shard file name: samples}) next to each shard, or from a
    ``__len__`` file when all shards share one folder; ``None`` when neither is there."""
    folders: Dict[str, List[str]] = {}
    for url in urls:
        folders.setdefault(os.path.dirname(url), []).append(os.path.basename(url))
    total = 0
    for folder, names in folders.items():
        sizes_path = os.path.join(folder, "sizes.json")
        len_path = os.path.join(folder, "__len__")
        if os.path.isfile(sizes_path):
            try:
                with open(sizes_path, encoding="utf-8") as f:
                    sizes = json.load(f)
            except (OSError, ValueError) as e:
                raise DataFormatError(f"{sizes_path} is unreadable ({e}); fix it or pass --train-num-samples") from e
            absent = [name for name in names if name not in sizes]
            if absent:
                raise DataFormatError(f"{sizes_path} has no entry for {', '.join(absent[:_SHOW])}; add the shards' "
                                      "sample counts or pass --train-num-samples")
            total += sum(int(sizes[name]) for name in names)
        elif os.path.isfile(len_path) and len(folders) == 1:
            with open(len_path, encoding="utf-8") as f:
                total += int(f.read().strip())
        else:
            return None
    return total


def _split_member_name(name: str) -> Tuple[Optional[str], Optional[str]]:
    """WebDataset's convention: the key is the path up to the first ``.`` of the base name, the rest (lower
    case) is the field: ``c3/airport_12.tif`` -> (``c3/airport_12``, ``tif``)."""
    folder, _, base = name.rpartition("/")
    stem, dot, suffix = base.partition(".")
    if not dot or not stem or not suffix:
        return None, None
    return (f"{folder}/{stem}" if folder else stem), suffix.lower()


def read_tar_samples(urls: Iterable[str], counter: Optional[SkipCounter] = None) -> Iterator[dict]:
    """Raw samples ``{"__key__", "__url__", field: bytes}`` of the shards ``urls``, read as a stream.

    Consecutive members sharing a key form a sample (a repeated field starts a new one). A shard that cannot
    be opened or read is logged, counted as ``unreadable_shard`` and left; samples before the damage are kept.
    This replaces webdataset's tar grouping, whose end-of-shard markers open_clip's grouping cannot take.
    """
    for url in urls:
        sample: Optional[dict] = None
        try:
            stream = wds.gopen(url) if not _is_local(url) else open(url, "rb")
            with stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
                for member in tar:
                    # Streaming mode still records every member; drop them so long shards use constant memory.
                    tar.members = []
                    if not member.isreg():
                        continue
                    key, field = _split_member_name(member.name)
                    if key is None:
                        continue
                    data = tar.extractfile(member).read()
                    if sample is not None and (key != sample["__key__"] or field in sample):
                        yield sample
                        sample = None
                    if sample is None:
                        sample = {"__key__": key, "__url__": url}
                    sample[field] = data
        except (tarfile.TarError, OSError, EOFError) as e:
            if counter is not None:
                counter.add("unreadable_shard")
            logging.warning(f"skipping the rest of shard {url}: it cannot be read ({e!r})")
            sample = None
        if sample is not None:
            yield sample


def _worker() -> Tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def _world(args) -> Tuple[int, int]:
    world_size = int(getattr(args, "world_size", 1) or 1)
    rank = int(getattr(args, "rank", 0) or 0)
    if not 0 <= rank < world_size:
        raise DataFormatError(f"rank {rank} is outside world size {world_size}")
    return world_size, rank


class ShardStream(IterableDataset):
    """The shard urls this rank and DataLoader worker reads in the current epoch.

    Without resampling: every rank and worker shuffles the full list with the same ``(seed, epoch)`` rng and
    takes its slice ``[rank::world_size][worker::num_workers]``, so each shard is read once per pass. With
    resampling: an endless draw with replacement (by weight), seeded per ``(seed, epoch, rank, worker)``.
    """

    def __init__(self, urls: Sequence[str], weights: Optional[Sequence[float]], resampled: bool, seed: int,
                 epoch: SharedEpoch, rank: int, world_size: int):
        super().__init__()
        self.urls, self.resampled, self.seed, self.epoch = list(urls), resampled, seed, epoch
        self.cum_weights = list(accumulate(weights)) if weights is not None else None
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[str]:
        epoch = self.epoch.get_value()
        worker, num_workers = _worker()
        if self.resampled:
            # str seeds hash with SHA-512, so they are the same in every process (unlike hash()).
            rng = random.Random(f"shards/{self.seed}/{epoch}/{self.rank}/{worker}")
            while True:
                if self.cum_weights is None:
                    yield self.urls[rng.randrange(len(self.urls))]
                else:
                    pick = rng.random() * self.cum_weights[-1]
                    yield self.urls[min(bisect_right(self.cum_weights, pick), len(self.urls) - 1)]
        order = list(self.urls)
        random.Random(f"shards/{self.seed}/{epoch}").shuffle(order)
        yield from order[self.rank::self.world_size][worker::num_workers]


class TarSamples:
    """Pipeline stage: shard urls -> raw samples (see :func:`read_tar_samples`)."""

    def __init__(self, counter: SkipCounter):
        self.counter = counter

    def __call__(self, urls: Iterable[str]) -> Iterator[dict]:
        return read_tar_samples(urls, self.counter)


class SampleShuffle:
    """Pipeline stage: a shuffle buffer seeded per ``(seed, epoch, rank, worker)``, reproducible on resume.

    Like webdataset's, it starts giving out samples once ``initial`` are in and then grows to ``bufsize``.
    """

    def __init__(self, bufsize: int, initial: int, seed: int, epoch: SharedEpoch, rank: int):
        self.bufsize, self.initial, self.seed, self.epoch, self.rank = bufsize, min(initial, bufsize), seed, epoch, rank

    def __call__(self, samples: Iterable[tuple]) -> Iterator[tuple]:
        worker, _ = _worker()
        rng = random.Random(f"samples/{self.seed}/{self.epoch.get_value()}/{self.rank}/{worker}")
        buffer: List[tuple] = []
        take_two = False
        for sample in samples:
            buffer.append(sample)
            if len(buffer) < self.initial:
                continue
            if len(buffer) < self.bufsize:
                # Take two samples per one given out until the buffer is full, so it keeps growing.
                take_two = not take_two
                if take_two:
                    continue
            # Swap-remove: O(1), and the order of the rest does not matter.
            k = rng.randrange(len(buffer))
            buffer[k], buffer[-1] = buffer[-1], buffer[k]
            yield buffer.pop()
        rng.shuffle(buffer)
        yield from buffer


def _text(data: bytes) -> str:
    return data.decode("utf-8").strip()


def _optional_text(data: bytes) -> Optional[str]:
    # An undecodable or empty name or label is as good as none; the class check decides what follows.
    try:
        return _text(data) or None
    except UnicodeDecodeError:
        return None


def _field_names(raw: dict) -> List[str]:
    return sorted(k for k in raw if not k.startswith("__"))


def sample_fields(raw: dict) -> Dict[str, Optional[object]]:
    """The fields a raw shard sample provides: ``image_key``, ``caption`` (bytes), ``image_name``, ``label``.

    ``image_name`` is ``img_name`` if present, else (open_clip keys) the key's base name plus the image field;
    RS5M-key samples without ``img_name`` have none.
    """
    image_key = next((k for k in IMAGE_KEYS if k in raw), None)
    caption = next((raw[k] for k in CAPTION_KEYS if k in raw), None)
    if NAME_KEY in raw:
        image_name = _optional_text(raw[NAME_KEY])
    elif image_key is not None and image_key != "img_content":
        image_name = f"{raw['__key__'].rpartition('/')[2]}.{image_key}"
    else:
        image_name = None
    label_key = next((k for k in LABEL_KEYS if k in raw), None)
    label = _optional_text(raw[label_key]) if label_key is not None else None
    return dict(image_key=image_key, caption=caption, image_name=image_name, label=label)


class ParseSamples:
    """Pipeline stage, before the shuffle buffer: raw samples -> ``(where, image bytes, caption, class_id)``.

    Samples without an image, caption or (under ``--is_aff_loss``) class are skipped and counted here, as
    their shard is read, so the buffer holds only usable samples and just the bytes it needs.
    """

    def __init__(self, resolver: ClassResolver, counter: SkipCounter):
        self.resolver, self.counter = resolver, counter

    def parse(self, raw: dict) -> Optional[tuple]:
        where = f"{raw['__key__']} in {raw['__url__']}"
        fields = sample_fields(raw)
        if fields["image_key"] is None:
            _skip(self.counter, "missing_image", f"{where} has no image (fields {_field_names(raw)})")
            return None
        if fields["caption"] is None:
            _skip(self.counter, "missing_caption", f"{where} has no caption field")
            return None
        try:
            caption = _text(fields["caption"])
        except UnicodeDecodeError:
            _skip(self.counter, "undecodable_caption", f"{where}: the caption is not UTF-8 text")
            return None
        if not caption:
            _skip(self.counter, "missing_caption", f"{where} has an empty caption")
            return None
        class_id = self.resolver(fields["image_name"], fields["label"])
        if class_id is None:
            _skip(self.counter, "no_class", f"{where}: --is_aff_loss needs a class, but "
                  + self.resolver.explain(fields["image_name"], fields["label"]))
            return None
        return where, raw[fields["image_key"]], caption, class_id

    def __call__(self, samples: Iterable[dict]) -> Iterator[tuple]:
        for raw in samples:
            parsed = self.parse(raw)
            if parsed is not None:
                yield parsed


class DecodeSamples:
    """Pipeline stage, after the shuffle: ``(where, image bytes, caption, class_id)`` -> ``(image (3,H,W),
    tokens (L,), class_id)``; an image that does not decode is skipped and counted (``corrupt_image``) when
    its turn comes, so a sample still in the buffer when the epoch ends is not counted."""

    def __init__(self, transform: Callable, tokenizer: Callable, counter: SkipCounter):
        self.transform, self.tokenizer, self.counter = transform, tokenizer, counter

    def __call__(self, samples: Iterable[tuple]) -> Iterator[tuple]:
        for where, image_bytes, caption, class_id in samples:
            try:
                image = load_rgb(image_bytes)
            except Exception as e:  # PIL raises many types on broken bytes; the sample is counted and logged
                _skip(self.counter, "corrupt_image", f"{where}: {e!r}")
                continue
            yield self.transform(image), _tokenize(self.tokenizer, caption), class_id


class Batch:
    """Pipeline stage: full batches only (a training epoch has a fixed number of equal batches)."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size

    def __call__(self, samples: Iterable[tuple]) -> Iterator[tuple]:
        batch: List[tuple] = []
        for sample in samples:
            batch.append(sample)
            if len(batch) == self.batch_size:
                yield collate_samples(batch)
                batch = []


def check_first_shard(url: str, resolver: ClassResolver) -> None:
    """Read the first samples of ``url`` in this process and fail early on the wrong keys, or on missing
    image names or labels under ``--is_aff_loss``."""
    samples = list(islice(read_tar_samples([url], SkipCounter()), INSPECT_SAMPLES))
    if not samples:
        raise DataFormatError(f"--train-data: the first shard {url} holds no readable samples; check that it is "
                              "a tar of webdataset samples (see the warning above)")
    fields = [sample_fields(s) for s in samples]
    if not any(f["image_key"] is not None and f["caption"] is not None for f in fields):
        keys = sorted({k for s in samples for k in _field_names(s)})
        raise DataFormatError(
            f"--train-data: the first {len(samples)} samples of {url} have fields {keys}, but training needs an "
            f"image ({' or '.join(IMAGE_KEYS)}) and a caption ({' or '.join(CAPTION_KEYS)}) per sample")
    if resolver.required and all(resolver(f["image_name"], f["label"]) is None for f in fields):
        first = fields[0]
        if first["image_name"] is None and first["label"] is None:
            reason = (f"its samples carry no image name ('{NAME_KEY}' field, or an image field such as 'jpg' "
                      f"whose key is the image name) and no label ({' or '.join(LABEL_KEYS)})")
        else:
            reason = resolver.explain(first["image_name"], first["label"])
        raise DataFormatError(
            f"--is_aff_loss needs a scene class per sample, but in the first shard {url} {reason}. Convert the "
            "data with scripts/convert_karpathy_to_wds.py (writes img_name), add labels, fix --aff-label-regex, "
            "or turn the affiliation loss off")


def get_wds_dataset(args, transform: Callable, epoch: int, tokenizer: Callable) -> DataInfo:
    """WebDataset shards, open_clip-style: deterministic shard shuffle per epoch, split over ranks and
    workers (or resampled with replacement), a sample shuffle buffer, and ``with_epoch`` so that every rank
    and worker yields the same number of full batches per epoch."""
    resampled = bool(getattr(args, "dataset_resampled", False))
    factors = getattr(args, "train_data_upsampling_factors", None)
    if factors is not None and not resampled:
        raise DataFormatError("--train-data-upsampling-factors needs --dataset-resampled (sampling shards with "
                              "replacement)")
    urls, weights = expand_shards(args.train_data, factors)
    resolver = ClassResolver(getattr(args, "aff_label_regex", None), bool(getattr(args, "is_aff_loss", False)))
    check_first_shard(urls[0], resolver)

    num_samples = getattr(args, "train_num_samples", None)
    if not num_samples:
        num_samples = count_shard_samples(urls)
        if not num_samples:
            raise DataFormatError(f"--train-data: no sizes.json or __len__ next to the shards ({urls[0]}) gives the "
                                  "number of samples; pass --train-num-samples")
    world_size, rank = _world(args)
    workers = int(getattr(args, "workers", 0) or 0)
    if not resampled and len(urls) < max(1, workers) * world_size:
        raise DataFormatError(f"--train-data has {len(urls)} shards for {max(1, workers)} workers x {world_size} "
                              "ranks; every worker needs a shard: lower --workers, write smaller shards "
                              "(--shard-size), or pass --dataset-resampled")
    seed = int(getattr(args, "seed", 0) or 0)
    shared_epoch = SharedEpoch(epoch)
    counter = SkipCounter()
    pipeline = wds.DataPipeline(
        ShardStream(urls, weights, resampled, seed, shared_epoch, rank, world_size),
        TarSamples(counter),
        ParseSamples(resolver, counter),
        SampleShuffle(SAMPLE_SHUFFLE_SIZE, SAMPLE_SHUFFLE_INITIAL, seed, shared_epoch, rank),
        DecodeSamples(transform, tokenizer, counter),
        Batch(args.batch_size),
    )
    # Round up, as open_clip does: a worker that runs out of shards starts its slice again.
    global_batch = args.batch_size * world_size
    num_workers = max(1, workers)
    worker_batches = math.ceil(math.ceil(num_samples / global_batch) / num_workers)
    num_batches = worker_batches * num_workers
    pipeline = pipeline.with_epoch(worker_batches)
    dataloader = DataLoader(pipeline, batch_size=None, shuffle=False, **_loader_kwargs(args))
    dataloader.num_batches = num_batches
    dataloader.num_samples = num_batches * global_batch
    logging.info(f"training data: {len(urls):,} shards, {num_samples:,} samples, {num_batches:,} batches per "
                 f"epoch and rank{' (shards resampled)' if resampled else ''}")
    return DataInfo(dataloader, shared_epoch=shared_epoch, skip_counter=counter)


# ---------------------------------------------------------------------------------------- synthetic


class SyntheticDataset(Dataset):
    """Constant black images and a fixed caption, for smoke tests; class ids are ``UNKNOWN_CLASS``."""

    def __init__(self, transform: Callable, image_size: Tuple[int, int], size: int, tokenizer: Callable):
        self.transform, self.size = transform, size
        self.image = Image.new("RGB", image_size)
        self.tokens = _tokenize(tokenizer, "a synthetic caption")

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        return self.transform(self.image), self.tokens, UNKNOWN_CLASS


def _transform_image_size(transform) -> Tuple[int, int]:
    size = getattr(getattr(transform, "transforms", [None])[0], "size", 224)
    return (size, size) if isinstance(size, int) else tuple(size)


def get_synthetic_dataset(args, transform: Callable, epoch: int, tokenizer: Callable) -> DataInfo:
    if getattr(args, "is_aff_loss", False):
        raise DataFormatError("--is_aff_loss needs scene classes from image names or labels, but --dataset-type "
                              "synthetic has neither; train on real data or turn the affiliation loss off")
    size = getattr(args, "train_num_samples", None)
    if not size:
        raise DataFormatError("--dataset-type synthetic needs --train-num-samples")
    dataset = SyntheticDataset(transform, _transform_image_size(transform), size, tokenizer)
    return map_style_info(dataset, args, epoch, SkipCounter(), source="--dataset-type synthetic")


# ---------------------------------------------------------------------------------------- entry point


def detect_dataset_type(train_data: str) -> str:
    """``webdataset`` for .tar shards (brace specs, ``::`` lists), ``csv`` for .csv/.tsv, ``json`` for .json."""
    last = train_data.split("::")[-1].strip().lower()
    if ".tar" in last:
        return "webdataset"
    if last.endswith((".csv", ".tsv")):
        return "csv"
    if last.endswith(".json"):
        return "json"
    raise DataFormatError(f"--dataset-type auto cannot tell the format of --train-data {train_data!r} from its "
                          "extension (.tar, .csv/.tsv or .json); pass --dataset-type webdataset, csv or json")


DATASET_TYPES = ("webdataset", "csv", "json", "synthetic", "auto")


def get_data(args, preprocess_fns: Tuple[Callable, Callable], epoch: int = 0,
             tokenizer: Optional[Callable] = None) -> Dict[str, DataInfo]:
    """``{"train": DataInfo}`` for ``--train-data`` (or synthetic data); ``{}`` when there is none.

    ``preprocess_fns``: (train transform, val transform), PIL image -> (3,H,W) tensor. ``tokenizer``: list of
    str -> (N, L) long tensor. Validation is evaluated elsewhere, so ``--val-data`` is not read here.
    """
    preprocess_train, _ = preprocess_fns
    dataset_type = getattr(args, "dataset_type", "auto") or "auto"
    train_data = getattr(args, "train_data", None)
    if not train_data and dataset_type != "synthetic":
        return {}
    if tokenizer is None:
        raise ValueError("get_data needs the model's tokenizer")
    if dataset_type == "auto":
        dataset_type = detect_dataset_type(train_data)
    if dataset_type in ("csv", "json"):
        info = get_map_dataset(args, preprocess_train, epoch, tokenizer, dataset_type)
    elif dataset_type == "webdataset":
        info = get_wds_dataset(args, preprocess_train, epoch, tokenizer)
    elif dataset_type == "synthetic":
        info = get_synthetic_dataset(args, preprocess_train, epoch, tokenizer)
    else:
        raise DataFormatError(f"unknown --dataset-type {dataset_type!r}; use one of {', '.join(DATASET_TYPES)}")
    return {"train": info}
