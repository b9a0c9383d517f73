"""Reading checkpoints safely, recognising their format, and loading them whole or not at all.

Formats accepted everywhere a checkpoint path is: a bare state dict, an open_clip training checkpoint
(``{"epoch", "state_dict", "optimizer", ...}``), keys with ``module.`` (DDP) or ``_orig_mod.``
(torch.compile) prefixes, and ``.safetensors`` files. Pickles are read with ``weights_only=True``:
a file that needs code execution to unpickle is refused.
"""
import logging
import os
import pickle
import zipfile
from typing import Dict, Iterable, List, Mapping, Tuple

import torch
from torch import nn

StateDict = Dict[str, torch.Tensor]

RELEASE_PREFIXES = ("res_visual.", "vision_proj_res.")
PIR_PREFIXES = ("prior.", "vir.", "lca.")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read, or that does not fit the model it is loaded into."""


def read_checkpoint(path: str) -> object:
    """Reads a checkpoint file without executing code from it. Raises CheckpointError naming the file."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file
        try:
            return load_file(path, device="cpu")
        except Exception as exc:
            raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(
                f"refusing to load {path}: unpickling it would execute code (it stores Python objects beyond "
                "tensors and plain containers). If you trust the file, re-save only its tensors, e.g. "
                "torch.save(obj['state_dict'], 'clean.pt'), and pass that file.") from exc
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({exc})") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                if any(name.endswith("constants.pkl") for name in archive.namelist()):
                    raise CheckpointError(
                        f"{path} is a TorchScript archive (like OpenAI's original CLIP files); load it with "
                        "open_clip (e.g. --pretrained openai) or save its state_dict() to a plain file") from exc
        raise CheckpointError(f"{path} is not a PyTorch checkpoint or is corrupt ({type(exc).__name__}: {exc})") from exc


def strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Removes DDP's ``module.`` and torch.compile's ``_orig_mod.`` prefixes (when every key has them)."""
    out = dict(state_dict)
    for prefix in _WRAPPER_PREFIXES:
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix):]: v for k, v in out.items()}
    return out


def state_dict_from(obj: object, path: str) -> StateDict:
    """Extracts the model state dict from whatever ``read_checkpoint`` returned."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path} holds no state dict (found {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries {bad[:5]} are not tensors; this is not a model state dict")
    return strip_wrapper_prefixes(obj)


def load_state_dict(path: str) -> StateDict:
    return state_dict_from(read_checkpoint(path), path)


def checkpoint_format(state_dict: Mapping[str, torch.Tensor]) -> str:
    """'release' (the authors' PIR-CLIP checkpoints), 'pir' (this project's), or 'clip' (anything else)."""
    if any(k.startswith(RELEASE_PREFIXES) for k in state_dict):
        return "release"
    if any(k.startswith(PIR_PREFIXES) for k in state_dict):
        return "pir"
    return "clip"


def _describe(keys: Iterable[str], limit: int = 12) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def check_compatible(
        model: nn.Module,
        state_dict: Mapping[str, torch.Tensor],
        source: str,
        allowed_missing: Tuple[str, ...] = (),
) -> List[str]:
    """Compares keys and shapes before anything is copied, so a mismatch never leaves a half-loaded model.

    Keys under ``allowed_missing`` prefixes may be absent (they start fresh); returns those keys.
    Raises CheckpointError listing unexpected keys, missing keys and shape mismatches.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    fresh = [k for k in missing if k.startswith(allowed_missing)]
    missing = [k for k in missing if not k.startswith(allowed_missing)]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in state_dict if k in expected and state_dict[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        lines = [f"{source} does not fit the {type(model).__name__} model being built:"]
        if mismatched:
            lines.append(f"  shape mismatches ({len(mismatched)}): " + "; ".join(mismatched[:12])
                         + (" ..." if len(mismatched) > 12 else ""))
        if missing:
            lines.append(f"  missing from the checkpoint ({len(missing)}): {_describe(missing)}")
        if unexpected:
            lines.append(f"  not in the model ({len(unexpected)}): {_describe(unexpected)}")
        lines.append("  Check --model / the model name matches the architecture the checkpoint was trained with.")
        raise CheckpointError("\n".join(lines))
    return fresh


def load_into(
        model: nn.Module,
        state_dict: Mapping[str, torch.Tensor],
        source: str,
        allowed_missing: Tuple[str, ...] = (),
) -> List[str]:
    """Validates, then loads. Returns the keys that start fresh (allowed to be missing)."""
    fresh = check_compatible(model, state_dict, source, allowed_missing)
    model.load_state_dict(state_dict, strict=not fresh)
    return fresh


def fresh_modules(keys: Iterable[str], depth: int = 1) -> List[str]:
    """Summarises fresh keys as module names, e.g. ['lca', 'prior', 'vir']."""
    return sorted({".".join(k.split(".")[:depth]) for k in keys})


def resize_to_model(state_dict: StateDict, model: nn.Module) -> StateDict:
    """Adapts positional embeddings and the logit-scale shape the way open_clip's load_checkpoint does."""
    from open_clip.model import resize_pos_embed, resize_text_pos_embed
    state_dict = dict(state_dict)
    expected = model.state_dict()
    for key in ("logit_scale", "logit_bias"):
        if key in state_dict and key in expected and state_dict[key].ndim != expected[key].ndim:
            state_dict[key] = state_dict[key].reshape(expected[key].shape)
    if "visual.positional_embedding" in state_dict and hasattr(model.visual, "positional_embedding"):
        resize_pos_embed(state_dict, model)
    if "positional_embedding" in state_dict and hasattr(model, "positional_embedding"):
        resize_text_pos_embed(state_dict, model)
    return state_dict


def log_fresh(model_name: str, fresh: List[str]) -> None:
    if fresh:
        logging.info(f"{model_name}: modules starting from fresh initialisation: {', '.join(fresh_modules(fresh))}")
