"""Loading checkpoints: every format users have, the release format, and refusals that lose nothing."""
import argparse
import math

import open_clip
import pytest
import torch
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer
from safetensors.torch import save_file

import pir_clip
from pir_clip import CheckpointError, PIR, PIRRelease, create_model, load_prior
from pir_clip.models.checkpoint import checkpoint_format, read_checkpoint
from pir_clip.models.factory import release_prior_cfg

from test_model import perturbed, tiny_batch


@pytest.fixture(scope="module")
def tiny_clip():
    torch.manual_seed(1)
    return open_clip.create_model("CLIP-tiny").eval()


def save_in_format(state_dict, path, fmt):
    if fmt == "bare":
        torch.save(state_dict, path)
    elif fmt == "training":  # open_clip training checkpoint, written by a DDP run
        torch.save({"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in state_dict.items()},
                    "optimizer": {"state": {}, "param_groups": []}}, path)
    elif fmt == "module":
        torch.save({f"module.{k}": v for k, v in state_dict.items()}, path)
    elif fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    return str(path)


@pytest.mark.parametrize("fmt", ["bare", "training", "module", "safetensors"])
def test_clip_checkpoint_fills_the_clip_part(tmp_path, tiny_clip, fmt, caplog):
    suffix = ".safetensors" if fmt == "safetensors" else ".pt"
    path = save_in_format(tiny_clip.state_dict(), tmp_path / f"clip{suffix}", fmt)
    with caplog.at_level("INFO"):
        model = create_model("PIR-tiny", pretrained=path).eval()
    assert isinstance(model, PIR)
    state = model.state_dict()
    for key, value in tiny_clip.state_dict().items():
        assert torch.equal(state[key], value), key
    assert "lca, prior, vir" in caplog.text  # the fresh modules are named
    images, texts = tiny_batch(2)
    with torch.no_grad():
        assert torch.allclose(model.encode_image(images), tiny_clip.encode_image(images), atol=1e-6)


def test_plain_open_clip_model_through_the_same_call(tmp_path, tiny_clip):
    path = save_in_format(tiny_clip.state_dict(), tmp_path / "clip.pt", "training")
    model, _, preprocess = pir_clip.create_model_and_transforms("CLIP-tiny", pretrained=path)
    assert type(model) is open_clip.CLIP
    assert all(torch.equal(model.state_dict()[k], v) for k, v in tiny_clip.state_dict().items())
    assert preprocess.transforms[0].size == 64


def test_full_pir_checkpoint_roundtrip_strict(tmp_path):
    source = perturbed(create_model("PIR-tiny"))
    path = tmp_path / "pir.pt"
    torch.save({"epoch": 1, "state_dict": source.state_dict()}, path)
    loaded = create_model("PIR-tiny", pretrained=str(path))
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # open_clip's own loader works on our checkpoints too
    fresh = create_model("PIR-tiny")
    open_clip.load_checkpoint(fresh, str(path))
    assert torch.equal(fresh.state_dict()["vir.head.weight"], source.state_dict()["vir.head.weight"])


def test_pir_checkpoint_of_an_ablation_builds_the_matching_modules(tmp_path):
    source = create_model("PIR-tiny", enable_lca=False)
    path = tmp_path / "vir_only.pt"
    torch.save(source.state_dict(), path)
    loaded = create_model("PIR-tiny", pretrained=str(path))
    assert loaded.vir is not None and loaded.lca is None


def release_state_dict(seed=0, prior_width=16):
    """A release-format checkpoint with random weights, keyed like the authors' files."""
    cfg = pir_clip.get_model_config("PIR-release-tiny")
    cfg["pir_cfg"]["prior"]["width"] = prior_width
    torch.manual_seed(seed)
    model = PIRRelease(**cfg)
    state = model.state_dict()
    g = torch.Generator().manual_seed(seed)
    for key, value in state.items():  # make every weight matter, BatchNorm statistics included
        if value.is_floating_point():
            noise = torch.randn(value.shape, generator=g) * 0.02
            state[key] = value.abs() + 0.5 if "running_var" in key else value + noise
    return state


def naive_release_image_embedding(state, image):
    """METHOD.md section 3, step by step, one image at a time, from the raw state dict."""
    cfg = pir_clip.get_model_config("PIR-release-tiny")
    v, prior_cfg = cfg["vision_cfg"], release_prior_cfg(state)
    resnet = ModifiedResNet(list(prior_cfg.layers), cfg["embed_dim"], prior_cfg.width * 32 // 64,
                            prior_cfg.image_size, prior_cfg.width)
    resnet.load_state_dict({k[len("res_visual."):]: t for k, t in state.items() if k.startswith("res_visual.")})
    vit = VisionTransformer(v["image_size"], v["patch_size"], v["width"], v["layers"], v["width"] // v["head_width"],
                            4.0, output_dim=cfg["embed_dim"])
    vit.load_state_dict({k[len("visual."):]: t for k, t in state.items() if k.startswith("visual.")})
    resnet.eval(), vit.eval()
    W, Wb = state["vision_proj_res.weight"], state["vision_proj_res.bias"]
    # 1. prior -> instruction token y (1, 768-like width)
    y = (resnet(image[None])[0] @ W.T + Wb)[None]
    # 2. patch embedding, class token, positions, ln_pre
    patches = vit.conv1(image[None])[0].flatten(1).T
    x = torch.cat([vit.class_embedding[None], patches]) + vit.positional_embedding
    x = vit.ln_pre(x)
    n = x.shape[0]
    # 3. belief b_j = softmax_j(x_j . y)
    dots = torch.stack([x[j] @ y[0] for j in range(n)])
    b = torch.exp(dots - dots.max()) / torch.exp(dots - dots.max()).sum()
    # 4. order = tokens by descending belief; c_j = 1 / sqrt(order_j + 1)
    order = sorted(range(n), key=lambda j: (-b[j].item(), j))
    c = torch.tensor([1.0 / math.sqrt(order[j] + 1) for j in range(n)])
    # 5. z_j = x_j b_j + x_j c_j, L2-normalised over the token axis, channel by channel
    z = torch.stack([x[j] * b[j] + x[j] * c[j] for j in range(n)])
    z = torch.stack([z[:, ch] / z[:, ch].norm().clamp_min(1e-12) for ch in range(z.shape[1])], dim=1)
    # 6. prepend y, transformer, ln_post, token 0, proj
    h = vit.transformer(torch.cat([y, z])[None])[0]
    return vit.ln_post(h)[0] @ vit.proj


@pytest.mark.parametrize("model_name", ["PIR-tiny", "PIR-release-tiny"])
def test_release_checkpoint_reproduces_section_3(tmp_path, model_name):
    state = release_state_dict(prior_width=24)
    path = tmp_path / "PIR-CLIP_RET-3.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    model = create_model(model_name, pretrained=str(path)).eval()
    assert isinstance(model, PIRRelease)
    assert model.res_visual.layer1[0].conv1.in_channels == 24  # the prior shape is read off the weights
    images, _ = tiny_batch(3)
    with torch.no_grad():
        ours = model.encode_image(images)
        for i in range(3):
            reference = naive_release_image_embedding(state, images[i])
            assert torch.allclose(ours[i], reference, atol=1e-5, rtol=1e-4)
        one = model.encode_image(images[:1])  # batch size 1, which the release crashes on
    assert torch.allclose(one[0], ours[0], atol=1e-5, rtol=1e-5)


def test_release_state_dict_keys_roundtrip():
    state = release_state_dict()
    assert checkpoint_format(state) == "release"
    assert any(k.startswith("res_visual.layer1.0.") for k in state)
    model = PIRRelease(**pir_clip.get_model_config("PIR-release-tiny"))
    model.load_state_dict(state)
    assert set(model.state_dict()) == set(state)


def test_prior_weights_from_an_open_clip_resnet_checkpoint(tmp_path):
    cfg = pir_clip.get_model_config("CLIP-tiny")
    cfg["vision_cfg"] = {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 32}
    rn = open_clip.CLIP(**cfg)
    path = tmp_path / "rn.pt"
    torch.save({"state_dict": rn.state_dict()}, path)
    model = create_model("PIR-tiny", prior_pretrained=str(path))
    for key, value in rn.visual.state_dict().items():
        assert torch.equal(model.prior.trunk.state_dict()[key], value), key


def test_prior_weights_from_a_torchvision_resnet(tmp_path):
    import torchvision
    from pir_clip.models.config import PIRCfg, PriorCfg
    cfg = pir_clip.get_model_config("PIR-tiny")
    pir_cfg = PIRCfg.from_dict(cfg.pop("pir_cfg"))
    pir_cfg.prior = PriorCfg(type="timm", timm_model_name="resnet18", image_size=64)
    model = PIR(**cfg, pir_cfg=pir_cfg)
    tv = torchvision.models.resnet18(weights=None, num_classes=30)  # e.g. an AID scene classifier
    path = tmp_path / "aid_resnet18.pth"
    torch.save(tv.state_dict(), path)
    load_prior(model, str(path))
    trunk_state = model.prior.trunk.state_dict()
    for key, value in tv.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(trunk_state[key], value), key


def test_checkpoint_of_another_architecture_lists_the_mismatches(tmp_path):
    cfg = pir_clip.get_model_config("CLIP-tiny")
    cfg["vision_cfg"]["width"] = 96
    cfg["vision_cfg"]["layers"] = 4
    other = open_clip.CLIP(**cfg)
    path = tmp_path / "other.pt"
    torch.save(other.state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        create_model("PIR-tiny", pretrained=str(path))
    message = str(err.value)
    assert str(path) in message
    assert "visual.conv1.weight: checkpoint (96, 3, 16, 16) vs model (128, 3, 16, 16)" in message
    assert "visual.transformer.resblocks.3" in message  # a key the model does not have


def test_prior_checkpoint_of_the_wrong_shape_is_refused(tmp_path):
    torch.save({"conv1.weight": torch.zeros(3, 3, 3, 3)}, tmp_path / "bad_prior.pt")
    model = create_model("PIR-tiny")
    before = {k: v.clone() for k, v in model.prior.trunk.state_dict().items()}
    with pytest.raises(CheckpointError, match="bad_prior.pt"):
        load_prior(model, str(tmp_path / "bad_prior.pt"))
    assert all(torch.equal(before[k], v) for k, v in model.prior.trunk.state_dict().items())  # nothing half-loaded


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="weights.pt"):
        create_model("PIR-tiny", pretrained=str(path))


def test_pickle_that_needs_code_execution_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=1.0)}, path)
    with pytest.raises(CheckpointError, match="execute code"):
        read_checkpoint(str(path))


def test_missing_file_and_unknown_names():
    with pytest.raises(CheckpointError, match="not found"):
        create_model("PIR-tiny", pretrained="checkpoints/nope.pt")
    with pytest.raises(ValueError, match="Did you mean: PIR-tiny"):
        create_model("PIR-tinny")


def modified_resnet_state(layers, width, output_dim, image_size, seed=0):
    torch.manual_seed(seed)
    return ModifiedResNet(list(layers), output_dim, width * 32 // 64, image_size, width).state_dict()


def prior_file(tmp_path, kind, trunk_state):
    """A prior checkpoint as users have them: an open_clip RN checkpoint (``visual.*``, training format) or the
    authors' release (``res_visual.*`` next to the CLIP keys and ``vision_proj_res``)."""
    path = tmp_path / f"{kind}.pt"
    if kind == "open_clip_rn":
        torch.save({"epoch": 1, "state_dict": {f"module.visual.{k}": v for k, v in trunk_state.items()}}, path)
    else:
        state = {f"res_visual.{k}": v for k, v in trunk_state.items()}
        state["vision_proj_res.weight"] = torch.zeros(768, trunk_state["attnpool.c_proj.weight"].shape[0])
        state["visual.proj"] = torch.zeros(768, 512)  # stands for the rest of the release's CLIP keys
        torch.save({"state_dict": state}, path)
    return str(path)


@pytest.mark.parametrize("model_name", ["PIR-tiny", "PIR-release-tiny"])
@pytest.mark.parametrize("kind,output_dim", [("open_clip_rn", 256), ("release", 96), ("release", 128)])
def test_prior_takes_its_shape_from_the_checkpoint(tmp_path, model_name, kind, output_dim):
    """Tiny configs have a 128-wide prior; files of other widths (and depths) load whole, and the map from the
    prior to the model (VIR's instruction_proj, the release's vision_proj_res) follows the file's width."""
    trunk_state = modified_resnet_state((1, 2, 1, 1), 16, output_dim, 64)
    path = prior_file(tmp_path, kind, trunk_state)
    model = create_model(model_name, prior_pretrained=path, output_dict=True).eval()
    trunk = model.prior.trunk if isinstance(model, PIR) else model.res_visual
    assert set(trunk.state_dict()) == set(trunk_state)
    for key, value in trunk_state.items():
        assert torch.equal(trunk.state_dict()[key], value), key
    to_model = model.vir.instruction_proj if isinstance(model, PIR) else model.vision_proj_res
    if output_dim == 128 and isinstance(model, PIR):
        assert isinstance(to_model, torch.nn.Identity)
    else:
        assert to_model.in_features == output_dim
    images, texts = tiny_batch(2, model_name)
    with torch.no_grad():
        assert model(images, texts)["image_features"].shape == (2, 128)
    # A checkpoint of the model trained from it loads again without the prior file: the shape is read back.
    saved = tmp_path / "trained.pt"
    torch.save({"epoch": 1, "state_dict": model.state_dict()}, saved)
    again = create_model(model_name, pretrained=str(saved)).eval()
    with torch.no_grad():
        torch.testing.assert_close(again.encode_image(images), model.encode_image(images))


def test_full_rn50_priors_into_pir_and_pir_release(tmp_path):
    """The real shapes: RemoteCLIP-RN50's attention pool outputs 1024 (PIR-release's config says 512), the
    release's res_visual outputs 512 (PIR's config says 1024). Both load whole into both architectures."""
    rn50 = modified_resnet_state((3, 4, 6, 3), 64, 1024, 224)
    release = {k: v for k, v in modified_resnet_state((3, 4, 6, 3), 64, 512, 224, seed=1).items()}
    cases = [("PIR-release", prior_file(tmp_path, "open_clip_rn", rn50), 1024),
             ("PIR", prior_file(tmp_path, "release", release), 512)]
    for model_name, path, width in cases:
        model = create_model(model_name, prior_pretrained=path).eval()
        trunk = model.prior.trunk if isinstance(model, PIR) else model.res_visual
        assert trunk.attnpool.c_proj.out_features == width
        assert torch.equal(trunk.attnpool.c_proj.weight, (rn50 if width == 1024 else release)["attnpool.c_proj.weight"])
        if isinstance(model, PIR):
            assert isinstance(model.vir.instruction_proj, torch.nn.Identity)  # 512 = embed_dim
        else:
            assert model.vision_proj_res.in_features == 1024
        with torch.no_grad():
            assert model.encode_image(torch.randn(1, 3, 224, 224)).shape == (1, 512)
        del model


def test_prior_file_that_is_no_modified_resnet_names_the_file_and_the_fix(tmp_path):
    import torchvision
    path = tmp_path / "aid_resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"aid_resnet18.pth does not hold a ModifiedResNet.*'timm'"):
        create_model("PIR-tiny", prior_pretrained=str(path))
    with pytest.raises(ValueError, match="has no prior encoder"):
        create_model("PIR-tiny", prior_pretrained=str(path), enable_vir=False)
