"""pir-clip: PIR-CLIP remote-sensing image-text retrieval on open_clip.

Importing this package registers the project's model configs (``configs/*.json``) with open_clip, so
``open_clip.list_models()`` lists ``PIR`` and ``open_clip.get_tokenizer('PIR')`` works offline.
"""
from pathlib import Path

import open_clip

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"


def _register_model_configs() -> None:
    if not MODEL_CONFIG_DIR.is_dir():
        raise RuntimeError(
            f"pir_clip model configs not found at {MODEL_CONFIG_DIR}; reinstall the package (pip install -e .)")
    open_clip.add_model_config(MODEL_CONFIG_DIR)


_register_model_configs()

from .checkpoint import CheckpointError  # noqa: E402
from .config import LCACfg, PIRCfg, PriorCfg, VIRCfg  # noqa: E402
from .factory import (  # noqa: E402
    create_model, create_model_and_transforms, get_model_config, get_tokenizer, is_pir_model, load_prior,
)
from .model import PIR  # noqa: E402
from .release import PIRRelease  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "MODEL_CONFIG_DIR", "CheckpointError", "LCACfg", "PIRCfg", "PriorCfg", "VIRCfg", "PIR", "PIRRelease",
    "create_model", "create_model_and_transforms", "get_model_config", "get_tokenizer", "is_pir_model",
    "load_prior",
]
