"""Registering the project's model configs with open_clip, and letting open_clip's own factory build them.

After :func:`register_model_configs` (run by ``import pir_clip``):

* ``open_clip.list_models()`` lists ``PIR``, ``PIR-tiny``, ``PIR-release`` ... and
  ``open_clip.get_tokenizer('PIR')`` works offline;
* ``open_clip.create_model``, ``open_clip.create_model_and_transforms`` and
  ``open_clip.create_model_from_pretrained`` build those configs through :mod:`pir_clip.models.factory`, so
  code written against open_clip (a notebook, CLIP_benchmark's loader, clip-retrieval's ``open_clip:``
  models) gets a working PIR model, ``pretrained=`` a local PIR or authors' release checkpoint included.

open_clip has no plugin hook for model classes, so the three entry points are wrapped where they are
looked up: on the ``open_clip`` package and in ``open_clip.factory`` (whose transforms functions call its
own ``create_model``). A wrapper sends a name whose config has ``pir_cfg`` to our factory and calls the
saved original with the same arguments for every other name (``hf-hub:`` and ``local-dir:`` names
included), so those behave exactly as without pir_clip. :func:`open_clip_original` gives the originals to
code that must bypass the wrappers (our factory, for the CLIP part of a PIR model). Wrapping is
idempotent. Names bound before ``import pir_clip`` (``from open_clip import create_model``) keep the
original; import pir_clip first.
"""
import functools
from pathlib import Path
from typing import Any, Callable, Dict

import open_clip
import open_clip.factory

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
WRAPPED_ENTRY_POINTS = ("create_model", "create_model_and_transforms", "create_model_from_pretrained")
# open_clip.create_model arguments that have no meaning for a PIR model when left at their defaults.
_OPEN_CLIP_DEFAULTS: Dict[str, Any] = {
    "load_weights": True, "jit": False, "force_custom_text": False, "pretrained_image": False,
    "pretrained_image_path": None, "pretrained_text_path": None,
}
# Accepted and ignored: pir_clip always reads pickles with weights_only=True, and PIR has no HF text tower.
_IGNORED_OPTIONS = ("weights_only", "pretrained_text", "pretrained_hf")
_ORIGINALS: Dict[str, Callable] = {}


def register_model_configs() -> None:
    if not MODEL_CONFIG_DIR.is_dir():
        raise RuntimeError(
            f"pir_clip model configs not found at {MODEL_CONFIG_DIR}; reinstall the package (pip install -e .)")
    open_clip.add_model_config(MODEL_CONFIG_DIR)
    wrap_open_clip_factory()


def open_clip_original(name: str) -> Callable:
    """open_clip's own ``name`` (one of :data:`WRAPPED_ENTRY_POINTS`), never our wrapper."""
    return _ORIGINALS.get(name) or getattr(open_clip.factory, name)


def _is_pir_name(model_name: Any) -> bool:
    from .factory import is_pir_model
    # Schema names ('hf-hub:...') would make open_clip.get_model_config download: they are never ours.
    return isinstance(model_name, str) and open_clip.factory.parse_model_name(model_name)[0] is None \
        and is_pir_model(model_name)


def _pir_options(entry_point: str, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """open_clip keyword arguments -> ours; an open_clip option a PIR model cannot honour is refused by name."""
    options = {k: v for k, v in kwargs.items() if k not in _IGNORED_OPTIONS}
    for key, default in _OPEN_CLIP_DEFAULTS.items():
        if key in options:
            value = options.pop(key)
            if key == "load_weights" and value is False:
                options["pretrained"] = None
            elif value != default:
                raise ValueError(f"open_clip.{entry_point}(..., {key}={value!r}) is not supported for PIR configs; "
                                 "leave it at its default")
    return options


def _apply_preprocess_overrides(model, force_preprocess_cfg: Dict[str, Any]) -> None:
    from open_clip.model import set_model_preprocess_cfg
    from open_clip.transform import merge_preprocess_dict
    if force_preprocess_cfg:
        set_model_preprocess_cfg(model, merge_preprocess_dict(model.visual.preprocess_cfg, force_preprocess_cfg))


def _pir_create_model(model_name, pretrained=None, **kwargs):
    from .factory import create_model
    force_preprocess_cfg = kwargs.pop("force_preprocess_cfg", None)
    require_pretrained = kwargs.pop("require_pretrained", False)
    options = _pir_options("create_model", kwargs)
    pretrained = options.pop("pretrained", pretrained)
    if require_pretrained and not pretrained:
        raise RuntimeError(f"pretrained weights are required for {model_name}: pass pretrained= a checkpoint file")
    model = create_model(model_name, pretrained, **options)
    _apply_preprocess_overrides(model, force_preprocess_cfg)
    return model


def _pir_create_model_and_transforms(model_name, pretrained=None, **kwargs):
    from .factory import create_model_and_transforms
    options = _pir_options("create_model_and_transforms", kwargs)
    return create_model_and_transforms(model_name, options.pop("pretrained", pretrained), **options)


def _pir_create_model_from_pretrained(model_name, pretrained=None, return_transform: bool = True, **kwargs):
    if not pretrained:
        raise RuntimeError(f"create_model_from_pretrained({model_name!r}) needs pretrained= a checkpoint file")
    model, _, preprocess = _pir_create_model_and_transforms(model_name, pretrained, **kwargs)
    return (model, preprocess) if return_transform else model


_PIR_ENTRY_POINTS = {"create_model": _pir_create_model,
                     "create_model_and_transforms": _pir_create_model_and_transforms,
                     "create_model_from_pretrained": _pir_create_model_from_pretrained}


def _wrapper(name: str, original: Callable) -> Callable:
    pir_entry_point = _PIR_ENTRY_POINTS[name]

    @functools.wraps(original)
    def entry_point(model_name, *args, **kwargs):
        if _is_pir_name(model_name):
            return pir_entry_point(model_name, *args, **kwargs)
        return original(model_name, *args, **kwargs)

    entry_point.__doc__ = (f"open_clip.{name}, with PIR configs built by pir_clip.models.factory "
                           f"(see pir_clip.models.registry).\n\n{original.__doc__ or ''}")
    entry_point.pir_clip_wrapper = True
    return entry_point


def wrap_open_clip_factory() -> None:
    """Wraps :data:`WRAPPED_ENTRY_POINTS` on ``open_clip`` and ``open_clip.factory`` (module docstring)."""
    for name in WRAPPED_ENTRY_POINTS:
        if name not in _ORIGINALS:
            current = getattr(open_clip.factory, name)
            _ORIGINALS[name] = getattr(current, "__wrapped__", current) if getattr(
                current, "pir_clip_wrapper", False) else current
        wrapped = _wrapper(name, _ORIGINALS[name])
        for namespace in (open_clip, open_clip.factory):
            if not getattr(getattr(namespace, name), "pir_clip_wrapper", False):
                setattr(namespace, name, wrapped)
