"""The PIR model: registration, shapes, precision, the open_clip contract, zero-init, training signal."""
import subprocess
import sys

import open_clip
import pytest
import torch
import torch.nn.functional as F

import pir_clip
from pir_clip import PIR, create_model
from pir_clip.models.config import PIRCfg, PriorCfg
from pir_clip.models.lca import padding_mask
from pir_clip.models.vir import belief_scores, keep_top_tokens

TINY = ["PIR-tiny", "PIR-release-tiny"]
PIR_CONFIGS = ["PIR", "PIR-tiny", "PIR-release", "PIR-release-tiny"]


def tiny_batch(batch_size, model_name="PIR-tiny", seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, 3, 64, 64, generator=g)
    captions = ["two white planes near a runway", "a dense forest", "three red cars parked in a row",
                "a river crossing farmland from left to right"]
    texts = open_clip.get_tokenizer(model_name)([captions[i % len(captions)] for i in range(batch_size)])
    return images, texts


def test_configs_registered_with_open_clip():
    listed = open_clip.list_models()
    for name in PIR_CONFIGS + ["CLIP-tiny"]:
        assert name in listed
    assert open_clip.get_tokenizer("PIR")(["an airport"]).shape == (1, 77)
    assert open_clip.get_tokenizer("PIR-tiny")(["an airport"]).shape == (1, 48)


def test_registration_happens_on_import_in_a_fresh_process():
    code = "import open_clip, pir_clip; print('PIR' in open_clip.list_models())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


@pytest.mark.parametrize("name", PIR_CONFIGS)
def test_every_config_builds_with_open_clip_key_names(name):
    """The CLIP part of every PIR config has exactly the key names and shapes of its open_clip tower config."""
    model = create_model(name)
    cfg = pir_clip.get_model_config(name)
    clip = open_clip.create_model(cfg["pir_cfg"]["clip_model"])
    pir_state = model.state_dict()
    for key, value in clip.state_dict().items():
        assert key in pir_state, key
        assert pir_state[key].shape == value.shape, key
    extra = {k.split(".")[0] for k in pir_state if k not in clip.state_dict()}
    expected = {"prior", "vir", "lca"} if isinstance(model, PIR) else {"res_visual", "vision_proj_res"}
    assert extra == expected


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("batch_size", [1, 3])
def test_output_shapes_and_dict_contract(name, batch_size):
    model = create_model(name, output_dict=True).eval()
    images, texts = tiny_batch(batch_size, name)
    with torch.no_grad():
        out = model(images, texts)
    assert set(out) == {"image_features", "text_features", "logit_scale"}
    assert out["image_features"].shape == (batch_size, 128)
    assert out["text_features"].shape == (batch_size, 128)
    assert torch.allclose(out["image_features"].norm(dim=-1), torch.ones(batch_size), atol=1e-5)
    assert torch.allclose(out["text_features"].norm(dim=-1), torch.ones(batch_size), atol=1e-5)
    assert out["logit_scale"].item() == pytest.approx(1 / 0.07, rel=1e-5)
    model.output_dict = False
    with torch.no_grad():
        image_features, text_features, scale = model(images, texts)
    assert torch.equal(image_features, out["image_features"])
    # Either input alone, as open_clip's CLIP allows.
    with torch.no_grad():
        assert model(image=images)[1] is None


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_matches_fp32(name, dtype):
    torch.manual_seed(0)
    model = perturbed(create_model(name)).eval()
    images, texts = tiny_batch(3, name)
    with torch.no_grad():
        ref_i, ref_t = model.encode_image(images, normalize=True), model.encode_text(texts, normalize=True)
        with torch.autocast("cpu", dtype=dtype):
            low_i, low_t = model.encode_image(images, normalize=True), model.encode_text(texts, normalize=True)
    assert torch.isfinite(low_i).all() and torch.isfinite(low_t).all()
    cos_i = F.cosine_similarity(ref_i, low_i.float()).min().item()
    cos_t = F.cosine_similarity(ref_t, low_t.float()).min().item()
    assert cos_i > 0.98 and cos_t > 0.98, (cos_i, cos_t)


@pytest.mark.parametrize("precision", ["bf16", "pure_bf16"])
def test_low_precision_weights(precision):
    model = create_model("PIR-tiny", precision=precision).eval()
    images, texts = tiny_batch(2)
    with torch.no_grad():
        out = model(images.to(torch.bfloat16), texts)
    assert out[0].dtype == torch.bfloat16 and torch.isfinite(out[0].float()).all()


def perturbed(model, scale=0.05, seed=0):
    """Gives the zero-initialised residual heads random weights, so VIR/LCA actually shape the output."""
    g = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if ".head." in name or name.startswith("vision_proj_res"):
            with torch.no_grad():
                param.copy_(torch.randn(param.shape, generator=g) * scale)
    return model


def test_untrained_pir_equals_clip():
    clip = open_clip.create_model("CLIP-tiny").eval()
    pir = create_model("PIR-tiny").eval()
    missing, unexpected = pir.load_state_dict(clip.state_dict(), strict=False)
    assert not unexpected and all(k.split(".")[0] in ("prior", "vir", "lca") for k in missing)
    images, texts = tiny_batch(3)
    with torch.no_grad():
        assert torch.allclose(pir.encode_image(images), clip.encode_image(images), atol=1e-6, rtol=0)
        assert torch.allclose(pir.encode_text(texts), clip.encode_text(texts), atol=1e-6, rtol=0)
        # and PIR's own modules really run: a non-zero head moves the embeddings
        perturbed(pir)
        assert (pir.encode_image(images) - clip.encode_image(images)).abs().max() > 1e-3
        assert (pir.encode_text(texts) - clip.encode_text(texts)).abs().max() > 1e-3


def contrastive_step(model, optimizer, images, texts):
    out = model(images, texts)
    logits = out["logit_scale"] * out["image_features"] @ out["text_features"].T
    labels = torch.arange(len(images))
    loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def test_pir_modules_learn():
    torch.manual_seed(0)
    clip = open_clip.create_model("CLIP-tiny").eval()
    model = create_model("PIR-tiny", output_dict=True)
    model.load_state_dict(clip.state_dict(), strict=False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    images, texts = tiny_batch(4)
    model.train()
    for _ in range(3):
        contrastive_step(model, optimizer, images, texts)
    for name, param in model.named_parameters():
        if name.startswith(("vir.", "lca.")):
            assert param.grad is not None and param.grad.abs().sum() > 0, f"{name} received no gradient"
        if name.startswith("prior."):
            assert param.grad is None, f"frozen prior parameter {name} received a gradient"
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(model.encode_image(images), clip.encode_image(images), atol=1e-4)
        assert not torch.allclose(model.encode_text(texts), clip.encode_text(texts), atol=1e-4)


def batchnorm_stats(module):
    return {k: v.clone() for k, v in module.state_dict().items() if "running_" in k}


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("frozen", [True, False])
def test_prior_frozen_or_trainable(name, frozen):
    model = create_model(name, output_dict=True, unlock_prior=not frozen)
    prior = model.prior.trunk if isinstance(model, PIR) else model.res_visual
    before = batchnorm_stats(prior)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    assert prior.training is not frozen
    images, texts = tiny_batch(4, name)
    for _ in range(2):
        contrastive_step(model, optimizer, images, texts)
    grads = [p.grad for p in prior.parameters()]
    after = batchnorm_stats(prior)
    if frozen:
        assert all(g is None for g in grads)
        assert all(not p.requires_grad for p in prior.parameters())
        assert all(torch.equal(before[k], after[k]) for k in before)
    else:
        assert sum(g.abs().sum().item() for g in grads if g is not None) > 0
        assert any(not torch.equal(before[k], after[k]) for k in before if "running_mean" in k)


def test_belief_ranks_the_instruction_token_first():
    """Row b: token `hit[b]` equals the instruction; the others have smaller, known dot products."""
    torch.manual_seed(0)
    B, N, D, k = 5, 16, 32, 6
    instruction = F.normalize(torch.randn(B, D), dim=-1) * 4
    strengths = torch.rand(B, N) * 0.5            # other tokens: fractions of the instruction
    hit = torch.tensor([0, 3, 7, 15, 9])
    strengths[torch.arange(B), hit] = 1.0
    tokens = strengths.unsqueeze(-1) * instruction.unsqueeze(1)
    scores = belief_scores(tokens, instruction)
    assert torch.allclose(scores.sum(dim=1), torch.ones(B))
    kept = keep_top_tokens(tokens, scores, k)
    assert kept.shape == (B, k, D)
    expected_order = strengths.argsort(dim=1, descending=True)[:, :k]
    for b in range(B):
        assert torch.equal(kept[b, 0], tokens[b, hit[b]])
        assert torch.equal(kept[b], tokens[b, expected_order[b]])
    # k larger than N keeps everything, best first
    assert keep_top_tokens(tokens, scores, 100).shape == (B, N, D)


def test_lca_ignores_padding_after_eot():
    model = perturbed(create_model("PIR-tiny")).eval()
    texts = open_clip.get_tokenizer("PIR-tiny")(["two planes on the runway", "a pond"])
    eot = texts.argmax(dim=-1)
    altered = texts.clone()
    for row, position in enumerate(eot.tolist()):
        altered[row, position + 1:] = torch.randint(1, 40000, (texts.shape[1] - position - 1,))
    altered[:, -1] = 5  # keep EOT the largest id so CLIP's argmax pooling still finds it
    assert torch.equal(altered.argmax(dim=-1), eot)
    with torch.no_grad():
        reference = model.encode_text(texts)
        assert torch.allclose(model.encode_text(altered), reference, atol=1e-6)
        changed = texts.clone()
        changed[0, 1] = 1234  # a real token before EOT does matter
        assert not torch.allclose(model.encode_text(changed)[0], reference[0], atol=1e-4)
    assert padding_mask(torch.tensor([1, 3]), 4).tolist() == [[False, False, True, True], [False] * 4]


def test_open_clip_tooling_on_pir():
    model = perturbed(create_model("PIR-tiny")).eval()
    tokenizer = open_clip.get_tokenizer("PIR-tiny")
    classifier = open_clip.build_zero_shot_classifier(
        model, tokenizer, classnames=["airport", "forest", "river"], templates=[lambda c: f"a satellite image of {c}."],
        num_classes_per_batch=2, device="cpu", use_tqdm=False)
    assert classifier.shape == (128, 3)
    model.lock_image_tower()
    assert not any(p.requires_grad for p in model.visual.parameters())
    assert all(p.requires_grad for p in model.vir.parameters())
    model.set_grad_checkpointing(True)
    model.train()
    images, texts = tiny_batch(2)
    model(images, texts)[0].sum().backward()


def test_timm_prior():
    cfg = pir_clip.get_model_config("PIR-tiny")
    pir_cfg = PIRCfg.from_dict(cfg.pop("pir_cfg"))
    pir_cfg.prior = PriorCfg(type="timm", timm_model_name="resnet18", image_size=64)
    model = PIR(**cfg, pir_cfg=pir_cfg).eval()
    assert model.vir.instruction_proj.in_features == 512
    with torch.no_grad():
        assert model.encode_image(tiny_batch(2)[0]).shape == (2, 128)


@pytest.mark.parametrize("broadcast_query", [True, False])
def test_one_output_position_equals_the_full_layer(broadcast_query):
    """The last VIR/LCA layer computes only the token it returns; that must not change its value."""
    from pir_clip.models.pae import ProgressiveAttentionLayer
    torch.manual_seed(0)
    layer = ProgressiveAttentionLayer(32, 4, mlp_ratio=2.0, dropout=0.1).eval()
    x = torch.randn(3, 7, 32)
    query = torch.randn(3, 1, 32) if broadcast_query else x
    mask = padding_mask(torch.tensor([6, 2, 4]), 7)
    index = torch.tensor([5, 2, 0])
    with torch.no_grad():
        full = layer(x, query, key_padding_mask=mask)[torch.arange(3), index]
        single = layer(x, query, key_padding_mask=mask, output_index=index)
    assert single.shape == (3, 1, 32)
    assert torch.allclose(single[:, 0], full, atol=1e-6)


def test_pae_settings_are_validated():
    with pytest.raises(ValueError, match="pir_cfg.lca.cycles"):
        PIRCfg.from_dict({"lca": {"cycles": 0}})
    with pytest.raises(ValueError, match="unknown key"):
        PIRCfg.from_dict({"vir": {"filtersize": 3}})


@pytest.mark.parametrize("masked", [False, True])
def test_single_query_attention_equals_multihead_attention(masked):
    from pir_clip.models.pae import single_query_attention
    torch.manual_seed(0)
    attn = torch.nn.MultiheadAttention(48, 6, batch_first=True).eval()
    with torch.no_grad():
        attn.in_proj_bias.normal_()  # non-zero biases: the folding must handle them
        attn.out_proj.bias.normal_()
    query, kv = torch.randn(4, 1, 48), torch.randn(4, 9, 48)
    mask = padding_mask(torch.tensor([8, 3, 0, 5]), 9) if masked else None
    with torch.no_grad():
        expected = attn(query, kv, kv, key_padding_mask=mask, need_weights=False)[0]
        assert torch.allclose(single_query_attention(attn, query, kv, mask), expected, atol=1e-5)
