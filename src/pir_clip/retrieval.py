"""``python retrieval.py``: RS image-text retrieval evaluation of a checkpoint (METHOD.md section 6).

    python retrieval.py --model-name PIR --retrieval-images-dir data/RSITMD/images \\
        --retrieval-json-dir data/RSITMD/dataset_RSITMD.json --remoteclip-path checkpoints/PIR-CLIP_RET-3.pt

The flag names are the authors' (``--retrieval-json-dir`` is the annotation FILE: a Karpathy JSON, a
PIR-ITR test JSON, or a ``filename,title`` CSV). Any open_clip model name works, as do PIR configs; the
checkpoint format (bare, training checkpoint, ``module.`` prefixes, safetensors, the authors' release)
is recognised from its keys.
"""
import argparse
import json
import logging
import os
import sys
import time
from typing import Dict, List, Optional

import torch

from .annotations import DataFormatError, RetrievalSet, load_retrieval_set
from .checkpoint import CheckpointError
from .evaluate import encode_retrieval_set
from .factory import create_model_and_transforms, get_tokenizer
from .metrics import MEAN_RECALL_NAME, RECALL_NAMES, retrieval_metrics

PRECISIONS = ("fp32", "amp", "amp_bf16", "bf16", "fp16", "pure_bf16", "pure_fp16")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python retrieval.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-name", default="PIR", help="PIR config or any open_clip model name (default PIR).")
    p.add_argument("--remoteclip-path", "--checkpoint", dest="checkpoint", default=None,
                   help="Checkpoint file (or open_clip pretrained tag). Without it the model is random: "
                        "useful only for smoke tests.")
    p.add_argument("--prior-pretrained", default=None, help="Separate weights for a PIR model's prior encoder.")
    p.add_argument("--retrieval-json-dir", "--retrieval-data", dest="data", required=True,
                   help="Annotation file: Karpathy JSON (dataset_RSITMD.json), PIR-ITR test JSON, or CSV.")
    p.add_argument("--retrieval-images-dir", dest="images_dir", default=None,
                   help="Directory of the images the annotation names (default: next to the file).")
    p.add_argument("--split", default="test", help="Split of a Karpathy JSON (default test).")
    p.add_argument("--csv-encoding", default="utf-8", help="CSV encoding (RSICD's GeoRSCLIP CSV: gb18030).")
    p.add_argument("--csv-separator", default=",", help="CSV separator (default ',').")
    p.add_argument("--csv-img-key", default="filename", help="CSV image column (default filename).")
    p.add_argument("--csv-caption-key", default="title", help="CSV caption column (default title).")
    p.add_argument("--batch-size", type=int, default=64, help="Images per encoding batch (default 64).")
    p.add_argument("--workers", type=int, default=2, help="Image-loading worker processes (default 2).")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu... (default: cuda when available).")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (default), amp / amp_bf16 (autocast), bf16 / fp16 (cast weights).")
    p.add_argument("--output", default="results.json", help="Metrics JSON to write (default results.json).")
    p.add_argument("--save-embeddings", default=None, metavar="OUT.pt",
                   help="Save image/text embeddings, file names, captions and text_to_image for reuse.")
    p.add_argument("--save-visualization", default=None, metavar="OUT.png",
                   help="Save a figure of top-5 retrievals for a few sample queries.")
    p.add_argument("--chunk-size", type=int, default=4096, help="Queries scored per chunk (bounds memory).")
    p.add_argument("--quiet", action="store_true", help="No progress bars.")
    return p


def format_table(metrics: Dict[str, float]) -> str:
    rows = [("image->text", [metrics[n] for n in RECALL_NAMES[:3]]),
            ("text->image", [metrics[n] for n in RECALL_NAMES[3:]])]
    lines = [f"{'':12s} {'R@1':>7s} {'R@5':>7s} {'R@10':>7s}"]
    lines += [f"{name:12s} " + " ".join(f"{v:7.2f}" for v in values) for name, values in rows]
    lines.append(f"{'mR':12s} {metrics[MEAN_RECALL_NAME]:7.2f}")
    return "\n".join(lines)


def save_embeddings(path: str, data: RetrievalSet, images: torch.Tensor, texts: torch.Tensor, info: Dict) -> None:
    torch.save({
        "image_embeddings": images,
        "text_embeddings": texts,
        "image_files": [os.path.basename(p) for p in data.image_paths],
        "captions": list(data.captions),
        "text_to_image": list(data.text_to_image),
        "info": info,
    }, path)


def run(args: argparse.Namespace) -> Dict:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # Validate the data first: a missing image should fail in a second, not after building a model.
    data = load_retrieval_set(args.data, images_dir=args.images_dir, split=args.split, csv_encoding=args.csv_encoding,
                              csv_separator=args.csv_separator, csv_image_key=args.csv_img_key,
                              csv_caption_key=args.csv_caption_key, images_flag="--retrieval-images-dir")
    print(f"Data: {data.summary()}", flush=True)
    model, _, preprocess = create_model_and_transforms(
        args.model_name, args.checkpoint, prior_pretrained=args.prior_pretrained, precision=args.precision,
        device=device)
    model.eval()
    print(f"Model: {args.model_name} ({type(model).__name__}) from {args.checkpoint or 'random initialisation'} "
          f"on {device}", flush=True)
    tokenizer = get_tokenizer(args.model_name)
    start = time.time()
    images, texts = encode_retrieval_set(model, data, preprocess, tokenizer, batch_size=args.batch_size,
                                         workers=args.workers, device=device, precision=args.precision,
                                         progress=not args.quiet)
    metrics = retrieval_metrics(images, texts, data.text_to_image, chunk_size=args.chunk_size)
    result = {
        "model": args.model_name,
        "architecture": type(model).__name__,
        "checkpoint": args.checkpoint,
        "data": os.path.abspath(args.data),
        "images_dir": args.images_dir,
        "split": data.split,
        "num_images": data.num_images,
        "num_captions": data.num_texts,
        "seconds": round(time.time() - start, 2),
        "metrics": metrics,
    }
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
    if args.save_embeddings:
        save_embeddings(args.save_embeddings, data, images, texts,
                        {k: v for k, v in result.items() if k != "metrics"})
    if args.save_visualization:
        from .visualize import save_retrieval_figure
        save_retrieval_figure(args.save_visualization, data, images, texts, chunk_size=args.chunk_size)
    print(format_table(metrics))
    written = [p for p in (args.output, args.save_embeddings, args.save_visualization) if p]
    print(f"{data.num_images} images, {data.num_texts} captions, {result['seconds']:.1f} s; wrote {', '.join(written)}")
    return result


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        run(args)
    except (DataFormatError, CheckpointError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
