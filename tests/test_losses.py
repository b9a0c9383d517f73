import math
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from torch.utils._python_dispatch import TorchDispatchMode

from pir_clip.data.labels import class_id, resolve_class_id
from pir_clip.losses import PIRLoss, affiliation_loss

from _reference import naive_affiliation_loss

CLIP_SCALE = 1 / 0.07


def _features(batch, width, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(batch, width, generator=gen, dtype=dtype), dim=-1)
    text = F.normalize(torch.randn(batch, width, generator=gen, dtype=dtype), dim=-1)
    return image, text


def _mixed_class_ids(batch, seed=0):
    """(batch,) int64: about half the samples in a few repeated classes, the rest singletons."""
    gen = torch.Generator().manual_seed(seed)
    repeated = torch.randint(0, max(1, batch // 6), (batch - batch // 2,), generator=gen)
    singletons = torch.arange(batch // 2) + 1000
    ids = torch.cat([repeated, singletons])
    return ids[torch.randperm(batch, generator=gen)]


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_(True) for t in tensors]


@pytest.mark.parametrize("width", [3, 64, 512])
@pytest.mark.parametrize("batch", [1, 2, 5, 16, 64])
def test_affiliation_loss_matches_naive_value_and_gradient(batch, width):
    image, text = _features(batch, width, seed=batch * 1000 + width)
    ids = _mixed_class_ids(batch, seed=batch)
    scale = torch.tensor(CLIP_SCALE, dtype=torch.float64)

    fast_inputs = _leaves(image, text, scale)
    fast = affiliation_loss(fast_inputs[0], fast_inputs[1], ids, fast_inputs[2])
    fast.backward()
    naive_inputs = _leaves(image, text, scale)
    naive = naive_affiliation_loss(naive_inputs[0], naive_inputs[1], ids.tolist(), naive_inputs[2])
    naive.backward()

    torch.testing.assert_close(fast, naive, rtol=1e-10, atol=1e-10)
    for got, want in zip(fast_inputs, naive_inputs):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-9, atol=1e-11)


def test_affiliation_loss_matches_naive_in_float32_with_large_ids():
    image, text = _features(24, 32, dtype=torch.float32)
    names = ["airport_1", "airport_2", "beach_7", "00578", "beach_2", "12"] * 4
    ids = torch.tensor([resolve_class_id(n) for n in names[:23]] + [class_id("lonely")])
    scale = torch.tensor(CLIP_SCALE)
    fast_inputs, naive_inputs = _leaves(image, text, scale), _leaves(image, text, scale)
    fast = affiliation_loss(*fast_inputs[:2], ids, fast_inputs[2])
    naive = naive_affiliation_loss(*naive_inputs[:2], ids.tolist(), naive_inputs[2])
    fast.backward()
    naive.backward()
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast, naive, rtol=1e-5, atol=1e-5)
    for got, want in zip(fast_inputs, naive_inputs):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-6)


def test_affiliation_loss_hand_computed():
    # Classes [0, 0, 1]; with s = 1 the centres are cT = (1,0), (1,0), (0,1) per column and
    # cI = (.5,.5), (.5,.5), (1,0), so every logit below is a dot product read off by eye.
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    text = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    ids = torch.tensor([0, 0, 1])
    e = math.e
    image_to_text = [math.log(2 * e + 1) - 1, math.log(2 + e), math.log(2 * e + 1)]
    text_to_image = [math.log(2 * e ** 0.5 + e) - 0.5] * 2 + [math.log(2 * e ** 0.5 + 1)]
    expected = (sum(image_to_text) / 3 + sum(text_to_image) / 3) / 2
    got = affiliation_loss(image, text, ids, torch.tensor(1.0, dtype=torch.float64))
    assert got.item() == pytest.approx(expected, rel=1e-12)
    assert naive_affiliation_loss(image, text, ids.tolist(), 1.0).item() == pytest.approx(expected, rel=1e-12)


def test_affiliation_loss_batch_of_one_is_zero_with_zero_gradient():
    image, text = _leaves(*_features(1, 7))
    loss = affiliation_loss(image, text, torch.tensor([5]), torch.tensor(CLIP_SCALE))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(image.grad) == 0 and torch.count_nonzero(text.grad) == 0


def test_affiliation_loss_local_rows_against_global_centres():
    image, text = _features(12, 16)
    ids = _mixed_class_ids(12, seed=3)
    scale = torch.tensor(CLIP_SCALE, dtype=torch.float64)
    rows = range(4, 8)
    fast_inputs, naive_inputs = _leaves(image, text, scale), _leaves(image, text, scale)
    full_image, full_text, s = fast_inputs
    fast = affiliation_loss(full_image[4:8], full_text[4:8], ids[4:8], s, centre_image_features=full_image,
                            centre_text_features=full_text, centre_class_ids=ids)
    naive = naive_affiliation_loss(*naive_inputs[:2], ids.tolist(), naive_inputs[2], rows=rows)
    fast.backward()
    naive.backward()
    torch.testing.assert_close(fast, naive, rtol=1e-10, atol=1e-10)
    for got, want in zip(fast_inputs, naive_inputs):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_affiliation_loss_under_autocast_reduces_in_float32(dtype):
    image, text = _features(32, 64, dtype=torch.float32)
    image, text = _leaves(image.to(dtype), text.to(dtype))
    ids = _mixed_class_ids(32)
    scale = torch.tensor(CLIP_SCALE)
    with torch.autocast("cpu", dtype=dtype):
        loss = affiliation_loss(image, text, ids, scale)
    loss.backward()
    assert loss.dtype == torch.float32
    assert image.grad.dtype == dtype and torch.isfinite(image.grad.float()).all()
    reference = affiliation_loss(image.detach().float(), text.detach().float(), ids, scale)
    torch.testing.assert_close(loss.detach(), reference, rtol=1e-6, atol=1e-6)


class _LargeTensorLog(TorchDispatchMode):
    """Records (op, shape, dtype) of every newly allocated op output with at least ``min_numel`` elements
    (views such as detach share their input's memory and are not counted)."""

    def __init__(self, min_numel):
        super().__init__()
        self.min_numel, self.large = min_numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in torch.utils._pytree.tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        for t in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(t, torch.Tensor) and t.numel() >= self.min_numel \
                    and t.untyped_storage().data_ptr() not in inputs:
                self.large.append((func.overloadpacket.__name__, tuple(t.shape), t.dtype))
        return out


def test_affiliation_loss_memory_only_the_logits_are_batch_by_classes():
    """With every sample its own class (C = B, RSICD's numeric names), the only (B, C)-sized tensors of the
    forward are the two logit matrices and the two log-softmaxes cross_entropy keeps for backward: no
    one-hot membership matrix. The backward adds only the gradients of those."""
    batch, width = 96, 8  # C * d < B * C, so the (C, d) centres do not count as large
    image, text = _leaves(*_features(batch, width, dtype=torch.float32))
    scale = torch.tensor(CLIP_SCALE, requires_grad=True)
    forward = _LargeTensorLog(batch * batch)
    with forward:
        loss = affiliation_loss(image, text, torch.arange(batch), scale)
    assert sorted(op for op, _, _ in forward.large) == ["_log_softmax", "_log_softmax", "addmm", "addmm"], \
        forward.large
    assert all(shape == (batch, batch) and dtype == torch.float32 for _, shape, dtype in forward.large)
    backward = _LargeTensorLog(batch * batch)
    with backward:
        loss.backward()
    assert len(backward.large) <= 4, backward.large  # per direction: grad of log_softmax and nll's scatter


def test_affiliation_loss_errors():
    image, text = _features(4, 8)
    with pytest.raises(ValueError, match=r"class_ids must have shape \(4,\)"):
        affiliation_loss(image, text, torch.tensor([0, 1, 2]), 1.0)
    with pytest.raises(ValueError, match="must both be"):
        affiliation_loss(image, text[:, :4], torch.arange(4), 1.0)
    with pytest.raises(ValueError, match="go together"):
        affiliation_loss(image, text, torch.arange(4), 1.0, centre_image_features=image)
    with pytest.raises(ValueError, match="must occur in centre_class_ids"):
        affiliation_loss(image[:2], text[:2], torch.tensor([0, 9]), 1.0, centre_image_features=image,
                         centre_text_features=text, centre_class_ids=torch.arange(4))


def test_pir_loss_terms_single_process():
    image, text = _features(10, 16, dtype=torch.float32)
    ids = _mixed_class_ids(10)
    scale, bias = torch.tensor(CLIP_SCALE), torch.tensor(-2.0)
    loss = PIRLoss(aff_weight=0.3)
    terms = loss(image, text, scale, class_ids=ids.tolist(), output_dict=True)
    assert set(terms) == {"contrastive_loss", "affiliation_loss"}
    torch.testing.assert_close(terms["contrastive_loss"], ClipLoss()(image, text, scale))
    torch.testing.assert_close(terms["affiliation_loss"], 0.3 * affiliation_loss(image, text, ids, scale))
    torch.testing.assert_close(loss(image, text, scale, class_ids=ids), sum(terms.values()))
    with_bias = loss(image, text, scale, class_ids=ids, logit_bias=bias, output_dict=True)
    torch.testing.assert_close(with_bias["contrastive_loss"], ClipLoss()(image, text, scale, logit_bias=bias))

    contrastive_only = PIRLoss(use_affiliation=False)(image, text, scale, output_dict=True)
    assert set(contrastive_only) == {"contrastive_loss"}
    with pytest.raises(ValueError, match="needs class_ids"):
        PIRLoss()(image, text, scale, output_dict=True)


# ---------------------------------------------------------------------------------------------------------
# Distributed: two CPU processes over gloo, no model.

WORLD_SIZE = 2
CONFIGS = [(local_loss, gather_with_grad) for local_loss in (False, True) for gather_with_grad in (False, True)]
AFF_WEIGHT = 0.7


def _distributed_worker(rank, init_file, image, text, ids, scale, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE,
                            timeout=timedelta(seconds=60))
    local = slice(rank * image.shape[0] // WORLD_SIZE, (rank + 1) * image.shape[0] // WORLD_SIZE)
    results = {}
    for local_loss, gather_with_grad in CONFIGS:
        kwargs = dict(local_loss=local_loss, gather_with_grad=gather_with_grad, rank=rank, world_size=WORLD_SIZE)
        inputs = _leaves(image[local], text[local], scale)
        terms = PIRLoss(aff_weight=AFF_WEIGHT, **kwargs)(*inputs, class_ids=ids[local], output_dict=True)
        contrastive_grads = torch.autograd.grad(terms["contrastive_loss"], inputs, retain_graph=True)
        sum(terms.values()).backward()
        clip_inputs = _leaves(image[local], text[local], scale)
        clip = ClipLoss(**kwargs)(*clip_inputs)
        clip.backward()
        results[(local_loss, gather_with_grad)] = {
            "terms": {k: v.detach() for k, v in terms.items()},
            "grads": [x.grad for x in inputs],
            "contrastive_grads": contrastive_grads,
            "clip": clip.detach(),
            "clip_grads": [x.grad for x in clip_inputs],
        }
    torch.save(results, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def _run_two_ranks(tmp_path, *args, timeout_s=90):
    context = mp.start_processes(_distributed_worker, args=(str(tmp_path / "init"), *args, str(tmp_path)),
                                 nprocs=WORLD_SIZE, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"distributed workers did not finish within {timeout_s} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE)]


def test_pir_loss_distributed_matches_single_process(tmp_path):
    # Classes span both ranks and include singletons; real 63-bit ids check the int64 all_gather.
    names = ["airport_1", "beach_1", "00578", "airport_2", "farm_1",
             "beach_2", "airport_3", "farm_2", "12", "beach_3"]
    ids = torch.tensor([resolve_class_id(n) for n in names])
    image, text = _features(len(names), 8, seed=7)
    scale = torch.tensor(CLIP_SCALE, dtype=torch.float64)
    ranks = _run_two_ranks(tmp_path, image, text, ids, scale)

    single_inputs = _leaves(image, text, scale)
    single_terms = PIRLoss(aff_weight=AFF_WEIGHT)(*single_inputs, class_ids=ids, output_dict=True)
    sum(single_terms.values()).backward()
    single_grads = [x.grad for x in single_inputs]

    for config in CONFIGS:
        local_loss, gather_with_grad = config
        per_rank = [r[config] for r in ranks]
        # The contrastive term is open_clip's ClipLoss, value and gradient, on every rank and setting.
        for result in per_rank:
            torch.testing.assert_close(result["terms"]["contrastive_loss"], result["clip"])
            for got, want in zip(result["contrastive_grads"], result["clip_grads"]):
                torch.testing.assert_close(got, want)

        # With local_loss each rank holds the mean over its own rows; equal local batches make the mean
        # over ranks the global mean. Without it every rank holds the global value.
        for name, want in single_terms.items():
            got = torch.stack([r["terms"][name] for r in per_rank])
            if not local_loss:
                torch.testing.assert_close(got, want.detach().expand(WORLD_SIZE), msg=f"{config} {name}")
            torch.testing.assert_close(got.mean(), want.detach(), msg=f"{config} {name}")

        # DDP averages parameter gradients over ranks. The logit scale is a replicated parameter, so its
        # DDP gradient is the mean of the per-rank gradients. A feature belongs to one rank and reaches the
        # parameters only through that rank's backward, so DDP scales its gradient by 1/world_size; with
        # gather_with_grad the all_gather backward sums the gradients every rank's loss sends to it, so
        # feature grad / world_size must equal the single-process gradient, which makes the parameters
        # after one step equal to single-process training on the concatenated batch.
        scale_grad = torch.stack([r["grads"][2] for r in per_rank]).mean()
        torch.testing.assert_close(scale_grad, single_grads[2], msg=f"{config} logit_scale grad")
        if gather_with_grad:
            for k, what in ((0, "image"), (1, "text")):
                got = torch.cat([r["grads"][k] for r in per_rank]) / WORLD_SIZE
                torch.testing.assert_close(got, single_grads[k], msg=f"{config} {what} grad")
        elif not local_loss:
            # open_clip's documented trade-off without gather_with_grad: each rank back-propagates the
            # full loss into its own samples only, so after DDP's averaging the step is 1/world_size of
            # the single-process one. We match ClipLoss here, not single-process training.
            for k in (0, 1):
                torch.testing.assert_close(torch.cat([r["grads"][k] for r in per_rank]), single_grads[k])
