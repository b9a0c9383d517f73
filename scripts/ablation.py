"""Ablation on the synthetic benchmark: every variant against the CLIP baseline, paired by seed, with intervals.

    python scripts/ablation.py --seeds 0 1 2 3 4        # the README table: 6 variants x 5 seeds (CPU: ~90 min)
    python scripts/ablation.py --smoke --data D --logs L  # the same pipeline in a minute or two: 2 variants x 2
                                                          # seeds, a small data set, a tiny budget (a test)

Variants (scripts/quickstart.py VARIANTS): plain CLIP (the baseline), + VIR (Spatial-PAE, pre-trained
prior), + LCA (Temporal-PAE), + affiliation loss, full PIR (VIR + LCA + AL), and the release-compatible model
(the authors' image path, + AL). Each is trained with training.main on the RS5M-style shards with the same
budget and seeds, and evaluated on the test split with retrieval.py (best checkpoint by val mR).

Seed s of a variant and seed s of the baseline share their data order and initial-weight noise, so their
difference in test mR is paired: per variant the table gives the difference per seed, its mean with a 95%
interval from Student's t over the seeds (pir_clip.evaluation.seed_comparison), and "within noise" where
the interval covers zero. Writes ``<logs>/ablation.json`` and prints the Markdown table for the README.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time
from typing import Dict, List, Mapping

from quickstart import VARIANTS, Budget, ensure_data, ensure_prior, evaluate, train

from pir_clip.evaluation.seed_comparison import Comparison, compare_to_baseline

BASELINE = "clip"
MEAN_RECALL = "retrieval-mean-recall"
NAMES = ("retrieval-image2text-R@1", "retrieval-image2text-R@5", "retrieval-image2text-R@10",
         "retrieval-text2image-R@1", "retrieval-text2image-R@5", "retrieval-text2image-R@10", MEAN_RECALL)
SMOKE = dict(variants=["clip", "clip+al"], seeds=[0, 1], images_per_class=12,
             budget=Budget(epochs=1, samples_per_epoch=64, batch_size=16, warmup=1, workers=0))

Results = Mapping[str, Mapping[int, Mapping[str, float]]]  # variant -> seed -> metric name -> value


def signed(x: float) -> str:
    return f"{x:+.2f}"


def difference_cell(comparison: Comparison) -> str:
    """'+2.10 [+0.55, +3.65]', or '... within noise' when the interval covers zero."""
    interval = comparison.interval
    if math.isinf(interval.low):
        return f"{signed(interval.mean)} (one seed: no interval)"
    cell = f"{signed(interval.mean)} [{signed(interval.low)}, {signed(interval.high)}]"
    return cell + (", within noise" if comparison.within_noise else "")


def markdown(results: Results, seeds: List[int], models: Mapping[str, str]) -> str:
    """The README table: mean metrics per variant, and test mR minus the baseline's, paired by seed."""
    mean_recall = {name: {seed: runs[seed][MEAN_RECALL] for seed in runs} for name, runs in results.items()}
    comparisons = compare_to_baseline(mean_recall, BASELINE) if BASELINE in results else {}
    seeds_label = ", ".join(str(s) for s in seeds)
    lines = ["| variant | model | i2t R@1 | i2t R@5 | i2t R@10 | t2i R@1 | t2i R@5 | t2i R@10 | mR (mean ± sd) "
             f"| Δ mR vs CLIP, seeds {seeds_label} | Δ mR mean [95% CI] |", "|" + "---|" * 11]
    for name, runs in results.items():
        cells = []
        for metric in NAMES:
            values = [runs[seed][metric] for seed in seeds]
            mean = statistics.fmean(values)
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{mean:.2f} ± {sd:.2f}" if metric == MEAN_RECALL else f"{mean:.1f}")
        if name in comparisons:
            per_seed = " / ".join(signed(d) for d in comparisons[name].differences.values())
            cells += [per_seed, difference_cell(comparisons[name])]
        else:
            cells += ["(baseline)", "(baseline)"]
        lines.append(f"| {name} | {models.get(name, '')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_json(results: Results, seeds: List[int], budget: Budget, minutes: float) -> Dict:
    mean_recall = {name: {seed: runs[seed][MEAN_RECALL] for seed in runs} for name, runs in results.items()}
    comparisons = compare_to_baseline(mean_recall, BASELINE) if BASELINE in results else {}
    return {
        "budget": vars(budget), "seeds": seeds, "baseline": BASELINE, "minutes": minutes,
        "results": {name: {str(seed): metrics for seed, metrics in runs.items()} for name, runs in results.items()},
        "mean_recall_vs_baseline": {name: {
            "per_seed": {str(seed): d for seed, d in c.differences.items()}, "mean": c.interval.mean,
            "ci95": [c.interval.low, c.interval.high], "within_noise": c.within_noise}
            for name, c in comparisons.items()},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--data", default="data/synthetic")
    p.add_argument("--logs", default="runs/ablation")
    p.add_argument("--epochs", type=int, default=Budget.epochs)
    p.add_argument("--samples-per-epoch", type=int, default=Budget.samples_per_epoch)
    p.add_argument("--smoke", action="store_true",
                   help=f"a quick check of the pipeline: variants {SMOKE['variants']}, seeds {SMOKE['seeds']}, "
                        f"{SMOKE['images_per_class']} images per class, budget {vars(SMOKE['budget'])}")
    args = p.parse_args(argv)
    start = time.time()
    if args.smoke:
        variants, seeds, budget = SMOKE["variants"], SMOKE["seeds"], SMOKE["budget"]
        ensure_data(args.data, images_per_class=SMOKE["images_per_class"])
    else:
        variants, seeds = args.variants, args.seeds
        budget = Budget(epochs=args.epochs, samples_per_epoch=args.samples_per_epoch)
        ensure_data(args.data)
    if BASELINE not in variants:
        variants = [BASELINE] + variants  # every difference is paired with the baseline's same seed
    results: Dict[str, Dict[int, Dict[str, float]]] = {}
    for name in variants:
        variant = VARIANTS[name]
        prior = ensure_prior(args.data, variant.model) if variant.prior else None
        for seed in seeds:
            run_name = f"{name}-seed{seed}"
            checkpoints = train(variant, args.data, args.logs, run_name, seed, budget, prior)
            result = evaluate(variant, args.data, os.path.join(checkpoints, "epoch_best.pt"),
                              os.path.join(args.logs, run_name), figure=False)
            results.setdefault(name, {})[seed] = result["metrics"]
            print(f"[ablation] {run_name}: test mR {result['metrics'][MEAN_RECALL]:.2f}", flush=True)
    minutes = round((time.time() - start) / 60, 1)
    with open(os.path.join(args.logs, "ablation.json"), "w") as f:
        json.dump(summary_json(results, seeds, budget, minutes), f, indent=2)
    print("\n" + markdown(results, seeds, {name: VARIANTS[name].model for name in results}))
    print(f"\n{len(variants)} variants x {len(seeds)} seeds in {minutes} min; "
          f"details in {os.path.join(args.logs, 'ablation.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
