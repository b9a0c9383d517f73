"""The prior (instruction) encoder: an RS scene-recognition network that gives one vector per image.

Frozen by default (no gradients, BatchNorm statistics fixed), as in PIR-ITR and the PIR-CLIP figure;
``PriorCfg.frozen = False`` trains it.
"""
import logging
from typing import Dict, Tuple

import torch
from open_clip.modified_resnet import ModifiedResNet
from torch import nn

from .config import PriorCfg


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
