"""WebDataset shards -> training batches, from webdataset's stages and open_clip_train's helpers.

Each DataLoader worker (of W, on rank r of R) reads

* shards: with ``--dataset-resampled`` open_clip_train's ``ResampledShards2`` (``--train-data-upsampling-factors``
  as weights), seeded per (seed, rank, worker) + epoch. Otherwise endless *passes*: pass n of epoch e is the
  list shuffled by ``SimpleShardList`` with seed (seed, e, n), the same on every rank, then ``split_by_node``
  and ``split_by_worker``. A worker that has read its share of a pass goes on to its share of the next (other
  shards, a new order) rather than stopping, so none runs dry however uneven the shards; with fewer shards
  than R x W readers the list is repeated.
* samples: ``tarfile_to_samples``, our keys and class id, a ``shuffle`` buffer drained at the end of each pass
  (a worker meets all of its share once before any repeats), the one decoder and the train transform.
* batches: ``slice`` to the epoch's samples, ``batched``: ceil(ceil(N / (B x R)) / W) full batches per worker.

Keys: RS5M (``img_content`` image bytes, ``caption``, ``img_name``) or open_clip (``jpg|jpeg|png|webp|tif|tiff``
+ ``txt``; the image name is the key's base name plus the image key: ``c3/airport_12`` + ``tif`` ->
``airport_12.tif``); an optional ``label``/``cls`` member is an explicit class. A shard that cannot be read and
samples without image, caption or (``--is_aff_loss``) class are counted and left.
"""
import functools
import itertools
import logging
import math
import os
import random
from typing import Callable, Iterator, List, Optional

import webdataset as wds
from open_clip_train.data import ResampledShards2, SharedEpoch, expand_urls, get_dataset_size
from torch.utils.data import IterableDataset

from pir_clip.data.annotations import DataFormatError

from .samples import ClassResolver, Collate, DataInfo, EpochLoader, TrainImage, loader_kwargs

IMAGE_KEYS = ("img_content", "jpg", "jpeg", "png", "webp", "tif", "tiff")
CAPTION_KEYS = ("caption", "txt")
LABEL_KEYS = ("label", "cls")
# The buffer holds undecoded samples: 2000 x ~200 KB RSITMD TIFFs is ~400 MB per worker. Shards written by
# scripts/convert_karpathy_to_wds.py are shuffled globally, so less than open_clip's 5000 loses little.
SAMPLE_SHUFFLE_SIZE = 2000
SAMPLE_SHUFFLE_INITIAL = 500


def shard_urls(spec: str, factors: Optional[str]) -> List[str]:
    """The shard urls of a ``::``-separated list of brace specs; local shards must exist."""
    if factors is not None and len(str(factors).split("::")) != len(spec.split("::")):
        raise DataFormatError(f"--train-data-upsampling-factors {factors!r} needs one factor per '::'-separated "
                              f"source of --train-data ({len(spec.split('::'))})")
    urls, _ = expand_urls(spec)
    missing = [u for u in urls if "://" not in u and not u.startswith("pipe:") and not os.path.isfile(u)]
    if missing:
        raise DataFormatError(f"--train-data: no shard file matches {spec!r} (e.g. {urls[0]} does not exist); check "
                              "the path and the brace range, e.g. 'out/train-{000000..000003}.tar'"
                              if len(missing) == len(urls) else f"--train-data: {len(missing):,} of {len(urls):,} "
                              f"shards do not exist: {', '.join(missing[:5])}; fix the brace range")
    return urls


def dataset_size(urls: List[str]) -> Optional[int]:
    """Samples in ``urls``: open_clip's ``get_dataset_size`` (``sizes.json`` or ``__len__``) per folder."""
    folders = {}
    for url in urls:
        folders.setdefault(os.path.dirname(url), []).append(url)
    try:
        sizes = [get_dataset_size("::".join(group))[0] for group in folders.values()]
    except (KeyError, OSError, ValueError, SyntaxError) as e:
        raise DataFormatError(f"--train-data: the shard sizes next to {urls[0]} (sizes.json, __len__) are "
                              f"incomplete or unreadable ({e!r}); fix them or pass --train-num-samples") from None
    return None if None in sizes else sum(sizes)


def _text(data: bytes) -> Optional[str]:
    try:
        return data.decode("utf-8").strip() or None
    except UnicodeDecodeError:
        return None


def sample_fields(raw: dict) -> dict:
    """``image_key``, ``caption`` (bytes), ``image_name`` and ``label`` of a raw tar sample."""
    image_key = next((k for k in IMAGE_KEYS if k in raw), None)
    image_name = (_text(raw["img_name"]) if "img_name" in raw else None if image_key in (None, "img_content")
                  else f"{raw['__key__'].rpartition('/')[2]}.{image_key}")
    return dict(image_key=image_key, caption=next((raw[k] for k in CAPTION_KEYS if k in raw), None),
                image_name=image_name, label=next((_text(raw[k]) for k in LABEL_KEYS if k in raw), None))


def _worker_seed(seed: int) -> int:
    rank, _, worker, _ = wds.utils.pytorch_worker_info()
    return wds.utils.make_seed(seed, rank, worker)


class ShardSamples(IterableDataset):
    """This rank's and worker's usable samples, endlessly, as ``(where, image bytes, caption, class_id)``;
    :meth:`decode` makes them ``(image (3,H,W), caption, class_id)``. A worker that reads 2 x (shards) + the
    buffer's fill in a row without decoding one sample (all unreadable, empty or corrupt) raises instead
    of passing over them forever while the other ranks wait."""

    def __init__(self, args, urls: List[str], epoch: SharedEpoch, resolver: ClassResolver, image: TrainImage):
        super().__init__()
        self.spec, self.factors, self.urls, self.epoch = args.train_data, args.train_data_upsampling_factors, urls, epoch
        self.resampled, self.seed = bool(args.dataset_resampled), int(args.seed or 0)
        self.resolver, self.image, self.counter = resolver, image, image.counter
        self.limit, self.shards_without_sample = 2 * len(urls) + SAMPLE_SHUFFLE_INITIAL, 0

    def shards(self, epoch: int, n: int) -> Iterator[dict]:
        if self.resampled:
            shards = ResampledShards2(self.spec, self.factors, deterministic=True, epoch=self.epoch,
                                      worker_seed=functools.partial(_worker_seed, self.seed))
        else:
            shards = wds.split_by_worker(wds.split_by_node(
                iter(wds.SimpleShardList(self.urls, seed=wds.utils.make_seed(self.seed, epoch, n)))))
        for shard in shards:
            self.shards_without_sample += 1
            if self.shards_without_sample > self.limit:
                raise DataFormatError(f"--train-data: a DataLoader worker read {self.limit} shards in a row without "
                                      f"one usable sample (last {shard['url']}); see the warnings above for why")
            yield shard

    def shard_error(self, exn: Exception) -> bool:
        self.counter.skip("unreadable_shard", f"cannot read (the rest of) a shard: {exn!r}")
        return True  # webdataset's handler protocol: go on with the next shard

    def parse(self, raw: dict) -> Optional[tuple]:
        """Before the buffer, which then holds only usable samples and only the bytes it needs."""
        where, fields = f"{raw['__key__']} in {raw['__url__']}", sample_fields(raw)
        if fields["image_key"] is None:
            return self.counter.skip("missing_image", f"{where} has no image: {sorted(k for k in raw if k[0] != '_')}")
        if fields["caption"] is None:
            return self.counter.skip("missing_caption", f"{where} has no caption field")
        try:
            caption = fields["caption"].decode("utf-8").strip()
        except UnicodeDecodeError:
            return self.counter.skip("undecodable_caption", f"{where}: the caption is not UTF-8 text")
        if not caption:
            return self.counter.skip("missing_caption", f"{where} has an empty caption")
        class_id = self.resolver(fields["image_name"], fields["label"])
        if class_id is None:
            return self.counter.skip("no_class", f"{where}: --is_aff_loss needs a class, but "
                                     + self.resolver.explain(fields["image_name"], fields["label"]))
        return where, raw[fields["image_key"]], caption, class_id

    def decode(self, sample: tuple) -> Optional[tuple]:
        """After the buffer, so a sample still in it when the epoch ends is not decoded (nor counted)."""
        where, data, caption, class_id = sample
        image = self.image(data, where)
        if image is None:
            return None
        self.shards_without_sample = 0
        return image, caption, class_id

    def __iter__(self) -> Iterator[tuple]:
        epoch = self.epoch.get_value()
        rank, _, worker, _ = wds.utils.pytorch_worker_info()
        for n in itertools.count():  # resampled: one endless pass
            samples = wds.tarfile_to_samples(handler=self.shard_error)(self.shards(epoch, n))
            shuffle = wds.shuffle(SAMPLE_SHUFFLE_SIZE, SAMPLE_SHUFFLE_INITIAL,
                                  rng=random.Random(wds.utils.make_seed(self.seed, epoch, n, rank, worker)))
            yield from shuffle(wds.map(self.parse)(samples))


def check_first_shard(url: str, resolver: ClassResolver) -> None:
    """Fail before training on a first shard without readable samples, with other keys than ours, or (under
    ``--is_aff_loss``) without image names or labels."""
    errors: List[Exception] = []
    samples = list(itertools.islice(wds.tarfile_samples([dict(url=url)], handler=lambda e: errors.append(e) or True),
                                    8))
    if not samples:
        raise DataFormatError(f"--train-data: the first shard {url} holds no readable samples"
                              f"{f' ({errors[0]!r})' if errors else ''}; check that it is a tar of webdataset samples")
    fields = [sample_fields(s) for s in samples]
    if not any(f["image_key"] and f["caption"] is not None for f in fields):
        raise DataFormatError(f"--train-data: the first {len(samples)} samples of {url} have fields "
                              f"{sorted({k for s in samples for k in s if not k.startswith('__')})}, but training "
                              f"needs an image ({' or '.join(IMAGE_KEYS)}) and a caption ({' or '.join(CAPTION_KEYS)})")
    if resolver.required and all(resolver(f["image_name"], f["label"]) is None for f in fields):
        name, label = fields[0]["image_name"], fields[0]["label"]
        reason = (resolver.explain(name, label) if name or label else "its samples carry no image name ('img_name', "
                  f"or an image field such as 'jpg' whose key is the name) and no label ({' or '.join(LABEL_KEYS)})")
        raise DataFormatError(f"--is_aff_loss needs a scene class per sample, but in the first shard {url} {reason}. "
                              "Convert the data with scripts/convert_karpathy_to_wds.py (writes img_name), add "
                              "labels, fix --aff-label-regex, or turn the affiliation loss off")


def get_wds_dataset(args, image: TrainImage, epoch: int, tokenizer: Callable) -> DataInfo:
    if args.train_data_upsampling_factors is not None and not args.dataset_resampled:
        raise DataFormatError("--train-data-upsampling-factors needs --dataset-resampled (sampling shards with "
                              "replacement)")
    urls = shard_urls(args.train_data, args.train_data_upsampling_factors)
    resolver = ClassResolver(args.aff_label_regex, args.is_aff_loss)
    check_first_shard(urls[0], resolver)
    num_samples = args.train_num_samples or dataset_size(urls)
    if not num_samples:
        raise DataFormatError(f"--train-data: no sizes.json or __len__ next to the shards ({urls[0]}) gives the "
                              "number of samples; pass --train-num-samples")
    # split_by_node reads the rank from RANK/WORLD_SIZE (torchrun, open_clip's SLURM set-up) or torch.distributed.
    if wds.utils.pytorch_worker_info()[:2] != (args.rank, args.world_size):
        raise ValueError(f"training data: rank {args.rank} of {args.world_size}, but webdataset's split_by_node sees "
                         f"{wds.utils.pytorch_worker_info()[:2]} (from RANK/WORLD_SIZE or torch.distributed)")
    workers = max(1, args.workers)
    if not args.dataset_resampled and len(urls) < args.world_size * workers:
        logging.warning(f"--train-data has {len(urls)} shards for {args.world_size} ranks x {workers} workers: shards "
                        "are repeated so every worker reads one; write smaller shards to read each once per pass")
        urls = urls * math.ceil(args.world_size * workers / len(urls))
    shared_epoch = SharedEpoch(epoch)
    stream = ShardSamples(args, urls, shared_epoch, resolver, image)
    worker_batches = math.ceil(math.ceil(num_samples / (args.batch_size * args.world_size)) / workers)
    # An epoch is counted in samples (slice), not batches (with_epoch): after its last batch batched() would
    # read one sample more, and at the end of a pass that refills the buffer.
    pipeline = wds.DataPipeline(stream, wds.map(stream.decode), wds.slice(worker_batches * args.batch_size),
                                wds.batched(args.batch_size, Collate(tokenizer), partial=False))
    num_batches = worker_batches * workers
    loader = EpochLoader(pipeline, num_batches=num_batches, num_samples=num_batches * args.batch_size * args.world_size,
                         rank=args.rank, batch_size=None, **loader_kwargs(args))
    logging.info(f"training data: {len(set(urls)):,} shards, {num_samples:,} samples, {num_batches:,} batches per "
                 f"epoch and rank{' (shards resampled)' if args.dataset_resampled else ''}")
    return DataInfo(loader, shared_epoch=shared_epoch, skip_counter=image.counter)
