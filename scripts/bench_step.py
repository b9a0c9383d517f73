"""Training-step cost of PIR against open_clip's plain CLIP, measured in one interleaved run on this machine.

One step = forward + contrastive loss + backward + AdamW step, batch 32, on the CPU (or --device).
Models: open_clip ViT-B-32, PIR (ViT-B/32 towers + RN50 prior) with the prior frozen, and with it
trainable; the release-compatible model (PIR-release: the authors' image path, RN50 prior trainable, as
their release trains it); plus the frozen prior's forward and the VIR + LCA blocks (forward + backward)
timed alone. All of them are interleaved, step by step, so background load hits them alike; the median of
--steps timed steps each is reported, with forward FLOPs counted by torch's FlopCounterMode.
The last line is ``pir_frozen_over_clip_step_ratio: X``.

    python scripts/bench_step.py [--batch-size 32] [--steps 5] [--model PIR --release-model PIR-release
                                 --baseline ViT-B-32] [--skip release pae ...]
"""
import argparse
import statistics
import time

import open_clip
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import pir_clip
from pir_clip.models.lca import used_length

CAPTIONS = [
    "many planes are parked next to a long runway at the airport",
    "three white storage tanks stand in the lower left of the industrial area",
    "a river with green trees on both sides crosses the farmland",
    "dozens of cars are parked in rows in the parking lot near the road",
]


def batch(model_name: str, batch_size: int, image_size: int, device):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, image_size, image_size, generator=g).to(device)
    texts = open_clip.get_tokenizer(model_name)([CAPTIONS[i % len(CAPTIONS)] for i in range(batch_size)]).to(device)
    return images, texts


def contrastive_loss(out):
    logits = out["logit_scale"] * out["image_features"] @ out["text_features"].T
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class Stepper:
    def __init__(self, label, model, inputs):
        self.label, self.model, self.inputs = label, model.train(), inputs
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        self.times = []

    def step(self, record=True):
        start = time.perf_counter()
        loss = contrastive_loss(self.model(*self.inputs))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.inputs[0].is_cuda:
            torch.cuda.synchronize()
        if record:
            self.times.append(time.perf_counter() - start)

    def forward_flops(self) -> int:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            self.model(*self.inputs)
        return counter.get_total_flops()

    @property
    def median(self) -> float:
        return statistics.median(self.times)


class PriorOnly(Stepper):
    """Times the frozen prior's forward pass alone, to split PIR's extra cost into prior and PAE blocks."""

    def __init__(self, label, prior, inputs):
        self.label, self.model, self.inputs, self.times = label, prior, inputs[:1], []

    def step(self, record=True):
        start = time.perf_counter()
        with torch.no_grad():
            self.model(*self.inputs)
        if record:
            self.times.append(time.perf_counter() - start)


class PAEOnly(Stepper):
    """Times VIR + LCA alone (forward + backward) on inputs shaped like the step's: the PAE blocks' own cost,
    without the glue around them (token projections, the prior) that the subtraction estimate includes."""

    def __init__(self, label, model, inputs):
        self.label, self.model, self.times = label, model, []
        images, texts = inputs
        g = torch.Generator().manual_seed(0)
        dim = model.vir.head.in_features
        n_tokens = (model.visual.grid_size[0] * model.visual.grid_size[1])
        self.tokens = torch.randn(len(images), n_tokens, dim, generator=g, device=images.device, requires_grad=True)
        self.prior = torch.randn(len(images), model.prior.output_dim, generator=g, device=images.device)
        self.eot = model.eot_index(texts)
        length = used_length(self.eot, texts.shape[1])  # as PIR.encode_text: the used positions on the CPU
        self.text_tokens = torch.randn(len(texts), length, dim, generator=g, device=images.device, requires_grad=True)

    def step(self, record=True):
        start = time.perf_counter()
        (self.model.vir(self.tokens, self.prior).sum() + self.model.lca(self.text_tokens, self.eot).sum()).backward()
        if record:
            self.times.append(time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="PIR")
    parser.add_argument("--baseline", default="ViT-B-32")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--release-model", default="PIR-release")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip", nargs="*", default=[], choices=["trainable", "release", "prior", "pae"],
                        help="leave out some rows (each full model costs ~2 GB of CPU memory with AdamW)")
    args = parser.parse_args()
    torch.manual_seed(0)

    image_size = pir_clip.get_model_config(args.model)["vision_cfg"]["image_size"]
    inputs = batch(args.model, args.batch_size, image_size, args.device)
    base = Stepper(f"{args.baseline} (open_clip)", pir_clip.create_model(args.baseline, output_dict=True,
                                                                         device=args.device), inputs)
    frozen = Stepper(f"{args.model}, prior frozen", pir_clip.create_model(args.model, output_dict=True,
                                                                          device=args.device), inputs)
    rows = {"trainable": lambda: Stepper(f"{args.model}, prior trainable", pir_clip.create_model(
                args.model, output_dict=True, unlock_prior=True, device=args.device), inputs),
            "release": lambda: Stepper(f"{args.release_model}, prior trainable", pir_clip.create_model(
                args.release_model, output_dict=True, unlock_prior=True, device=args.device), inputs),
            "prior": lambda: PriorOnly("frozen prior forward alone", frozen.model.prior, inputs),
            "pae": lambda: PAEOnly("VIR + LCA alone (fwd + bwd)", frozen.model, inputs)}
    extra = {name: make() for name, make in rows.items() if name not in args.skip}
    steppers = [base, frozen, *extra.values()]
    flops = [0 if isinstance(s, PAEOnly) else s.forward_flops() for s in steppers]
    for _ in range(args.warmup):
        for s in steppers:
            s.step(record=False)
    for i in range(args.steps):
        for s in steppers:
            s.step()
        print(f"  round {i + 1}/{args.steps}: " + ", ".join(f"{s.times[-1]:.2f}s" for s in steppers), flush=True)

    print(f"\nbatch {args.batch_size}, {args.steps} timed steps per model, device {args.device}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'model':48s} {'median step (s)':>16s} {'ratio':>7s} {'fwd GFLOPs':>11s} {'flop ratio':>10s}")
    for s, f in zip(steppers, flops):
        print(f"{s.label:48s} {s.median:16.3f} {s.median / base.median:7.3f} {f / 1e9:11.1f} {f / flops[0]:10.3f}")
    ratio = {name: s.median / base.median for name, s in extra.items()}
    if "prior" in ratio:
        print(f"prior_share_of_clip_step: {ratio['prior']:.3f}")
        print(f"pir_minus_clip_minus_prior_share_of_clip_step: {frozen.median / base.median - 1 - ratio['prior']:.3f}")
    if "pae" in ratio:
        print(f"pae_blocks_share_of_clip_step: {ratio['pae']:.3f}")
    if "trainable" in ratio:
        print(f"pir_trainable_over_clip_step_ratio: {ratio['trainable']:.3f}")
    if "release" in ratio:
        print(f"release_trainable_over_clip_step_ratio: {ratio['release']:.3f}")
    print(f"pir_forward_flops_ratio: {flops[1] / flops[0]:.3f}")
    print(f"pir_frozen_over_clip_step_ratio: {frozen.median / base.median:.3f}")


if __name__ == "__main__":
    main()
