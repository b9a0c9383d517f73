"""Registering the project's model configs (``configs/*.json``) with open_clip.

After registration ``open_clip.list_models()`` lists ``PIR``, ``PIR-tiny``, ``PIR-release`` ... and
``open_clip.get_tokenizer('PIR')`` works offline. Importing :mod:`pir_clip` registers them.
"""
from pathlib import Path

import open_clip

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"


def register_model_configs() -> None:
    if not MODEL_CONFIG_DIR.is_dir():
        raise RuntimeError(
            f"pir_clip model configs not found at {MODEL_CONFIG_DIR}; reinstall the package (pip install -e .)")
    open_clip.add_model_config(MODEL_CONFIG_DIR)
