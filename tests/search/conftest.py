"""Fixtures for the search tests: a tiny PIR checkpoint, and helpers on the import path."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # search_helpers


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A PIR-tiny checkpoint with random (seeded) weights, residual heads non-zero so VIR/LCA matter."""
    import pir_clip
    path = tmp_path_factory.mktemp("search_ckpt") / "pir_tiny.pt"
    with torch.random.fork_rng():
        torch.manual_seed(3)
        model = pir_clip.create_model("PIR-tiny")
        for name, param in model.named_parameters():
            if ".head." in name:
                torch.nn.init.normal_(param, std=0.02)
    torch.save(model.state_dict(), path)
    return path
