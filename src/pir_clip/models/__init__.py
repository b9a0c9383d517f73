"""Models: configs, the prior encoder, the PAE layer, VIR and LCA, the PIR model, the release-compatible
model, checkpoint loading, the factory, and the registration of our configs with open_clip."""
from .checkpoint import CheckpointError
from .config import LCACfg, PIRCfg, PriorCfg, VIRCfg
from .factory import (
    create_model, create_model_and_transforms, get_model_config, get_tokenizer, is_pir_model, load_prior,
)
from .pir import PIR
from .registry import MODEL_CONFIG_DIR, register_model_configs
from .release import PIRRelease

__all__ = [
    "CheckpointError", "LCACfg", "PIRCfg", "PriorCfg", "VIRCfg", "PIR", "PIRRelease", "MODEL_CONFIG_DIR",
    "create_model", "create_model_and_transforms", "get_model_config", "get_tokenizer", "is_pir_model",
    "load_prior", "register_model_configs",
]
