"""VIR and LCA against the equations: the optimised modules (batched, masked, top-k gathered, last layer at one
token, single-query attention folded into the weights) equal the sample-by-sample transcription of
METHOD.md section 2 in tests/_reference.py, in eval mode and in train mode with dropout 0, in value and in
gradient."""
import pytest
import torch

from _reference import naive_lca, naive_vir
from pir_clip.models.config import LCACfg, VIRCfg
from pir_clip.models.lca import LanguageCycleAttention
from pir_clip.models.vir import VisionInstructionRepresentation

DIM, HEADS = 32, 4


def randomised(module, seed):
    """Every weight random (heads and biases included, which start at zero), so no term can hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=g, dtype=param.dtype) * 0.3)
    return module


def inputs(seed, *shape):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(True)


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("prior_dim,filter_size", [(DIM, 5), (24, 9), (24, 40)])
def test_vir_equals_the_equations(mode, prior_dim, filter_size):
    cfg = VIRCfg(filter_size=filter_size, depth=2, heads=HEADS, mlp_ratio=2.0, dropout=0.0)
    vir = randomised(VisionInstructionRepresentation(DIM, prior_dim, cfg), seed=1).double()
    vir.train(mode == "train")
    tokens, prior = inputs(2, 3, 9, DIM), inputs(3, 3, prior_dim)
    got = vir(tokens, prior)
    want = naive_vir(vir, tokens, prior)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    weights = torch.randn(got.shape, dtype=torch.float64)
    grads = torch.autograd.grad((got * weights).sum(), [tokens, prior, *vir.parameters()], allow_unused=True)
    naive_grads = torch.autograd.grad((want * weights).sum(), [tokens, prior, *vir.parameters()], allow_unused=True)
    for g, n in zip(grads, naive_grads):
        torch.testing.assert_close(g, n, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_lca_equals_the_equations(mode):
    lca = randomised(LanguageCycleAttention(DIM, LCACfg(cycles=3, heads=HEADS, mlp_ratio=2.0, dropout=0.0)),
                     seed=4).double()
    lca.train(mode == "train")
    tokens = inputs(5, 4, 11, DIM)
    eot = torch.tensor([10, 3, 0, 6])  # full length, short, EOT first (an empty caption), middle
    got = lca(tokens, eot)
    want = naive_lca(lca, tokens, eot)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    weights = torch.randn(got.shape, dtype=torch.float64)
    grads = torch.autograd.grad((got * weights).sum(), [tokens, *lca.parameters()])
    naive_grads = torch.autograd.grad((want * weights).sum(), [tokens, *lca.parameters()])
    for g, n in zip(grads, naive_grads):
        torch.testing.assert_close(g, n, rtol=1e-8, atol=1e-10)
    # Padding takes no part: its tokens get no gradient at all.
    assert tokens.grad is None
    padding = torch.arange(11)[None, :] > eot[:, None]
    assert grads[0][padding].abs().max() == 0


def test_the_reference_can_fail():
    """A module that differs from the equations (one head count wrong) must not match the reference."""
    lca = randomised(LanguageCycleAttention(DIM, LCACfg(cycles=1, heads=HEADS, dropout=0.0)), seed=6).double().eval()
    tokens, eot = inputs(7, 2, 5, DIM), torch.tensor([4, 2])
    want = naive_lca(lca, tokens, eot)
    lca.steps[0].self_attn.num_heads = 2
    lca.steps[0].self_attn.head_dim = DIM // 2
    assert not torch.allclose(lca(tokens, eot), want, atol=1e-6)
