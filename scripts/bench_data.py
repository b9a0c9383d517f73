#!/usr/bin/env python
"""Is the training data pipeline the bottleneck? Samples/s of the loader next to samples/s of a training step.

    python scripts/bench_data.py [--batch-size 64] [--workers 2] [--image-sizes 64 224] [--rounds 3]

1. Writes a synthetic RS data set (pir_clip.data.synthetic; 256-pixel PNG/JPEG/TIFF images, like RSITMD's) as
   WebDataset shards in a temporary folder.
2. Times ``training.data.get_data`` over those shards (webdataset's shard passes, tar reading, the shuffle
   buffer, the one image decoder, the PIR-tiny train transform with random resized crops, tokenising,
   batching) with ``--workers`` DataLoader workers, without shard resampling.
3. Times a PIR-tiny training step on this CPU at the same batch size (forward, contrastive loss, backward,
   AdamW step), with the torch threads the machine gives (or ``--threads``: on a loaded machine two OpenMP
   threads can run slower than one).

Loader and step are timed in alternating rounds (medians reported), so load from other processes hits both
alike; each gets the whole machine in its round, while in training they share it.
The last line is ``data_pipeline_samples_per_second: X`` for the first image size.
"""
import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, List

import open_clip
import torch

import pir_clip
from pir_clip.data.synthetic import generate
from training.data import get_data

MODEL = "PIR-tiny"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2).")
    parser.add_argument("--image-sizes", type=int, nargs="+", default=[64],
                        help="Transform output sizes to time the loader at (default 64, PIR-tiny's); e.g. 64 224.")
    parser.add_argument("--images-per-class", type=int, default=25,
                        help="Synthetic images per class (12 classes, 5 captions each; default 25).")
    parser.add_argument("--source-size", type=int, default=256, help="Pixel size of the stored images (default 256).")
    parser.add_argument("--batches", type=int, default=10, help="Loader batches per round (default 10).")
    parser.add_argument("--steps", type=int, default=4, help="Training steps per round (default 4).")
    parser.add_argument("--rounds", type=int, default=3, help="Alternating loader / step rounds (default 3).")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the training step (default: torch's, the machine's cores).")
    parser.add_argument("--data-dir", default=None, help="Reuse or keep the synthetic data here (default: a temp dir).")
    return parser.parse_args(argv)


def make_shards(out: Path, images_per_class: int, source_size: int) -> str:
    """The brace spec of the train shards, generating the data set unless ``out`` already has it."""
    shard_dir = out / "shards" / "rs5m"
    if not (shard_dir / "sizes.json").is_file():
        print(f"generating synthetic data in {out} ...", flush=True)
        generate(out, seed=0, images_per_class=images_per_class, image_size=source_size, image_format="mixed",
                 shard_size=100, progress=True, overwrite=True)
    shards = sorted(shard_dir.glob("train-*.tar"))
    return str(shard_dir / f"train-{{000000..{len(shards) - 1:06d}}}.tar")


def loader(spec: str, transform: Callable, tokenizer, batch_size: int, workers: int) -> Iterator:
    """An endless iterator of training batches (epochs of the whole train split, as training reads them)."""
    args = argparse.Namespace(train_data=spec, dataset_type="webdataset", train_num_samples=None,
                              dataset_resampled=False, train_data_upsampling_factors=None, batch_size=batch_size,
                              workers=workers, seed=0, world_size=1, rank=0, distributed=False, is_aff_loss=True,
                              aff_label_regex=None, bands=None)
    info = get_data(args, (transform, transform), epoch=0, tokenizer=tokenizer)["train"]
    for epoch in itertools.count():
        info.set_epoch(epoch)
        yield from info.dataloader
        if sum(info.skipped().values()):
            print(f"  (the loader skipped samples: {info.skipped()})")


def time_loader(batches: Iterator, n: int) -> float:
    """Samples/s of the next ``n`` batches."""
    start, samples = time.perf_counter(), 0
    for images, _, _ in itertools.islice(batches, n):
        samples += len(images)
    return samples / (time.perf_counter() - start)


class PIRTinyStep:
    """PIR-tiny training steps on random inputs (forward, contrastive loss, backward, AdamW)."""

    def __init__(self, batch_size: int, tokenizer):
        self.model = pir_clip.create_model(MODEL, output_dict=True).train()
        size = self.model.visual.preprocess_cfg["size"]
        size = size if isinstance(size, int) else size[0]
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=1e-4,
                                           weight_decay=0.2)
        self.loss_fn = open_clip.ClipLoss()
        self.images = torch.randn(batch_size, 3, size, size)
        self.texts = tokenizer([f"a remote sensing scene number {i}" for i in range(batch_size)])

    def samples_per_second(self, steps: int) -> float:
        """Median over ``steps`` steps."""
        times: List[float] = []
        for _ in range(steps):
            start = time.perf_counter()
            out = self.model(self.images, self.texts)
            loss = self.loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            times.append(time.perf_counter() - start)
        return len(self.images) / statistics.median(times)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = open_clip.get_tokenizer(MODEL)
    step = PIRTinyStep(args.batch_size, tokenizer)
    step.samples_per_second(1)  # warm-up
    with tempfile.TemporaryDirectory() as tmp:
        spec = make_shards(Path(args.data_dir or tmp), args.images_per_class, args.source_size)
        _, train_64, _ = pir_clip.create_model_and_transforms(MODEL)
        loaders = {size: loader(spec, train_64 if size == 64 else open_clip.image_transform(size, is_train=True),
                                tokenizer, args.batch_size, args.workers) for size in args.image_sizes}
        for batches in loaders.values():
            next(batches)  # start the workers and fill the shuffle buffers
        loader_rates = {size: [] for size in args.image_sizes}
        step_rates = []
        for _ in range(args.rounds):
            for size, batches in loaders.items():
                loader_rates[size].append(time_loader(batches, args.batches))
            step_rates.append(step.samples_per_second(args.steps))
        loaders.clear()
    step_rate = statistics.median(step_rates)
    for size, rates in loader_rates.items():
        print(f"data pipeline: {statistics.median(rates):8.1f} samples/s  (webdataset shards of {args.source_size}px "
              f"PNG/JPEG/TIFF, {args.workers} workers, batch {args.batch_size}, transform to {size}px; rounds: "
              f"{', '.join(f'{r:.0f}' for r in rates)})")
    print(f"{MODEL} training step: {step_rate:8.1f} samples/s  (CPU, {torch.get_num_threads()} threads, batch "
          f"{args.batch_size}, forward + contrastive loss + backward + AdamW; rounds: "
          f"{', '.join(f'{r:.0f}' for r in step_rates)})")
    first = statistics.median(loader_rates[args.image_sizes[0]])
    verdict = "the loader is the bottleneck" if first < step_rate else "the loader keeps up"
    print(f"loader / step throughput at {args.image_sizes[0]}px: {first / step_rate:.2f} ({verdict} on this machine; "
          f"{os.cpu_count()} CPUs)")
    print(f"data_pipeline_samples_per_second: {first:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
