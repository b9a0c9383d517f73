"""Zero-shot scene classification during training: ``--zeroshot-data DIR`` every ``--zeroshot-frequency`` epochs.

The data is what ``pir-clip zeroshot --data`` reads (class folders at any depth, or a ``filepath,label``
CSV), all of it, scored with the built-in RS templates. On the master process; the metrics
(``zeroshot-val-acc1``, ``zeroshot-val-acc5``, ``zeroshot-val-mean_per_class_recall``, fractions) go to the
log, to tensorboard under ``val/`` and, as a line of their own, to ``results.jsonl``. Unreadable images are
skipped and counted in the log.
"""
import logging
from typing import Dict, Optional

from pir_clip.data.scene_folders import SceneSet, load_scene_set
from pir_clip.evaluation.zeroshot import evaluate_zero_shot, read_templates
from training.train import report_metrics

METRIC_PREFIX = "zeroshot-val-"


def load_zeroshot_set(args) -> Optional[SceneSet]:
    """The ``--zeroshot-data`` set, checked before training starts (None without the flag)."""
    if not args.zeroshot_data:
        return None
    scene_set = load_scene_set(args.zeroshot_data)
    logging.info(f"Zero-shot validation set: {scene_set.summary()}; classes: {', '.join(scene_set.class_names)}")
    return scene_set


def zeroshot_due(completed_epoch: int, args) -> bool:
    """open_clip's rule: every ``--zeroshot-frequency`` epochs and after the last; 0 never."""
    frequency = args.zeroshot_frequency
    return bool(frequency) and (completed_epoch % frequency == 0 or completed_epoch == args.epochs)


def zeroshot_validate(model, scene_set: SceneSet, epoch: int, args, preprocess, tokenizer,
                      tb_writer=None) -> Dict[str, float]:
    result = evaluate_zero_shot(model, scene_set, preprocess, tokenizer, read_templates(),
                                batch_size=args.val_batch_size or args.batch_size, workers=min(args.workers, 4),
                                device=args.device, precision=args.precision, progress=True)
    metrics = {METRIC_PREFIX + name: value for name, value in result.metrics.items()}
    if result.unreadable:
        logging.warning(f"Zero-shot validation skipped {len(result.unreadable)} unreadable images, e.g. "
                        f"{result.unreadable[0][1]}")
    report_metrics("Zero-shot", metrics, epoch, args, tb_writer, digits=4)
    return metrics
