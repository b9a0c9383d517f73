"""``pir-clip zeroshot``: zero-shot scene classification of local RS data sets.

    pir-clip zeroshot --model-name PIR --checkpoint checkpoints/PIR-CLIP_RET-3.pt --data data/AID

Data: a folder of class folders at any depth or a ``filepath,label`` CSV (:mod:`pir_clip.data.scene_folders`).
Classifier, as CLIP's: each class's prompts (every template filled with its name) are encoded, each
embedding L2-normalised, averaged over templates and renormalised (``open_clip.build_zero_shot_classifier``);
an image's class scores are the cosine similarities of its normalised embedding with those columns.
Metrics (:mod:`pir_clip.evaluation.classification`): ``acc1``, ``acc5``, ``mean_per_class_recall``.
An image the decoder cannot read is skipped, counted and listed, never silently dropped.
"""
import csv
import json
import os
import string
import sys
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from open_clip import build_zero_shot_classifier
from open_clip_train.precision import get_autocast
from torch import nn

from ..data.annotations import DataFormatError
from ..data.images import ImageDecodeError, parse_bands
from ..data.scene_folders import PROMPTS_DIR, SceneSet, load_scene_set
from .classification import (classification_metrics, confusion_matrix, per_class_recall, predictions,
                             top_predictions)
from .encode import encode_images_skipping, load_model_for_evaluation

DEFAULT_TEMPLATES = os.path.join(PROMPTS_DIR, "rs_templates.txt")
TOP_K_SAVED = 5
_SHOW_UNREADABLE = 5


def read_templates(path: Optional[str] = None) -> List[str]:
    """Prompt templates from ``path`` (default: the built-in RS set): one per line with ``{}`` where the class
    name goes, exactly once; blank lines and lines starting with ``#`` are skipped."""
    source = path or DEFAULT_TEMPLATES
    flag = f"--templates {path}" if path else f"the built-in templates {source}"
    if not os.path.isfile(source):
        raise DataFormatError(f"{flag}: no such file")
    templates = []
    with open(source, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            try:
                fields = [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]
            except ValueError as exc:  # a lone "{" or "}"
                raise DataFormatError(f"{flag} line {number}: {text!r} is not a valid template ({exc}); write "
                                      "{} where the class name goes and {{ }} for literal braces") from exc
            if fields != [""]:
                raise DataFormatError(f"{flag} line {number}: {text!r} needs {{}} exactly once where the class name "
                                      f"goes (found {len(fields)} fields: {fields}), e.g. 'a satellite image of {{}}.'")
            templates.append(text)
    if not templates:
        raise DataFormatError(f"{flag} holds no templates; write one per line, e.g. 'a satellite image of {{}}.'")
    return templates


@torch.no_grad()
def build_classifier(model: nn.Module, tokenizer: Callable, class_names: Sequence[str], templates: Sequence[str], *,
                     device="cpu", precision: str = "fp32", progress: bool = False) -> torch.Tensor:
    """``(D, C)`` float32 on the CPU: column c is the renormalised mean of the normalised embeddings of class c's
    prompts."""
    device = torch.device(device)
    with get_autocast(precision, device_type=device.type)():
        weights = build_zero_shot_classifier(model, tokenizer, list(class_names), list(templates),
                                             num_classes_per_batch=10, device=device, use_tqdm=progress)
    return torch.nn.functional.normalize(weights.float(), dim=0).cpu()


class ZeroShotResult(NamedTuple):
    """metrics: acc1, acc5, mean_per_class_recall; scores: ``(M, C)`` cosine similarities of the M readable
    images; labels: ``(M,)``; kept: ``(M,)`` indices into the set's paths; unreadable: (path, reason) pairs."""
    metrics: Dict[str, float]
    scores: torch.Tensor
    labels: torch.Tensor
    kept: List[int]
    unreadable: List[Tuple[str, str]]


def evaluate_zero_shot(model: nn.Module, scene_set: SceneSet, preprocess: Callable, tokenizer: Callable,
                       templates: Sequence[str], *, batch_size: int = 64, workers: int = 0, device="cpu",
                       precision: str = "fp32", progress: bool = True,
                       bands: Optional[Sequence[int]] = None) -> ZeroShotResult:
    """Builds the classifier, encodes the images and scores them (the model is left in its training mode)."""
    model = getattr(model, "module", model)  # DDP
    was_training = model.training
    model.eval()
    try:
        classifier = build_classifier(model, tokenizer, scene_set.class_names, templates, device=device,
                                      precision=precision)
        encoded = encode_images_skipping(model, scene_set.paths, preprocess, batch_size=batch_size, workers=workers,
                                         device=device, precision=precision, progress=progress, bands=bands)
    finally:
        model.train(was_training)
    unreadable = [(p, e) for p, e in zip(scene_set.paths, encoded.errors) if e]
    if len(unreadable) == len(scene_set.paths):
        raise ImageDecodeError(f"none of the {len(unreadable):,} images could be decoded; the first: {unreadable[0][1]}")
    kept = [i for i, e in enumerate(encoded.errors) if not e]
    scores = encoded.features[kept] @ classifier
    labels = torch.tensor([scene_set.labels[i] for i in kept], dtype=torch.long)
    return ZeroShotResult(classification_metrics(scores, labels), scores, labels, kept, unreadable)


# ---------------------------------------------------------------- the command


def format_table(metrics: Dict[str, float], num_classes: int, row: str = "zero-shot") -> str:
    top = f"top-{min(5, num_classes)}"
    lines = [f"{'':12s} {'top-1':>7s} {top:>7s} {'mean per-class recall':>22s}",
             f"{row:12s} {100 * metrics['acc1']:7.2f} {100 * metrics['acc5']:7.2f} "
             f"{100 * metrics['mean_per_class_recall']:22.2f}"]
    return "\n".join(lines)


def describe_classes(scene_set: SceneSet) -> str:
    """One line per class: label, folder or CSV label, the name prompts use, images."""
    counts = scene_set.class_counts()
    width = max(len(k) for k in scene_set.class_keys)
    return "\n".join(f"  {i:3d} {key:{width}s} -> {name!r} ({n} images)"
                     for i, (key, name, n) in enumerate(zip(scene_set.class_keys, scene_set.class_names, counts)))


def report_unreadable(unreadable: Sequence[Tuple[str, str]], total: int) -> None:
    if not unreadable:
        return
    print(f"warning: skipped {len(unreadable):,} of {total:,} images the decoder cannot read:", file=sys.stderr)
    for _, reason in unreadable[:_SHOW_UNREADABLE]:
        print(f"  {reason}", file=sys.stderr)
    if len(unreadable) > _SHOW_UNREADABLE:
        print(f"  ... and {len(unreadable) - _SHOW_UNREADABLE:,} more (all listed in the output JSON)", file=sys.stderr)


def relative_name(path: str, scene_set: SceneSet) -> str:
    base = scene_set.root if scene_set.layout == "folders" else os.path.dirname(scene_set.root)
    return os.path.relpath(path, base)


def save_predictions(path: str, scene_set: SceneSet, result: ZeroShotResult) -> None:
    """CSV: file, true class, then the top-5 classes with their cosine similarity scores, best first."""
    top = top_predictions(result.scores, TOP_K_SAVED)
    k = top.classes.shape[1]
    names = scene_set.class_names
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["file", "true_class"] + [c for r in range(1, k + 1) for c in (f"pred_{r}", f"score_{r}")])
        for row, index in enumerate(result.kept):
            cells = [relative_name(scene_set.paths[index], scene_set), names[int(result.labels[row])]]
            for c, s in zip(top.classes[row].tolist(), top.scores[row].tolist()):
                cells += [names[c], f"{s:.6f}"]
            writer.writerow(cells)


def run(args) -> Dict:
    """Runs ``pir-clip zeroshot`` for parsed arguments (see :func:`pir_clip.cli.zeroshot_arguments`)."""
    from ..models.factory import get_tokenizer
    from .confusion_figure import save_confusion_figure

    bands = parse_bands(args.bands)
    templates = read_templates(args.templates)  # fail on bad input before building a model
    scene_set = load_scene_set(args.data, args.split, args.classnames, args.images_dir)
    if not scene_set.paths:
        raise DataFormatError(f"--split {args.split} of {args.data} has no images (under the 80/20 rule a class of "
                              "one image has no train image); use --split all")
    print(f"Data: {scene_set.summary()}", flush=True)
    print(f"Classes ({scene_set.names_from}):\n{describe_classes(scene_set)}", flush=True)
    print(f"Templates: {len(templates)} ({args.templates or 'built-in RS set'}), e.g. {templates[0]!r}", flush=True)
    model, preprocess, device = load_model_for_evaluation(args)
    start = time.time()
    result = evaluate_zero_shot(model, scene_set, preprocess, get_tokenizer(args.model_name), templates,
                                batch_size=args.batch_size, workers=args.workers, device=device,
                                precision=args.precision, progress=not args.quiet, bands=bands)
    seconds = time.time() - start
    recalls = per_class_recall(predictions(result.scores), result.labels, scene_set.num_classes)
    output = {
        "task": "zeroshot_classification",
        "model": args.model_name,
        "architecture": type(model).__name__,
        "checkpoint": args.checkpoint,
        "data": os.path.abspath(args.data),
        "class_root": scene_set.root,
        "layout": scene_set.layout,
        "split": scene_set.split,
        "metrics": result.metrics,
        "per_class_recall": dict(zip(scene_set.class_names, recalls)),
        "classes": [{"label": i, "key": k, "name": n, "images": c} for i, (k, n, c) in
                    enumerate(zip(scene_set.class_keys, scene_set.class_names, scene_set.class_counts()))],
        "class_names_from": scene_set.names_from,
        "templates": templates,
        "templates_file": os.path.abspath(args.templates) if args.templates else "built-in",
        "counts": {"classes": scene_set.num_classes, "images": len(scene_set.paths), "evaluated": len(result.kept),
                   "unreadable": len(result.unreadable)},
        "unreadable": [{"file": p, "error": e} for p, e in result.unreadable],
        "seconds": round(seconds, 2),
    }
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(output, f, indent=2, ensure_ascii=False)
    if args.save_confusion:
        title = (f"{args.model_name} zero-shot on {os.path.basename(os.path.normpath(args.data))} ({scene_set.split}): "
                 f"top-1 {100 * result.metrics['acc1']:.2f}%, {len(result.kept):,} images\n"
                 "rows: true class, columns: predicted class, shade: fraction of the row")
        save_confusion_figure(args.save_confusion,
                              confusion_matrix(predictions(result.scores), result.labels, scene_set.num_classes),
                              scene_set.class_names, title=title)
    if args.save_predictions:
        save_predictions(args.save_predictions, scene_set, result)
    report_unreadable(result.unreadable, len(scene_set.paths))
    print(format_table(result.metrics, scene_set.num_classes))
    written = [p for p in (args.output, args.save_confusion, args.save_predictions) if p]
    print(f"{len(result.kept):,} images in {scene_set.num_classes} classes ({len(result.unreadable):,} unreadable, "
          f"skipped), chance top-1 {100 / scene_set.num_classes:.2f}%, {seconds:.1f} s"
          + (f"; wrote {', '.join(written)}" if written else ""))
    return output
