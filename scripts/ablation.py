"""Ablation on the synthetic benchmark: the same budget and seeds for every variant, test mR mean and spread.

    python scripts/ablation.py [--seeds 0 1 2] [--variants clip clip+vir clip+lca clip+al pir release]

Variants (scripts/quickstart.py VARIANTS): plain CLIP, + VIR (Spatial-PAE, pre-trained prior), + LCA
(Temporal-PAE), + affiliation loss, full PIR (VIR + LCA + AL), and the release-compatible model (the
authors' image path, + AL). Each is trained with training.main on the RS5M-style shards and evaluated on
the test split with retrieval.py (best checkpoint by val mR). Writes ``<logs>/ablation.json`` and prints a
Markdown table for the README.
"""
import argparse
import json
import os
import statistics
import sys
import time

from quickstart import VARIANTS, Budget, ensure_data, ensure_prior, evaluate, train

NAMES = ("retrieval-image2text-R@1", "retrieval-image2text-R@5", "retrieval-image2text-R@10",
         "retrieval-text2image-R@1", "retrieval-text2image-R@5", "retrieval-text2image-R@10",
         "retrieval-mean-recall")


def markdown(results):
    header = "| variant | model | i2t R@1 | i2t R@5 | i2t R@10 | t2i R@1 | t2i R@5 | t2i R@10 | mR (mean ± sd) |"
    lines = [header, "|" + "---|" * 9]
    for name, runs in results.items():
        cells = []
        for metric in NAMES:
            values = [r[metric] for r in runs]
            mean = statistics.mean(values)
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{mean:.2f} ± {sd:.2f}" if metric == NAMES[-1] else f"{mean:.1f}")
        lines.append(f"| {name} | {VARIANTS[name].model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--data", default="data/synthetic")
    p.add_argument("--logs", default="runs/ablation")
    p.add_argument("--epochs", type=int, default=Budget.epochs)
    p.add_argument("--samples-per-epoch", type=int, default=Budget.samples_per_epoch)
    args = p.parse_args(argv)
    start = time.time()
    budget = Budget(epochs=args.epochs, samples_per_epoch=args.samples_per_epoch)
    ensure_data(args.data)
    results = {}
    for name in args.variants:
        variant = VARIANTS[name]
        prior = ensure_prior(args.data, variant.model) if variant.prior else None
        for seed in args.seeds:
            run_name = f"{name}-seed{seed}"
            checkpoints = train(variant, args.data, args.logs, run_name, seed, budget, prior)
            result = evaluate(variant, args.data, os.path.join(checkpoints, "epoch_best.pt"),
                              os.path.join(args.logs, run_name), figure=False)
            results.setdefault(name, []).append(result["metrics"])
            print(f"[ablation] {run_name}: test mR {result['metrics']['retrieval-mean-recall']:.2f}", flush=True)
    summary = {"budget": vars(budget), "seeds": args.seeds, "results": results,
               "minutes": round((time.time() - start) / 60, 1)}
    with open(os.path.join(args.logs, "ablation.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print("\n" + markdown(results))
    print(f"\n{len(args.variants)} variants x {len(args.seeds)} seeds in {summary['minutes']} min; "
          f"details in {os.path.join(args.logs, 'ablation.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
