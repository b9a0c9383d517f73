"""Command-line flags: open_clip's training CLI, unchanged, plus PIR-CLIP's own flags.

The parser is built in two stages so open_clip's ~100 flags are reused by import, not copied: our parser
takes the flags below (and open_clip flags whose meaning we extend: ``--dataset-type`` gains ``json``,
``--val-data`` means RS retrieval validation), then open_clip's own parser (``open_clip_train.params``)
parses the rest and rejects anything unknown. Every open_clip flag is honoured or refused with a message
(:mod:`training.open_clip_flags`). Optimizer defaults are open_clip's and fill only values not given.
"""
import argparse
import logging
import sys
from pathlib import Path
from typing import Dict, List, Optional

import open_clip
from open_clip_train.params import get_default_params

from pir_clip.models.registry import MODEL_CONFIG_DIR
from training.open_clip_flags import open_clip_parser, refused_flags_given

from pir_clip.data.images import ImageDecodeError, parse_bands

DATASET_TYPES = ("webdataset", "csv", "json", "synthetic", "auto")
LR_SCHEDULERS = ("cosine", "const", "const-cooldown")
REPORT_TO = ("tensorboard", "all")  # 'all': every integration pir-clip has, i.e. tensorboard


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
    run.add_argument("--torchcompile-backend", default="inductor",
                     help="torch.compile backend for --torchcompile (default inductor; e.g. aot_eager to check "
                          "that the model compiles without generating code).")

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
    data.add_argument("--bands", type=_bands, default=None, metavar="R,G,B",
                      help="1-based bands of multi-band images to use as RGB, e.g. 4,3,2 (default: the first three).")

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


def _bands(spec: str):
    try:
        return parse_bands(spec)
    except ImageDecodeError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, theirs = build_parser(), open_clip_parser()
    if "-h" in argv or "--help" in argv:
        ours.print_help()
        print("\nAll other flags are open_clip's (refused ones say so when given):\n")
        theirs.print_help()
        raise SystemExit(0)
    known, rest = ours.parse_known_args(argv)
    args = theirs.parse_args(rest)
    for key, value in vars(known).items():
        setattr(args, key, value)
    if args.logs_dir:
        args.logs = args.logs_dir
    fill_optimizer_defaults(args)
    try:
        return validate(args, theirs)
    except ArgumentError as exc:
        print(f"{theirs.prog}: error: {exc}", file=sys.stderr)
        raise


class ArgumentError(SystemExit):
    """A command-line mistake: printed as one ``error:`` line, exit status 2 (as argparse does)."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def optimizer_defaults(model_name: str) -> Dict[str, float]:
    """open_clip's defaults (the CLIP paper's: Adam beta2 0.98, eps 1e-6 for ViTs, else 0.999, 1e-8).

    open_clip tells a ViT by "vit" in the model name. The configs pir-clip registers (PIR, PIR-release,
    their tiny versions, CLIP-tiny) have open_clip ViT image towers under other names, so they are judged by
    their tower; every other name gets exactly what open_clip gives it.
    """
    if (Path(MODEL_CONFIG_DIR) / f"{model_name}.json").is_file():
        vision = (open_clip.get_model_config(model_name) or {}).get("vision_cfg", {})
        if isinstance(vision.get("layers"), int) and not vision.get("timm_model_name"):
            return get_default_params("vit")
    return get_default_params(model_name)


def fill_optimizer_defaults(args: argparse.Namespace) -> None:
    """Only values the user did not give, in any spelling (``--beta1 0.5``, ``--beta1=0.5``); as open_clip,
    none for timm optimizers (they bring their own)."""
    if "timm" in args.opt:
        return
    for name, value in optimizer_defaults(args.model).items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def validate(args: argparse.Namespace, open_clip_parser: argparse.ArgumentParser) -> argparse.Namespace:
    refused = refused_flags_given(args, open_clip_parser)
    if refused:
        raise ArgumentError("; ".join(f"{flag} is not supported by pir-clip: {why}" for flag, why in refused.items()))
    if args.aff_loss_weight < 0:
        raise ArgumentError(f"--aff-loss-weight must be >= 0, got {args.aff_loss_weight}")
    if args.aff_label_regex:
        import re
        try:
            re.compile(args.aff_label_regex)
        except re.error as exc:
            raise ArgumentError(f"--aff-label-regex {args.aff_label_regex!r} is not a valid regular expression: {exc}")
    if args.accum_freq < 1:
        raise ArgumentError(f"--accum-freq must be >= 1, got {args.accum_freq}")
    if args.opt != "adamw" and not args.opt.startswith("timm/"):
        raise ArgumentError(f"--opt {args.opt!r}: use adamw or a timm optimizer as timm/<name> (e.g. timm/lamb)")
    if args.lr_scheduler not in LR_SCHEDULERS:
        raise ArgumentError(f"--lr-scheduler {args.lr_scheduler!r}: use one of {', '.join(LR_SCHEDULERS)}")
    if args.lr_scheduler == "const-cooldown" and args.epochs_cooldown is None:
        raise ArgumentError("--lr-scheduler const-cooldown needs --epochs-cooldown")
    for integration in filter(None, (x.strip() for x in args.report_to.split(","))):
        if integration == "wandb":
            raise ArgumentError("--report-to wandb is not supported by pir-clip; use --report-to tensorboard")
        if integration not in REPORT_TO:
            raise ArgumentError(f"--report-to {integration!r}: use tensorboard")
    if "multimodal_cfg" in (open_clip.get_model_config(args.model) or {}):
        raise ArgumentError(f"--model {args.model} is a CoCa model: pir-clip's trainer has no captioning loss; "
                            "train CoCa with open_clip_train")
    if isinstance(args.force_image_size, (tuple, list)) and len(args.force_image_size) == 1:
        args.force_image_size = args.force_image_size[0]
    return args


def resolve_precision(args: argparse.Namespace, device_type: str) -> None:
    """open_clip's default 'amp' means fp16 autocast with a grad scaler, which only pays off on GPUs."""
    if device_type == "cpu" and args.precision in ("amp", "fp16", "pure_fp16"):
        logging.warning(f"--precision {args.precision} on CPU: training in fp32 instead "
                        "(use --precision amp_bf16 for bf16 autocast on CPU).")
        args.precision = "fp32"
