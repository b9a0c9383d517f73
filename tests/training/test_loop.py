"""The loop's building blocks: gradient accumulation sees the whole accumulated batch."""
import contextlib

import torch

from ddp_step_check import build_model, global_batch
from pir_clip.losses import PIRLoss
from training.train import forward_backward


def grads_after(batches):
    model = build_model()
    model.zero_grad()
    losses, _ = forward_backward(model, PIRLoss(use_affiliation=True), batches, contextlib.nullcontext, None)
    return losses, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_accumulating_two_halves_equals_the_whole_batch():
    images, texts, ids = global_batch()
    whole_losses, whole = grads_after([(images, texts, ids)])
    halves_losses, halves = grads_after([(images[:4], texts[:4], ids[:4]), (images[4:], texts[4:], ids[4:])])
    for name in ("contrastive_loss", "affiliation_loss"):
        assert torch.allclose(halves_losses[name], whole_losses[name], atol=1e-5), name
    assert set(halves) == set(whole)
    for name, grad in whole.items():
        assert torch.allclose(halves[name], grad, atol=1e-5, rtol=1e-4), name
