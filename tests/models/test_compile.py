"""PIR's forward has no host-device synchronisation: torch.compile captures it as one graph, no graph break.

A data-dependent Python value (``int(tensor)``, ``.item()``, ``.tolist()``) in the forward would stall the
host on every step on a GPU and split the compiled graph; dynamo reports each such break, so this test
names it if one comes back.
"""
import open_clip
import pytest
import torch

from pir_clip import create_model


@pytest.mark.parametrize("name", ["PIR-tiny", "PIR-release-tiny"])
@pytest.mark.parametrize("training", [True, False])
def test_forward_compiles_without_graph_breaks(name, training):
    model = create_model(name, output_dict=True).train(training)
    images = torch.randn(2, 3, 64, 64)
    texts = open_clip.get_tokenizer(name)(["a plane", "two rivers cross a forest next to a small town"])
    torch._dynamo.reset()
    with torch.set_grad_enabled(training):
        explanation = torch._dynamo.explain(model)(images, texts)
    breaks = [f"{b.reason.splitlines()[0]} at {b.user_stack[-1] if b.user_stack else '?'}"
              for b in explanation.break_reasons]
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1, breaks


def test_lca_on_the_cpu_sees_up_to_the_last_eot_with_the_same_result(monkeypatch):
    """On the CPU reading the longest caption's length is free, so LCA skips the padding after it; the
    result equals LCA over the whole context (padding is masked either way). Elsewhere: the whole length."""
    from pir_clip.models import lca, pir
    torch.manual_seed(0)
    model = create_model("PIR-tiny").eval()
    torch.nn.init.normal_(model.lca.head.weight, std=0.05)  # a non-zero residual, so LCA counts
    texts = open_clip.get_tokenizer("PIR-tiny")(["a plane", "two rivers cross a forest next to a small town"])
    eot = model.eot_index(texts)
    assert lca.used_length(eot, texts.shape[1]) == int(eot.max()) + 1 < texts.shape[1]
    assert lca.used_length(eot.to("meta"), texts.shape[1]) == texts.shape[1]
    seen = []
    real_forward = model.lca.forward
    monkeypatch.setattr(model.lca, "forward", lambda tokens, e: seen.append(tokens.shape[1]) or real_forward(tokens, e))
    with torch.no_grad():
        cut = model.encode_text(texts)
        monkeypatch.setattr(pir, "used_length", lambda e, length: length)
        full = model.encode_text(texts)
    assert seen == [int(eot.max()) + 1, texts.shape[1]]
    torch.testing.assert_close(cut, full, rtol=0, atol=1e-5)
    with torch.no_grad():  # LCA's residual is not zero, so the equality above is about LCA
        assert (cut - open_clip.CLIP.encode_text(model, texts)).abs().max() > 1e-3
