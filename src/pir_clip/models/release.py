"""The image path of the authors' PIR-CLIP release, for loading and reproducing their checkpoints.

Checkpoints of the release carry ``res_visual.*`` (a ModifiedResNet prior) and ``vision_proj_res.*``
(a linear map from the prior to the ViT width) next to open_clip's CLIP keys. Their image forward
(METHOD.md section 3) is reproduced step by step in :meth:`PIRRelease.encode_image`, including its
quirks; the text side is the plain CLIP text tower.
"""
from typing import Optional, Union

import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from open_clip.transformer import VisionTransformer
from torch import nn

from .config import PIRCfg
from .pir import _as_dict
from .prior import build_prior, freeze

class PIRRelease(CLIP):
    """CLIP ViT + the release's instruction token. Module names match the release's checkpoints."""

    def __init__(
            self,
            embed_dim: int,
            vision_cfg: Union[CLIPVisionCfg, dict],
            text_cfg: Union[CLIPTextCfg, dict],
            pir_cfg: Union[PIRCfg, dict, None] = None,
            cast_dtype: Optional[torch.dtype] = None,
            **clip_kwargs,
    ):
        """``clip_kwargs``: the rest of open_clip CLIP's arguments (quick_gelu, init_logit_scale, ...)."""
        pir_cfg = pir_cfg if isinstance(pir_cfg, PIRCfg) else PIRCfg.from_dict(pir_cfg)
        super().__init__(embed_dim, _as_dict(vision_cfg), text_cfg, cast_dtype=cast_dtype, **clip_kwargs)
        if not isinstance(self.visual, VisionTransformer):
            raise ValueError(f"the release architecture needs a ViT image tower, got {type(self.visual).__name__}")
        if pir_cfg.prior.type != "modified_resnet":
            raise ValueError("the release architecture's prior is a ModifiedResNet (pir_cfg.prior.type)")
        self.pir_cfg = pir_cfg
        self.res_visual, prior_dim = build_prior(pir_cfg.prior, embed_dim)
        self.vision_proj_res = nn.Linear(prior_dim, self.visual.transformer.width)
        self.prior_frozen = False
        self.set_prior_frozen(pir_cfg.prior.frozen)

    def set_prior_frozen(self, frozen: bool = True) -> None:
        self.prior_frozen = frozen
        freeze(self.res_visual, frozen)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.prior_frozen:
            self.res_visual.eval()
        return self

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        visual = self.visual
        # 1. Instruction token from the prior: (B, 1, W), no positional embedding.
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.prior_frozen):
            prior = self.res_visual(image)
        y = self.vision_proj_res(prior.to(self.vision_proj_res.weight.dtype)).unsqueeze(1)
        # 2. ViT embedding: patches, class token, positions, patch dropout, ln_pre -> (B, N, W).
        x = visual.conv1(image.to(visual.conv1.weight.dtype))
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        x = visual.ln_pre(visual.patch_dropout(x))
        # 3. Belief over tokens, unscaled.
        belief = torch.softmax((x @ y.transpose(1, 2)).squeeze(-1), dim=-1)  # (B, N)
        # 4. The weight at position j comes from the INDEX of the j-th ranked token (the release's quirk).
        order = torch.sort(belief, dim=1, descending=True, stable=True).indices
        index_weight = 1.0 / torch.sqrt(order.to(belief.dtype) + 1)
        # 5. L2 normalisation over the token axis (dim 1), as the release does.
        x = F.normalize(x * belief.unsqueeze(-1) + x * index_weight.unsqueeze(-1), dim=1)
        # 6. Prepend the instruction token, run the ViT blocks, pool the instruction token's position.
        x = visual.transformer(torch.cat([y.to(x.dtype), x], dim=1))
        features = visual.ln_post(x)[:, 0] @ visual.proj
        return F.normalize(features, dim=-1) if normalize else features
