"""Scene classification metrics under CLIP_benchmark's names, with a stated tie order.

From class scores ``(N, C)`` and true labels ``(N,)``:

* ``acc1``, ``acc5``: the fraction of images whose true class is among the top 1 / top ``min(5, C)`` scores
  (CLIP_benchmark also caps k at the number of classes);
* ``mean_per_class_recall``: the mean, over classes with at least one image, of the fraction of that
  class's images predicted (top-1) as the class: sklearn's balanced accuracy, CLIP_benchmark's definition.
  A class with no image has no recall (``None``) and is left out of the mean.

**Ties** rank the lower class index first, everywhere in this module: the 0-based rank of the true class
``y`` is ``#{c : s_c > s_y} + #{c < y : s_c == s_y}``, the top-1 prediction is the first maximal score, and
top-k lists are a stable descending sort. All fractions are in [0, 1].
"""
from typing import Dict, List, NamedTuple, Optional, Sequence

import torch

METRIC_NAMES = ("acc1", "acc5", "mean_per_class_recall")


class TopPredictions(NamedTuple):
    """scores: ``(N, k)`` best first; classes: ``(N, k)`` int64 class indices, ties by ascending index."""
    scores: torch.Tensor
    classes: torch.Tensor


def _check(scores: torch.Tensor, labels: torch.Tensor) -> None:
    if scores.ndim != 2 or labels.ndim != 1 or scores.shape[0] != labels.shape[0]:
        raise ValueError(f"expected scores (N, C) and labels (N,), got {tuple(scores.shape)} and {tuple(labels.shape)}")
    if scores.shape[0] == 0:
        raise ValueError("no images to score")
    if not torch.isfinite(scores).all():
        raise ValueError("class scores contain NaN or Inf; check the model's output (e.g. fp16 overflow)")
    if labels.numel() and (labels.min() < 0 or labels.max() >= scores.shape[1]):
        raise ValueError(f"labels must lie in 0..{scores.shape[1] - 1}")


def true_class_ranks(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(N, C)`` scores, ``(N,)`` labels -> ``(N,)`` int64 0-based rank of each true class (module tie order)."""
    _check(scores, labels)
    true_scores = scores.gather(1, labels[:, None])
    before = torch.arange(scores.shape[1], device=scores.device)[None, :] < labels[:, None]
    return ((scores > true_scores) | ((scores == true_scores) & before)).sum(dim=1)


def top_predictions(scores: torch.Tensor, k: int) -> TopPredictions:
    """The ``min(k, C)`` best classes per image, best first, ties by ascending class index."""
    ordered, classes = torch.sort(scores, dim=1, descending=True, stable=True)
    k = min(k, scores.shape[1])
    return TopPredictions(ordered[:, :k], classes[:, :k])


def predictions(scores: torch.Tensor) -> torch.Tensor:
    """``(N, C)`` -> ``(N,)`` top-1 class (the first maximal score)."""
    return scores.argmax(dim=1)


def per_class_recall(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> List[Optional[float]]:
    """``(C,)`` recall of each class; None for a class with no image."""
    totals = torch.bincount(labels, minlength=num_classes)
    hits = torch.bincount(labels[predicted == labels], minlength=num_classes)
    return [float(h) / float(t) if t else None for h, t in zip(hits.tolist(), totals.tolist())]


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(C, C)`` int64 counts: row = true class, column = predicted class."""
    flat = labels.long() * num_classes + predicted.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_metrics(scores: torch.Tensor, labels: Sequence[int]) -> Dict[str, float]:
    """``(N, C)`` class scores and ``(N,)`` true labels -> ``acc1``, ``acc5``, ``mean_per_class_recall``."""
    labels = torch.as_tensor(labels, dtype=torch.long, device=scores.device)
    ranks = true_class_ranks(scores, labels)
    recalls = [r for r in per_class_recall(predictions(scores), labels, scores.shape[1]) if r is not None]
    n = len(labels)
    return {
        "acc1": int((ranks < 1).sum()) / n,
        "acc5": int((ranks < min(5, scores.shape[1])).sum()) / n,
        "mean_per_class_recall": sum(recalls) / len(recalls),
    }
