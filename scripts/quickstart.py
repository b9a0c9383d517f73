"""The main job on the embedded default: synthetic RS data -> train tiny PIR -> retrieval evaluation.

    bash scripts/quickstart.sh              # tiny PIR (VIR + LCA) with the affiliation loss
    bash scripts/quickstart.sh --baseline   # the plain open_clip CLIP with the same towers and budget

Steps, each printed as the command a user would type:
1. generate the synthetic benchmark (scripts/make_synthetic.py) unless it is already there;
2. pre-train the prior as a scene classifier (scripts/train_prior.py), PIR only;
3. train with ``python -m training.main`` on the RS5M-style shards, as the authors' command does,
   validating on the val split every epoch;
4. evaluate the best checkpoint on the test split with ``retrieval.py``: metric table, results JSON,
   embeddings and the retrieval figure;
5. classify the synthetic scene folders (``classification/``, scenes unseen in training) zero-shot with
   ``pir-clip zeroshot``, and print top-1 beside chance.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Variant:
    """One trained model of the quickstart or the ablation."""
    name: str
    model: str
    aff_loss: bool = False
    prior: bool = False
    extra: List[str] = field(default_factory=list)


VARIANTS: Dict[str, Variant] = {v.name: v for v in [
    Variant("clip", "CLIP-tiny"),
    Variant("clip+vir", "PIR-tiny", prior=True, extra=["--no-lca"]),
    Variant("clip+lca", "PIR-tiny", extra=["--no-vir"]),
    Variant("clip+al", "CLIP-tiny", aff_loss=True),
    Variant("pir", "PIR-tiny", aff_loss=True, prior=True),
    Variant("release", "PIR-release-tiny", aff_loss=True, prior=True),
]}


@dataclass
class Budget:
    epochs: int = 8
    samples_per_epoch: int = 4000
    batch_size: int = 64
    lr: float = 5e-4
    warmup: int = 50
    workers: int = 2


def run(cmd: List[str], quiet: bool = False) -> None:
    print("\n$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL if quiet else None)
    if proc.returncode != 0:
        sys.exit(f"command failed with exit code {proc.returncode}: {cmd[1] if len(cmd) > 1 else cmd[0]}")


def ensure_data(data_dir: str, seed: int = 0, images_per_class: Optional[int] = None) -> None:
    if os.path.isfile(os.path.join(data_dir, "summary.json")):
        if os.path.isdir(os.path.join(data_dir, "classification")):
            print(f"Using the synthetic data set in {data_dir}")
            return
        # Written before the generator made a classification set: regenerate (same seed, the same bytes).
        print(f"{data_dir} has no classification/ folder yet: regenerating it")
    size = ["--images-per-class", str(images_per_class)] if images_per_class else []
    run([sys.executable, "scripts/make_synthetic.py", "--out", data_dir, "--seed", str(seed),
         "--image-format", "mixed", "--overwrite", *size])


def ensure_prior(data_dir: str, model: str) -> str:
    path = os.path.join(data_dir, f"prior_{model}.pt")
    if not os.path.isfile(path):
        run([sys.executable, "scripts/train_prior.py", "--data", os.path.join(data_dir, "dataset_synthetic.json"),
             "--model", model, "--out", path])
    return path


def shard_spec(data_dir: str) -> str:
    with open(os.path.join(data_dir, "shards", "rs5m", "sizes.json")) as f:
        shards = sorted(name for name in json.load(f) if name.startswith("train-"))
    first, last = shards[0][len("train-"):-4], shards[-1][len("train-"):-4]
    return os.path.join(data_dir, "shards", "rs5m", f"train-{{{first}..{last}}}.tar")


def train(variant: Variant, data_dir: str, logs: str, run_name: str, seed: int, budget: Budget,
          prior_path: Optional[str]) -> str:
    """Trains one variant with training.main; returns its checkpoint directory."""
    cmd = [sys.executable, "-m", "training.main", "--model", variant.model,
           "--train-data", shard_spec(data_dir), "--dataset-type", "webdataset", "--dataset-resampled",
           "--train-num-samples", str(budget.samples_per_epoch), "--batch-size", str(budget.batch_size),
           "--epochs", str(budget.epochs), "--lr", str(budget.lr), "--wd", "0.1", "--warmup", str(budget.warmup),
           "--workers", str(budget.workers), "--precision", "fp32", "--seed", str(seed),
           "--val-data", os.path.join(data_dir, "dataset_synthetic.json"), "--val-split", "val",
           "--report-to", "tensorboard", "--logs", logs, "--name", run_name, "--log-every-n-steps", "20"]
    if variant.aff_loss:
        cmd.append("--is_aff_loss")
    if variant.prior and prior_path:
        cmd += ["--prior-pretrained", prior_path]
    cmd += variant.extra
    if os.path.exists(os.path.join(logs, run_name, "out.log")):
        cmd += ["--resume", "latest"]  # finish (or reuse) an earlier run of the same name
    run(cmd)
    return os.path.join(logs, run_name, "checkpoints")


def evaluate(variant: Variant, data_dir: str, checkpoint: str, out_dir: str, split: str = "test",
             figure: bool = True) -> Dict:
    out_json = os.path.join(out_dir, f"{split}_results.json")
    cmd = [sys.executable, "retrieval.py", "--model-name", variant.model, "--remoteclip-path", checkpoint,
           "--retrieval-json-dir", os.path.join(data_dir, "dataset_synthetic.json"),
           "--retrieval-images-dir", os.path.join(data_dir, "images"), "--split", split, "--output", out_json,
           "--save-embeddings", os.path.join(out_dir, f"{split}_embeddings.pt"), "--workers", "2"]
    if figure:
        cmd += ["--save-visualization", os.path.join(out_dir, "retrieval.png")]
    run(cmd)
    with open(out_json) as f:
        return json.load(f)


def zeroshot(variant: Variant, data_dir: str, checkpoint: str, out_dir: str) -> Dict:
    """``pir-clip zeroshot`` of a checkpoint on the synthetic scene folders; returns its results JSON."""
    out_json = os.path.join(out_dir, "zeroshot_results.json")
    run([sys.executable, "-m", "pir_clip", "zeroshot", "--model-name", variant.model, "--checkpoint", checkpoint,
         "--data", os.path.join(data_dir, "classification"), "--output", out_json,
         "--save-confusion", os.path.join(out_dir, "zeroshot_confusion.png"), "--workers", "2"])
    with open(out_json) as f:
        return json.load(f)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", action="store_true", help="Train the plain CLIP baseline instead of PIR.")
    p.add_argument("--data", default="data/synthetic", help="Synthetic data set folder (generated if missing).")
    p.add_argument("--logs", default="runs", help="Where training runs are written.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=Budget.epochs)
    p.add_argument("--samples-per-epoch", type=int, default=Budget.samples_per_epoch)
    args = p.parse_args(argv)
    start = time.time()
    variant = VARIANTS["clip" if args.baseline else "pir"]
    budget = Budget(epochs=args.epochs, samples_per_epoch=args.samples_per_epoch)
    ensure_data(args.data)
    prior = ensure_prior(args.data, variant.model) if variant.prior else None
    run_name = f"quickstart-{variant.name}-seed{args.seed}"
    checkpoints = train(variant, args.data, args.logs, run_name, args.seed, budget, prior)
    best, run_dir = os.path.join(checkpoints, "epoch_best.pt"), os.path.join(args.logs, run_name)
    result = evaluate(variant, args.data, best, run_dir)
    classified = zeroshot(variant, args.data, best, run_dir)
    mean_recall = result["metrics"]["retrieval-mean-recall"]
    n_classes = classified["counts"]["classes"]
    print(f"\nQuickstart ({variant.name}, {variant.model}) finished in {time.time() - start:.0f} s: "
          f"test mR {mean_recall:.2f} on {result['num_images']} images / {result['num_captions']} captions; "
          f"zero-shot top-1 {100 * classified['metrics']['acc1']:.2f}% on {classified['counts']['evaluated']} unseen "
          f"scenes of {n_classes} classes (chance {100 / n_classes:.2f}%).")
    print(f"Run folder: {run_dir} (out.log, tensorboard/, checkpoints/, test_results.json, retrieval.png, "
          f"zeroshot_results.json, zeroshot_confusion.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
