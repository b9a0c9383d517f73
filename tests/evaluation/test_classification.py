"""Scene classification metrics against a naive per-image loop (ties and a class with no image included),
and the confusion-matrix picture."""
import pytest
import torch
from PIL import Image

from pir_clip.evaluation.classification import (classification_metrics, confusion_matrix, per_class_recall,
                                                predictions, top_predictions, true_class_ranks)
from pir_clip.evaluation.confusion_figure import FULL_RGB, EMPTY_RGB, confusion_layout, save_confusion_figure, shade


def naive_metrics(scores, labels, num_classes):
    """One image at a time: sort classes by (score descending, index ascending)."""
    top1 = top5 = 0
    hits, totals = [0] * num_classes, [0] * num_classes
    for row, y in zip(scores.tolist(), labels):
        order = sorted(range(num_classes), key=lambda c: (-row[c], c))
        top1 += order[0] == y
        top5 += y in order[:min(5, num_classes)]
        totals[y] += 1
        hits[y] += order[0] == y
    recalls = [h / t for h, t in zip(hits, totals) if t]
    return {"acc1": top1 / len(labels), "acc5": top5 / len(labels), "mean_per_class_recall": sum(recalls) / len(recalls)}


def test_known_predictions_by_hand():
    # 4 classes; class 3 has no image. Image 2 ties classes 0 and 1: the lower index (0) wins.
    scores = torch.tensor([[0.9, 0.1, 0.0, 0.0],   # true 0 -> 0
                           [0.2, 0.8, 0.0, 0.0],   # true 1 -> 1
                           [0.5, 0.5, 0.1, 0.0],   # true 1 -> 0 (tie), rank 1
                           [0.1, 0.3, 0.2, 0.4],   # true 2 -> 3, rank 2
                           [0.0, 0.0, 0.0, 0.0]])  # true 2 -> 0 (all tied), rank 2
    labels = [0, 1, 1, 2, 2]
    metrics = classification_metrics(scores, labels)
    assert metrics["acc1"] == pytest.approx(2 / 5)
    assert metrics["acc5"] == 1.0  # 4 classes: top-4 holds every class
    assert metrics["mean_per_class_recall"] == pytest.approx((1 + 0.5 + 0) / 3)  # class 3 left out
    assert true_class_ranks(scores, torch.tensor(labels)).tolist() == [0, 0, 1, 2, 2]
    assert per_class_recall(predictions(scores), torch.tensor(labels), 4) == [1.0, 0.5, 0.0, None]


@pytest.mark.parametrize("num_classes", [3, 7, 12])
def test_metrics_equal_the_naive_loop_with_ties(num_classes):
    generator = torch.Generator().manual_seed(num_classes)
    for trial in range(20):
        n = 40
        # Few distinct values: most rows hold ties, often involving the true class.
        scores = torch.randint(0, 4, (n, num_classes), generator=generator).float() / 4
        labels = torch.randint(0, num_classes - 1, (n,), generator=generator).tolist()  # the last class never occurs
        assert classification_metrics(scores, labels) == pytest.approx(naive_metrics(scores, labels, num_classes))


def test_top_predictions_and_confusion_matrix():
    scores = torch.tensor([[0.2, 0.7, 0.7, 0.1], [0.3, 0.3, 0.3, 0.3]])
    top = top_predictions(scores, 3)
    assert top.classes.tolist() == [[1, 2, 0], [0, 1, 2]]
    assert top.scores[0].tolist() == pytest.approx([0.7, 0.7, 0.2])
    assert top_predictions(scores, 10).classes.shape == (2, 4)
    predicted, labels = torch.tensor([0, 1, 1, 2, 0]), torch.tensor([0, 1, 2, 2, 2])
    expected = torch.zeros(3, 3, dtype=torch.long)
    for p, y in zip(predicted.tolist(), labels.tolist()):
        expected[y, p] += 1
    assert torch.equal(confusion_matrix(predicted, labels, 3), expected)


def test_bad_scores_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        classification_metrics(torch.tensor([[float("nan"), 0.0]]), [0])
    with pytest.raises(ValueError, match="labels must lie"):
        classification_metrics(torch.zeros(2, 3), [0, 3])


def test_confusion_figure_cells(tmp_path):
    confusion = torch.tensor([[10, 0, 0], [5, 5, 0], [0, 0, 0]])
    names = ["airport", "storage tanks", "a class with a very long name that will be cut " * 3]
    out = save_confusion_figure(tmp_path / "cm.png", confusion, names, title="t")
    layout = confusion_layout(names, title_lines=["t"])
    with Image.open(out) as image:
        image = image.convert("RGB")
        assert image.size == (layout.width, layout.height)

        def inside(row, column):
            box = layout.cell_box(row, column)
            return image.getpixel((box[0] + 2, box[1] + 2))

        assert inside(0, 0) == FULL_RGB and inside(0, 1) == EMPTY_RGB
        assert inside(1, 0) == inside(1, 1) == shade(0.5) and inside(2, 2) == EMPTY_RGB
    assert layout.label_width <= 202  # long names are cut, not allowed to widen the figure


def test_confusion_figure_fits_45_classes(tmp_path):
    names = [f"class name {i}" for i in range(45)]
    confusion = torch.eye(45, dtype=torch.long) * 100
    out = save_confusion_figure(tmp_path / "cm45.png", confusion, names)
    with Image.open(out) as image:
        assert image.width < 1400 and image.height < 1400
    layout = confusion_layout(names)
    assert layout.cell >= 20  # three-digit counts and 12 px names stay legible
