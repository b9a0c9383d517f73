"""``pir-clip linear-probe``: few-shot linear probes on frozen image features, like RemoteCLIP's few-shot table.

    pir-clip linear-probe --model-name ViT-B-32 --checkpoint RemoteCLIP-ViT-B-32.pt --data data/AID \\
        --shots 1 2 4 8 16 --seeds 3

* **Features**: every image of the set is encoded once by the frozen model (L2-normalised embeddings) and
  reused for every shot count and seed; ``--features FILE`` keeps them across runs (recomputed when the
  model, checkpoint, band choice or file list changes).
* **Split**: RemoteCLIP's 80/20 rule (:mod:`pir_clip.data.scene_folders`). A k-shot training set draws k
  images per class from the train part without replacement, seeded (a class with fewer than k train
  images uses all of them, and the output says so); ``all`` uses the whole train part. The test part is
  always scored whole.
* **Classifier**: multinomial logistic regression ``x W + b`` from zero, minimising the mean cross-entropy
  plus ``l2 / 2 * |W|^2`` with full-batch L-BFGS in float64 (torch; convex, so the result does not depend on
  the optimiser's path).
* **Report**: test ``acc1`` (and ``acc5``, ``mean_per_class_recall``) per shot count: mean and sample
  standard deviation over seeds. ``all`` is one deterministic run.
"""
import json
import math
import os
import time
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from ..data.annotations import DataFormatError
from ..data.images import parse_bands
from ..data.scene_folders import SceneSet, load_scene_set, split_of_each
from .classification import METRIC_NAMES, classification_metrics
from .encode import EncodedImages, encode_images_skipping, load_model_for_evaluation
from .zeroshot import describe_classes, report_unreadable

DEFAULT_L2 = 1e-3
DEFAULT_MAX_ITER = 500
Shots = Union[int, str]  # a count, or "all"


class LinearProbe(NamedTuple):
    """weight: ``(D, C)``, bias: ``(C,)``, float64."""
    weight: torch.Tensor
    bias: torch.Tensor

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` -> ``(N, C)`` logits."""
        return features.to(torch.float64) @ self.weight + self.bias


def fit_linear_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, l2: float = DEFAULT_L2,
                     max_iter: int = DEFAULT_MAX_ITER) -> LinearProbe:
    """Logistic regression on ``features`` ``(n, D)`` and ``labels`` ``(n,)`` (module docstring)."""
    x = features.to(torch.float64)
    y = labels.long()
    weight = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return LinearProbe(weight.detach(), bias.detach())


def sample_shots(labels: torch.Tensor, shots: Shots, seed: int, num_classes: int) -> torch.Tensor:
    """Indices into ``labels`` ``(n,)``: ``shots`` per class drawn without replacement with ``seed`` (fewer when a
    class has fewer), or every index for ``"all"``; classes in label order, each class's draw in its own order."""
    if shots == "all":
        return torch.arange(len(labels))
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(num_classes):
        members = (labels == c).nonzero().flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:shots]])
    return torch.cat(chosen)


def _mean_std(values: Sequence[float]) -> Tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def probe_few_shot(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                   test_labels: torch.Tensor, num_classes: int, shots: Sequence[Shots], seeds: int,
                   l2: float = DEFAULT_L2, max_iter: int = DEFAULT_MAX_ITER, progress: bool = True) -> List[Dict]:
    """One entry per shot count: per-seed test metrics, their mean and sample standard deviation, and the
    number of train images each class actually had to draw from when fewer than asked."""
    from tqdm import tqdm
    runs = [(k, seed) for k in shots for seed in (range(1) if k == "all" else range(seeds))]
    per_run: Dict[Tuple[Shots, int], Dict[str, float]] = {}
    for k, seed in tqdm(runs, desc="fitting probes", unit="probe", disable=not progress):
        index = sample_shots(train_labels, k, seed, num_classes)
        probe = fit_linear_probe(train_features[index], train_labels[index], num_classes, l2, max_iter)
        per_run[k, seed] = classification_metrics(probe.scores(test_features), test_labels)
    available = torch.bincount(train_labels, minlength=num_classes)
    results = []
    for k in shots:
        seed_metrics = [m for (kk, _), m in per_run.items() if kk == k]
        entry: Dict = {"shots": k, "runs": len(seed_metrics)}
        for name in METRIC_NAMES:
            values = [m[name] for m in seed_metrics]
            entry[name] = values
            entry[f"{name}_mean"], entry[f"{name}_std"] = _mean_std(values)
        if k != "all" and int(available.min()) < k:
            entry["short_classes"] = {str(c): int(n) for c, n in enumerate(available.tolist()) if n < k}
        results.append(entry)
    return results


def parse_shots(values: Sequence[str]) -> List[Shots]:
    shots: List[Shots] = []
    for value in values:
        if str(value).lower() == "all":
            shots.append("all")
            continue
        try:
            count = int(value)
        except ValueError:
            raise ValueError(f"--shots {value!r}: give positive integers and/or 'all', e.g. --shots 1 2 4 8 16") from None
        if count < 1:
            raise ValueError(f"--shots {value}: the number of images per class must be at least 1")
        shots.append(count)
    return list(dict.fromkeys(shots))


# ---------------------------------------------------------------- cached features


def _checkpoint_identity(checkpoint: Optional[str]) -> Optional[List]:
    if checkpoint and os.path.isfile(checkpoint):
        stat = os.stat(checkpoint)
        return [os.path.abspath(checkpoint), stat.st_size, stat.st_mtime_ns]
    return [checkpoint] if checkpoint else None


def feature_cache_key(args, paths: Sequence[str]) -> Dict:
    """What the cached features depend on; a cache with another key is recomputed."""
    return {"model": args.model_name, "checkpoint": _checkpoint_identity(args.checkpoint),
            "prior_pretrained": _checkpoint_identity(args.prior_pretrained), "bands": args.bands,
            "precision": args.precision, "paths": [os.path.abspath(p) for p in paths]}


def load_cached_features(path: Optional[str], key: Dict) -> Optional[EncodedImages]:
    if not path or not os.path.isfile(path):
        return None
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged cache is recomputed, never trusted
        print(f"--features {path}: unreadable ({type(exc).__name__}); recomputing", flush=True)
        return None
    if not isinstance(cached, dict) or cached.get("key") != key:
        print(f"--features {path} was computed for another model, checkpoint or file list; recomputing", flush=True)
        return None
    print(f"Features: read {len(key['paths']):,} cached image features from {path}", flush=True)
    return EncodedImages(cached["features"], list(cached["errors"]))


def save_cached_features(path: str, key: Dict, encoded: EncodedImages) -> None:
    temporary = f"{path}.{os.getpid()}.tmp"  # a crash mid-write must not leave a cache that loads
    torch.save({"key": key, "features": encoded.features, "errors": list(encoded.errors)}, temporary)
    os.replace(temporary, path)


# ---------------------------------------------------------------- the command


def encode_scene_set(args, scene_set: SceneSet) -> EncodedImages:
    """The set's image features, from the cache when it matches, else computed with the frozen model."""
    key = feature_cache_key(args, scene_set.paths)
    encoded = load_cached_features(args.features, key)
    if encoded is not None:
        return encoded
    model, preprocess, device = load_model_for_evaluation(args)
    encoded = encode_images_skipping(model, scene_set.paths, preprocess, batch_size=args.batch_size,
                                     workers=args.workers, device=device, precision=args.precision,
                                     progress=not args.quiet, bands=parse_bands(args.bands))
    if args.features:
        save_cached_features(args.features, key, encoded)
    return encoded


def format_table(results: Sequence[Dict], num_classes: int) -> str:
    lines = [f"{'shots':>6s} {'runs':>5s} {'top-1 mean ± sd':>17s} {'min':>7s} {'max':>7s} {'mean per-class recall':>22s}"]
    for r in results:
        lines.append(f"{str(r['shots']):>6s} {r['runs']:5d} {100 * r['acc1_mean']:8.2f} ± {100 * r['acc1_std']:5.2f} "
                     f"{100 * min(r['acc1']):7.2f} {100 * max(r['acc1']):7.2f} "
                     f"{100 * r['mean_per_class_recall_mean']:22.2f}")
    lines.append(f"(percent on the test split; chance top-1 {100 / num_classes:.2f})")
    return "\n".join(lines)


def run(args) -> Dict:
    """Runs ``pir-clip linear-probe`` for parsed arguments (see :func:`pir_clip.cli.linear_probe_arguments`)."""
    shots = parse_shots(args.shots)
    if args.seeds < 1:
        raise ValueError(f"--seeds {args.seeds}: give the number of seeds, at least 1")
    if args.l2 < 0:
        raise ValueError(f"--l2 {args.l2}: the regularisation weight must be >= 0")
    parse_bands(args.bands)
    scene_set = load_scene_set(args.data, "all", args.classnames, args.images_dir)
    print(f"Data: {scene_set.summary()}", flush=True)
    print(f"Classes ({scene_set.names_from}):\n{describe_classes(scene_set)}", flush=True)
    start = time.time()
    encoded = encode_scene_set(args, scene_set)
    report_unreadable([(p, e) for p, e in zip(scene_set.paths, encoded.errors) if e], len(scene_set.paths))
    splits = split_of_each(scene_set.paths, scene_set.labels)
    labels = torch.tensor(scene_set.labels, dtype=torch.long)
    readable = encoded.readable
    train = torch.tensor([s == "train" for s in splits]) & readable
    test = torch.tensor([s == "test" for s in splits]) & readable
    if not train.any() or not test.any():
        raise DataFormatError(f"{args.data}: the 80/20 rule leaves {int(train.sum())} readable train and "
                              f"{int(test.sum())} test images; each class needs at least two readable images")
    print(f"Split (first 80% of each class by file name): {int(train.sum()):,} train, {int(test.sum()):,} test "
          "images", flush=True)
    results = probe_few_shot(encoded.features[train], labels[train], encoded.features[test], labels[test],
                             scene_set.num_classes, shots, args.seeds, args.l2, args.max_iter, progress=not args.quiet)
    seconds = time.time() - start
    for r in results:
        if "short_classes" in r:
            names = [scene_set.class_keys[int(c)] for c in r["short_classes"]]
            print(f"note: {len(names)} class(es) have fewer than {r['shots']} train images and used all they have: "
                  f"{', '.join(names[:5])}{', ...' if len(names) > 5 else ''}")
    output = {
        "task": "linear_probe",
        "model": args.model_name,
        "checkpoint": args.checkpoint,
        "data": os.path.abspath(args.data),
        "class_root": scene_set.root,
        "layout": scene_set.layout,
        "classes": [{"label": i, "key": k, "name": n} for i, (k, n) in
                    enumerate(zip(scene_set.class_keys, scene_set.class_names))],
        "counts": {"classes": scene_set.num_classes, "images": len(scene_set.paths), "train": int(train.sum()),
                   "test": int(test.sum()), "unreadable": int((~readable).sum())},
        "unreadable": [{"file": p, "error": e} for p, e in zip(scene_set.paths, encoded.errors) if e],
        "probe": {"l2": args.l2, "max_iter": args.max_iter, "seeds": list(range(args.seeds)),
                  "features": "L2-normalised image embeddings of the frozen model"},
        "results": results,
        "seconds": round(seconds, 2),
    }
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(output, f, indent=2, ensure_ascii=False)
    print(format_table(results, scene_set.num_classes))
    print(f"{len(results)} shot count(s), {sum(r['runs'] for r in results)} probes on "
          f"{scene_set.num_classes} classes, {seconds:.1f} s" + (f"; wrote {args.output}" if args.output else ""))
    return output
