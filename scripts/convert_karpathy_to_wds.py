#!/usr/bin/env python
"""Convert a Karpathy-style caption JSON (RSITMD, RSICD, UCM) and its images into WebDataset shards.

One sample per caption, with RS5M's keys, which ``python -m training.main --dataset-type webdataset`` reads
(and the authors' command line trains on)::

    {key}.img_content   the image file's original bytes (TIFFs stay TIFFs)
    {key}.caption       the caption, UTF-8
    {key}.img_name      the image's file name, from which the affiliation loss reads the scene class
    {key}.label         only for PIR-ITR JSON input: the row's explicit class label

Keys are the sample's position in the shuffled order (``000000123``; no dots, which would split a key).
Shards are ``{out}/{split}-{000000}.tar``; ``{out}/sizes.json`` maps shard file names to sample counts.

    python scripts/convert_karpathy_to_wds.py --json data/rsitmd/dataset_RSITMD.json \\
        --images-dir data/rsitmd/images --out data/rsitmd/shards --split train --shard-size 5000
    python -m training.main --train-data 'data/rsitmd/shards/train-{000000..000004}.tar' --dataset-type webdataset ...
"""
import argparse
import glob
import io
import json
import os
import random
import sys
import tarfile
from typing import List, Optional, Sequence

from pir_clip.data.annotations import CaptionRecord, DataFormatError, load_caption_records


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", required=True, help="Karpathy-style JSON (or a PIR-ITR training JSON).")
    parser.add_argument("--images-dir", default=None,
                        help="Folder of the images (default: the JSON's folder, or its images/ sub-folder).")
    parser.add_argument("--out", required=True, help="Output folder for the shards and sizes.json.")
    parser.add_argument("--split", default="train", help="Split to convert (names joined by '+' for several).")
    parser.add_argument("--shard-size", type=int, default=5000, help="Samples per shard (default 5000).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the sample shuffle (default 0).")
    parser.add_argument("--overwrite", action="store_true", help="Replace existing shards of this split.")
    parser.add_argument("--no-progress", action="store_true", help="Do not show a progress bar.")
    args = parser.parse_args(argv)
    if args.shard_size < 1:
        parser.error(f"--shard-size must be >= 1, got {args.shard_size}")
    return args


def load_split(json_path: str, images_dir: Optional[str], split: str) -> List[CaptionRecord]:
    """The split's records with image paths under the chosen images folder; every image must exist."""
    return load_caption_records(json_path, images_dir, split=split, images_flag="--images-dir")


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:06d}.tar"


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    # Fixed metadata, so the same input and seed give byte-identical shards.
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
    tar.addfile(info, io.BytesIO(data))


def write_shard(path: str, samples: Sequence[tuple], first_key: int, progress) -> None:
    """``samples``: (record, image bytes) pairs; written to ``path.tmp`` and renamed when complete."""
    partial = path + ".tmp"
    with tarfile.open(partial, "w", format=tarfile.GNU_FORMAT) as tar:
        for offset, record in enumerate(samples):
            key = f"{first_key + offset:09d}"
            with open(record.image_path, "rb") as f:
                add_member(tar, f"{key}.img_content", f.read())
            add_member(tar, f"{key}.caption", record.caption.encode("utf-8"))
            add_member(tar, f"{key}.img_name", os.path.basename(record.image_path).encode("utf-8"))
            if record.label is not None:
                add_member(tar, f"{key}.label", record.label.encode("utf-8"))
            if progress is not None:
                progress.update(1)
    os.replace(partial, path)


def convert(json_path: str, out_dir: str, split: str = "train", images_dir: Optional[str] = None,
            shard_size: int = 5000, seed: int = 0, overwrite: bool = False, progress: bool = True) -> dict:
    """Write the shards; returns a summary ``{"samples", "images", "shards": [paths], "bytes", "spec"}``."""
    records = load_split(json_path, images_dir, split)
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    records = [records[i] for i in order]

    os.makedirs(out_dir, exist_ok=True)
    existing = sorted(glob.glob(os.path.join(glob.escape(out_dir), f"{glob.escape(split)}-[0-9]*.tar")))
    if existing and not overwrite:
        raise DataFormatError(f"{out_dir} already holds {len(existing)} shards of split {split!r} (e.g. "
                              f"{existing[0]}); pass --overwrite to replace them, or choose another --out")
    for path in existing:
        os.remove(path)

    sizes_path = os.path.join(out_dir, "sizes.json")
    sizes = {}
    if os.path.isfile(sizes_path):
        with open(sizes_path, encoding="utf-8") as f:
            sizes = {name: n for name, n in json.load(f).items() if not name.startswith(f"{split}-")}

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(records), desc=f"writing {split} shards", unit="sample")
    paths = []
    try:
        for number, start in enumerate(range(0, len(records), shard_size)):
            chunk = records[start:start + shard_size]
            path = os.path.join(out_dir, shard_name(split, number))
            write_shard(path, chunk, start, bar)
            sizes[os.path.basename(path)] = len(chunk)
            paths.append(path)
    finally:
        if bar is not None:
            bar.close()
    with open(sizes_path, "w", encoding="utf-8") as f:
        json.dump(sizes, f, indent=1)
        f.write("\n")
    last = len(paths) - 1
    spec = os.path.join(out_dir, shard_name(split, 0) if last == 0 else
                        f"{split}-{{{0:06d}..{last:06d}}}.tar")
    return {"samples": len(records), "images": len({r.image_path for r in records}), "shards": paths,
            "bytes": sum(os.path.getsize(p) for p in paths), "spec": spec}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        summary = convert(args.json, args.out, args.split, args.images_dir, args.shard_size, args.seed,
                          args.overwrite, progress=not args.no_progress)
    except DataFormatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {summary['samples']:,} samples ({summary['images']:,} images) of split {args.split!r} in "
          f"{len(summary['shards'])} shards, {summary['bytes'] / 2**20:.1f} MiB, to {args.out}")
    print(f"train with: python -m training.main --train-data '{summary['spec']}' --dataset-type webdataset ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
