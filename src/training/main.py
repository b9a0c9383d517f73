"""``python -m training.main``: open_clip's training entry point with PIR-CLIP's model and losses.

Same flags and run layout as open_clip (``logs/<name>/{out.log,params.txt,checkpoints,tensorboard}``), plus
the affiliation loss (``--is_aff_loss``), PIR model options, Karpathy-JSON training data and RS retrieval
validation. Single process, ``torchrun`` on one node (gloo on CPU, nccl on GPU) and multi-node rendezvous.
"""
import logging
import os
import random
import sys
from datetime import datetime
from typing import Optional

import numpy as np
import open_clip
import torch
from open_clip_train.distributed import broadcast_object, init_distributed_device, is_master
from open_clip_train.logger import setup_logging
from open_clip_train.scheduler import const_lr, const_lr_cooldown, cosine_lr

from pir_clip import CheckpointError, create_model_and_transforms, get_tokenizer
from pir_clip.data.annotations import DataFormatError, load_retrieval_set
from pir_clip.losses import PIRLoss
from pir_clip.evaluation.metrics import MEAN_RECALL_NAME
from training.checkpoints import (
    find_latest, load_training_state, remove_stale_temporaries, save_epoch_checkpoints, training_state,
)
from training.data import get_data
from training.failures import end_job, finish_job, other_rank_failed, watch_for_failed_ranks
from training.params import parse_args, resolve_precision
from training.sync_batchnorm import convert_sync_batchnorm
from training.train import evaluate, train_one_epoch, unwrap
from training.zeroshot import load_zeroshot_set, zeroshot_due, zeroshot_validate


class RunExistsError(FileExistsError):
    """The run folder holds a finished or running experiment and --resume latest was not given."""


USER_ERRORS = (DataFormatError, CheckpointError, FileNotFoundError, ValueError, RunExistsError)


def main(argv=None) -> int:
    """Exit status 0; 2 for bad input (one ``error`` line); 1 for anything else (with its traceback). Under
    torchrun a failing rank ends every rank (:mod:`training.failures`)."""
    args = parse_args(argv)
    device = init_distributed_device(args)
    watch_for_failed_ranks(args)
    try:
        resolve_precision(args, device.type)
        prepare_run(args)
        setup_logging(args.log_path, logging.DEBUG if args.debug else logging.INFO)
        quiet_library_logs(args.debug)
        run(args, device)
    except USER_ERRORS as exc:
        # Bad input, not a bug: say what is wrong without a traceback.
        logging.error(f"{type(exc).__name__}: {exc}")
        return end_job(args, 2)
    except KeyboardInterrupt:
        logging.error(f"Interrupted (rank {args.rank}).")
        return end_job(args, 130)
    except Exception:
        failed = other_rank_failed(args)
        if failed is not None:  # this rank's error is the echo of another rank's failure
            logging.error(f"Stopping rank {args.rank}: rank {failed} failed (its error is printed above/in its log).")
        else:
            logging.exception(f"Training failed on rank {args.rank}:")
        return end_job(args, 1)
    finish_job(args)
    return 0


def run(args, device: torch.device) -> None:
    seed_everything(args.seed, 0)  # identical initial weights on every rank
    model, preprocess_train, preprocess_val = create_model_and_transforms(
        args.model, args.pretrained or None,
        prior_pretrained=args.prior_pretrained, unlock_prior=args.unlock_prior,
        enable_vir=args.enable_vir, enable_lca=args.enable_lca,
        precision=args.precision, device=device, output_dict=True,
        force_quick_gelu=args.force_quick_gelu, force_image_size=args.force_image_size,
        force_context_length=args.force_context_length, force_patch_dropout=args.force_patch_dropout,
        image_mean=args.image_mean, image_std=args.image_std, image_interpolation=args.image_interpolation,
        image_resize_mode=args.image_resize_mode, aug_cfg=args.aug_cfg, cache_dir=args.cache_dir)
    seed_everything(args.seed, args.rank)
    if args.lock_image:
        model.lock_image_tower(unlocked_groups=args.lock_image_unlocked_groups,
                               freeze_bn_stats=args.lock_image_freeze_bn_stats)
    if args.lock_text:
        lock_text_tower(model, args)
    if args.grad_checkpointing:
        model.set_grad_checkpointing()
    if args.distributed and args.use_bn_sync:
        model = convert_sync_batchnorm(model)
    if is_master(args):
        log_params(args, model)

    tokenizer = get_tokenizer(args.model, context_length=args.force_context_length)
    val_set = load_validation_set(args) if args.val_data else None  # every rank encodes its share
    zeroshot_set = load_zeroshot_set(args) if is_master(args) else None  # rank 0 scores it; see README
    if not args.train_data and args.dataset_type != "synthetic":
        raise ValueError("nothing to train on: pass --train-data (or --dataset-type synthetic)")

    optimizer = create_optimizer(args, model)
    scaler = torch.amp.GradScaler(device=device.type) if args.precision == "amp" else None
    resumed = resume(args, model, optimizer, scaler)
    start_epoch, best_mean_recall = resumed["epoch"], resumed["best_mean_recall"]
    data = get_data(args, (preprocess_train, preprocess_val), epoch=start_epoch, tokenizer=tokenizer)
    steps_per_epoch = data["train"].dataloader.num_batches // args.accum_freq
    scheduler = create_scheduler(args, optimizer, steps_per_epoch)
    if args.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None,
            static_graph=args.ddp_static_graph)
    loss_fn = PIRLoss(local_loss=args.local_loss, gather_with_grad=args.gather_with_grad, cache_labels=True,
                      rank=args.rank, world_size=args.world_size, aff_weight=args.aff_loss_weight,
                      use_affiliation=args.is_aff_loss)
    writer = tensorboard_writer(args)
    original_model = model  # checkpoints hold its state dict, without torch.compile's wrapper
    if args.torchcompile:
        logging.info(f"Compiling the model with torch.compile (backend {args.torchcompile_backend}) ...")
        model = torch.compile(original_model, backend=args.torchcompile_backend)

    if start_epoch >= args.epochs:
        logging.info(f"Nothing to do: the checkpoint is at epoch {start_epoch} of --epochs {args.epochs}.")
    for epoch in range(start_epoch, args.epochs):
        if is_master(args):
            logging.info(f"Start epoch {epoch}")
        summary = train_one_epoch(model, data, loss_fn, epoch, optimizer, scaler, scheduler, args, tb_writer=writer)
        completed_epoch = epoch + 1
        metrics = {}
        if val_set is not None and (completed_epoch % args.val_frequency == 0 or completed_epoch == args.epochs):
            metrics = evaluate(original_model, val_set, completed_epoch, args, preprocess_val, tokenizer,
                               tb_writer=writer)
        if zeroshot_set is not None and zeroshot_due(completed_epoch, args):
            metrics.update(zeroshot_validate(original_model, zeroshot_set, completed_epoch, args, preprocess_val,
                                             tokenizer, tb_writer=writer))
        mean_recall = metrics.get(MEAN_RECALL_NAME)
        is_best = mean_recall is not None and (best_mean_recall is None or mean_recall > best_mean_recall)
        if is_best:
            best_mean_recall = mean_recall
        if args.save_logs:
            state = training_state(unwrap(original_model), optimizer, scaler, completed_epoch,
                                   completed_epoch * steps_per_epoch, args.name, best_mean_recall)
            save_epoch_checkpoints(state, args.checkpoint_path, completed_epoch=completed_epoch,
                                   total_epochs=args.epochs, save_frequency=args.save_frequency,
                                   delete_previous=args.delete_previous_checkpoint, is_best=is_best)
        if is_master(args):
            logging.info(f"Finished epoch {epoch}: " + ", ".join(f"{k} {v:.4g}" for k, v in summary.items())
                         + (f", val mR {mean_recall:.2f} (best {best_mean_recall:.2f})" if mean_recall else ""))
        if args.distributed:
            torch.distributed.barrier()  # keep ranks together while the master saves
    if writer is not None:
        writer.close()
    if is_master(args):
        logging.info(f"Done. Checkpoints and logs in {os.path.dirname(args.checkpoint_path)}")


class _LibraryInfoFilter(logging.Filter):
    """open_clip logs every factory step at INFO on the root logger; keep its warnings, drop the chatter."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or f"{os.sep}open_clip{os.sep}" not in record.pathname


def quiet_library_logs(debug: bool) -> None:
    if debug:
        return
    # open_clip's setup_logging lowers every existing logger to INFO, torch's compiler loggers included.
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("torch", "PIL", "urllib3", "fsspec", "timm", "matplotlib")):
            logging.getLogger(name).setLevel(logging.WARNING)
    for handler in logging.root.handlers:
        handler.addFilter(_LibraryInfoFilter())


def seed_everything(seed: int, rank: int) -> None:
    torch.manual_seed(seed + rank)
    np.random.seed(seed + rank)
    random.seed(seed + rank)


def prepare_run(args) -> None:
    """Names the run and creates ``logs/<name>/`` like open_clip; refuses to overwrite a finished run."""
    if args.name is None:
        date = datetime.now().strftime("%Y_%m_%d-%H_%M_%S")
        if args.distributed:
            date = broadcast_object(args, date)
        args.name = "-".join([date, f"model_{args.model.replace('/', '-')}", f"lr_{args.lr}",
                              f"b_{args.batch_size}", f"j_{args.workers}", f"p_{args.precision}"])
    run_dir = os.path.join(args.logs, args.name)
    args.checkpoint_path = os.path.join(run_dir, "checkpoints")
    args.log_path = None
    args.save_logs = bool(args.logs) and args.logs.lower() != "none" and is_master(args)
    args.tensorboard = "tensorboard" in args.report_to or "all" in args.report_to
    args.tensorboard_path = os.path.join(run_dir, "tensorboard") if args.tensorboard else ""
    if is_master(args, local=args.log_local):
        os.makedirs(run_dir, exist_ok=True)
        args.log_path = os.path.join(run_dir, f"out-{args.rank}" if args.log_local else "out.log")
        if os.path.exists(args.log_path) and args.resume != "latest":
            raise RunExistsError(f"experiment {run_dir} already exists. Use --name to start a new one, "
                                 "or --resume latest to continue it.")
    if is_master(args):
        for path in (args.checkpoint_path, args.tensorboard_path):
            if path:
                os.makedirs(path, exist_ok=True)


def log_params(args, model) -> None:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logging.info(f"Model {args.model} ({type(model).__name__}): {total:,} parameters, {trainable:,} trainable")
    with open(os.path.join(args.logs, args.name, "params.txt"), "w") as f:
        for name in sorted(vars(args)):
            f.write(f"{name}: {getattr(args, name)}\n")
    logging.info("Params:\n" + "\n".join(f"  {k}: {getattr(args, k)}" for k in sorted(vars(args))))


def lock_text_tower(model, args) -> None:
    """--lock-text. open_clip's CLIP text tower (PIR's too) can only be locked with its LayerNorms (its
    lock_text_tower asserts so) while open_clip's --lock-text-freeze-layer-norm defaults to off, which makes
    open_clip's own --lock-text fail on CLIP models: lock them with the rest, and say so."""
    freeze_layer_norm = args.lock_text_freeze_layer_norm
    if isinstance(unwrap(model), open_clip.CLIP) and not freeze_layer_norm:
        logging.info("--lock-text: CLIP's text tower is locked with its LayerNorms (it has no other way).")
        freeze_layer_norm = True
    model.lock_text_tower(unlocked_layers=args.lock_text_unlocked_layers, freeze_layer_norm=freeze_layer_norm)


def load_validation_set(args):
    val_set = load_retrieval_set(args.val_data, images_dir=args.val_images_dir, split=args.val_split,
                                 csv_encoding=args.csv_encoding, images_flag="--val-images-dir")
    logging.info(f"Validation set: {val_set.summary()}")
    return val_set


def create_optimizer(args, model):
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if args.opt.startswith("timm/"):
        from timm.optim import create_optimizer_v2
        extra = {"betas": (args.beta1, args.beta2)} if args.beta1 is not None else {}
        if args.momentum is not None:
            extra["momentum"] = args.momentum
        return create_optimizer_v2(model, args.opt[len("timm/"):], lr=args.lr, weight_decay=args.wd, eps=args.eps,
                                   **extra)
    if args.opt != "adamw":
        raise ValueError(f"--opt {args.opt!r}: use 'adamw' or a timm optimizer as 'timm/<name>'")

    # As open_clip: no weight decay on gains, biases, norms and the logit scale.
    def no_decay(name, param):
        return param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name

    groups = [{"params": [p for n, p in params if no_decay(n, p)], "weight_decay": 0.0},
              {"params": [p for n, p in params if not no_decay(n, p)], "weight_decay": args.wd}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(args.beta1, args.beta2), eps=args.eps)


def resume(args, model, optimizer, scaler) -> dict:
    start = {"epoch": 0, "step": 0, "best_mean_recall": None}
    path: Optional[str] = args.resume
    if path == "latest":
        if is_master(args):
            remove_stale_temporaries(args.checkpoint_path)
            path = find_latest(args.checkpoint_path)
            logging.info(f"--resume latest: {path or 'no checkpoint yet, starting from scratch'}")
        if args.distributed:
            path = broadcast_object(args, path)
    if not path:
        return start
    return load_training_state(path, model, optimizer, scaler)


def create_scheduler(args, optimizer, steps_per_epoch: int):
    total_steps = steps_per_epoch * args.epochs
    if args.lr_scheduler == "cosine":
        return cosine_lr(optimizer, args.lr, args.warmup, total_steps)
    if args.lr_scheduler == "const":
        return const_lr(optimizer, args.lr, args.warmup, total_steps)
    if args.lr_scheduler == "const-cooldown":
        if args.epochs_cooldown is None:
            raise ValueError("--lr-scheduler const-cooldown needs --epochs-cooldown")
        return const_lr_cooldown(optimizer, args.lr, args.warmup, total_steps, steps_per_epoch * args.epochs_cooldown,
                                 args.lr_cooldown_power, args.lr_cooldown_end)
    raise ValueError(f"--lr-scheduler {args.lr_scheduler!r}: use cosine, const or const-cooldown")


def tensorboard_writer(args):
    if not (args.save_logs and args.tensorboard):
        return None
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(args.tensorboard_path)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
