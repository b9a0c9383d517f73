"""Throughput of ``pir-clip zeroshot`` against open_clip's own zero-shot loop, on the same images in one run.

Both sides do the whole job from nothing, once per repeat, on the same folder of class folders:
build the model (random weights: no download), build the zero-shot classifier from the same templates,
encode every image and score it.

* **ours**: ``pir-clip zeroshot --model-name M --data DIR`` run in this process (``pir_clip.cli.main``):
  folder discovery, the shared image decoder, skipping of unreadable images, metrics, the output JSON;
* **open_clip**: what an open_clip user writes (CLIP_benchmark's shape): ``open_clip.create_model_and_transforms``,
  ``open_clip.build_zero_shot_classifier``, torchvision's ``ImageFolder`` with the model's preprocess, a
  ``DataLoader`` and ``model.encode_image`` per batch, top-1 from the logits. For a PIR config the model comes
  from ``open_clip.create_model_and_transforms`` too (pir_clip's registration makes open_clip build it).

Sides alternate (ours first on even repeats, open_clip first on odd ones) so background load hits both
alike; the median wall time per side gives images per second, and the overhead is
``median(ours) / median(open_clip) - 1``. Same batch size, workers and torch threads on both sides.

    python scripts/bench_zeroshot.py [--models ViT-B-32 PIR] [--images-per-class 10] [--repeats 3]
"""
import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

import pir_clip  # noqa: F401  (registers PIR configs and open_clip's factory hook)
from pir_clip.cli import main as pir_clip_main
from pir_clip.data.scene_folders import class_name_words
from pir_clip.data.synthetic import resolve_difficulty, write_classification_set
from pir_clip.data.synthetic_scenes import SCENES
from pir_clip.evaluation.zeroshot import read_templates


def make_data(root: Path, images_per_class: int, image_size: int) -> int:
    write_classification_set(root, sorted(SCENES), images_per_class, seed=0, image_size=image_size,
                             difficulty=resolve_difficulty("medium"))
    return images_per_class * len(SCENES)


def run_ours(model: str, data: Path, batch_size: int, workers: int, out_json: Path) -> float:
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = pir_clip_main(["zeroshot", "--model-name", model, "--data", str(data), "--batch-size", str(batch_size),
                              "--workers", str(workers), "--device", "cpu", "--quiet", "--output", str(out_json)])
    if code != 0:
        sys.exit(f"pir-clip zeroshot failed with exit code {code}")
    return time.perf_counter() - start


@torch.no_grad()
def run_open_clip(model_name: str, data: Path, batch_size: int, workers: int) -> float:
    start = time.perf_counter()
    model, _, preprocess = open_clip.create_model_and_transforms(model_name)
    model.eval()
    dataset = ImageFolder(str(data), transform=preprocess)
    classnames = [class_name_words(c) for c in dataset.classes]
    classifier = open_clip.build_zero_shot_classifier(model, open_clip.get_tokenizer(model_name), classnames,
                                                      read_templates(), num_classes_per_batch=10, device="cpu")
    correct = 0
    for images, targets in DataLoader(dataset, batch_size=batch_size, num_workers=workers):
        features = F.normalize(model.encode_image(images), dim=-1)
        correct += int(((features @ classifier).argmax(dim=1) == targets).sum())
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["ViT-B-32", "PIR"])
    p.add_argument("--images-per-class", type=int, default=10, help="12 scene classes (default 10: 120 images)")
    p.add_argument("--image-size", type=int, default=256, help="side of the generated images (default 256)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default=None, help="also write the numbers to this JSON file")
    args = p.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "scenes"
        n_images = make_data(data, args.images_per_class, args.image_size)
        print(f"{n_images} images ({args.image_size} px, png/jpg/tif) in {len(SCENES)} classes; batch "
              f"{args.batch_size}, {args.workers} workers, {torch.get_num_threads()} torch threads, "
              f"{args.repeats} repeats per side, sides interleaved", flush=True)
        for model in args.models:
            times = {"ours": [], "open_clip": []}
            for repeat in range(args.repeats):
                order = ("ours", "open_clip") if repeat % 2 == 0 else ("open_clip", "ours")
                for side in order:
                    seconds = run_ours(model, data, args.batch_size, args.workers, Path(tmp) / "zs.json") \
                        if side == "ours" else run_open_clip(model, data, args.batch_size, args.workers)
                    times[side].append(seconds)
                    print(f"  {model} repeat {repeat} {side:9s} {seconds:7.2f} s  {n_images / seconds:6.2f} img/s",
                          flush=True)
            ours, theirs = statistics.median(times["ours"]), statistics.median(times["open_clip"])
            results[model] = {"images": n_images, "seconds": times,
                              "ours_images_per_second": n_images / ours,
                              "open_clip_images_per_second": n_images / theirs,
                              "overhead": ours / theirs - 1}
    print(f"\n{'model':10s} {'pir-clip zeroshot img/s':>24s} {'open_clip loop img/s':>21s} {'overhead':>9s}")
    for model, r in results.items():
        print(f"{model:10s} {r['ours_images_per_second']:24.2f} {r['open_clip_images_per_second']:21.2f} "
              f"{100 * r['overhead']:+8.1f}%")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
