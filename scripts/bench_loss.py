"""Benchmark the affiliation loss (forward + backward, CPU) against the naive per-sample transcription.

    python scripts/bench_loss.py [--batch 512] [--width 512] [--with-step | --no-with-step] [--memory-n 8192]

Prints a table of median times; the last line is ``aff_loss_speedup_vs_naive: X``. With ``--with-step``
(the default) it also times one PIR training step (forward,
PIRLoss, backward, AdamW step) and reports the loss's share of it.

Memory: the peak memory of the affiliation loss and of open_clip's ``ClipLoss`` (forward + backward) at the
same N (``--memory-n``, default 8,192, d 512, every sample its own class: C = N, the worst case), each
measured in a fresh process so neither sees the other's allocator state, and their ratio
(``aff_loss_over_clip_loss_peak_memory: X``). On the CPU the peak is the process's resident-set high-water
mark (Linux ``VmHWM``, reset after the inputs are built); on CUDA ``torch.cuda.max_memory_allocated``.
"""
import argparse
import importlib.util
import os
import statistics
import subprocess
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


def _resident_bytes(field: str) -> int:
    """VmRSS / VmHWM of this process from /proc (Linux), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


def measure_peak(which: str, n: int, width: int, device: str) -> int:
    """Bytes the loss ``which`` ('affiliation' or 'clip') adds at its peak, forward + backward, N = n rows of
    width ``width``, every sample its own class. Run in a process of its own (see ``peak_in_subprocess``)."""
    from open_clip.loss import ClipLoss
    gen = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(n, width, generator=gen), dim=-1).to(device).requires_grad_(True)
    text = F.normalize(torch.randn(n, width, generator=gen), dim=-1).to(device).requires_grad_(True)
    scale = torch.tensor(CLIP_SCALE, device=device, requires_grad=True)
    ids = torch.arange(n, device=device)
    clip_loss = ClipLoss()

    def run():
        loss = affiliation_loss(image, text, ids, scale) if which == "affiliation" else clip_loss(image, text, scale)
        loss.backward()

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    run()  # once untimed, so lazily initialised kernels and thread pools are not counted
    image.grad = text.grad = scale.grad = None
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current VmRSS
        f.write("5")
    before = _resident_bytes("VmRSS")
    run()
    return _resident_bytes("VmHWM") - before


def peak_in_subprocess(which: str, n: int, width: int, device: str) -> int:
    cmd = [sys.executable, __file__, "--peak-of", which, "--memory-n", str(n), "--width", str(width),
           "--device", device]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if out.returncode != 0:
        sys.exit(f"peak-memory measurement of {which} failed:\n{out.stderr[-2000:]}")
    return int(out.stdout.strip().splitlines()[-1])


def report_memory(n: int, width: int, device: str, reps: int) -> None:
    """Peak memory of AL and ClipLoss at the same N, each in fresh processes, interleaved; medians."""
    print(f"\npeak memory, forward + backward, N {n:,}, d {width}, {n:,} classes (all distinct), {device}, "
          f"each in a fresh process ({reps} each, interleaved)...", flush=True)
    peaks = {"affiliation": [], "clip": []}
    for _ in range(reps):
        for which in peaks:
            peaks[which].append(peak_in_subprocess(which, n, width, device))
    al, clip = statistics.median(peaks["affiliation"]), statistics.median(peaks["clip"])
    one_matrix = n * n * 4
    print(f"{'affiliation loss':<40} {al / 2**20:>10.0f} MiB  ({al / one_matrix:.2f} x one N x N fp32 matrix)")
    print(f"{'open_clip ClipLoss':<40} {clip / 2**20:>10.0f} MiB  ({clip / one_matrix:.2f} x one N x N fp32 matrix)")
    print(f"aff_loss_over_clip_loss_peak_memory: {al / clip:.2f}")


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
    parser.add_argument("--memory-n", type=int, default=8192,
                        help="N of the peak-memory comparison with ClipLoss (0 skips it)")
    parser.add_argument("--memory-reps", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="device of the peak-memory comparison")
    parser.add_argument("--peak-of", choices=("affiliation", "clip"), help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    if args.peak_of:
        print(measure_peak(args.peak_of, args.memory_n, args.width, args.device))
        return

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
    if args.memory_n:
        report_memory(args.memory_n, args.width, args.device, args.memory_reps)

    print(f"aff_loss_speedup_vs_naive: {naive_s / vectorised_s:.1f}")


if __name__ == "__main__":
    main()
