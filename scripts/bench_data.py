#!/usr/bin/env python
"""Is the training data pipeline the bottleneck? Samples/s of the loader next to samples/s of a training step.

    python scripts/bench_data.py [--batch-size 64] [--workers 2] [--image-sizes 64 224] [--steps 10]

1. Writes a synthetic RS data set (pir_clip.data.synthetic; 256-pixel PNG/JPEG/TIFF images, like RSITMD's) as
   WebDataset shards in a temporary folder.
2. Times ``training.data.get_data`` over those shards (tar reading, image decoding, the PIR-tiny train
   transform with random resized crops, tokenising, batching) with ``--workers`` DataLoader workers.
3. Times a PIR-tiny training step on this CPU at the same batch size (forward, contrastive loss, backward,
   AdamW step), with the torch threads the machine gives.

The two are measured one after the other, so each gets the whole machine; in training they share it.
The last line is ``data_pipeline_samples_per_second: X`` for the first image size.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, List

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
    parser.add_argument("--batches", type=int, default=20, help="Loader batches to time (default 20).")
    parser.add_argument("--steps", type=int, default=10, help="Training steps to time (default 10).")
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


def loader_samples_per_second(spec: str, transform: Callable, tokenizer, batch_size: int, workers: int,
                              batches: int) -> float:
    """Samples/s of ``batches`` batches, timed from the second batch (the first pays for worker start-up)."""
    args = argparse.Namespace(train_data=spec, dataset_type="webdataset", train_num_samples=batch_size * (batches + 1),
                              dataset_resampled=True, train_data_upsampling_factors=None, batch_size=batch_size,
                              workers=workers, seed=0, world_size=1, rank=0, distributed=False, is_aff_loss=True,
                              aff_label_regex=None)
    info = get_data(args, (transform, transform), epoch=0, tokenizer=tokenizer)["train"]
    info.set_epoch(0)
    iterator = iter(info.dataloader)
    next(iterator)
    start, samples = time.perf_counter(), 0
    for images, _, _ in iterator:
        samples += len(images)
    seconds = time.perf_counter() - start
    skipped = sum(info.skipped().values())
    if skipped:
        print(f"  (the loader skipped {skipped} samples: {info.skipped()})")
    return samples / seconds


def step_samples_per_second(batch_size: int, steps: int, tokenizer) -> float:
    """Samples/s of PIR-tiny training steps on random inputs (median step time after one warm-up step)."""
    model = pir_clip.create_model(MODEL, output_dict=True)
    model.train()
    size = model.visual.preprocess_cfg["size"]
    size = size if isinstance(size, int) else size[0]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.2)
    loss_fn = open_clip.ClipLoss()
    images = torch.randn(batch_size, 3, size, size)
    texts = tokenizer([f"a remote sensing scene number {i}" for i in range(batch_size)])
    times: List[float] = []
    for step in range(steps + 1):
        start = time.perf_counter()
        out = model(images, texts)
        loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step:
            times.append(time.perf_counter() - start)
    return batch_size / statistics.median(times)


def main(argv=None) -> int:
    args = parse_args(argv)
    tokenizer = open_clip.get_tokenizer(MODEL)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(args.data_dir or tmp)
        spec = make_shards(data_dir, args.images_per_class, args.source_size)
        _, train_64, _ = pir_clip.create_model_and_transforms(MODEL)
        loader_rates = {}
        for size in args.image_sizes:
            transform = train_64 if size == 64 else open_clip.image_transform(size, is_train=True)
            rate = loader_samples_per_second(spec, transform, tokenizer, args.batch_size, args.workers, args.batches)
            loader_rates[size] = rate
            print(f"data pipeline: {rate:8.1f} samples/s  (webdataset shards of {args.source_size}px PNG/JPEG/TIFF, "
                  f"{args.workers} workers, batch {args.batch_size}, transform to {size}px)", flush=True)
    step_rate = step_samples_per_second(args.batch_size, args.steps, tokenizer)
    print(f"{MODEL} training step: {step_rate:8.1f} samples/s  (CPU, {torch.get_num_threads()} threads, batch "
          f"{args.batch_size}, forward + contrastive loss + backward + AdamW)")
    first = loader_rates[args.image_sizes[0]]
    verdict = "the loader is the bottleneck" if first < step_rate else "the loader keeps up"
    print(f"loader / step throughput at {args.image_sizes[0]}px: {first / step_rate:.2f} ({verdict} on this machine; "
          f"{os.cpu_count()} CPUs)")
    print(f"data_pipeline_samples_per_second: {first:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
