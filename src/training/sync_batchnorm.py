"""``--use-bn-sync``: BatchNorm statistics over the global batch, on GPUs (NCCL) and on CPUs (gloo).

On GPUs this is torch's :class:`~torch.nn.SyncBatchNorm`, as in open_clip. torch's module refuses CPU
tensors, and DDP refuses it in a CPU model, so under ``torchrun`` on CPUs open_clip's ``--use-bn-sync``
cannot train. There, :class:`CpuSyncBatchNorm` (a BatchNorm with the same state, so checkpoints keep their
keys) all-reduces per-channel sums with ``torch.distributed.nn.functional.all_reduce``, whose backward
all-reduces the gradients: every rank's loss reaches every rank's samples through the shared mean and
variance, exactly as one process normalising the concatenated batch. Its collectives run in a process
group of their own, so they never interleave with DDP's gradient buckets.
"""
import logging

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn


class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the inputs of every rank of ``process_group``, on CPU tensors. Same parameters and
    buffers as BatchNorm{1,2,3}d (layers are converted by class); plain BatchNorm in eval mode or alone."""

    process_group = None

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()) \
                or dist.get_world_size(self.process_group) == 1:
            return super().forward(input)
        return self._forward_synchronised(input)

    def _forward_synchronised(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, ...) -> normalised with the mean and (biased) variance over every rank's B and spatial
        positions; running statistics updated with the unbiased variance, as BatchNorm does."""
        self._check_input_dim(x)
        group = self.process_group or dist.group.WORLD
        channels = x.shape[1]
        reduce_dims = [0] + list(range(2, x.dim()))
        shape = [1, channels] + [1] * (x.dim() - 2)
        local_count = torch.tensor([x.numel() // channels], dtype=x.dtype, device=x.device)
        # Two passes (mean, then squared deviations) rather than E[x^2] - E[x]^2, which cancels in float32.
        sums = dist_fn.all_reduce(torch.cat([x.sum(reduce_dims), local_count]), group=group)
        count = sums[-1]
        mean = sums[:channels] / count
        centred = x - mean.view(shape)
        var = dist_fn.all_reduce((centred * centred).sum(reduce_dims), group=group) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                unbiased = var * (count / (count - 1).clamp_min(1))
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.detach(), alpha=momentum)
        out = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Every BatchNorm layer of ``model`` synchronised across the ranks (weights, statistics and train/eval
    mode kept): torch's SyncBatchNorm on GPUs, :class:`CpuSyncBatchNorm` on CPUs. Layers of a frozen prior
    stay in eval mode, where nothing is synchronised. Call it on every rank (it creates a process group)."""
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    if on_cpu:
        group = dist.new_group() if dist.is_initialized() else None
        converted = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                     and not isinstance(m, nn.SyncBatchNorm)]
        for module in converted:
            module.__class__ = CpuSyncBatchNorm
            module.process_group = group
    else:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        converted = [m for m in model.modules() if isinstance(m, nn.SyncBatchNorm)]
    trainable = sum(1 for m in converted if any(p.requires_grad for p in m.parameters()))
    logging.info(f"--use-bn-sync: {len(converted)} BatchNorm layers synchronised across ranks "
                 f"({trainable} trainable)." + ("" if trainable else " All are frozen (the prior is locked; "
                                                "--unlock-prior trains it), so there is nothing to synchronise."))
    return model
