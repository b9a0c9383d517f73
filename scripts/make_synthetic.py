#!/usr/bin/env python
"""Generate the synthetic remote-sensing image-text retrieval benchmark.

    python scripts/make_synthetic.py --out data/synthetic
    python scripts/make_synthetic.py --out data/syn-small --images-per-class 20 --image-format mixed \\
        --classes airport,parkinglot,storagetanks --difficulty hard --noise 0.8

The output layout is described in ``pir_clip.data.synthetic``; ``--list-classes`` prints the scene classes.
"""
import argparse
import dataclasses
import sys
from typing import List, Optional

from pir_clip.data.synthetic import (DEFAULT_CLASSIFICATION_IMAGES, DEFAULT_IMAGE_SIZE, DEFAULT_IMAGES_PER_CLASS,
                                     DEFAULT_SHARD_SIZE, IMAGE_FORMATS, SPLITS, generate)
from pir_clip.data.synthetic_scenes import DIFFICULTY_PRESETS, SCENES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="output directory (created; must not hold an earlier data set, "
                                      "unless --overwrite)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default: 0)")
    parser.add_argument("--images-per-class", type=int, default=DEFAULT_IMAGES_PER_CLASS,
                        help=f"images of every class (default: {DEFAULT_IMAGES_PER_CLASS})")
    parser.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE,
                        help=f"side of the square images in pixels (default: {DEFAULT_IMAGE_SIZE})")
    parser.add_argument("--classes", default=None,
                        help="comma-separated scene classes (default: all; see --list-classes)")
    parser.add_argument("--image-format", choices=IMAGE_FORMATS, default="png",
                        help="file format; 'mixed' cycles png, jpg, tif by image index (default: png)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share of each class in val (default: 0.1)")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="share of each class in test (default: 0.2)")
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                        help=f"(image, caption) samples per WebDataset shard (default: {DEFAULT_SHARD_SIZE})")
    parser.add_argument("--difficulty", choices=sorted(DIFFICULTY_PRESETS), default="medium",
                        help="preset for the knobs below (default: medium)")
    for knob, meaning in (("noise", "sensor noise and uneven light"), ("clutter", "small random blobs and lines"),
                          ("colour-jitter", "how far colours stray from their names"),
                          ("overlap", "chance of distractors borrowed from other classes")):
        parser.add_argument(f"--{knob}", type=float, default=None,
                            help=f"{meaning}, in [0, 1] (overrides --difficulty)")
    parser.add_argument("--classification-images-per-class", type=int, default=DEFAULT_CLASSIFICATION_IMAGES,
                        help="images of every class in the classification/ scene folders, scenes the retrieval "
                             f"files never show (default: {DEFAULT_CLASSIFICATION_IMAGES}; 0: none)")
    parser.add_argument("--overwrite", action="store_true", help="replace a data set already in --out")
    parser.add_argument("--list-classes", action="store_true", help="print the scene classes and exit")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_classes:
        print("\n".join(SCENES))
        return 0
    if not args.out:
        parser.error("--out is required")
    overrides = {name: getattr(args, name) for name in ("noise", "clutter", "colour_jitter", "overlap")
                 if getattr(args, name) is not None}
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    try:
        difficulty = dataclasses.replace(DIFFICULTY_PRESETS[args.difficulty], **overrides)
        summary = generate(args.out, seed=args.seed, images_per_class=args.images_per_class,
                           image_size=args.image_size, classes=classes, image_format=args.image_format,
                           val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                           shard_size=args.shard_size, difficulty=difficulty,
                           classification_images_per_class=args.classification_images_per_class,
                           overwrite=args.overwrite, progress=True)
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))
    per_split = ", ".join(f"{split} {sum(summary.counts[split].values())}" for split in SPLITS)
    shards = ", ".join(f"{split} {summary.shards[split]}" for split in SPLITS)
    print(f"wrote {summary.n_images} images ({per_split}) of {len(summary.classes)} classes and "
          f"{summary.n_captions} captions to {summary.out_dir} in {summary.seconds:.1f} s")
    print(f"shards per kind (rs5m, openclip): {shards}; difficulty: {dataclasses.asdict(difficulty)}")
    if summary.classification:
        print(f"classification set: {sum(summary.classification.values())} images in "
              f"{len(summary.classification)} class folders under {summary.out_dir}/classification")
    return 0


if __name__ == "__main__":
    sys.exit(main())
