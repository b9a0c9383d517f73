"""The PIR-CLIP training loss: CLIP's contrastive loss plus the cluster-wise affiliation loss (AL).

AL (METHOD.md section 4) pulls every image towards the mean text feature of its scene class and every text
towards the mean image feature of its class. Written per sample, with centres cI_i = mean{I_k : y_k = y_i}
and cT_i likewise,

    AL = 1/2 [ CE(s * I cT^T, arange(B)) + CE(s * T cI^T, arange(B)) ].

Columns of one class are identical, so a row's B logits take only C distinct values, the one of class c
repeated n_c times. Hence row i's term equals the cross-entropy over the C distinct classes with logits
z_c + log(n_c), plus the constant log(n_{y_i}): the same value and gradient in O(B*C*d) time instead of
O(B*B*d), and without a loop over samples. Memory: the class centres are summed with ``index_add``
(O(C*d)); the (B, C) logits and their log-softmax are the only tensors of that size.
"""
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from open_clip.loss import ClipLoss, gather_features, hvd
from torch import Tensor

__all__ = ["affiliation_loss", "gather_class_ids", "PIRLoss"]

ClassIds = Union[Tensor, Sequence[int]]


def _as_class_ids(class_ids: ClassIds, device: torch.device, num_rows: int, what: str) -> Tensor:
    ids = torch.as_tensor(class_ids, dtype=torch.int64, device=device)
    if ids.shape != (num_rows,):
        raise ValueError(f"{what} must have shape ({num_rows},) to match the features, got {tuple(ids.shape)}")
    return ids


def affiliation_loss(
        image_features: Tensor,
        text_features: Tensor,
        class_ids: ClassIds,
        logit_scale: Union[Tensor, float],
        *,
        centre_image_features: Optional[Tensor] = None,
        centre_text_features: Optional[Tensor] = None,
        centre_class_ids: Optional[ClassIds] = None,
) -> Tensor:
    """Affiliation loss of the rows ``image_features`` / ``text_features`` against class centres.

    Args:
        image_features: (B, d) L2-normalised image features, one row per sample (any d).
        text_features: (B, d) L2-normalised text features of the same samples.
        class_ids: (B,) integer class ids (e.g. :func:`pir_clip.data.labels.class_id`); only equality matters.
        logit_scale: scalar (already exponentiated, as CLIP models return it).
        centre_image_features: (N, d) the batch the class centres are taken from; default: the rows. With
            open_clip's ``local_loss`` the rows are one rank's samples and the centres the global batch.
        centre_text_features: (N, d), given together with ``centre_image_features``.
        centre_class_ids: (N,), given together with ``centre_image_features``. Every row's class must
            occur among them (true when the rows are part of the centre batch).

    Returns:
        A scalar, the mean over the B rows of the per-sample AL averaged over both directions. Computed in
        float32 (float64 for float64 inputs) even under autocast, since the centre means and the
        log-sum-exp over classes lose too much in bf16/fp16. A logit bias, if the model has one, would shift all logits of a row
        equally and cancel in the cross-entropy, so it is not an argument.
    """
    given = [x is not None for x in (centre_image_features, centre_text_features, centre_class_ids)]
    if any(given) and not all(given):
        raise ValueError("centre_image_features, centre_text_features and centre_class_ids go together")
    if image_features.ndim != 2 or image_features.shape != text_features.shape:
        raise ValueError(
            f"image_features and text_features must both be (B, d), got {tuple(image_features.shape)} and "
            f"{tuple(text_features.shape)}")
    device = image_features.device
    row_ids = _as_class_ids(class_ids, device, image_features.shape[0], "class_ids")

    # float32 at least (float64 inputs stay float64, which the tests rely on for tight comparisons).
    dtype = torch.promote_types(image_features.dtype, torch.float32)
    with torch.autocast(device_type=device.type, enabled=False):
        rows_image = image_features.to(dtype)
        rows_text = text_features.to(dtype)
        if all(given):
            if centre_image_features.shape != centre_text_features.shape \
                    or centre_image_features.shape[1:] != image_features.shape[1:]:
                raise ValueError(
                    f"centre features must both be (N, {image_features.shape[1]}), got "
                    f"{tuple(centre_image_features.shape)} and {tuple(centre_text_features.shape)}")
            all_image = centre_image_features.to(dtype)
            all_text = centre_text_features.to(dtype)
            all_ids = _as_class_ids(centre_class_ids, device, all_image.shape[0], "centre_class_ids")
            classes, member_class = torch.unique(all_ids, return_inverse=True)  # (C,), (N,)
            row_class = torch.searchsorted(classes, row_ids).clamp_(max=classes.numel() - 1)
            if not torch.equal(classes[row_class], row_ids):
                raise ValueError("every row's class id must occur in centre_class_ids")
        else:
            all_image, all_text = rows_image, rows_text
            classes, member_class = torch.unique(row_ids, return_inverse=True)
            row_class = member_class

        counts = torch.bincount(member_class, minlength=classes.numel()).to(dtype)  # (C,)
        # Centres are means of unit vectors and deliberately not re-normalised (as in the release). Summed
        # with index_add (O(C*d) memory): no (N, C) membership matrix, so at a global batch of 32k with
        # mostly singleton classes the only (B, C)-sized tensors are the logits and their softmax.
        image_centres = _class_means(all_image, member_class, counts)  # (C, d)
        text_centres = _class_means(all_text, member_class, counts)  # (C, d)
        log_counts = counts.log()
        scale = torch.as_tensor(logit_scale, device=device).to(dtype)
        # + log(n_c) lets one class logit stand for its n_c identical columns in the log-sum-exp. The scale
        # multiplies the (B, d) rows, not the (B, C) product, so autograd keeps no extra (B, C) tensor.
        logits_image = torch.addmm(log_counts, scale * rows_image, text_centres.T)  # (B, C)
        loss_image = F.cross_entropy(logits_image, row_class)
        del logits_image  # cross_entropy keeps its own log-softmax; free the logits before the next (B, C)
        logits_text = torch.addmm(log_counts, scale * rows_text, image_centres.T)  # (B, C)
        grouped = (loss_image + F.cross_entropy(logits_text, row_class)) / 2
        # The release's target is one column, not its whole class: take the target's log(n_{y_i}) back out.
        return grouped + log_counts[row_class].mean()


def _class_means(features: Tensor, member_class: Tensor, counts: Tensor) -> Tensor:
    """features (N, d), member_class (N,) in [0, C), counts (C,) -> per-class means (C, d)."""
    sums = features.new_zeros(counts.shape[0], features.shape[1]).index_add(0, member_class, features)
    return sums / counts[:, None]


def gather_class_ids(class_ids: Tensor, world_size: int, use_horovod: bool = False) -> Tensor:
    """All ranks' class ids, concatenated in rank order like the gathered features: (B,) -> (world_size*B,).

    Ids are integers and carry no gradient, so a plain all_gather serves every loss setting.
    """
    if use_horovod:
        if hvd is None:
            raise RuntimeError("use_horovod=True but horovod.torch is not importable; install horovod")
        return hvd.allgather(class_ids)
    gathered = [torch.empty_like(class_ids) for _ in range(world_size)]
    dist.all_gather(gathered, class_ids.contiguous())
    return torch.cat(gathered)


class PIRLoss(ClipLoss):
    """CLIP's contrastive loss plus ``aff_weight`` times the affiliation loss, as a dict of named terms.

    Constructed like open_clip's :class:`~open_clip.loss.ClipLoss` (same distributed arguments, same
    meaning), plus ``aff_weight`` and ``use_affiliation``. With ``world_size > 1`` features are gathered
    once with :func:`open_clip.loss.gather_features` and class ids with :func:`gather_class_ids`, so the
    class centres are computed over the global batch; with ``local_loss`` the rows of both terms are this
    rank's samples, with the targets offset by ``rank * B`` as in ClipLoss.
    """

    def __init__(
            self,
            local_loss: bool = False,
            gather_with_grad: bool = False,
            cache_labels: bool = False,
            rank: int = 0,
            world_size: int = 1,
            use_horovod: bool = False,
            aff_weight: float = 1.0,
            use_affiliation: bool = True,
    ):
        super().__init__(
            local_loss=local_loss,
            gather_with_grad=gather_with_grad,
            cache_labels=cache_labels,
            rank=rank,
            world_size=world_size,
            use_horovod=use_horovod,
        )
        self.aff_weight = aff_weight
        self.use_affiliation = use_affiliation

    def _gather(self, image_features: Tensor, text_features: Tensor) -> Tuple[Tensor, Tensor]:
        if self.world_size == 1:
            return image_features, text_features
        return gather_features(
            image_features,
            text_features,
            local_loss=self.local_loss,
            gather_with_grad=self.gather_with_grad,
            rank=self.rank,
            world_size=self.world_size,
            use_horovod=self.use_horovod,
        )

    def forward(
            self,
            image_features: Tensor,
            text_features: Tensor,
            logit_scale: Tensor,
            class_ids: Optional[ClassIds] = None,
            logit_bias: Optional[Tensor] = None,
            output_dict: bool = False,
    ) -> Union[Dict[str, Tensor], Tensor]:
        """Loss terms for one (local) batch.

        Args:
            image_features: (B, d) this rank's L2-normalised image features.
            text_features: (B, d) this rank's L2-normalised text features.
            logit_scale: scalar, already exponentiated.
            class_ids: (B,) int64 class ids of this rank's samples; needed when ``use_affiliation``.
            logit_bias: optional scalar added to the contrastive logits (SigLIP-style models).
            output_dict: return ``{"contrastive_loss", "affiliation_loss"}`` (the latter already weighted by
                ``aff_weight``; absent when ``use_affiliation`` is off). Otherwise return their sum, so a
                caller that forgets ``output_dict`` still gets the total loss.
        """
        if self.use_affiliation and class_ids is None:
            raise ValueError(
                "PIRLoss with use_affiliation=True needs class_ids (B,) for the affiliation loss; pass the "
                "batch's class ids (see pir_clip.data.labels.resolve_class_id) or construct it with "
                "use_affiliation=False")
        all_image, all_text = self._gather(image_features, text_features)
        if self.world_size > 1 and self.local_loss:
            rows_image, rows_text = image_features, text_features
        else:
            rows_image, rows_text = all_image, all_text

        logits_per_image = logit_scale * rows_image @ all_text.T
        logits_per_text = logit_scale * rows_text @ all_image.T
        if logit_bias is not None:
            logits_per_image = logits_per_image + logit_bias
            logits_per_text = logits_per_text + logit_bias
        targets = self.get_ground_truth(image_features.device, logits_per_image.shape[0])
        losses = {"contrastive_loss": (F.cross_entropy(logits_per_image, targets)
                                       + F.cross_entropy(logits_per_text, targets)) / 2}

        if self.use_affiliation:
            ids = _as_class_ids(class_ids, image_features.device, image_features.shape[0], "class_ids")
            all_ids = gather_class_ids(ids, self.world_size, self.use_horovod) if self.world_size > 1 else ids
            if self.world_size > 1 and self.local_loss:
                aff = affiliation_loss(rows_image, rows_text, ids, logit_scale, centre_image_features=all_image,
                                       centre_text_features=all_text, centre_class_ids=all_ids)
            else:
                aff = affiliation_loss(all_image, all_text, all_ids, logit_scale)
            losses["affiliation_loss"] = self.aff_weight * aff

        return losses if output_dict else sum(losses.values())
