"""GPU check: training throughput and peak memory of PIR (ViT-B/32 + RN50 prior) against open_clip
ViT-B-32, batch 256, bf16 autocast, synthetic tensors, in one run.

    python scripts/bench_gpu.py [--batch-size 256] [--steps 20] [--warmup 5]

One step = forward, contrastive (+ affiliation for PIR) loss, backward, AdamW. Models run one after the
other so each peak-memory reading is its own; timings are medians over --steps after --warmup steps.
The last line is ``pir_over_clip_samples_per_second_ratio: X``.
"""
import argparse
import statistics
import time

import torch

import pir_clip
from pir_clip.losses import PIRLoss

from bench_step import batch


def measure(model_name: str, batch_size: int, steps: int, warmup: int, aff_loss: bool, **model_kwargs):
    device = torch.device("cuda")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = pir_clip.create_model(model_name, output_dict=True, device=device, **model_kwargs).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    loss_fn = PIRLoss(use_affiliation=aff_loss)
    image_size = model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size
    images, texts = batch(model_name, batch_size, image_size, device)
    class_ids = torch.arange(batch_size, device=device) % 33  # RSITMD has 33 scene classes
    times = []
    for i in range(warmup + steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(images, texts)
            losses = loss_fn(**out, class_ids=class_ids, output_dict=True)
            total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    step = statistics.median(times)
    peak = torch.cuda.max_memory_allocated() / 2 ** 30
    del model, optimizer
    return batch_size / step, step, peak


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    rows = [
        ("ViT-B-32 (open_clip)", measure("ViT-B-32", args.batch_size, args.steps, args.warmup, aff_loss=False)),
        ("PIR, prior frozen, + AL", measure("PIR", args.batch_size, args.steps, args.warmup, aff_loss=True)),
        ("PIR, prior trainable, + AL", measure("PIR", args.batch_size, args.steps, args.warmup, aff_loss=True,
                                               unlock_prior=True)),
    ]
    print(f"{torch.cuda.get_device_name()}, batch {args.batch_size}, bf16 autocast, torch {torch.__version__}")
    print(f"{'model':30s} {'samples/s':>10s} {'step (ms)':>10s} {'peak GiB':>9s}")
    for name, (sps, step, peak) in rows:
        print(f"{name:30s} {sps:10.1f} {1000 * step:10.1f} {peak:9.2f}")
    print(f"pir_frozen_peak_memory_ratio: {rows[1][1][2] / rows[0][1][2]:.3f}")
    print(f"pir_over_clip_samples_per_second_ratio: {rows[1][1][0] / rows[0][1][0]:.3f}")


if __name__ == "__main__":
    main()
