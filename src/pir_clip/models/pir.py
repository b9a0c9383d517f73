"""The PIR model: open_clip's CLIP towers plus VIR (image side) and LCA (text side) residual heads.

The CLIP part keeps open_clip's module names, so any open_clip checkpoint of the same towers loads into it
unchanged; PIR's own modules live under ``prior.``, ``vir.`` and ``lca.``. Both residual heads start at
zero: an untrained PIR returns exactly CLIP's embeddings, and fine-tuning learns the corrections.
"""
from dataclasses import asdict, is_dataclass
from typing import Any, Dict, Optional, Union

import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from open_clip.transformer import LayerNorm, LayerNormFp32, VisionTransformer, text_global_pool
from torch import nn

from .config import PIRCfg
from .lca import LanguageCycleAttention, used_length
from .prior import PriorEncoder
from .vir import VisionInstructionRepresentation


def pae_norm_layer(cast_dtype: Optional[torch.dtype]):
    # Same rule as open_clip's towers: keep LayerNorm in fp32 when the weights are cast to low precision.
    return LayerNormFp32 if cast_dtype in (torch.float16, torch.bfloat16) else LayerNorm


def _as_dict(cfg: Union[dict, Any]) -> Dict[str, Any]:
    return asdict(cfg) if is_dataclass(cfg) else dict(cfg)


class PIR(CLIP):
    """CLIP + prior encoder + VIR (Spatial-PAE) + LCA (Temporal-PAE).

    ``encode_image``: images (B, 3, H, W) -> (B, embed_dim); ``encode_text``: token ids (B, L) -> (B, embed_dim);
    ``forward`` follows open_clip's CLIP contract (tuple, or a dict with ``output_dict``).
    """

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
        vision_cfg = _as_dict(vision_cfg)
        # VIR reads the ViT's patch tokens; asking for them changes no weights.
        vision_cfg["output_tokens"] = pir_cfg.vir.enabled
        super().__init__(embed_dim, vision_cfg, text_cfg, cast_dtype=cast_dtype, **clip_kwargs)
        self.pir_cfg = pir_cfg
        norm_layer = pae_norm_layer(cast_dtype)
        if pir_cfg.vir.enabled:
            if not isinstance(self.visual, VisionTransformer):
                raise ValueError("pir_cfg.vir needs a ViT image tower (its patch tokens); "
                                 f"got {type(self.visual).__name__}. Disable VIR or use a ViT vision_cfg.")
            self.prior = PriorEncoder(pir_cfg.prior, embed_dim)
            self.vir = VisionInstructionRepresentation(embed_dim, self.prior.output_dim, pir_cfg.vir, norm_layer)
        else:
            self.prior = None
            self.vir = None
        self.lca = LanguageCycleAttention(embed_dim, pir_cfg.lca, norm_layer) if pir_cfg.lca.enabled else None

    def set_prior_frozen(self, frozen: bool = True) -> None:
        if self.prior is not None:
            self.prior.set_frozen(frozen)

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        if self.vir is None:
            return super().encode_image(image, normalize=normalize)
        pooled, tokens = self.visual(image)
        residual = self.vir(tokens @ self.visual.proj, self.prior(image))
        features = pooled + residual
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        if self.lca is None:
            return super().encode_text(text, normalize=normalize)
        cast_dtype = self.transformer.get_cast_dtype()
        x = self.token_embedding(text).to(cast_dtype) + self.positional_embedding.to(cast_dtype)
        x = self.ln_final(self.transformer(x, attn_mask=self.attn_mask))  # (B, L, width)
        eot = self.eot_index(text)
        pooled = self.project_text(text_global_pool(x, text, self.text_pool_type, eos_token_id=self.text_eos_id))
        used = used_length(eot, x.shape[1])  # on the CPU only the batch's longest caption, else all L
        features = pooled + self.lca(self.project_text(x[:, :used]), eot)
        return F.normalize(features, dim=-1) if normalize else features

    def project_text(self, x: torch.Tensor) -> torch.Tensor:
        if self.text_projection is None:
            return x
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection

    def eot_index(self, text: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids -> (B,) position that CLIP pools from (the end-of-text token)."""
        if self.text_pool_type == "argmax":
            return text.argmax(dim=-1)
        if self.text_pool_type == "eos":
            return (text == self.text_eos_id).int().argmax(dim=-1)
        if self.text_pool_type == "last":
            return torch.full((text.shape[0],), text.shape[1] - 1, device=text.device, dtype=torch.long)
        raise ValueError(f"LCA needs a pooled end-of-text position; text pool_type {self.text_pool_type!r} "
                         "has none. Disable LCA or use pool_type 'argmax'/'eos'/'last'.")

    def forward_intermediates(self, *args, **kwargs):
        raise NotImplementedError(
            "PIR.forward_intermediates would return CLIP's features without the VIR/LCA residuals; "
            "use encode_image/encode_text, or model.visual.forward_intermediates for the ViT alone.")
