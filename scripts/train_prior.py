"""Pre-train a PIR config's prior encoder as an RS scene classifier, like PIR-ITR's AID-tuned ResNet-50.

The prior must "know RS scene categories" (METHOD.md section 1). Real users load RN50 weights; on the
synthetic benchmark there are none, so this trains the prior's trunk on the train split's scene classes
(read from image names, as the affiliation loss does) and saves weights for ``--prior-pretrained``.

    python scripts/train_prior.py --data data/synthetic/dataset_synthetic.json --model PIR-tiny \\
        --out data/synthetic/prior.pt [--epochs 6]
"""
import argparse
import random
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import pir_clip
from pir_clip.data.annotations import load_retrieval_set
from pir_clip.models.config import PIRCfg
from pir_clip.evaluation.encode import ImageFiles
from pir_clip.data.labels import class_name_from_image_name
from pir_clip.models.prior import build_prior


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="Karpathy JSON (or CSV / PIR-ITR JSON) with a train split.")
    p.add_argument("--images-dir", default=None, help="Image folder (default: next to --data or its images/).")
    p.add_argument("--split", default="train")
    p.add_argument("--model", default="PIR-tiny", help="PIR config whose prior is trained (default PIR-tiny).")
    p.add_argument("--out", required=True, help="Where to save the prior weights (.pt).")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    cfg = pir_clip.get_model_config(args.model)
    if "pir_cfg" not in cfg:
        sys.exit(f"--model {args.model} is not a PIR config (it has no prior)")
    prior_cfg = PIRCfg.from_dict(cfg["pir_cfg"]).prior
    trunk, width = build_prior(prior_cfg, cfg["embed_dim"])
    data = load_retrieval_set(args.data, images_dir=args.images_dir, split=args.split)
    names = sorted({class_name_from_image_name(p) for p in data.image_paths})
    labels = torch.tensor([names.index(class_name_from_image_name(p)) for p in data.image_paths])
    _, _, preprocess = pir_clip.create_model_and_transforms(args.model)
    images = torch.stack(list(tqdm(ImageFiles(data.image_paths, preprocess), desc="loading images", unit="img")))
    model = nn.Sequential(trunk, nn.Linear(width, len(names)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    steps = args.epochs * ((len(images) + args.batch_size - 1) // args.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=steps)
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(images))
        correct = total = 0
        for i in range(0, len(images), args.batch_size):
            idx = order[i:i + args.batch_size]
            x = augment(images[idx])
            logits = model(x)
            loss = F.cross_entropy(logits, labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            correct += (logits.argmax(1) == labels[idx]).sum().item()
            total += len(idx)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {loss.item():.3f}, train accuracy {100 * correct / total:.1f}%",
              flush=True)
    torch.save({"state_dict": trunk.state_dict(), "classes": names}, args.out)
    print(f"prior of {args.model} trained on {len(images)} images of {len(names)} classes in "
          f"{time.time() - start:.0f} s; saved to {args.out}")
    return 0


def augment(x: torch.Tensor) -> torch.Tensor:
    """Aerial views have no up: random flips and quarter turns."""
    if random.random() < 0.5:
        x = x.flip(-1)
    return torch.rot90(x, random.randint(0, 3), dims=(-2, -1))


if __name__ == "__main__":
    sys.exit(main())
