"""Training checkpoints in open_clip's format, written atomically, and ``--resume`` resolution.

A checkpoint is ``{"epoch", "name", "state_dict", "optimizer", "scaler"?, "step", "best_mean_recall"}``;
open_clip's loaders read it as they read their own. Every file is written to a temporary name in the same
directory and renamed into place, so a crash or SIGKILL during a save never leaves a truncated checkpoint.
An epoch's names (``epoch_latest.pt``, ``epoch_N.pt``, ``epoch_best.pt``) share one write: the others are
hard links to it, each also renamed into place, so the I/O is one checkpoint per epoch whatever is kept.
"""
import glob
import logging
import os
import re
import shutil
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from pir_clip.models.checkpoint import CheckpointError, check_compatible, read_checkpoint, strip_wrapper_prefixes

LATEST_NAME = "epoch_latest.pt"
BEST_NAME = "epoch_best.pt"
_TMP_SUFFIX = ".tmp"
_EPOCH_FILE = re.compile(r"epoch_(\d+)\.pt$")


def _temporary(path: str) -> str:
    return f"{path}.{os.getpid()}{_TMP_SUFFIX}"


def save_atomic(obj: Dict[str, Any], paths: List[str]) -> None:
    """Writes ``obj`` once and puts it in place under every name in ``paths``, each atomically: a reader (or a
    crash at any point) sees either a name's previous complete file or the new complete one.

    The first name gets the written file; the others are hard links to it, falling back to a copy on file
    systems without hard links. Later saves replace names (a rename onto them), never write into a file, so
    a linked epoch_N.pt keeps its contents when epoch_latest.pt moves on.
    """
    first = paths[0]
    tmp = _temporary(first)
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    for path in paths[1:]:
        linked = _temporary(path)
        try:
            os.link(tmp, linked)
        except OSError as exc:  # e.g. a FUSE or SMB mount without hard links
            logging.info(f"Cannot hard-link checkpoints in {os.path.dirname(path)} ({exc}); copying instead.")
            shutil.copyfile(tmp, linked)
        os.replace(linked, path)
    os.replace(tmp, first)
    _fsync_directory(os.path.dirname(first) or ".")


def _fsync_directory(directory: str) -> None:
    """Makes the renames durable (a power cut after the save keeps the new names)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(checkpoint_dir: str) -> None:
    """Partial files left by a run killed during a save."""
    for tmp in glob.glob(os.path.join(checkpoint_dir, f"*{_TMP_SUFFIX}")):
        logging.info(f"Removing the unfinished checkpoint {tmp} of an interrupted run.")
        os.remove(tmp)


def find_latest(checkpoint_dir: str) -> Optional[str]:
    """``epoch_latest.pt`` if present, else the highest ``epoch_N.pt``; None if there is none."""
    latest = os.path.join(checkpoint_dir, LATEST_NAME)
    if os.path.isfile(latest):
        return latest
    numbered = [(int(m.group(1)), p) for p in glob.glob(os.path.join(checkpoint_dir, "epoch_*.pt"))
                if (m := _EPOCH_FILE.search(p))]
    return max(numbered)[1] if numbered else None


def training_state(model: nn.Module, optimizer, scaler, epoch: int, step: int, name: str,
                   best_mean_recall: Optional[float]) -> Dict[str, Any]:
    state = {
        "epoch": epoch,
        "name": name,
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "best_mean_recall": best_mean_recall,
    }
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    return state


def load_training_state(path: str, model: nn.Module, optimizer=None, scaler=None) -> Dict[str, Any]:
    """Loads weights (validated first: nothing is half-loaded) and, for a training checkpoint, the optimizer
    and scaler. Returns ``{"epoch", "step", "best_mean_recall"}`` (epoch 0 for a bare model checkpoint)."""
    obj = read_checkpoint(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} is not a checkpoint dict (found {type(obj).__name__})")
    is_training = "epoch" in obj and "state_dict" in obj
    state_dict = strip_wrapper_prefixes(obj["state_dict"] if is_training else obj)
    check_compatible(model, state_dict, f"--resume {path}")
    model.load_state_dict(state_dict)
    if not is_training:
        logging.info(f"=> loaded model weights from {path} (no training state: starting at epoch 0)")
        return {"epoch": 0, "step": 0, "best_mean_recall": None}
    if optimizer is not None:
        if "optimizer" not in obj:
            raise CheckpointError(f"{path} has no optimizer state; cannot resume training from it")
        optimizer.load_state_dict(obj["optimizer"])
    if scaler is not None and "scaler" in obj:
        scaler.load_state_dict(obj["scaler"])
    logging.info(f"=> resuming {path} (epoch {obj['epoch']}, step {obj.get('step', '?')})")
    return {"epoch": int(obj["epoch"]), "step": int(obj.get("step", 0)),
            "best_mean_recall": obj.get("best_mean_recall")}


def save_epoch_checkpoints(state: Dict[str, Any], checkpoint_dir: str, *, completed_epoch: int, total_epochs: int,
                           save_frequency: int, delete_previous: bool, is_best: bool) -> List[str]:
    """One write per epoch, under every name it is kept as: always the latest (for --resume latest);
    ``epoch_N.pt`` every ``save_frequency`` epochs and at the end; ``epoch_best.pt`` when validation mR
    improved. Returns the paths written."""
    paths = [os.path.join(checkpoint_dir, LATEST_NAME)]
    numbered = completed_epoch == total_epochs or (save_frequency > 0 and completed_epoch % save_frequency == 0)
    if numbered:
        paths.append(os.path.join(checkpoint_dir, f"epoch_{completed_epoch}.pt"))
    if is_best:
        paths.append(os.path.join(checkpoint_dir, BEST_NAME))
    save_atomic(state, paths)
    if numbered and delete_previous:
        previous = os.path.join(checkpoint_dir, f"epoch_{completed_epoch - 1}.pt")
        if os.path.exists(previous):
            os.remove(previous)  # one name of its file: epoch_best.pt may still hold the same data
    return paths
