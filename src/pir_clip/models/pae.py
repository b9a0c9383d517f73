"""The progressive attention encoder (PAE) layer shared by VIR (Spatial-PAE) and LCA (Temporal-PAE).

One layer, in the notation of METHOD.md section 2::

    A = LN(X + SelfAttn(X))                       # SelfAttnBlock
    F = LN(A + CrossAttn(query=M q, keys=values=A))
    F = LN(F + FFN(F))

``q`` is the "instruction": the prior embedding on the image side (one query, whose attended summary is
broadcast to every token as a residual) or the previous step's token states on the text side (one query
per token). Post-norm, as in PIR-ITR's PAE blocks.
"""
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn


def single_query_attention(attn: nn.MultiheadAttention, query: torch.Tensor, kv: torch.Tensor,
                           key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``attn(query, kv, kv)`` for ONE query per row, in O(N*D*H + D^2) instead of O(N*D^2).

    query (B, 1, D), kv (B, N, D) -> (B, 1, D). With a single query, head h's scores
    q_h . (W_k,h kv_n + b_k,h) equal (W_k,h^T q_h) . kv_n plus a constant that softmax ignores, and the
    value projection commutes with the attention-weighted sum (weights sum to one, so b_v passes through):
    no key or value is ever projected. Uses ``attn``'s own weights and attention dropout.
    """
    batch, n, dim = kv.shape
    heads = attn.num_heads
    head_dim = dim // heads
    w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
    b_q, _, b_v = attn.in_proj_bias.chunk(3)
    q = F.linear(query[:, 0], w_q, b_q).view(batch, heads, head_dim) * head_dim ** -0.5
    folded = torch.einsum("bhe,hed->bhd", q, w_k.view(heads, head_dim, dim))  # (B, H, D)
    scores = torch.einsum("bhd,bnd->bhn", folded, kv)  # (B, H, N)
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask.unsqueeze(1), float("-inf"))
    weights = F.dropout(scores.softmax(dim=-1), p=attn.dropout, training=attn.training)
    pooled = torch.einsum("bhn,bnd->bhd", weights, kv)  # (B, H, D)
    heads_out = torch.einsum("bhd,hed->bhe", pooled, w_v.view(heads, head_dim, dim)) + b_v.view(heads, head_dim)
    return attn.out_proj(heads_out.reshape(batch, 1, dim))



class ProgressiveAttentionLayer(nn.Module):
    def __init__(
            self,
            dim: int,
            heads: int,
            mlp_ratio: float = 4.0,
            dropout: float = 0.0,
            norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
    ):
        super().__init__()
        if dim % heads:
            raise ValueError(f"PAE width {dim} is not divisible by its number of heads {heads}")
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ln_self = norm_layer(dim)
        self.query_map = nn.Linear(dim, dim)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ln_cross = norm_layer(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.ln_mlp = norm_layer(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
            self,
            x: torch.Tensor,
            query: torch.Tensor,
            key_padding_mask: Optional[torch.Tensor] = None,
            output_index: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """x: (B, N, D) tokens; query: (B, Q, D) with Q == 1 (broadcast to all tokens) or Q == N;
        key_padding_mask: (B, N) bool, True where a token must be ignored as a key. Returns (B, N, D).

        ``output_index`` (B,) long: compute the output at one position per row only, (B, 1, D). The last
        layer of VIR and LCA needs just one token, and every token's output depends on the others only
        through A, so the cross-attention query and the FFN run for that token alone: same values, less work.
        """
        attended = self.self_attn(x, x, x, key_padding_mask=key_padding_mask, need_weights=False)[0]
        a = self.ln_self(x + self.dropout(attended))
        residual = a
        if output_index is not None:
            rows = torch.arange(x.shape[0], device=x.device)
            residual = a[rows, output_index].unsqueeze(1)
            if query.shape[1] != 1:
                query = query[rows, output_index].unsqueeze(1)
        if query.shape[1] == 1:  # VIR's instruction, or the one output token of a last layer
            activation = single_query_attention(self.cross_attn, self.query_map(query), a, key_padding_mask)
        else:
            activation = self.cross_attn(
                self.query_map(query), a, a, key_padding_mask=key_padding_mask, need_weights=False)[0]
        f = self.ln_cross(residual + self.dropout(activation))
        return self.ln_mlp(f + self.dropout(self.mlp(f)))


def zero_init_linear(in_dim: int, out_dim: int) -> nn.Linear:
    """A linear residual head that starts as the zero map, so an untrained PIR equals CLIP exactly."""
    head = nn.Linear(in_dim, out_dim)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head
