"""Naive references that transcribe METHOD.md literally, for tests and benchmarks only.

Deliberately loop over samples: these are the slow, obviously-correct versions the vectorised library code
is checked against. Do not import them from the library.
"""
from typing import Iterable, Optional, Sequence

import torch
from torch import Tensor


def naive_affiliation_loss(
        image_features: Tensor,
        text_features: Tensor,
        class_ids: Sequence[int],
        logit_scale: Tensor,
        rows: Optional[Iterable[int]] = None,
) -> Tensor:
    """METHOD.md section 4, sample by sample.

    image_features, text_features: (B, d); class_ids: B ints; logit_scale: scalar. For every sample i the
    centres cI_i, cT_i are the means of the features of all samples with i's class; each row's
    cross-entropy is computed separately. ``rows`` restricts the rows to a subset of sample indices while
    columns and centres still use the whole batch (open_clip's ``local_loss``); default: every sample.
    """
    ids = [int(y) for y in class_ids]
    batch = len(ids)
    image_centres, text_centres = [], []
    for i in range(batch):
        members = [k for k in range(batch) if ids[k] == ids[i]]
        image_centres.append(torch.stack([image_features[k] for k in members]).mean(0))
        text_centres.append(torch.stack([text_features[k] for k in members]).mean(0))
    image_centres = torch.stack(image_centres)  # (B, d)
    text_centres = torch.stack(text_centres)  # (B, d)

    rows = list(range(batch)) if rows is None else list(rows)
    image_to_text, text_to_image = [], []
    for i in rows:
        logits = logit_scale * (text_centres @ image_features[i])  # (B,) against every column
        image_to_text.append(torch.logsumexp(logits, 0) - logits[i])
        logits = logit_scale * (image_centres @ text_features[i])
        text_to_image.append(torch.logsumexp(logits, 0) - logits[i])
    return (torch.stack(image_to_text).mean() + torch.stack(text_to_image).mean()) / 2


# ---------------------------------------------------------------------------------------------------------
# VIR and LCA (METHOD.md section 2), one sample and one layer at a time, from the modules' raw weights.
# Nothing here calls nn.MultiheadAttention, nn.LayerNorm or the library's helpers: attention, layer norm and
# the FFN are written out, so a wrong mask, head split, token order or residual in the library shows up.

def _layer_norm(x: Tensor, norm) -> Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def _attention(attn, queries: Tensor, keys_values: Tensor) -> Tensor:
    """Multi-head attention of one sample: queries (Q, D), keys_values (K, D) -> (Q, D), all K keys valid."""
    dim = queries.shape[-1]
    heads = attn.num_heads
    head_dim = dim // heads
    w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = attn.in_proj_bias.chunk(3)
    outputs = []
    for h in range(heads):
        part = slice(h * head_dim, (h + 1) * head_dim)
        q = queries @ w_q[part].T + b_q[part]  # (Q, dh)
        k = keys_values @ w_k[part].T + b_k[part]  # (K, dh)
        v = keys_values @ w_v[part].T + b_v[part]  # (K, dh)
        weights = torch.softmax(q @ k.T / head_dim ** 0.5, dim=-1)  # (Q, K)
        outputs.append(weights @ v)
    return torch.cat(outputs, dim=-1) @ attn.out_proj.weight.T + attn.out_proj.bias


def _ffn(x: Tensor, mlp) -> Tensor:
    hidden = x @ mlp[0].weight.T + mlp[0].bias
    hidden = 0.5 * hidden * (1 + torch.erf(hidden / 2 ** 0.5))  # exact GELU
    return hidden @ mlp[3].weight.T + mlp[3].bias


def naive_pae_layer(layer, x: Tensor, instruction: Tensor) -> Tensor:
    """One progressive layer for one sample (METHOD.md section 2):

        A = LN(X + SelfAttn(X));  F = LN(A + CrossAttn(query = M q, keys = values = A));  F = LN(F + FFN(F))

    x (N, D): the sample's tokens (only valid ones: padding is simply absent); instruction (Q, D) with
    Q == 1 (VIR: the instruction, whose attended summary every token receives) or Q == N (LCA: one
    query per token). Returns (N, D)."""
    a = _layer_norm(x + _attention(layer.self_attn, x, x), layer.ln_self)
    query = instruction @ layer.query_map.weight.T + layer.query_map.bias
    f = _layer_norm(a + _attention(layer.cross_attn, query, a), layer.ln_cross)  # (1, D) broadcasts over N
    return _layer_norm(f + _ffn(f, layer.mlp), layer.ln_mlp)


def naive_vir(vir, tokens: Tensor, prior_features: Tensor) -> Tensor:
    """VIR residual, sample by sample: tokens (B, N, D), prior_features (B, P) -> H(F[0]) (B, D)."""
    out = []
    for t, prior in zip(tokens, prior_features):
        if isinstance(vir.instruction_proj, torch.nn.Linear):
            p = prior @ vir.instruction_proj.weight.T + vir.instruction_proj.bias
        else:
            p = prior
        dim = t.shape[-1]
        belief = torch.softmax(t @ p / dim ** 0.5, dim=0).detach()  # (N,) over tokens; only ranks it
        ranked = sorted(range(t.shape[0]), key=lambda n: -belief[n].item())  # highest belief first
        f = t[ranked[:vir.filter_size]]  # (k, D)
        for layer in vir.layers:
            f = naive_pae_layer(layer, f, p[None])
        out.append(f[0] @ vir.head.weight.T + vir.head.bias)
    return torch.stack(out)


def naive_lca(lca, tokens: Tensor, eot_index: Tensor) -> Tensor:
    """LCA residual, sample by sample: tokens (B, L, D), eot_index (B,) -> H_t(U_final[EOT]) (B, D).

    Each caption is cut at its own EOT: the padding after it takes no part in any attention."""
    out = []
    for t, eot in zip(tokens, eot_index.tolist()):
        states = t[:eot + 1]  # U_0
        for step in lca.steps:
            states = naive_pae_layer(step, states, states)  # queries: the previous step's states
        out.append(states[eot] @ lca.head.weight.T + lca.head.bias)
    return torch.stack(out)
