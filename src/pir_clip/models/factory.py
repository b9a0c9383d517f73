"""One entry point for every model: PIR configs are built here, every other name goes to open_clip.

``create_model_and_transforms('PIR', pretrained='RemoteCLIP-ViT-B-32.pt', prior_pretrained='RN50.pt')``
builds PIR with the CLIP checkpoint in its CLIP part and the RN50 weights in its prior;
``create_model_and_transforms('ViT-B-32', pretrained=...)`` builds a plain open_clip model the same way.
A checkpoint is recognised by its keys: the authors' release format builds the release-compatible model
(:class:`~pir_clip.models.release.PIRRelease`), a PIR checkpoint loads strictly, a CLIP checkpoint fills the
CLIP part and the PIR modules start fresh (logged).
"""
import copy
import logging
import os
import re
from dataclasses import asdict
from typing import Any, Dict, Optional, Tuple, Union

import open_clip
import torch
from open_clip.model import convert_weights_to_lp, get_cast_dtype, set_model_preprocess_cfg
from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict
from torch import nn

from .checkpoint import (
    PIR_PREFIXES, RELEASE_PREFIXES, CheckpointError, StateDict, checkpoint_format, load_into,
    load_state_dict, log_fresh, resize_to_model,
)
from .config import PIRCfg, PriorCfg
from .pir import PIR
from .prior import prior_cfg_from_weights, prior_state_dict_from
from .registry import open_clip_original
from .release import PIRRelease

get_tokenizer = open_clip.get_tokenizer


def is_pir_model(model_name: str) -> bool:
    cfg = open_clip.get_model_config(model_name)
    return cfg is not None and "pir_cfg" in cfg


def get_model_config(model_name: str) -> Dict[str, Any]:
    """A copy of a registered model config; a clear error suggesting close names for unknown ones."""
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        import difflib
        close = difflib.get_close_matches(model_name, open_clip.list_models(), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model name {model_name!r}.{hint} See open_clip.list_models() for all names.")
    return copy.deepcopy(cfg)


def release_prior_cfg(state_dict: StateDict, base: Optional[PriorCfg] = None) -> PriorCfg:
    """The release prior's ModifiedResNet shape, read off its ``res_visual.*`` weights (``base``: the model
    config's prior, for the head width; see :func:`prior_cfg_from_weights`)."""
    trunk = {k[len("res_visual."):]: v for k, v in state_dict.items() if k.startswith("res_visual.")}
    return prior_cfg_from_weights(trunk, base or PriorCfg(frozen=True), "release-format checkpoint")


def checkpoint_prior_cfg(state_dict: StateDict, base: PriorCfg, source: str) -> PriorCfg:
    """The prior shape a PIR checkpoint was trained with (``prior.trunk.*``), so it loads whatever prior
    width it used; ``base`` when it has no ModifiedResNet prior."""
    trunk = {k[len("prior.trunk."):]: v for k, v in state_dict.items() if k.startswith("prior.trunk.")}
    if base.type != "modified_resnet" or "attnpool.c_proj.weight" not in trunk:
        return base
    return prior_cfg_from_weights(trunk, base, source)


def set_precision(model: nn.Module, precision: str, device: Union[str, torch.device]) -> None:
    """Same conventions as open_clip: 'fp16'/'bf16' cast weights but keep LayerNorm fp32; 'pure_*' casts all."""
    if precision in ("fp16", "bf16"):
        model.to(device=device)
        convert_weights_to_lp(model, dtype=torch.float16 if precision == "fp16" else torch.bfloat16)
    elif precision in ("pure_fp16", "pure_bf16"):
        model.to(device=device, dtype=torch.float16 if precision == "pure_fp16" else torch.bfloat16)
    else:
        model.to(device=device)


def _apply_overrides(cfg: Dict[str, Any], force_quick_gelu: bool, force_image_size, force_context_length,
                     force_patch_dropout) -> None:
    if force_quick_gelu:
        cfg["quick_gelu"] = True
    if force_image_size is not None:
        cfg["vision_cfg"]["image_size"] = force_image_size
    if force_context_length is not None:
        cfg["text_cfg"]["context_length"] = force_context_length
    if force_patch_dropout is not None:
        cfg["vision_cfg"]["patch_dropout"] = force_patch_dropout


def _read_pretrained(model_name: str, pretrained: Optional[str], clip_model: Optional[str],
                     cache_dir: Optional[str]) -> Tuple[Optional[StateDict], Dict[str, Any]]:
    """A local file is read here (safely); anything else is an open_clip pretrained tag for ``clip_model``."""
    if not pretrained:
        return None, {}
    if os.path.isfile(pretrained):
        return load_state_dict(pretrained), {}
    if os.sep in pretrained or re.search(r"\.(pt|pth|bin|safetensors|ckpt)$", pretrained):
        raise CheckpointError(f"checkpoint file not found: {pretrained}")
    base = clip_model or model_name
    if open_clip.get_pretrained_cfg(base, pretrained) == {}:
        tags = open_clip.list_pretrained_tags_by_model(base)
        raise ValueError(f"--pretrained {pretrained!r} is neither a file nor an open_clip tag of {base} "
                         f"(tags: {tags or 'none'})")
    logging.info(f"Loading open_clip {base} weights '{pretrained}' for the CLIP part of {model_name}.")
    base_model = open_clip_original("create_model")(base, pretrained=pretrained, cache_dir=cache_dir)
    return base_model.state_dict(), open_clip.get_pretrained_cfg(base, pretrained)


def create_model(
        model_name: str,
        pretrained: Optional[str] = None,
        *,
        prior_pretrained: Optional[str] = None,
        precision: str = "fp32",
        device: Union[str, torch.device] = "cpu",
        output_dict: Optional[bool] = None,
        unlock_prior: bool = False,
        enable_vir: Optional[bool] = None,
        enable_lca: Optional[bool] = None,
        force_quick_gelu: bool = False,
        force_image_size: Optional[int] = None,
        force_context_length: Optional[int] = None,
        force_patch_dropout: Optional[float] = None,
        cache_dir: Optional[str] = None,
        **model_kwargs,
) -> nn.Module:
    """Builds ``model_name`` and loads ``pretrained`` (a file path or an open_clip tag) into it.

    PIR options: ``prior_pretrained`` (open_clip RN50 / release / timm or torchvision ResNet checkpoint for
    the prior), ``unlock_prior`` (train the prior), ``enable_vir`` / ``enable_lca`` (ablations; None keeps
    what the config or a PIR checkpoint says). Other arguments as open_clip.create_model.
    """
    cfg = get_model_config(model_name)
    pir_cfg = PIRCfg.from_dict(cfg.pop("pir_cfg")) if "pir_cfg" in cfg else None
    if pir_cfg is None and pretrained and not os.path.isfile(pretrained):
        # A plain open_clip model with a pretrained tag: open_clip does everything.
        return open_clip_original("create_model")(
            model_name, pretrained, precision=precision, device=device, force_quick_gelu=force_quick_gelu,
            force_image_size=force_image_size, force_context_length=force_context_length,
            force_patch_dropout=force_patch_dropout, cache_dir=cache_dir, output_dict=output_dict, **model_kwargs)
    _apply_overrides(cfg, force_quick_gelu, force_image_size, force_context_length, force_patch_dropout)

    state_dict, tag_cfg = _read_pretrained(model_name, pretrained, pir_cfg and pir_cfg.clip_model, cache_dir)
    fmt = checkpoint_format(state_dict) if state_dict is not None else None
    if fmt == "release":
        if pir_cfg is None or pir_cfg.architecture != "release":
            logging.info(f"{pretrained} is an authors' release checkpoint: building the release-compatible model.")
        pir_cfg = pir_cfg or PIRCfg()
        pir_cfg.architecture = "release"
        pir_cfg.prior = release_prior_cfg(state_dict, pir_cfg.prior)
    elif fmt == "pir" and pir_cfg is not None and pir_cfg.architecture == "pir":
        pir_cfg.vir.enabled = any(k.startswith("vir.") for k in state_dict)
        pir_cfg.lca.enabled = any(k.startswith("lca.") for k in state_dict)
        pir_cfg.prior = checkpoint_prior_cfg(state_dict, pir_cfg.prior, str(pretrained))
    if pir_cfg is not None:
        if enable_vir is not None:
            pir_cfg.vir.enabled = enable_vir
        if enable_lca is not None:
            pir_cfg.lca.enabled = enable_lca
        if unlock_prior:
            pir_cfg.prior.frozen = False
    prior_state = read_prior_weights(prior_pretrained, model_name, pir_cfg) if prior_pretrained else None
    if prior_state is not None and pir_cfg.prior.type == "modified_resnet":
        # The prior takes its shape, output width included, from its weights: an open_clip RN50 (1024 out)
        # and the release's res_visual (512 out) both load into PIR and PIR-release. VIR maps the prior's
        # width to embed_dim (instruction_proj), the release path to the ViT width (vision_proj_res).
        pir_cfg.prior = prior_cfg_from_weights(prior_state, pir_cfg.prior, f"--prior-pretrained {prior_pretrained}")

    cast_dtype = get_cast_dtype(precision)
    custom_text = cfg.pop("custom_text", False) or "hf_model_name" in cfg["text_cfg"]
    if pir_cfg is None:
        model = open_clip_class(cfg, custom_text)(**cfg, cast_dtype=cast_dtype, **model_kwargs)
    else:
        if custom_text or "multimodal_cfg" in cfg:
            raise ValueError(f"{model_name}: PIR needs open_clip's plain CLIP towers (no custom/HF text tower)")
        model_class = PIRRelease if pir_cfg.architecture == "release" else PIR
        model = model_class(**cfg, pir_cfg=pir_cfg, cast_dtype=cast_dtype, **model_kwargs)

    prior_loaded = fmt in ("pir", "release")
    if state_dict is not None:
        allowed_missing = PIR_PREFIXES + RELEASE_PREFIXES if fmt == "clip" else ()
        fresh = load_into(model, resize_to_model(state_dict, model), str(pretrained), allowed_missing)
        prior_loaded = prior_loaded and not any(k.startswith(("prior.", "res_visual.")) for k in fresh)
        log_fresh(model_name, fresh)
    if prior_state is not None:
        load_into(prior_trunk(model), prior_state, f"prior checkpoint {prior_pretrained}")
        logging.info(f"Loaded prior weights from {prior_pretrained} ({describe_prior(pir_cfg.prior)}).")
        prior_loaded = True
    if pir_cfg is not None and _has_prior(model) and pir_cfg.prior.frozen and not prior_loaded:
        logging.warning(f"{model_name}: the prior encoder is frozen but has random weights; pass prior "
                        "weights (--prior-pretrained) or unfreeze it (--unlock-prior).")

    set_precision(model, precision, device)
    preprocess = merge_preprocess_dict(asdict(PreprocessCfg()), tag_cfg)
    preprocess["size"] = model.visual.image_size
    set_model_preprocess_cfg(model, preprocess)
    if output_dict:
        model.output_dict = True
    return model


def open_clip_class(cfg: Dict[str, Any], custom_text: bool):
    """The open_clip class for a config, chosen as open_clip's factory does (CLIP, CustomTextCLIP, CoCa)."""
    if custom_text and "hf_model_name" in cfg["text_cfg"]:
        cfg["text_cfg"]["hf_model_pretrained"] = False  # the checkpoint brings the text weights; no download
    if "multimodal_cfg" in cfg:
        return open_clip.CoCa
    return open_clip.CustomTextCLIP if custom_text else open_clip.CLIP


def _has_prior(model: nn.Module) -> bool:
    return getattr(model, "prior", None) is not None or hasattr(model, "res_visual")


def prior_trunk(model: nn.Module) -> nn.Module:
    if isinstance(model, PIRRelease):
        return model.res_visual
    if isinstance(model, PIR) and model.prior is not None:
        return model.prior.trunk
    raise ValueError(f"{type(model).__name__} has no prior encoder to load weights into (is VIR disabled?)")


def read_prior_weights(path: str, model_name: str, pir_cfg: Optional[PIRCfg]) -> StateDict:
    """The prior trunk's weights from ``path`` (open_clip RN50, release, PIR or timm/torchvision file)."""
    if pir_cfg is None or pir_cfg.architecture == "pir" and not pir_cfg.vir.enabled:
        raise ValueError(f"--prior-pretrained {path}: {model_name} has no prior encoder"
                         + (" (VIR is disabled)" if pir_cfg is not None else ""))
    return prior_state_dict_from(load_state_dict(path), path)


def describe_prior(cfg: PriorCfg) -> str:
    if cfg.type == "timm":
        return f"timm {cfg.timm_model_name}"
    return (f"ModifiedResNet layers {list(cfg.layers)}, width {cfg.width}, {cfg.image_size} px, "
            f"output {cfg.output_dim}")


def load_prior(model: nn.Module, path: str) -> None:
    """Loads prior weights from an open_clip RN50, release, PIR or timm/torchvision ResNet checkpoint into the
    prior of an existing model, whose shape must match (``create_model(..., prior_pretrained=path)`` instead
    builds the prior in the shape the file holds)."""
    trunk = prior_trunk(model)
    state_dict = prior_state_dict_from(load_state_dict(path), path)
    load_into(trunk, state_dict, f"prior checkpoint {path}")
    logging.info(f"Loaded prior weights from {path}.")


def create_model_and_transforms(
        model_name: str,
        pretrained: Optional[str] = None,
        *,
        aug_cfg: Optional[Dict[str, Any]] = None,
        image_mean: Optional[Tuple[float, ...]] = None,
        image_std: Optional[Tuple[float, ...]] = None,
        image_interpolation: Optional[str] = None,
        image_resize_mode: Optional[str] = None,
        **kwargs,
):
    """Returns (model, preprocess_train, preprocess_val), like open_clip.create_model_and_transforms."""
    model = create_model(model_name, pretrained, **kwargs)
    overrides = {k: v for k, v in dict(mean=image_mean, std=image_std, interpolation=image_interpolation,
                                       resize_mode=image_resize_mode).items() if v is not None}
    cfg = PreprocessCfg(**merge_preprocess_dict(model.visual.preprocess_cfg, overrides))
    return model, image_transform_v2(cfg, is_train=True, aug_cfg=aug_cfg), image_transform_v2(cfg, is_train=False)
