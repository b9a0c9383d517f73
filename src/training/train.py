"""One training epoch and one validation pass. The loop reads top to bottom; everything else is a call."""
import json
import logging
import math
import os
import time
from typing import Dict, List, Optional, Tuple

import torch
from open_clip import get_input_dtype
from open_clip_train.distributed import is_master
from open_clip_train.precision import get_autocast
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from pir_clip.evaluation.encode import encode_images, encode_texts
from pir_clip.evaluation.metrics import retrieval_metrics
from training.failures import raise_if_injected

Batch = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


class RunningMean:
    def __init__(self):
        self.total, self.count, self.last = 0.0, 0, 0.0

    def update(self, value: float, n: int = 1) -> None:
        self.last = value
        self.total += value * n
        self.count += n

    @property
    def mean(self) -> float:
        return self.total / max(self.count, 1)


def train_one_epoch(model, data, loss_fn, epoch: int, optimizer, scaler, scheduler, args,
                    tb_writer=None) -> Dict[str, float]:
    with logging_redirect_tqdm():  # log lines go above the progress bar instead of through it
        return _train_one_epoch(model, data, loss_fn, epoch, optimizer, scaler, scheduler, args, tb_writer)


def _train_one_epoch(model, data, loss_fn, epoch, optimizer, scaler, scheduler, args, tb_writer):
    device = torch.device(args.device)
    autocast = get_autocast(args.precision, device_type=device.type)
    input_dtype = get_input_dtype(args.precision)
    model.train()
    data["train"].set_epoch(epoch)
    loader = data["train"].dataloader
    steps_per_epoch = loader.num_batches // args.accum_freq
    meters: Dict[str, RunningMean] = {}
    samples_per_second = RunningMean()
    bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}", unit="step", disable=not is_master(args),
               dynamic_ncols=True, leave=False, mininterval=1.0)
    pending: List[Batch] = []
    step_start = data_start = time.time()
    data_time = 0.0
    for i, batch in enumerate(loader):
        pending.append(to_device(batch, device, input_dtype))
        data_time += time.time() - data_start
        if len(pending) < args.accum_freq:
            data_start = time.time()
            continue
        step_in_epoch = i // args.accum_freq
        step = steps_per_epoch * epoch + step_in_epoch
        raise_if_injected(args.rank, step)  # PIR_CLIP_FAIL_AT_STEP, for tests of a failing rank
        if not args.skip_scheduler:
            scheduler(step)

        optimizer.zero_grad(set_to_none=True)
        losses, logit_scale = forward_backward(model, loss_fn, pending, autocast, scaler)
        optimizer_step(model, optimizer, scaler, args.grad_clip_norm)
        with torch.no_grad():  # clamp to ln(100) as CLIP does
            unwrap(model).logit_scale.clamp_(0, math.log(100))

        batch_samples = sum(len(b[0]) for b in pending) * args.world_size
        pending = []
        step_time = time.time() - step_start
        samples_per_second.update(batch_samples / max(step_time, 1e-9))
        bar.update(1)
        last_step = step_in_epoch + 1 == steps_per_epoch
        if is_master(args) and (step_in_epoch % args.log_every_n_steps == 0 or last_step):
            for name, value in losses.items():
                meters.setdefault(name, RunningMean()).update(value.item())
            bar.set_postfix({**{k: f"{m.last:.4f}" for k, m in meters.items()},
                             "samples/s": f"{samples_per_second.last:.1f}"})
            log_step(args, epoch, step_in_epoch, steps_per_epoch, loader.num_samples, meters, optimizer,
                     logit_scale.item(), samples_per_second.last, data_time, step_time, step, tb_writer)
        data_time = 0.0
        step_start = data_start = time.time()
    bar.close()
    report_skipped(data["train"], epoch, args, tb_writer)
    summary = {name: m.mean for name, m in meters.items()}
    summary["samples_per_second"] = samples_per_second.mean
    return summary


def to_device(batch, device: torch.device, input_dtype) -> Batch:
    images, texts, class_ids = batch
    return (images.to(device=device, dtype=input_dtype, non_blocking=True),
            texts.to(device=device, non_blocking=True),
            class_ids.to(device=device, non_blocking=True))


def forward_backward(model, loss_fn, batches: List[Batch], autocast, scaler):
    """Loss terms of the (accumulated) batch, with gradients accumulated into the parameters.

    With ``--accum-freq`` k > 1 this follows open_clip: features of all k batches are computed without
    gradients, then each batch is re-encoded with gradients and scored against the cached others, so the
    contrastive and affiliation terms see the whole accumulated batch.
    """
    if len(batches) == 1:
        images, texts, class_ids = batches[0]
        with autocast():
            out = model(images, texts)
            losses = loss_fn(**out, class_ids=class_ids, output_dict=True)
            total = sum(losses.values())
        backward(total, scaler)
        return {**losses, "loss": total.detach()}, out["logit_scale"]

    with torch.no_grad(), autocast():
        cached = [model(images, texts) for images, texts, _ in batches]
    class_ids = torch.cat([b[2] for b in batches])
    for j, (images, texts, _) in enumerate(batches):
        with autocast():
            out = model(images, texts)
            features = {key: torch.cat([out[key] if n == j else c[key] for n, c in enumerate(cached)])
                        for key in ("image_features", "text_features")}
            # The scale enters every pass's loss in full: let only the first pass carry its gradient, else
            # it would get k times the whole batch's gradient (as open_clip's accumulation does).
            extras = {key: out[key] if j == 0 else out[key].detach()
                      for key in ("logit_scale", "logit_bias") if key in out}
            losses = loss_fn(**features, **extras, class_ids=class_ids, output_dict=True)
            total = sum(losses.values())
        backward(total, scaler)
    return {**losses, "loss": total.detach()}, out["logit_scale"]


def backward(total_loss: torch.Tensor, scaler) -> None:
    if scaler is not None:
        scaler.scale(total_loss).backward()
    else:
        total_loss.backward()


def optimizer_step(model, optimizer, scaler, grad_clip_norm: Optional[float]) -> None:
    if scaler is not None:
        if grad_clip_norm is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm, norm_type=2.0)
        scaler.step(optimizer)
        scaler.update()
    else:
        if grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm, norm_type=2.0)
        optimizer.step()


def log_step(args, epoch, step_in_epoch, steps_per_epoch, samples_per_epoch, meters, optimizer, logit_scale,
             samples_per_second, data_time, step_time, step, tb_writer) -> None:
    seen = (step_in_epoch + 1) * args.batch_size * args.accum_freq * args.world_size
    lr = optimizer.param_groups[0]["lr"]
    terms = " ".join(f"{name.capitalize()}: {m.last:#.5g} ({m.mean:#.5g})" for name, m in meters.items())
    logging.info(
        f"Train Epoch: {epoch} [{seen}/{samples_per_epoch} ({100.0 * (step_in_epoch + 1) / steps_per_epoch:.0f}%)] "
        f"Data (t): {data_time:.3f} Batch (t): {step_time:.3f}, {samples_per_second:#g}/s "
        f"LR: {lr:5f} Logit Scale: {logit_scale:.3f} {terms}")
    if tb_writer is not None:
        scalars = {"data_time": data_time, "batch_time": step_time, "samples_per_second": samples_per_second,
                   "scale": logit_scale, "lr": lr, **{name: m.last for name, m in meters.items()}}
        for name, value in scalars.items():
            tb_writer.add_scalar(f"train/{name}", value, step)


def report_skipped(info, epoch: int, args, tb_writer) -> Dict[str, int]:
    """Samples the data pipeline skipped this epoch (corrupt images, missing captions), summed over ranks."""
    skipped = dict(info.skipped()) if hasattr(info, "skipped") else {}
    if args.distributed and skipped:
        names = sorted(skipped)
        counts = torch.tensor([skipped[n] for n in names], dtype=torch.long)
        if torch.distributed.get_backend() == "nccl":
            counts = counts.to(args.device)
        torch.distributed.all_reduce(counts)
        skipped = dict(zip(names, counts.tolist()))
    if is_master(args):
        total = sum(skipped.values())
        if total:
            details = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in sorted(skipped.items()) if n)
            logging.warning(f"Epoch {epoch}: skipped {total} bad training samples ({details}).")
        if tb_writer is not None:
            for reason, n in skipped.items():
                tb_writer.add_scalar(f"train/skipped_{reason}", n, epoch)
    return skipped


def evaluate(model, val_set, epoch: int, args, preprocess, tokenizer, tb_writer=None) -> Dict[str, float]:
    """RS retrieval validation (METHOD.md section 6), sharded: every rank encodes every world_size-th image and
    caption, the master gathers the embeddings, scores them, logs and appends to ``results.jsonl`` next to
    the checkpoints. Returns the metrics on the master, {} elsewhere.

    Sharding divides the validation time by the number of ranks and keeps them all busy: no rank waits in a
    collective while the master encodes the whole set alone, so a large set cannot trip the process group's
    timeout (10 min with NCCL). The metrics equal a single-process evaluation of the same weights.
    """
    model = unwrap(model)
    was_training = model.training
    model.eval()
    encode = dict(device=args.device, precision=args.precision, progress=is_master(args))
    try:
        images = _encode_shard(encode_images, model, val_set.image_paths, args, preprocess,
                               batch_size=args.val_batch_size or args.batch_size, workers=min(args.workers, 4),
                               bands=getattr(args, "bands", None), **encode)
        texts = _encode_shard(encode_texts, model, val_set.captions, args, tokenizer,
                              batch_size=max(args.val_batch_size or args.batch_size, 64), **encode)
    finally:
        model.train(was_training)
    if args.distributed:
        images, texts = gather_shards(images, len(val_set.image_paths), args), \
            gather_shards(texts, len(val_set.captions), args)
    if not is_master(args):
        return {}
    metrics = retrieval_metrics(images, texts, val_set.text_to_image)
    report_metrics("Eval", metrics, epoch, args, tb_writer)
    return metrics


def report_metrics(label: str, metrics: Dict[str, float], epoch: int, args, tb_writer=None, digits: int = 2) -> None:
    """Validation metrics to the log, tensorboard (``val/NAME``) and a line of ``results.jsonl``."""
    logging.info(f"{label} Epoch: {epoch} " + "  ".join(f"{k}: {v:.{digits}f}" for k, v in metrics.items()))
    if tb_writer is not None:
        for name, value in metrics.items():
            tb_writer.add_scalar(f"val/{name}", value, epoch)
    if args.save_logs:
        with open(os.path.join(args.checkpoint_path, "results.jsonl"), "a") as f:
            f.write(json.dumps({"epoch": epoch, **metrics}) + "\n")


def _encode_shard(encode, model, items: List, args, transform, **kwargs) -> Optional[torch.Tensor]:
    """``encode`` (encode_images / encode_texts) of this rank's items ``items[rank::world_size]``, (n, D);
    None when the rank has none (more ranks than items)."""
    shard = items[args.rank::args.world_size]
    return encode(model, shard, transform, **kwargs) if shard else None


def gather_shards(shard: Optional[torch.Tensor], total: int, args) -> Optional[torch.Tensor]:
    """Every rank's ``items[rank::world_size]`` embeddings, put back in item order: (total, D) on every rank."""
    shards: List[Optional[torch.Tensor]] = [None] * args.world_size
    torch.distributed.all_gather_object(shards, shard)
    present = [s for s in shards if s is not None]
    if not present:
        return None
    out = present[0].new_empty(total, present[0].shape[1])
    for rank, part in enumerate(shards):
        if part is not None:
            out[rank::args.world_size] = part
    return out
