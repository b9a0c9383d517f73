"""open_clip's own factory builds PIR after ``import pir_clip``; every other name is passed through untouched."""
import subprocess
import sys

import open_clip
import open_clip.factory
import pytest
import torch

import pir_clip
from pir_clip.models.registry import WRAPPED_ENTRY_POINTS, open_clip_original, wrap_open_clip_factory


def same_state(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def local_checkpoints(tmp_path_factory):
    out = tmp_path_factory.mktemp("factory")
    torch.manual_seed(0)
    pir = pir_clip.create_model("PIR-tiny")
    for name, param in pir.named_parameters():
        if ".head." in name:
            torch.nn.init.normal_(param, std=0.05)
    torch.save({"epoch": 2, "state_dict": {f"module.{k}": v for k, v in pir.state_dict().items()}}, out / "pir.pt")
    release = pir_clip.create_model("PIR-release-tiny")
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in release.state_dict().items()}},
               out / "release.pt")
    torch.save(open_clip_original("create_model")("CLIP-tiny").state_dict(), out / "clip.pt")
    return out, pir, release


def test_entry_points_are_wrapped_once():
    for name in WRAPPED_ENTRY_POINTS:
        for namespace in (open_clip, open_clip.factory):
            wrapped = getattr(namespace, name)
            assert wrapped.pir_clip_wrapper and wrapped.__wrapped__ is open_clip_original(name)
    before = open_clip.create_model
    wrap_open_clip_factory()  # a second registration (e.g. a reload) must not wrap the wrapper
    assert open_clip.create_model is before and open_clip.create_model.__wrapped__ is open_clip_original("create_model")


@pytest.mark.parametrize("kind", ["pir", "release"])
def test_open_clip_builds_pir_from_local_checkpoints(local_checkpoints, kind):
    out, pir, release = local_checkpoints
    name, reference, checkpoint = ("PIR-tiny", pir, out / "pir.pt") if kind == "pir" else \
        ("PIR-release-tiny", release, out / "release.pt")
    model = open_clip.create_model(name, pretrained=str(checkpoint))
    assert type(model) is type(reference) and same_state(model, reference)
    model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(name, pretrained=str(checkpoint))
    assert same_state(model, reference)
    assert preprocess_val.transforms[0].size == 64
    model, preprocess = open_clip.create_model_from_pretrained(name, pretrained=str(checkpoint))
    assert same_state(model, reference) and repr(preprocess) == repr(preprocess_val)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.eval().encode_image(images), reference.eval().encode_image(images), atol=1e-6)
    # A PIR name given a release checkpoint builds the release-compatible model, as pir_clip.create_model does.
    assert type(open_clip.create_model("PIR-tiny", pretrained=str(out / "release.pt"))).__name__ == "PIRRelease"


def test_other_names_are_untouched(local_checkpoints):
    out, _, _ = local_checkpoints
    for kwargs in ({}, {"pretrained": str(out / "clip.pt")}, {"output_dict": True, "force_quick_gelu": True}):
        torch.manual_seed(3)
        wrapped = open_clip.create_model("CLIP-tiny", **kwargs)
        torch.manual_seed(3)
        original = open_clip_original("create_model")("CLIP-tiny", **kwargs)
        assert type(wrapped) is type(original) and same_state(wrapped, original)
        assert wrapped.output_dict == original.output_dict
    torch.manual_seed(4)
    wrapped = open_clip.create_model_and_transforms("CLIP-tiny", aug_cfg={"scale": (0.5, 1.0)})
    torch.manual_seed(4)
    original = open_clip_original("create_model_and_transforms")("CLIP-tiny", aug_cfg={"scale": (0.5, 1.0)})
    assert same_state(wrapped[0], original[0]) and repr(wrapped[1:]) == repr(original[1:])
    wrapped = open_clip.create_model_from_pretrained("CLIP-tiny", pretrained=str(out / "clip.pt"))
    original = open_clip_original("create_model_from_pretrained")("CLIP-tiny", pretrained=str(out / "clip.pt"))
    assert same_state(wrapped[0], original[0]) and repr(wrapped[1]) == repr(original[1])
    with pytest.raises(RuntimeError):  # open_clip's own refusal, unchanged
        open_clip.create_model_from_pretrained("CLIP-tiny")


def test_open_clip_options_pir_cannot_honour_are_refused():
    with pytest.raises(ValueError, match="jit=True"):
        open_clip.create_model("PIR-tiny", jit=True)
    with pytest.raises(RuntimeError, match="pretrained"):
        open_clip.create_model_from_pretrained("PIR-tiny")
    model = open_clip.create_model("PIR-tiny", load_weights=False, weights_only=True, pretrained_text=False,
                                   force_preprocess_cfg={"mean": (0.5, 0.5, 0.5)})
    assert type(model).__name__ == "PIR" and tuple(model.visual.preprocess_cfg["mean"]) == (0.5, 0.5, 0.5)


def test_a_fresh_interpreter_gets_pir_from_open_clip():
    code = ("import open_clip, pir_clip; m = open_clip.create_model('PIR-tiny'); "
            "print(type(m).__name__, open_clip.create_model('CLIP-tiny').__class__.__name__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["PIR", "CLIP"]
