"""Map-style training data: a CSV caption table or a JSON (Karpathy / PIR-ITR), and synthetic smoke data.

One sample per (image file, caption) record, split over ranks by a ``DistributedSampler`` and batched with
``drop_last``, so every rank gives the same number of full batches. A record whose image does not decode is
counted and replaced by another (the same one every run), never dropped: under DDP every rank must bring
full batches to the feature and class-id all-gathers.
"""
import functools
import itertools
import logging
import os
import random
from typing import Callable, List, Sequence

import numpy as np
import open_clip_train.data
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

from pir_clip.data.annotations import CaptionRecord, DataFormatError, load_caption_records

from .samples import UNKNOWN_CLASS, ClassResolver, Collate, DataInfo, EpochLoader, TrainImage, loader_kwargs

RANDOM_REPLACEMENTS = 16  # random candidates for a bad image's replacement before a scan of all records


class CaptionDataset(Dataset):
    """Records -> ``(image (3,H,W), caption, class_id)``; a bad image's record is replaced (see module)."""

    def __init__(self, records: Sequence[CaptionRecord], class_ids: np.ndarray, image: TrainImage, source: str):
        self.paths, self.captions = [r.image_path for r in records], [r.caption for r in records]
        self.class_ids, self.image, self.source = class_ids, image, source
        self.bad_paths = set()  # per worker: known-bad images are not decoded again

    def __len__(self) -> int:
        return len(self.captions)

    def decoded(self, index: int, count: bool):
        path = self.paths[index]
        if path in self.bad_paths:
            return self.image.counter.skip("corrupt_image", f"{path} does not decode") if count else None
        image = self.image(path, path, count)
        if image is None:
            self.bad_paths.add(path)
        return image

    def __getitem__(self, index: int):
        image = self.decoded(index, count=True)  # counted once per record met, not per replacement tried
        if image is None:
            rng = random.Random(index)  # the same replacement in every run and on every rank
            for index in itertools.chain((rng.randrange(len(self)) for _ in range(RANDOM_REPLACEMENTS)),
                                         range(len(self))):
                image = self.decoded(index, count=False)
                if image is not None:
                    break
            else:
                raise DataFormatError(f"no image of {self.source} decodes; see the warnings above for why")
        return image, self.captions[index], int(self.class_ids[index])


def load_records(args, dataset_type: str) -> List[CaptionRecord]:
    """Records with resolved, existing image paths. A comma header is read under open_clip's default tab
    separator, and a ``filename`` column (GeoRSCLIP) stands in for the default ``filepath``."""
    path = args.train_data
    if not os.path.isfile(path):
        raise DataFormatError(f"--train-data {path} does not exist; check the path")
    options = dict(split=args.json_split or "train")
    if dataset_type == "csv":
        try:
            with open(path, encoding=args.csv_encoding, newline="") as f:
                header = f.readline()
        except (OSError, UnicodeError, LookupError):
            header = ""  # the annotations reader reports it with the right wording
        separator = next((s for s in (args.csv_separator, ",", "\t", ";", "|") if s in header), args.csv_separator)
        columns = [c.strip().lstrip("\ufeff") for c in header.split(separator)]
        default_missing = args.csv_img_key == "filepath" and "filepath" not in columns and "filename" in columns
        image_key = "filename" if default_missing else args.csv_img_key
        options = dict(fmt="csv", csv_separator=separator, csv_image_key=image_key, csv_encoding=args.csv_encoding,
                       csv_caption_key=args.csv_caption_key, csv_label_key=args.csv_label_key)
    try:
        return load_caption_records(path, args.train_images_dir, images_flag="--train-images-dir", **options)
    except DataFormatError as e:  # the annotations reader names the evaluation tool's flags; add training's
        raise DataFormatError(f"{e} [training flags: --train-data, --train-images-dir, --json-split, --csv-img-key, "
                              "--csv-caption-key, --csv-label-key, --csv-separator, --csv-encoding]") from None


def class_ids_of(records: Sequence[CaptionRecord], resolver: ClassResolver, source: str) -> np.ndarray:
    """int64 class ids, one per record; under ``--is_aff_loss`` a record without a class is an error."""
    resolve = functools.lru_cache(maxsize=None)(resolver)  # a class depends on the base name and label only
    ids = [resolve(os.path.basename(r.image_path), r.label) for r in records]
    failed = [r for r, i in zip(records, ids) if i is None]
    if failed:
        raise DataFormatError(
            f"--is_aff_loss: {len(failed):,} of {len(records):,} samples in {source} have no class (e.g. "
            f"{', '.join(os.path.basename(r.image_path) for r in failed[:5])}): "
            f"{resolver.explain(failed[0].image_path, failed[0].label)}. Fix --aff-label-regex, add a label column "
            "(--csv-label-key), or turn the affiliation loss off")
    return np.asarray(ids, dtype=np.int64)


def map_style_info(dataset: Dataset, args, epoch: int, tokenizer: Callable, image: TrainImage,
                   source: str) -> DataInfo:
    """Full batches of this rank's share of ``dataset``, reshuffled per epoch."""
    # Explicit replicas and rank need no process group; drop_last keeps the ranks' shares disjoint and equal.
    sampler = DistributedSampler(dataset, num_replicas=args.world_size, rank=args.rank, seed=args.seed,
                                 drop_last=True)
    sampler.set_epoch(epoch)
    if len(sampler) < args.batch_size:
        raise DataFormatError(f"{source} has {len(dataset):,} samples, {len(sampler):,} per rank, fewer than one "
                              f"batch (--batch-size {args.batch_size}); lower --batch-size")
    loader = EpochLoader(dataset, num_batches=len(sampler) // args.batch_size, num_samples=len(dataset),
                         rank=args.rank, batch_size=args.batch_size, sampler=sampler, drop_last=True,
                         collate_fn=Collate(tokenizer), **loader_kwargs(args))
    logging.info(f"training data {source}: {len(dataset):,} samples, {loader.num_batches:,} batches per epoch and rank")
    return DataInfo(loader, sampler=sampler, skip_counter=image.counter)


def get_table_dataset(args, image: TrainImage, epoch: int, tokenizer: Callable, dataset_type: str) -> DataInfo:
    """CSV or JSON training data (``dataset_type`` ``csv`` or ``json``)."""
    records = load_records(args, dataset_type)
    class_ids = class_ids_of(records, ClassResolver(args.aff_label_regex, args.is_aff_loss), args.train_data)
    dataset = CaptionDataset(records, class_ids, image, source=f"--train-data {args.train_data}")
    return map_style_info(dataset, args, epoch, tokenizer, image, source=dataset.source)


class SyntheticDataset(open_clip_train.data.SyntheticDataset):
    """open_clip's constant black image and caption, with :data:`UNKNOWN_CLASS`."""

    def __getitem__(self, index: int):
        return self.transform(self.image), self.caption, UNKNOWN_CLASS


def get_synthetic_dataset(args, image: TrainImage, epoch: int, tokenizer: Callable) -> DataInfo:
    if args.is_aff_loss:
        raise DataFormatError("--is_aff_loss needs scene classes from image names or labels, but --dataset-type "
                              "synthetic has neither; train on real data or turn the affiliation loss off")
    if not args.train_num_samples:
        raise DataFormatError("--dataset-type synthetic needs --train-num-samples")
    size = getattr(image.transform.transforms[0], "size", 224)
    dataset = SyntheticDataset(image.transform, (size, size) if isinstance(size, int) else tuple(size),
                               dataset_size=args.train_num_samples, tokenizer=tokenizer)
    return map_style_info(dataset, args, epoch, tokenizer, image, source="--dataset-type synthetic")
