"""Every flag of open_clip's training parser, and what pir-clip does with it: honoured or refused.

``python -m training.main`` takes open_clip's whole command line (``open_clip_train.params``). A flag that
parsed but did nothing would be a silent lie, so each one is listed here: ``HONOURED`` names the module
that reads its value (``tests/training/test_params.py`` checks that the module does, and that this table
covers open_clip's parser exactly, so a flag added by a new open_clip release fails the test until it is
classified); ``REFUSED`` gives the reason printed when the flag is given.
"""
import argparse
from typing import Dict, NamedTuple, Optional

from open_clip_train import params as open_clip_params


class Honoured(NamedTuple):
    where: Optional[str]  # module that reads args.<dest>; None only with a note saying why no module needs to
    note: str = ""


H = Honoured
MAIN, TRAIN, DATA, DIST = "training.main", "training.train", "training.data", "open_clip_train.distributed"

HONOURED: Dict[str, Honoured] = {
    "--train-data": H(DATA), "--train-data-upsampling-factors": H(DATA), "--train-num-samples": H(DATA),
    "--dataset-type": H(DATA, "adds json (Karpathy) to open_clip's types"), "--dataset-resampled": H(DATA),
    "--csv-separator": H(DATA), "--csv-img-key": H(DATA), "--csv-caption-key": H(DATA),
    "--workers": H(DATA), "--batch-size": H(DATA),
    "--val-data": H(MAIN, "RS retrieval validation (Karpathy JSON, PIR-ITR JSON or CSV), not a webdataset"),
    "--val-frequency": H(MAIN),
    "--zeroshot-frequency": H("training.zeroshot", "zero-shot validation of --zeroshot-data (scene folders or CSV), every N epochs"),
    "--logs": H(MAIN), "--log-local": H(MAIN), "--name": H(MAIN), "--debug": H(MAIN),
    "--report-to": H(MAIN, "tensorboard ('all' means tensorboard: wandb is refused)"),
    "--cache-dir": H(MAIN), "--model": H(MAIN), "--pretrained": H(MAIN), "--seed": H(MAIN),
    "--epochs": H(MAIN), "--epochs-cooldown": H(MAIN), "--lr-scheduler": H(MAIN), "--lr-cooldown-end": H(MAIN),
    "--lr-cooldown-power": H(MAIN), "--warmup": H(MAIN), "--skip-scheduler": H(TRAIN),
    "--opt": H(MAIN, "adamw or timm/<name>"), "--lr": H(MAIN), "--beta1": H(MAIN), "--beta2": H(MAIN),
    "--eps": H(MAIN), "--wd": H(MAIN), "--momentum": H(MAIN), "--grad-clip-norm": H(TRAIN),
    "--use-bn-sync": H(MAIN, "SyncBatchNorm under DDP, on GPUs and on CPUs (gloo)"),
    "--save-frequency": H(MAIN), "--delete-previous-checkpoint": H(MAIN), "--resume": H(MAIN),
    "--save-most-recent": H(None, "always on: epoch_latest.pt is written every epoch, as a hard link to the "
                                  "epoch's one checkpoint file, so it costs no I/O"),
    "--precision": H(MAIN), "--accum-freq": H(TRAIN), "--torchcompile": H(MAIN), "--grad-checkpointing": H(MAIN),
    "--local-loss": H(MAIN), "--gather-with-grad": H(MAIN), "--ddp-static-graph": H(MAIN),
    "--lock-image": H(MAIN), "--lock-image-unlocked-groups": H(MAIN), "--lock-image-freeze-bn-stats": H(MAIN),
    "--lock-text": H(MAIN), "--lock-text-unlocked-layers": H(MAIN), "--lock-text-freeze-layer-norm": H(MAIN),
    "--image-mean": H(MAIN), "--image-std": H(MAIN), "--image-interpolation": H(MAIN),
    "--image-resize-mode": H(MAIN), "--aug-cfg": H(MAIN), "--force-context-length": H(MAIN),
    "--force-image-size": H(MAIN), "--force-quick-gelu": H(MAIN), "--force-patch-dropout": H(MAIN),
    "--log-every-n-steps": H(TRAIN),
    "--device": H(DIST), "--dist-url": H(DIST), "--dist-backend": H(DIST), "--no-set-device-rank": H(DIST),
}

_NO_WANDB = "Weights & Biases reporting is not supported; use --report-to tensorboard"
_NO_COCA = "pir-clip's trainer has no CoCa captioning loss; train CoCa with open_clip_train"
_NO_REMOTE_SYNC = "pir-clip does not sync logs to remote storage; sync --logs-dir yourself (e.g. aws s3 sync)"
_NO_DISTILL = "distillation is not supported"

REFUSED: Dict[str, str] = {
    "--val-num-samples": "validation encodes the whole --val-data set (sharded over the ranks)",
    "--imagenet-val": "ImageNet zero-shot is not an RS retrieval metric; validate with --val-data",
    "--imagenet-v2": "ImageNet zero-shot is not an RS retrieval metric; validate with --val-data",
    "--pretrained-image": "it downloads ImageNet weights for timm image towers; pir-clip reads weights only from "
                          "files you pass (--pretrained FILE)",
    "--force-custom-text": "PIR uses open_clip's plain CLIP text tower; train custom text towers with open_clip_train",
    "--torchscript": "TorchScript training is not supported; use --torchcompile",
    "--trace": "traced training is not supported; use --torchcompile",
    "--wandb-notes": _NO_WANDB, "--wandb-project-name": _NO_WANDB,
    "--copy-codebase": "the run's params.txt records every flag; copy the code yourself if you need it",
    "--horovod": "distributed training runs under torchrun (or any launcher that sets RANK and WORLD_SIZE)",
    "--coca-caption-loss-weight": _NO_COCA, "--coca-contrastive-loss-weight": _NO_COCA,
    "--remote-sync": _NO_REMOTE_SYNC, "--remote-sync-frequency": _NO_REMOTE_SYNC,
    "--remote-sync-protocol": _NO_REMOTE_SYNC,
    "--distill-model": _NO_DISTILL, "--distill-pretrained": _NO_DISTILL,
    "--use-bnb-linear": "bitsandbytes int8 layers are not supported",
    "--siglip": "the contrastive term is CLIP's softmax loss, which the affiliation loss is defined with",
    "--loss-dist-impl": "it selects SigLIP's distributed loss variants, which pir-clip does not use",
}


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__("open_clip parser captured")
        self.parser = parser


def open_clip_parser() -> argparse.ArgumentParser:
    """open_clip_train's own parser, exactly as its ``parse_args`` builds it (it is not exposed otherwise).

    ``parse_args`` builds the parser, parses, then fills optimizer defaults from the model name; catching the
    parser before it parses lets pir-clip parse with it and tell a value the user gave from a default.
    Abbreviations are switched off: a flag prefix that open_clip would expand could otherwise shadow a flag
    of ours that was parsed first.
    """
    original = argparse.ArgumentParser.parse_args

    def capture(self, *args, **kwargs):
        raise _Captured(self)

    argparse.ArgumentParser.parse_args = capture
    try:
        open_clip_params.parse_args([])
    except _Captured as captured:
        parser = captured.parser
    else:  # pragma: no cover - only if open_clip stops parsing in parse_args
        raise RuntimeError("open_clip_train.params.parse_args no longer builds an argparse parser")
    finally:
        argparse.ArgumentParser.parse_args = original
    parser.allow_abbrev = False
    parser.prog = "python -m training.main"
    return parser


def refused_flags_given(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Dict[str, str]:
    """{flag: reason} for every refused flag whose value differs from open_clip's default."""
    given = {}
    for action in parser._actions:
        flag = next((s for s in action.option_strings if s in REFUSED), None)
        if flag and getattr(args, action.dest, action.default) != action.default:
            given[flag] = REFUSED[flag]
    return given
