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
alike. Images per second come from each side's median wall time; the overhead is the median over repeats of
``ours / open_clip - 1`` within a repeat. On a shared machine wall time swings with other people's load, so
the CPU time each side spends (this process and its finished DataLoader workers, from ``getrusage``) is
reported too: the same work costs about the same CPU time however busy the machine is.

A second, tighter comparison times the encoding loop alone on one model instance (built once): our
``encode_images_skipping`` (the shared decoder, unreadable-image handling) plus scoring, against the
``ImageFolder`` + ``DataLoader`` + ``encode_image`` loop, both in this process (``--loop-workers 0``), so
model creation and worker start-up are out of the picture. A third times the data path alone (folder scan,
decoding, preprocessing, batching; no model), where the two sides' code differs. Same batch size and torch
threads throughout.

    python scripts/bench_zeroshot.py [--models ViT-B-32 PIR] [--images-per-class 10] [--repeats 3] [--loop-repeats 6]
"""
import argparse
import contextlib
import io
import json
import resource
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
from pir_clip.data.scene_folders import class_name_words, load_scene_set
from pir_clip.data.synthetic import resolve_difficulty, write_classification_set
from pir_clip.data.synthetic_scenes import SCENES
from pir_clip.evaluation.encode import ImageFiles, encode_images_skipping
from pir_clip.evaluation.zeroshot import read_templates


def make_data(root: Path, images_per_class: int, image_size: int) -> int:
    write_classification_set(root, sorted(SCENES), images_per_class, seed=0, image_size=image_size,
                             difficulty=resolve_difficulty("medium"))
    return images_per_class * len(SCENES)


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have finished (DataLoader workers), user + system."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_ours(model: str, data: Path, batch_size: int, workers: int, out_json: Path) -> float:
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = pir_clip_main(["zeroshot", "--model-name", model, "--data", str(data), "--batch-size", str(batch_size),
                              "--workers", str(workers), "--device", "cpu", "--quiet", "--output", str(out_json)])
    if code != 0:
        sys.exit(f"pir-clip zeroshot failed with exit code {code}")
    return time.perf_counter() - start


@torch.no_grad()
def open_clip_loop(model, preprocess, classifier, data: Path, batch_size: int, workers: int) -> int:
    """The loop an open_clip user writes; returns the number of correct top-1 predictions."""
    correct = 0
    for images, targets in DataLoader(ImageFolder(str(data), transform=preprocess), batch_size=batch_size,
                                      num_workers=workers):
        features = F.normalize(model.encode_image(images), dim=-1)
        correct += int(((features @ classifier).argmax(dim=1) == targets).sum())
    return correct


def our_loop(model, preprocess, classifier, data: Path, batch_size: int, workers: int) -> int:
    """The same with pir_clip's folder scan, shared decoder and unreadable-image handling."""
    scene_set = load_scene_set(str(data))  # ImageFolder scans the folders too
    encoded = encode_images_skipping(model, scene_set.paths, preprocess, batch_size=batch_size, workers=workers,
                                     progress=False)
    labels = torch.tensor(scene_set.labels)[encoded.readable]
    return int(((encoded.features[encoded.readable] @ classifier).argmax(dim=1) == labels).sum())


def build_open_clip(model_name: str, data: Path):
    model, _, preprocess = open_clip.create_model_and_transforms(model_name)
    model.eval()
    classnames = [class_name_words(c) for c in ImageFolder(str(data)).classes]
    classifier = open_clip.build_zero_shot_classifier(model, open_clip.get_tokenizer(model_name), classnames,
                                                      read_templates(), num_classes_per_batch=10, device="cpu")
    return model, preprocess, classifier


def run_open_clip(model_name: str, data: Path, batch_size: int, workers: int) -> float:
    start = time.perf_counter()
    open_clip_loop(*build_open_clip(model_name, data), data, batch_size, workers)
    return time.perf_counter() - start


def timed(function, *args):
    """(wall seconds, CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    function(*args)
    return time.perf_counter() - wall, cpu_seconds() - cpu


def paired_overhead(ours, theirs) -> float:
    """Median over repeats of ours / theirs - 1 (each pair measured back to back)."""
    return statistics.median(a / b for a, b in zip(ours, theirs)) - 1


def compare_data_paths(preprocess, data: Path, repeats: int, batch_size: int) -> dict:
    """CPU seconds of reading every image into batches, no model: ImageFolder + PIL against our scan + decoder."""
    def ours():
        scene_set = load_scene_set(str(data))
        for _ in DataLoader(ImageFiles(scene_set.paths, preprocess, skip_unreadable=True), batch_size=batch_size):
            pass

    def theirs():
        for _ in DataLoader(ImageFolder(str(data), transform=preprocess), batch_size=batch_size):
            pass

    cpu = {"ours": [], "open_clip": []}
    for repeat in range(repeats):
        for side in (("ours", "open_clip") if repeat % 2 == 0 else ("open_clip", "ours")):
            cpu[side].append(timed(ours if side == "ours" else theirs)[1])
    return cpu


def compare_loops(model_name: str, data: Path, repeats: int, batch_size: int, workers: int) -> dict:
    """Encoding loops alone, one model instance, sides alternating; (wall, CPU) seconds per side."""
    model, preprocess, classifier = build_open_clip(model_name, data)
    sides = {"ours": lambda: our_loop(model, preprocess, classifier, data, batch_size, workers),
             "open_clip": lambda: open_clip_loop(model, preprocess, classifier, data, batch_size, workers)}
    if sides["ours"]() != sides["open_clip"]():
        sys.exit("the two loops disagree on the predictions: they are not doing the same work")
    times = {side: {"wall": [], "cpu": []} for side in sides}
    for repeat in range(repeats):
        for side in (("ours", "open_clip") if repeat % 2 == 0 else ("open_clip", "ours")):
            wall, cpu = timed(sides[side])
            times[side]["wall"].append(wall)
            times[side]["cpu"].append(cpu)
            print(f"  {model_name} loop {repeat} {side:9s} {wall:7.2f} s  CPU {cpu:7.2f} s", flush=True)
    times["data_path_cpu"] = compare_data_paths(preprocess, data, 2 * repeats, batch_size)
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["ViT-B-32", "PIR"])
    p.add_argument("--images-per-class", type=int, default=10, help="12 scene classes (default 10: 120 images)")
    p.add_argument("--image-size", type=int, default=256, help="side of the generated images (default 256)")
    p.add_argument("--repeats", type=int, default=3, help="end-to-end runs per side and model (default 3)")
    p.add_argument("--loop-repeats", type=int, default=6, help="encoding-loop runs per side and model (default 6)")
    p.add_argument("--loop-workers", type=int, default=0, help="DataLoader workers in the loop comparison")
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
            cpu = {"ours": [], "open_clip": []}
            for repeat in range(args.repeats):
                order = ("ours", "open_clip") if repeat % 2 == 0 else ("open_clip", "ours")
                for side in order:
                    cpu_start = cpu_seconds()
                    seconds = run_ours(model, data, args.batch_size, args.workers, Path(tmp) / "zs.json") \
                        if side == "ours" else run_open_clip(model, data, args.batch_size, args.workers)
                    times[side].append(seconds)
                    cpu[side].append(cpu_seconds() - cpu_start)
                    print(f"  {model} repeat {repeat} {side:9s} {seconds:7.2f} s  {n_images / seconds:6.2f} img/s  "
                          f"CPU {cpu[side][-1]:7.2f} s", flush=True)
            loops = compare_loops(model, data, args.loop_repeats, args.batch_size, args.loop_workers)
            results[model] = {
                "images": n_images, "seconds": times, "cpu_seconds": cpu, "loop_seconds": loops,
                "ours_images_per_second": n_images / statistics.median(times["ours"]),
                "open_clip_images_per_second": n_images / statistics.median(times["open_clip"]),
                "overhead": paired_overhead(times["ours"], times["open_clip"]),
                "cpu_overhead": paired_overhead(cpu["ours"], cpu["open_clip"]),
                "loop_ours_images_per_second": n_images / statistics.median(loops["ours"]["wall"]),
                "loop_open_clip_images_per_second": n_images / statistics.median(loops["open_clip"]["wall"]),
                "loop_overhead": paired_overhead(loops["ours"]["wall"], loops["open_clip"]["wall"]),
                "loop_cpu_overhead": paired_overhead(loops["ours"]["cpu"], loops["open_clip"]["cpu"]),
                "data_path_ms_per_image": {side: 1000 * statistics.median(v) / n_images
                                           for side, v in loops["data_path_cpu"].items()},
                "command_cpu_ms_per_image": 1000 * statistics.median(cpu["open_clip"]) / n_images,
            }
    print("\nwhole command (model, classifier, images, metrics) against open_clip's zero-shot loop:")
    print(f"{'model':10s} {'pir-clip zeroshot img/s':>24s} {'open_clip img/s':>16s} {'overhead wall':>14s} "
          f"{'overhead CPU':>13s}")
    for model, r in results.items():
        print(f"{model:10s} {r['ours_images_per_second']:24.2f} {r['open_clip_images_per_second']:16.2f} "
              f"{100 * r['overhead']:+13.1f}% {100 * r['cpu_overhead']:+12.1f}%")
    print(f"\nencoding loop alone, one model instance, {args.loop_workers} workers:")
    print(f"{'model':10s} {'ours img/s':>11s} {'open_clip img/s':>16s} {'overhead wall':>14s} {'overhead CPU':>13s}")
    for model, r in results.items():
        print(f"{model:10s} {r['loop_ours_images_per_second']:11.2f} {r['loop_open_clip_images_per_second']:16.2f} "
              f"{100 * r['loop_overhead']:+13.1f}% {100 * r['loop_cpu_overhead']:+12.1f}%")
    print("\ndata path alone (scan, decode, preprocess, batch; no model), CPU per image, median:")
    print(f"{'model':10s} {'ours ms':>8s} {'open_clip ms':>13s} {'difference / whole command CPU':>31s}")
    for model, r in results.items():
        ours, theirs = r["data_path_ms_per_image"]["ours"], r["data_path_ms_per_image"]["open_clip"]
        print(f"{model:10s} {ours:8.2f} {theirs:13.2f} {100 * (ours - theirs) / r['command_cpu_ms_per_image']:+30.2f}%")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
