"""Language Cycle Attention (LCA) on Temporal-PAE: the previous step activates the current one.

Given the text tower's projected token states U_0 (B, L, D) and each caption's end-of-text position,
run ``cycles`` PAE steps; step i self-attends U_{i-1} and lets the linearly mapped U_{i-1} query the result.
Returns the residual H_t(U_final at EOT) (H_t zero-initialised) that PIR adds to CLIP's text embedding.
"""
from typing import Callable

import torch
from torch import nn

from .config import LCACfg
from .pae import ProgressiveAttentionLayer, zero_init_linear


def padding_mask(eot_index: torch.Tensor, length: int) -> torch.Tensor:
    """eot_index (B,) -> (B, length) bool, True for the padding positions after each EOT."""
    positions = torch.arange(length, device=eot_index.device)
    return positions.unsqueeze(0) > eot_index.unsqueeze(1)


def used_length(eot_index: torch.Tensor, length: int) -> int:
    """How many leading positions LCA must see: up to the batch's last EOT on the CPU, where reading that
    value costs nothing; the whole ``length`` on an accelerator or under torch.compile, where reading it
    would synchronise the host with the device and break the graph. Positions after every caption's EOT
    are masked padding either way, so both give the same result."""
    if eot_index.device.type != "cpu" or torch.compiler.is_compiling() or eot_index.numel() == 0:
        return length
    return min(length, int(eot_index.max()) + 1)


class LanguageCycleAttention(nn.Module):
    def __init__(self, embed_dim: int, cfg: LCACfg, norm_layer: Callable[[int], nn.Module] = nn.LayerNorm):
        super().__init__()
        self.steps = nn.ModuleList([
            ProgressiveAttentionLayer(embed_dim, cfg.heads, cfg.mlp_ratio, cfg.dropout, norm_layer)
            for _ in range(cfg.cycles)
        ])
        self.head = zero_init_linear(embed_dim, embed_dim)

    def forward(self, tokens: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        """tokens (B, L, D), eot_index (B,) -> residual for the pooled text embedding (B, D).

        Runs over the L positions it is given with the padding after each EOT masked out as keys (PIR
        passes the first :func:`used_length` positions). Masked padding is exact: a padding position is
        never a key, and as a query it shapes only its own output, which nothing reads.
        """
        mask = padding_mask(eot_index, tokens.shape[1])
        states = tokens
        for step in self.steps[:-1]:
            states = step(states, states, key_padding_mask=mask)
        return self.head(self.steps[-1](states, states, key_padding_mask=mask, output_index=eot_index)[:, 0])
