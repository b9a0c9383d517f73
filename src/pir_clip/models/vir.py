"""Vision Instruction Representation (VIR) on Spatial-PAE: the prior instructs which image tokens matter.

Given the ViT's projected patch tokens T (B, N, D) and the instruction p (B, D):
belief s = softmax_N(T . p / sqrt(D)); keep the ``filter_size`` tokens of highest belief in descending
order; refine them with ``depth`` PAE layers queried by p; return the residual H(F[:, 0]) (H zero-initialised)
that PIR adds to CLIP's pooled image embedding.
"""
from typing import Callable

import torch
from torch import nn

from .config import VIRCfg
from .pae import ProgressiveAttentionLayer, zero_init_linear


def belief_scores(tokens: torch.Tensor, instruction: torch.Tensor) -> torch.Tensor:
    """tokens (B, N, D), instruction (B, D) -> belief over tokens (B, N), rows sum to 1."""
    logits = torch.einsum("bnd,bd->bn", tokens, instruction) / tokens.shape[-1] ** 0.5
    return logits.float().softmax(dim=1)


def keep_top_tokens(tokens: torch.Tensor, scores: torch.Tensor, k: int) -> torch.Tensor:
    """tokens (B, N, D), scores (B, N) -> the k highest-scoring tokens, best first (B, k, D).

    Gathered with index ops for the whole batch at once (k is clamped to N)."""
    k = min(k, tokens.shape[1])
    order = scores.topk(k, dim=1, sorted=True).indices
    return tokens.gather(1, order.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


class VisionInstructionRepresentation(nn.Module):
    def __init__(
            self,
            embed_dim: int,
            prior_dim: int,
            cfg: VIRCfg,
            norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
    ):
        super().__init__()
        self.filter_size = cfg.filter_size
        # Maps the prior's output to the token space; identity when the prior already outputs embed_dim.
        self.instruction_proj = nn.Linear(prior_dim, embed_dim) if prior_dim != embed_dim else nn.Identity()
        self.layers = nn.ModuleList([
            ProgressiveAttentionLayer(embed_dim, cfg.heads, cfg.mlp_ratio, cfg.dropout, norm_layer)
            for _ in range(cfg.depth)
        ])
        self.head = zero_init_linear(embed_dim, embed_dim)

    def forward(self, tokens: torch.Tensor, prior_features: torch.Tensor) -> torch.Tensor:
        """tokens (B, N, D), prior_features (B, P) -> residual for the pooled image embedding (B, D)."""
        instruction = self.instruction_proj(prior_features.to(tokens.dtype))
        kept = keep_top_tokens(tokens, belief_scores(tokens, instruction), self.filter_size)
        query = instruction.unsqueeze(1)
        for layer in self.layers[:-1]:
            kept = layer(kept, query)
        first = torch.zeros(kept.shape[0], dtype=torch.long, device=kept.device)
        return self.head(self.layers[-1](kept, query, output_index=first)[:, 0])
