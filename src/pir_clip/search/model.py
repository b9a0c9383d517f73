"""The model of an index: which weights embedded it, loading them again, and refusing any other.

An index is only searchable with the model that embedded it: scores between embeddings of two models mean
nothing. :class:`ModelSpec` names a model by its config name and the SHA-256 of its checkpoint (and prior)
files, so a checkpoint overwritten in place is noticed as surely as a different one.

Without a checkpoint the model has random weights, drawn from a fixed seed so that the index can embed
queries again later (smoke tests and benchmarks only).
"""
import hashlib
import os
import threading
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Optional, Tuple

RANDOM_WEIGHTS_SEED = 0
_HASH_CHUNK = 1 << 20


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _weights(path: Optional[str]) -> Tuple[Optional[str], Optional[str]]:
    """(absolute path or open_clip tag, sha256 of the file or None)."""
    if not path:
        return None, None
    if os.path.isfile(path):
        return os.path.abspath(path), file_sha256(path)
    return path, None


class ModelMismatchError(ValueError):
    """A query embedded (or to be embedded) with another model than the index's."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    checkpoint: Optional[str] = None  # absolute path, an open_clip pretrained tag, or None (random weights)
    checkpoint_sha256: Optional[str] = None
    prior_pretrained: Optional[str] = None
    prior_sha256: Optional[str] = None

    @classmethod
    def from_files(cls, name: str, checkpoint: Optional[str] = None,
                   prior_pretrained: Optional[str] = None) -> "ModelSpec":
        """Hashes the weight files (a missing file is an error naming it)."""
        for flag, path in (("--checkpoint", checkpoint), ("--prior-pretrained", prior_pretrained)):
            if path and not os.path.isfile(path) and (os.sep in path or path.endswith((".pt", ".pth", ".bin",
                                                                                       ".safetensors"))):
                raise FileNotFoundError(f"{flag} {path} does not exist")
        checkpoint, checkpoint_sha = _weights(checkpoint)
        prior, prior_sha = _weights(prior_pretrained)
        return cls(name, checkpoint, checkpoint_sha, prior, prior_sha)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ModelSpec":
        return cls(**{k: d.get(k) for k in ("name", "checkpoint", "checkpoint_sha256", "prior_pretrained",
                                             "prior_sha256")})

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @property
    def identity(self) -> Tuple:
        """What makes two models the same: name and weights (by content where they are files)."""
        return (self.name, self.checkpoint_sha256 or self.checkpoint, self.prior_sha256 or self.prior_pretrained)

    def describe(self) -> str:
        if not self.checkpoint:
            weights = "random weights"
        elif self.checkpoint_sha256:
            weights = f"checkpoint {self.checkpoint}, sha256 {self.checkpoint_sha256[:12]}"
        else:
            weights = f"pretrained {self.checkpoint}"
        if self.prior_pretrained:
            weights += f", prior {self.prior_pretrained}" + (f" sha256 {self.prior_sha256[:12]}"
                                                             if self.prior_sha256 else "")
        return f"{self.name} ({weights})"

    def require_same(self, other: "ModelSpec", where: str) -> None:
        """Raises :class:`ModelMismatchError` naming both models unless ``other`` is this model."""
        if other.identity != self.identity:
            raise ModelMismatchError(
                f"{where} was built with {self.describe()}, but the query model is {other.describe()}: embeddings "
                "of different models cannot be compared. Search with the index's model (leave out --model-name "
                "and --checkpoint), or build an index with this model")


@dataclass
class LoadedModel:
    model: Any
    preprocess: Callable  # PIL image -> (3, H, W) tensor
    tokenizer: Callable
    preprocess_cfg: Dict[str, Any]
    embed_dim: int


_create_lock = threading.Lock()


def load_model(spec: ModelSpec, device: str = "cpu", precision: str = "fp32") -> LoadedModel:
    """Builds the model of ``spec`` in eval mode (random weights drawn from a fixed seed without a
    checkpoint), with its validation transform and tokenizer."""
    import torch

    from ..models.factory import create_model_and_transforms, get_tokenizer
    with _create_lock, torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        model, _, preprocess = create_model_and_transforms(spec.name, spec.checkpoint,
                                                           prior_pretrained=spec.prior_pretrained,
                                                           precision=precision, device=device)
    model.eval()
    cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    embed_dim = _embed_dim(model)
    return LoadedModel(model, preprocess, get_tokenizer(spec.name), cfg, embed_dim)


def _embed_dim(model) -> int:
    import torch
    proj = getattr(model, "text_projection", None)
    if isinstance(proj, torch.Tensor):
        return int(proj.shape[-1])
    if isinstance(proj, torch.nn.Linear):
        return int(proj.out_features)
    return int(getattr(model, "embed_dim", 0) or getattr(model.visual, "output_dim"))
