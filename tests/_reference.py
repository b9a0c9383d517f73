"""Naive references that transcribe METHOD.md literally, for tests and benchmarks only.

Deliberately loop over samples: these are the slow, obviously-correct versions the vectorised library code
is checked against. Do not import them from the library.
"""
from typing import Iterable, Optional, Sequence

import torch
from torch import Tensor


def naive_affiliation_loss(
        image_features: Tensor,
        text_features: Tensor,
        class_ids: Sequence[int],
        logit_scale: Tensor,
        rows: Optional[Iterable[int]] = None,
) -> Tensor:
    """METHOD.md section 4, sample by sample.

    image_features, text_features: (B, d); class_ids: B ints; logit_scale: scalar. For every sample i the
    centres cI_i, cT_i are the means of the features of all samples with i's class; each row's
    cross-entropy is computed separately. ``rows`` restricts the rows to a subset of sample indices while
    columns and centres still use the whole batch (open_clip's ``local_loss``); default: every sample.
    """
    ids = [int(y) for y in class_ids]
    batch = len(ids)
    image_centres, text_centres = [], []
    for i in range(batch):
        members = [k for k in range(batch) if ids[k] == ids[i]]
        image_centres.append(torch.stack([image_features[k] for k in members]).mean(0))
        text_centres.append(torch.stack([text_features[k] for k in members]).mean(0))
    image_centres = torch.stack(image_centres)  # (B, d)
    text_centres = torch.stack(text_centres)  # (B, d)

    rows = list(range(batch)) if rows is None else list(rows)
    image_to_text, text_to_image = [], []
    for i in rows:
        logits = logit_scale * (text_centres @ image_features[i])  # (B,) against every column
        image_to_text.append(torch.logsumexp(logits, 0) - logits[i])
        logits = logit_scale * (image_centres @ text_features[i])
        text_to_image.append(torch.logsumexp(logits, 0) - logits[i])
    return (torch.stack(image_to_text).mean() + torch.stack(text_to_image).mean()) / 2
