"""``pir-clip retrieval`` (and ``python retrieval.py``): RS image-text retrieval evaluation of a checkpoint
(METHOD.md section 6).

    pir-clip retrieval --model-name PIR --retrieval-images-dir data/RSITMD/images \\
        --retrieval-json-dir data/RSITMD/dataset_RSITMD.json --remoteclip-path checkpoints/PIR-CLIP_RET-3.pt

The flag names are the authors' (``--retrieval-json-dir`` is the annotation FILE: a Karpathy JSON, a
PIR-ITR test JSON, or a ``filename,title`` CSV). Any open_clip model name works, as do PIR configs; the
checkpoint format (bare, training checkpoint, ``module.`` prefixes, safetensors, the authors' release)
is recognised from its keys.
"""
import json
import os
import time
from typing import Dict

import torch

from ..data.annotations import RetrievalSet, load_retrieval_set
from ..data.images import parse_bands
from ..models.factory import get_tokenizer
from .encode import encode_retrieval_set, load_model_for_evaluation
from .metrics import MEAN_RECALL_NAME, RECALL_NAMES, retrieval_metrics


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


def run(args) -> Dict:
    """Runs ``pir-clip retrieval`` for parsed arguments (see :func:`pir_clip.cli.retrieval_arguments`)."""
    # Validate the data first: a missing image should fail in a second, not after building a model.
    data = load_retrieval_set(args.data, images_dir=args.images_dir, split=args.split, csv_encoding=args.csv_encoding,
                              csv_separator=args.csv_separator, csv_image_key=args.csv_img_key,
                              csv_caption_key=args.csv_caption_key, images_flag="--retrieval-images-dir")
    print(f"Data: {data.summary()}", flush=True)
    model, preprocess, device = load_model_for_evaluation(args)
    tokenizer = get_tokenizer(args.model_name)
    start = time.time()
    images, texts = encode_retrieval_set(model, data, preprocess, tokenizer, batch_size=args.batch_size,
                                         workers=args.workers, device=device, precision=args.precision,
                                         progress=not args.quiet, bands=parse_bands(args.bands))
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
        save_retrieval_figure(args.save_visualization, data, images, texts, chunk_size=args.chunk_size,
                              bands=parse_bands(args.bands))
    print(format_table(metrics))
    written = [p for p in (args.output, args.save_embeddings, args.save_visualization) if p]
    print(f"{data.num_images} images, {data.num_texts} captions, {result['seconds']:.1f} s; wrote {', '.join(written)}")
    return result
