"""Benchmark the affiliation loss (forward + backward, CPU) against the naive per-sample transcription.

    python scripts/bench_loss.py [--batch 512] [--width 512] [--with-step | --no-with-step]

Prints a table of median times; the last line is ``aff_loss_speedup_vs_naive: X``. With ``--with-step``
(the default) it also times one PIR training step (forward,
PIRLoss, backward, AdamW step) and reports the loss's share of it.
"""
import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, List

import torch
import torch.nn.functional as F

from pir_clip.losses import PIRLoss, affiliation_loss

REFERENCE_PATH = Path(__file__).resolve().parents[1] / "tests" / "_reference.py"
CLIP_SCALE = 1 / 0.07


def load_naive_affiliation_loss() -> Callable:
    if not REFERENCE_PATH.is_file():
        sys.exit(f"naive reference not found at {REFERENCE_PATH}; run from a source checkout of pir-clip")
    spec = importlib.util.spec_from_file_location("_reference", REFERENCE_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.naive_affiliation_loss


def rs_like_batch(batch: int, width: int, num_classes: int = 33, singleton_fraction: float = 0.2):
    """(B, d) image and text features, (B,) ids: RSITMD-like classes plus some RSICD-like singletons."""
    gen = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(batch, width, generator=gen), dim=-1)
    text = F.normalize(torch.randn(batch, width, generator=gen), dim=-1)
    ids = torch.randint(0, num_classes, (batch,), generator=gen)
    singletons = torch.rand(batch, generator=gen) < singleton_fraction
    ids[singletons] = torch.arange(int(singletons.sum())) + num_classes
    return image, text, ids


def median_seconds(fn: Callable[[], None], reps: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` over ``reps`` calls after ``warmup`` untimed ones (allocator, caches)."""
    for _ in range(warmup):
        fn()
    times: List[float] = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def forward_backward(loss_fn: Callable, image, text, ids, scale) -> Callable[[], None]:
    def run():
        inputs = [t.detach().clone().requires_grad_(True) for t in (image, text, scale)]
        loss_fn(inputs[0], inputs[1], ids, inputs[2]).backward()
    return run


def time_training_step(model_name: str, batch: int, reps: int, loss_reps: int) -> None:
    """Print the median PIR training-step time at ``batch`` and the loss's share of it."""
    import open_clip
    from pir_clip.models.factory import create_model

    model = create_model(model_name, device="cpu")
    model.output_dict = True
    model.train()
    tokenizer = open_clip.get_tokenizer(model_name)
    # open_clip towers keep image_size as an int or an (H, W) pair.
    size = getattr(getattr(model, "visual", None), "image_size", 224)
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    images = torch.randn(batch, 3, height, width)
    texts = tokenizer(["many planes are parked next to a long runway"] * batch)
    ids = rs_like_batch(batch, 1)[2]
    loss = PIRLoss()
    feature_width = []
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)

    def step():
        optimizer.zero_grad(set_to_none=True)
        out = model(images, texts)
        feature_width[:] = [out["image_features"].shape[-1]]
        terms = loss(out["image_features"], out["text_features"], out["logit_scale"], class_ids=ids,
                     output_dict=True)
        sum(terms.values()).backward()
        optimizer.step()

    print(f"\ntiming one {model_name} training step at batch {batch} ({reps} reps)...", flush=True)
    step_s = median_seconds(step, reps)
    features = F.normalize(torch.randn(batch, feature_width[0]), dim=-1)
    scale = torch.tensor(CLIP_SCALE)
    aff_s = median_seconds(forward_backward(affiliation_loss, features, features.flip(0), ids, scale), loss_reps)
    full_s = median_seconds(lambda: _pir_loss_forward_backward(loss, features, ids, scale), loss_reps)
    print(f"{'training step (fwd+PIRLoss+bwd+AdamW)':<40} {step_s * 1e3:>12.1f} ms")
    print(f"{'affiliation loss fwd+bwd':<40} {aff_s * 1e3:>12.3f} ms  {100 * aff_s / step_s:8.3g} % of the step")
    print(f"{'PIRLoss (both terms) fwd+bwd':<40} {full_s * 1e3:>12.3f} ms  {100 * full_s / step_s:8.3g} % of the step")


def _pir_loss_forward_backward(loss: PIRLoss, features, ids, scale) -> None:
    image, text, s = [t.detach().clone().requires_grad_(True) for t in (features, features.flip(0), scale)]
    sum(loss(image, text, s, class_ids=ids, output_dict=True).values()).backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--reps", type=int, default=30, help="repetitions of the vectorised loss")
    parser.add_argument("--naive-reps", type=int, default=3, help="repetitions of the naive loop (~1 s each)")
    parser.add_argument("--with-step", action=argparse.BooleanOptionalAction, default=True,
                        help="also time a PIR training step and report the loss's share of it (default on)")
    parser.add_argument("--step-model", default="PIR")
    parser.add_argument("--step-batch", type=int, default=8,
                        help="batch of the training step (CPU memory grows with it); the loss is timed at "
                             "the same batch for the percentage")
    parser.add_argument("--step-reps", type=int, default=2)
    args = parser.parse_args()

    image, text, ids = rs_like_batch(args.batch, args.width)
    scale = torch.tensor(CLIP_SCALE)
    naive = load_naive_affiliation_loss()
    print(f"affiliation loss fwd+bwd, CPU, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"width {args.width}, {ids.unique().numel()} distinct classes", flush=True)

    vectorised_s = median_seconds(forward_backward(affiliation_loss, image, text, ids, scale), args.reps)
    contrastive = PIRLoss(use_affiliation=False)
    contrastive_s = median_seconds(
        forward_backward(lambda i, t, y, s: contrastive(i, t, s), image, text, ids, scale), args.reps)
    print(f"timing the naive per-sample loop ({args.naive_reps} reps)...", flush=True)
    naive_ids = ids.tolist()
    naive_s = median_seconds(forward_backward(lambda i, t, y, s: naive(i, t, naive_ids, s),
                                              image, text, ids, scale), args.naive_reps, warmup=0)

    print(f"\n{'variant':<40} {'median ms':>12} {'reps':>6}")
    print(f"{'affiliation_loss (vectorised)':<40} {vectorised_s * 1e3:>12.3f} {args.reps:>6}")
    print(f"{'naive per-sample loop (tests/_reference)':<40} {naive_s * 1e3:>12.3f} {args.naive_reps:>6}")
    print(f"{'contrastive loss, for scale':<40} {contrastive_s * 1e3:>12.3f} {args.reps:>6}")

    if args.with_step:
        time_training_step(args.step_model, args.step_batch, args.step_reps, args.reps)

    print(f"aff_loss_speedup_vs_naive: {naive_s / vectorised_s:.1f}")


if __name__ == "__main__":
    main()
