"""One training step of tiny PIR with the affiliation loss, under torchrun or in one process.

    torchrun --nproc_per_node 2 tests/ddp_step_check.py OUT_DIR [VARIANT ...]   # each rank takes half the batch
    python tests/ddp_step_check.py OUT_DIR [VARIANT ...]                        # the whole batch in one process

Both write the loss terms, the gradients and the parameters after an SGD step to OUT_DIR/{VARIANT}-{ddp,single}.pt,
using the training loop's own functions (forward_backward, optimizer_step) and PIRLoss with --gather-with-grad.
Dropout is switched off so the two runs are comparable. Variants: ``plain`` (frozen prior), ``sync_bn`` (the
prior trained, its BatchNorm layers converted as --use-bn-sync does), ``local_bn`` (the prior trained, plain
BatchNorm: each rank normalises with its own half-batch statistics).
"""
import contextlib
import os
import sys

import open_clip
import torch
import torch.distributed as dist

import pir_clip
from pir_clip.data.labels import resolve_class_id
from pir_clip.losses import PIRLoss
from training.sync_batchnorm import convert_sync_batchnorm
from training.train import forward_backward, optimizer_step

GLOBAL_BATCH = 8
NAMES = ["airport_1.png", "airport_2.png", "forest_1.png", "river_4.tif",
         "airport_3.jpg", "forest_9.png", "00578.jpg", "river_1.tif"]
CAPTIONS = ["two planes", "a runway", "dense trees", "a winding river",
            "three white planes", "green forest", "a building", "a bridge over a river"]


def global_batch():
    g = torch.Generator().manual_seed(123)
    images = torch.randn(GLOBAL_BATCH, 3, 64, 64, generator=g)
    texts = open_clip.get_tokenizer("PIR-tiny")(CAPTIONS)
    ids = torch.tensor([resolve_class_id(n) for n in NAMES])
    return images, texts, ids


def build_model(unlock_prior=False):
    torch.manual_seed(0)
    model = pir_clip.create_model("PIR-tiny", output_dict=True, unlock_prior=unlock_prior)
    g = torch.Generator().manual_seed(1)
    for name, param in model.named_parameters():  # non-zero heads so VIR and LCA get gradients at step 1
        if ".head." in name:
            with torch.no_grad():
                param.copy_(torch.randn(param.shape, generator=g) * 0.05)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(module, torch.nn.MultiheadAttention):
            module.dropout = 0.0
    return model.train()


def step(variant, out_dir, distributed, rank, world):
    model = build_model(unlock_prior=variant != "plain")
    if variant == "sync_bn":
        model = convert_sync_batchnorm(model)
    # SGD, not AdamW: Adam's first step is lr * g / (|g| + eps), which turns float noise on gradients that are
    # mathematically zero (e.g. attention key biases) into +-lr; SGD keeps parameters comparable to 1e-6.
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9,
                                weight_decay=0.01)
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(model)
    images, texts, ids = global_batch()
    per_rank = GLOBAL_BATCH // world
    part = slice(rank * per_rank, (rank + 1) * per_rank)
    loss_fn = PIRLoss(gather_with_grad=True, rank=rank, world_size=world, aff_weight=1.0, use_affiliation=True)
    optimizer.zero_grad()
    losses, _ = forward_backward(model, loss_fn, [(images[part], texts[part], ids[part])],
                                 autocast=contextlib.nullcontext, scaler=None)
    grads = {n: p.grad.clone() for n, p in getattr(model, "module", model).named_parameters() if p.grad is not None}
    optimizer_step(model, optimizer, None, grad_clip_norm=None)
    if rank == 0:
        state = getattr(model, "module", model).state_dict()
        torch.save({"losses": {k: v.detach() for k, v in losses.items()}, "grads": grads, "state_dict": state},
                   os.path.join(out_dir, f"{variant}-{'ddp' if distributed else 'single'}.pt"))


def main(out_dir, variants):
    distributed = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    rank, world = 0, 1
    if distributed:
        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    for variant in variants:
        step(variant, out_dir, distributed, rank, world)
    if distributed:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:] or ["plain"])
