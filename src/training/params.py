"""Command-line flags: open_clip's training CLI, unchanged, plus PIR-CLIP's own flags.

The parser is built in two stages so open_clip's ~100 flags are reused by import, not copied: our parser
takes the flags below (and open_clip flags whose meaning we extend: ``--dataset-type`` gains ``json``,
``--val-data`` means RS retrieval validation), then ``open_clip_train.params.parse_args`` parses the rest
and rejects anything unknown.
"""
import argparse
import logging
import sys
from typing import List, Optional

from open_clip_train.params import parse_args as parse_open_clip_args

DATASET_TYPES = ("webdataset", "csv", "json", "synthetic", "auto")
# open_clip picks Adam betas/eps from the model name ("vit" in it); PIR models are ViTs too.
VIT_OPTIMIZER_DEFAULTS = {"beta1": 0.9, "beta2": 0.98, "eps": 1.0e-6}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.main", add_help=False, allow_abbrev=False,
        description="Fine-tune CLIP / PIR-CLIP on remote-sensing image-text data (open_clip's trainer + PIR).")
    pir = parser.add_argument_group("PIR-CLIP")
    pir.add_argument("--is_aff_loss", "--is-aff-loss", dest="is_aff_loss", action="store_true",
                     help="Add the affiliation loss; class labels come from image file names (or a label column).")
    pir.add_argument("--aff-loss-weight", type=float, default=1.0,
                     help="Weight w of the affiliation loss: total = contrastive + w * affiliation (default 1).")
    pir.add_argument("--aff-label-regex", default=None,
                     help="Regular expression giving the class from an image name's stem (first group, or the "
                          "whole match), e.g. '^(.*)_\\d+$' for NWPU names like baseball_diamond_001.")
    pir.add_argument("--prior-pretrained", default=None,
                     help="Weights for the prior encoder: an open_clip RN50 checkpoint, an authors' release "
                          "checkpoint, or a timm/torchvision ResNet state dict.")
    pir.add_argument("--unlock-prior", action="store_true", help="Train the prior encoder (frozen by default).")
    pir.add_argument("--no-vir", dest="enable_vir", action="store_false", default=None,
                     help="Ablation: build PIR without VIR (Spatial-PAE).")
    pir.add_argument("--no-lca", dest="enable_lca", action="store_false", default=None,
                     help="Ablation: build PIR without LCA (Temporal-PAE).")

    run = parser.add_argument_group("run")
    run.add_argument("--logs-dir", default=None,
                     help="Same as open_clip's --logs; use this spelling under torchrun, whose own parser "
                          "claims --logs as an abbreviation of its --logs-specs.")

    data = parser.add_argument_group("data (extends open_clip's)")
    data.add_argument("--dataset-type", choices=DATASET_TYPES, default="auto",
                      help="webdataset, csv, json (Karpathy-style, e.g. dataset_RSITMD.json), synthetic, or auto "
                           "(by extension).")
    data.add_argument("--train-images-dir", default=None,
                      help="Directory that image paths in a CSV/JSON are relative to (default: next to the file, "
                           "or its images/ folder).")
    data.add_argument("--json-split", default="train", help="Split of a Karpathy JSON to train on (default train).")
    data.add_argument("--csv-label-key", default=None, help="Optional CSV column with an explicit class label.")
    data.add_argument("--csv-encoding", default="utf-8", help="CSV text encoding (RSICD's GeoRSCLIP CSV: gb18030).")

    val = parser.add_argument_group("RS retrieval validation")
    val.add_argument("--val-data", default=None,
                     help="Retrieval validation set: a Karpathy JSON, a PIR-ITR test JSON or a filename,title CSV.")
    val.add_argument("--val-images-dir", default=None,
                     help="Images of --val-data (default: next to the file, or its images/ folder).")
    val.add_argument("--val-split", default="val", help="Split of a Karpathy JSON to validate on (default val).")
    val.add_argument("--val-batch-size", type=int, default=None, help="Encoding batch size (default --batch-size).")
    val.add_argument("--zeroshot-data", default=None,
                     help="Zero-shot scene classification every --zeroshot-frequency epochs: a folder of class folders "
                          "or a filepath,label CSV, as pir-clip zeroshot --data.")
    return parser


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    ours = build_parser()
    if "-h" in argv or "--help" in argv:
        ours.print_help()
        print("\nAll other flags are open_clip's (python -m open_clip_train.main --help):\n")
        parse_open_clip_args(["--help"])  # prints and exits
    known, rest = ours.parse_known_args(argv)
    args = parse_open_clip_args(rest)
    for key, value in vars(known).items():
        setattr(args, key, value)
    if args.logs_dir:
        args.logs = args.logs_dir
    for key, value in VIT_OPTIMIZER_DEFAULTS.items():
        if f"--{key}" not in argv:
            setattr(args, key, value)
    return validate(args)


def validate(args: argparse.Namespace) -> argparse.Namespace:
    if args.aff_loss_weight < 0:
        raise SystemExit(f"--aff-loss-weight must be >= 0, got {args.aff_loss_weight}")
    if args.aff_label_regex:
        import re
        try:
            re.compile(args.aff_label_regex)
        except re.error as exc:
            raise SystemExit(f"--aff-label-regex {args.aff_label_regex!r} is not a valid regular expression: {exc}")
    unsupported = {
        "--horovod": args.horovod, "--siglip": args.siglip, "--distill-model": args.distill_model,
        "--torchscript": args.torchscript, "--trace": args.trace, "--use-bnb-linear": args.use_bnb_linear,
        "--imagenet-val": args.imagenet_val, "--imagenet-v2": args.imagenet_v2,
        "--remote-sync": args.remote_sync, "--copy-codebase": args.copy_codebase,
    }
    given = [flag for flag, value in unsupported.items() if value]
    if given:
        raise SystemExit(f"{', '.join(given)}: open_clip feature(s) pir-clip does not support "
                         "(distributed training uses torchrun; validation uses --val-data).")
    if args.accum_freq < 1:
        raise SystemExit(f"--accum-freq must be >= 1, got {args.accum_freq}")
    if isinstance(args.force_image_size, (tuple, list)) and len(args.force_image_size) == 1:
        args.force_image_size = args.force_image_size[0]
    return args


def resolve_precision(args: argparse.Namespace, device_type: str) -> None:
    """open_clip's default 'amp' means fp16 autocast with a grad scaler, which only pays off on GPUs."""
    if device_type == "cpu" and args.precision in ("amp", "fp16", "pure_fp16"):
        logging.warning(f"--precision {args.precision} on CPU: training in fp32 instead "
                        "(use --precision amp_bf16 for bf16 autocast on CPU).")
        args.precision = "fp32"
