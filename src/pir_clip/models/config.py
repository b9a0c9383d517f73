"""Dataclass configs for the PIR-specific parts of a model config.

A PIR model config is an open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``) with one
extra key, ``pir_cfg``, parsed by :func:`PIRCfg.from_dict`. open_clip ignores the extra key when it lists
models or builds tokenizers, so the same JSON serves both libraries.
"""
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, Optional, Tuple

ARCHITECTURES = ("pir", "release")
PRIOR_TYPES = ("modified_resnet", "timm")


def _from_dict(cls, values: Optional[Dict[str, Any]], where: str):
    values = dict(values or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where}; known keys: {sorted(known)}")
    return cls(**values)


@dataclass
class PriorCfg:
    """The prior (instruction) encoder: one vector per image, of width ``embed_dim``.

    ``modified_resnet``: CLIP's ModifiedResNet (RN50 is layers (3, 4, 6, 3), width 64), loadable from the
    ``visual.*`` weights of an open_clip RN50 checkpoint. ``timm``: any timm image model by name, followed
    by a linear map to ``embed_dim``. ``output_dim``: the ModifiedResNet's output width (default
    ``embed_dim``; 1024 matches open_clip's RN50, so its ``visual.*`` weights load whole).
    """
    type: str = "modified_resnet"
    layers: Tuple[int, int, int, int] = (3, 4, 6, 3)
    width: int = 64
    head_width: int = 64
    image_size: int = 224
    output_dim: Optional[int] = None
    timm_model_name: Optional[str] = None
    frozen: bool = True

    def __post_init__(self):
        if self.type not in PRIOR_TYPES:
            raise ValueError(f"pir_cfg.prior.type must be one of {PRIOR_TYPES}, got {self.type!r}")
        if self.type == "timm" and not self.timm_model_name:
            raise ValueError("pir_cfg.prior.type 'timm' needs pir_cfg.prior.timm_model_name (e.g. 'resnet50')")
        self.layers = tuple(self.layers)


@dataclass
class VIRCfg:
    """Vision Instruction Representation on Spatial-PAE (image side)."""
    enabled: bool = True
    filter_size: int = 40
    depth: int = 2
    heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.2

    def __post_init__(self):
        _check_positive(self, "pir_cfg.vir", ("filter_size", "depth", "heads"))


@dataclass
class LCACfg:
    """Language Cycle Attention on Temporal-PAE (text side)."""
    enabled: bool = True
    cycles: int = 3
    heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.2

    def __post_init__(self):
        _check_positive(self, "pir_cfg.lca", ("cycles", "heads"))


def _check_positive(cfg, where: str, names: Tuple[str, ...]) -> None:
    for name in names:
        if getattr(cfg, name) < 1:
            raise ValueError(f"{where}.{name} must be at least 1, got {getattr(cfg, name)} "
                             "(disable the module with 'enabled': false instead)")


@dataclass
class PIRCfg:
    """Everything under ``pir_cfg`` in a model config.

    ``architecture``: ``pir`` (this project's model: VIR + LCA residual heads on CLIP towers) or
    ``release`` (the image path of the authors' PIR-CLIP release, for loading their checkpoints).
    ``clip_model``: the open_clip model whose towers PIR shares, used to resolve pretrained tags.
    """
    architecture: str = "pir"
    clip_model: Optional[str] = None
    prior: PriorCfg = field(default_factory=PriorCfg)
    vir: VIRCfg = field(default_factory=VIRCfg)
    lca: LCACfg = field(default_factory=LCACfg)

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"pir_cfg.architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")

    @classmethod
    def from_dict(cls, values: Optional[Dict[str, Any]]) -> "PIRCfg":
        values = dict(values or {})
        sub = {
            "prior": (PriorCfg, "pir_cfg.prior"),
            "vir": (VIRCfg, "pir_cfg.vir"),
            "lca": (LCACfg, "pir_cfg.lca"),
        }
        parsed = {}
        for key, (sub_cls, where) in sub.items():
            value = values.pop(key, None)
            parsed[key] = value if isinstance(value, sub_cls) else _from_dict(sub_cls, value, where)
        top = _from_dict(cls, values, "pir_cfg")
        for key, value in parsed.items():
            setattr(top, key, value)
        return top

    def to_dict(self) -> Dict[str, Any]:
        out = asdict(self)
        out["prior"]["layers"] = list(self.prior.layers)
        return out
