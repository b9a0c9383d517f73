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
