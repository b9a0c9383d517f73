"""Shared fixtures: a tiny synthetic RS data set generated once per test session (no network, CPU)."""
import os
import sys

import pytest
import torch

# Tests spawn subprocesses and torchrun workers: keep each one to the machine's few cores.
torch.set_num_threads(min(2, os.cpu_count() or 1))
os.environ.setdefault("OMP_NUM_THREADS", "2")
sys.path.insert(0, os.path.dirname(__file__))  # tests import helpers from each other (e.g. _reference)

SYNTHETIC_CLASSES = ("airport", "forest", "parkinglot", "river")


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    """4 classes x 6 images of 64 px in mixed png/jpg/tif, every output format (see pir_clip.data.synthetic)."""
    from pir_clip.data.synthetic import generate
    out = tmp_path_factory.mktemp("synthetic")
    generate(out, seed=0, images_per_class=6, image_size=64, classes=SYNTHETIC_CLASSES, image_format="mixed",
             val_fraction=0.2, test_fraction=0.35, shard_size=40, overwrite=True)
    return out
