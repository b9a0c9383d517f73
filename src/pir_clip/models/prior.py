"""The prior (instruction) encoder: an RS scene-recognition network that gives one vector per image.

Frozen by default (no gradients, BatchNorm statistics fixed), as in PIR-ITR and the PIR-CLIP figure;
``PriorCfg.frozen = False`` trains it.
"""
import dataclasses
import logging
import math
from typing import Dict, Tuple

import torch
from open_clip.modified_resnet import ModifiedResNet
from torch import nn

from .checkpoint import CheckpointError
from .config import PriorCfg

OPEN_CLIP_RESNET_HEAD_WIDTH = 64  # open_clip's ModifiedResNet configs: heads = width * 32 // 64


def build_prior(cfg: PriorCfg, embed_dim: int) -> Tuple[nn.Module, int]:
    """Returns (trunk, output width). ModifiedResNet outputs ``cfg.output_dim`` (default ``embed_dim``);
    a timm model outputs its pooled feature width."""
    if cfg.type == "modified_resnet":
        out_dim = cfg.output_dim or embed_dim
        trunk = ModifiedResNet(
            layers=list(cfg.layers),
            output_dim=out_dim,
            heads=cfg.width * 32 // cfg.head_width,
            image_size=cfg.image_size,
            width=cfg.width,
        )
        return trunk, out_dim
    import timm  # imported lazily: only timm priors need it
    trunk = timm.create_model(cfg.timm_model_name, pretrained=False, num_classes=0)
    return trunk, trunk.num_features


def freeze(module: nn.Module, frozen: bool = True) -> None:
    """Stops (or restarts) gradients into ``module``; a frozen module is also put in eval mode so its
    BatchNorm statistics stay fixed. Callers re-apply eval mode after every ``train()``."""
    for param in module.parameters():
        param.requires_grad = not frozen
    if frozen:
        module.eval()


class PriorEncoder(nn.Module):
    """Wraps the prior trunk. ``forward``: images (B, 3, H, W) -> instruction features (B, P)."""

    def __init__(self, cfg: PriorCfg, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        self.trunk, self.output_dim = build_prior(cfg, embed_dim)
        self.frozen = False
        self.set_frozen(cfg.frozen)

    def set_frozen(self, frozen: bool = True) -> None:
        self.frozen = frozen
        freeze(self.trunk, frozen)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            # BatchNorm running statistics of a frozen prior must not drift in train mode.
            self.trunk.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = self.cfg.image_size
        if self.cfg.type == "modified_resnet" and images.shape[-2:] != (size, size):
            # ModifiedResNet's attention pool has a fixed grid, so feed it the size it was built for.
            images = nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        if self.frozen:
            with torch.no_grad():
                return self.trunk(images)
        return self.trunk(images)


def prior_state_dict_from(state_dict: Dict[str, torch.Tensor], source: str) -> Dict[str, torch.Tensor]:
    """Picks the prior trunk's weights out of a checkpoint of another kind.

    Accepted: an open_clip RN50 checkpoint (``visual.*``), the authors' release (``res_visual.*``),
    a PIR checkpoint (``prior.trunk.*``), or a bare trunk state dict (timm / torchvision ResNet-50 layout,
    whose classifier ``fc.*`` is dropped because the prior is used as a feature extractor).
    """
    for prefix in ("prior.trunk.", "res_visual.", "visual."):
        picked = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if picked:
            logging.info(f"Prior weights: using the '{prefix}*' entries of {source} ({len(picked)} tensors).")
            return picked
    dropped = sorted(k for k in state_dict if k.startswith("fc."))
    if dropped:
        logging.info(f"Prior weights: dropping the classifier {dropped} of {source}; the prior is a feature extractor.")
    return {k: v for k, v in state_dict.items() if not k.startswith("fc.")}


def prior_cfg_from_weights(state_dict: Dict[str, torch.Tensor], base: PriorCfg, source: str) -> PriorCfg:
    """The ModifiedResNet a prior checkpoint holds: ``base`` with layers, width, input size and output width
    read off the trunk's weights (keys without prefix, as :func:`prior_state_dict_from` returns them).

    So any ModifiedResNet loads whole: open_clip's RN50 (attention pool out 1024), the authors' release
    (``res_visual``, out 512), a tiny one. The head count cannot be read off weights (heads only split
    the attention pool's width): heads are ``base.head_width`` wide when the checkpoint has the config's
    width (e.g. a prior trained with this config), else 64 wide, the rule of every open_clip ResNet.
    """
    try:
        layers = tuple(len({k.split(".")[1] for k in state_dict if k.startswith(f"layer{i}.")}) for i in range(1, 5))
        width = 2 * state_dict["conv1.weight"].shape[0]  # ModifiedResNet's stem starts at width / 2
        output_dim = state_dict["attnpool.c_proj.weight"].shape[0]
        grid = math.isqrt(state_dict["attnpool.positional_embedding"].shape[0] - 1)
    except KeyError as exc:
        raise CheckpointError(
            f"{source} does not hold a ModifiedResNet prior (no {exc.args[0]!r}); for a timm or torchvision "
            "ResNet set pir_cfg.prior.type to 'timm' with its timm_model_name") from exc
    if not all(layers):
        raise CheckpointError(f"{source}: a ModifiedResNet prior needs blocks in layer1..layer4, found {layers}")
    head_width = base.head_width if width == base.width else OPEN_CLIP_RESNET_HEAD_WIDTH
    return dataclasses.replace(base, type="modified_resnet", layers=layers, width=width, head_width=head_width,
                               output_dim=output_dim, image_size=grid * 32)
