"""Training data for ``python -m training.main``: ``get_data`` -> ``{"train": DataInfo}``.

``--dataset-type`` (``auto``: by the ``--train-data`` extension) picks :mod:`.webdataset` (tar shards, RS5M or
open_clip keys), :mod:`.tables` (``csv``: a caption table; ``json``: a Karpathy split or a PIR-ITR JSON) or
synthetic smoke data. All share :mod:`.samples`: the one image decoder (``--bands``), class ids from image
names or labels (the same on every rank, worker and epoch), bad samples skipped and counted per reason, and
exactly ``dataloader.num_batches`` full batches per rank and epoch. Problems the user must fix (missing files
or shards, no sizes, no image names under ``--is_aff_loss``) raise :class:`DataFormatError` before training.
"""
from typing import Callable, Dict, Optional, Tuple

from pir_clip.data.annotations import DataFormatError
from pir_clip.data.images import parse_bands

from .samples import SKIP_REASONS, UNKNOWN_CLASS, DataInfo, SkipCounter, TrainImage
from .tables import get_synthetic_dataset, get_table_dataset
from .webdataset import get_wds_dataset

__all__ = ["get_data", "detect_dataset_type", "DataInfo", "DataFormatError", "SKIP_REASONS", "UNKNOWN_CLASS"]

DATASET_TYPES = ("webdataset", "csv", "json", "synthetic", "auto")


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


def get_data(args, preprocess_fns: Tuple[Callable, Callable], epoch: int = 0,
             tokenizer: Optional[Callable] = None) -> Dict[str, DataInfo]:
    """``{"train": DataInfo}`` for ``--train-data`` (or synthetic data); ``{}`` when there is none.

    ``preprocess_fns``: (train transform, val transform), PIL image -> (3,H,W) tensor. ``tokenizer``: list of
    str -> (N, L) long tensor. Validation is evaluated elsewhere, so ``--val-data`` is not read here.
    """
    dataset_type = getattr(args, "dataset_type", None) or "auto"
    train_data = getattr(args, "train_data", None)
    if not train_data and dataset_type != "synthetic":
        return {}
    if tokenizer is None:
        raise ValueError("get_data needs the model's tokenizer")
    if dataset_type == "auto":
        dataset_type = detect_dataset_type(train_data)
    image = TrainImage(preprocess_fns[0], parse_bands(getattr(args, "bands", None)), SkipCounter())
    if dataset_type in ("csv", "json"):
        return {"train": get_table_dataset(args, image, epoch, tokenizer, dataset_type)}
    if dataset_type == "webdataset":
        return {"train": get_wds_dataset(args, image, epoch, tokenizer)}
    if dataset_type == "synthetic":
        return {"train": get_synthetic_dataset(args, image, epoch, tokenizer)}
    raise DataFormatError(f"unknown --dataset-type {dataset_type!r}; use one of {', '.join(DATASET_TYPES)}")
