"""pir-clip: PIR-CLIP remote-sensing image-text retrieval on open_clip.

Importing this package registers the project's model configs (``configs/*.json``) with open_clip, so
``open_clip.list_models()`` lists ``PIR`` and ``open_clip.get_tokenizer('PIR')`` works offline.

Sub-packages, each depending only on those before it: ``data`` (decode, annotations, labels, synthetic
data) -> ``models`` (embed) -> ``losses`` (train) / ``evaluation`` and ``search`` (use) -> ``cli``.
"""
from .models.registry import MODEL_CONFIG_DIR, register_model_configs

register_model_configs()

from .models import (  # noqa: E402
    PIR, CheckpointError, LCACfg, PIRCfg, PIRRelease, PriorCfg, VIRCfg, create_model, create_model_and_transforms,
    get_model_config, get_tokenizer, is_pir_model, load_prior,
)
from .data.images import ImageDecodeError, decode_image  # noqa: E402

__version__ = "0.2.0"
__all__ = [
    "MODEL_CONFIG_DIR", "CheckpointError", "LCACfg", "PIRCfg", "PriorCfg", "VIRCfg", "PIR", "PIRRelease",
    "create_model", "create_model_and_transforms", "get_model_config", "get_tokenizer", "is_pir_model",
    "load_prior", "ImageDecodeError", "decode_image",
]
