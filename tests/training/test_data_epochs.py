"""Every rank gives exactly ``num_batches`` full batches per epoch from webdataset shards, in every mode: shards
of any sizes (smaller than a batch, empty, fewer than ranks x workers), 0..3 workers, 1..3 ranks, resampled
or not; repeated passes reshuffle; and under torchrun the training CLI finishes with equal steps per rank.

Ranks and workers are simulated in one process through the environment webdataset's ``split_by_node`` and
``split_by_worker`` read (RANK/WORLD_SIZE, WORKER/NUM_WORKERS); real DataLoader workers and a real torchrun
job check the same with processes.
"""
import argparse
import io
import json
import re
from collections import Counter

import pytest

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create")
import torch
from PIL import Image
from torchvision import transforms as T

import training.data.webdataset as training_wds
from test_data import write_shard
from test_ddp import torchrun
from training.data import get_data


def png(n):
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (n % 256, n // 256, 7)).save(buffer, "PNG")
    return buffer.getvalue()


def make_shards(folder, sizes):
    """Shards of ``sizes`` samples (open_clip keys); sample n has caption "n" and image name c<shard>_<n>.png."""
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for s, size in enumerate(sizes):
        write_shard(folder / f"d-{s:06d}.tar", [(f"c{s}_{n + i}", {"png": png(n + i), "txt": str(n + i).encode()})
                                                for i in range(size)])
        n += size
    (folder / "sizes.json").write_text(json.dumps({f"d-{s:06d}.tar": size for s, size in enumerate(sizes)}))
    return str(folder / f"d-{{000000..{len(sizes) - 1:06d}}}.tar")


def sample_ids(captions):
    """A stand-in tokenizer: caption "n" -> token row [n], so batches name their samples."""
    return torch.tensor([[int(c)] for c in captions])


def make_args(spec, **overrides):
    args = dict(train_data=spec, dataset_type="webdataset", train_num_samples=None, dataset_resampled=False,
                train_data_upsampling_factors=None, batch_size=4, workers=0, seed=0, world_size=1, rank=0,
                is_aff_loss=True, aff_label_regex=None)
    return argparse.Namespace(**{**args, **overrides})


def rank_epoch(monkeypatch, args, epoch=0, simulate_workers=True):
    """``(num_batches, batches)`` of one rank's epoch, batches as lists of sample ids. With
    ``simulate_workers`` each worker's stream is read in this process, as the DataLoader would interleave them."""
    monkeypatch.setenv("RANK", str(args.rank))
    monkeypatch.setenv("WORLD_SIZE", str(args.world_size))
    info = get_data(args, (T.ToTensor(), T.ToTensor()), epoch=epoch, tokenizer=sample_ids)["train"]
    info.set_epoch(epoch)
    if not simulate_workers or args.workers == 0:
        batches = list(info.dataloader)
    else:
        batches = []
        for worker in range(args.workers):
            monkeypatch.setenv("WORKER", str(worker))
            monkeypatch.setenv("NUM_WORKERS", str(args.workers))
            batches += list(info.dataloader.dataset)
        monkeypatch.delenv("WORKER")
        monkeypatch.delenv("NUM_WORKERS")
    for images, tokens, class_ids in batches:
        assert images.shape == (args.batch_size, 3, 4, 4) and tokens.shape == (args.batch_size, 1)
        assert class_ids.shape == (args.batch_size,) and class_ids.dtype == torch.int64
    return info.dataloader.num_batches, [tokens.flatten().tolist() for _, tokens, _ in batches]


def all_ranks(monkeypatch, spec, world_size, epoch=0, **overrides):
    return [rank_epoch(monkeypatch, make_args(spec, world_size=world_size, rank=rank, **overrides), epoch)
            for rank in range(world_size)]


SHARD_SIZES = {
    "12,3": [12, 3],                      # the reported hang: a worker's share smaller than a batch
    "12,3,5,4": [12, 3, 5, 4],
    "ones": [1] * 7,                      # every shard smaller than a batch
    "single": [7],                        # fewer shards than ranks x workers
    "with-empty": [4, 0, 9, 2],           # an empty shard
    "skewed": [30, 1],
}


@pytest.mark.parametrize("resampled", [False, True], ids=["passes", "resampled"])
@pytest.mark.parametrize("workers", [0, 1, 2, 3])
@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("sizes", list(SHARD_SIZES), ids=list(SHARD_SIZES))
def test_every_rank_gives_num_batches(tmp_path, monkeypatch, sizes, world_size, workers, resampled):
    monkeypatch.setattr(training_wds, "SAMPLE_SHUFFLE_INITIAL", 10)  # resampled tiny shards: fill the buffer fast
    spec = make_shards(tmp_path, SHARD_SIZES[sizes])
    ranks = all_ranks(monkeypatch, spec, world_size, workers=workers, dataset_resampled=resampled)
    total = sum(SHARD_SIZES[sizes])
    expected = -(-(-(-total // (4 * world_size))) // max(1, workers)) * max(1, workers)
    for num_batches, batches in ranks:
        assert num_batches == expected and len(batches) == expected
        assert all(0 <= i < total for batch in batches for i in batch)


@pytest.mark.parametrize("world_size, workers", [(1, 2), (2, 2), (2, 1), (1, 3), (3, 2)])
def test_no_sample_repeats_when_every_share_fills_its_part(tmp_path, monkeypatch, world_size, workers):
    # 12 shards of 8 over R x W readers, each reader's part of the epoch within its share: all distinct.
    spec = make_shards(tmp_path, [8] * 12)
    ranks = all_ranks(monkeypatch, spec, world_size, workers=workers, train_num_samples=96 // (world_size * workers)
                      * world_size * workers)
    seen = [i for _, batches in ranks for batch in batches for i in batch]
    assert len(seen) == len(set(seen)) >= 48


@pytest.mark.parametrize("sizes", [[48, 12, 20, 48], [64, 32, 32, 64], [20, 36, 4, 28, 8, 32]])
@pytest.mark.parametrize("world_size, workers", [(1, 2), (2, 2), (2, 1), (1, 4)])
def test_no_batch_repeats_when_the_data_fills_the_epoch(tmp_path, monkeypatch, sizes, world_size, workers):
    # Uneven shards: a reader whose share runs short goes on to other shards of the next pass, so samples
    # repeat, but batches do not: before the fix a short reader replayed its first pass batch for batch.
    # (Two readers drawing the same 8 of one shard in different passes is possible, but at odds of 1 in
    # C(64, 8) = 4e9 here; with shards near the batch size such coincidences do happen.)
    spec = make_shards(tmp_path, sizes)
    ranks = all_ranks(monkeypatch, spec, world_size, workers=workers, batch_size=8)
    batches = [tuple(sorted(batch)) for _, rank_batches in ranks for batch in rank_batches]
    assert len(batches) * 8 <= sum(sizes)  # the data is not smaller than the epoch
    assert not [batch for batch, n in Counter(batches).items() if n > 1]


def test_repeated_passes_reshuffle(tmp_path, monkeypatch):
    # One rank, one worker, one shard of 6 and batch 4: 12 samples per epoch are three passes over the same
    # shard. Each pass is a new order (the fix of a worker replaying its first pass), and each holds every
    # sample once before any comes again.
    spec = make_shards(tmp_path, [6])
    _, batches = rank_epoch(monkeypatch, make_args(spec, train_num_samples=12))
    stream = [i for batch in batches for i in batch]
    passes = [stream[0:6], stream[6:12]]
    assert all(sorted(p) == list(range(6)) for p in passes)
    assert passes[0] != passes[1]
    # A new epoch is a new order too, and the same epoch is the same order on a rerun.
    assert rank_epoch(monkeypatch, make_args(spec, train_num_samples=12), epoch=1)[1] != batches
    assert rank_epoch(monkeypatch, make_args(spec, train_num_samples=12))[1] == batches


def test_ranks_read_disjoint_shards_when_they_suffice(tmp_path, monkeypatch):
    spec = make_shards(tmp_path, [10, 10, 10, 10])
    (n0, rank0), (n1, rank1) = all_ranks(monkeypatch, spec, 2, batch_size=5)
    seen0, seen1 = {i for b in rank0 for i in b}, {i for b in rank1 for i in b}
    assert n0 == n1 == 4 and len(seen0) == len(seen1) == 20 and not seen0 & seen1


def test_the_reported_case_with_real_workers(tmp_path, monkeypatch):
    # Shards of 12 and 3 samples, batch 4, 2 DataLoader workers: 4 batches promised, 2 were given.
    spec = make_shards(tmp_path, [12, 3])
    num_batches, batches = rank_epoch(monkeypatch, make_args(spec, workers=2), simulate_workers=False)
    assert num_batches == len(batches) == 4


@pytest.mark.parametrize("workers", [2, 3])
def test_dataloader_workers_give_num_batches(tmp_path, monkeypatch, workers):
    spec = make_shards(tmp_path, [12, 3, 5])
    for rank in (0, 1):
        args = make_args(spec, world_size=2, rank=rank, workers=workers)
        num_batches, batches = rank_epoch(monkeypatch, args, simulate_workers=False)
        assert num_batches == len(batches) == -(-3 // workers) * workers  # ceil(ceil(20 / 8) / W) x W


def test_fewer_shards_than_readers_is_a_warning(tmp_path, monkeypatch, caplog):
    spec = make_shards(tmp_path, [5, 6])
    num_batches, batches = rank_epoch(monkeypatch, make_args(spec, world_size=2, rank=1, workers=2))
    assert len(batches) == num_batches == 2
    assert "2 shards for 2 ranks x 2 workers" in caplog.text and "repeated" in caplog.text


def test_shards_without_usable_samples_end_the_worker(tmp_path, monkeypatch):
    # Every sample but the first shard's lacks a caption: the passes would spin forever without the guard.
    write_shard(tmp_path / "d-000000.tar", [("c_0", {"png": png(0), "txt": b"0"})])
    for s in range(1, 4):
        write_shard(tmp_path / f"d-{s:06d}.tar", [(f"c_{s}", {"png": png(s)})])
    spec = str(tmp_path / "d-{000000..000003}.tar")
    args = make_args(spec, train_num_samples=400, workers=0)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    info = get_data(args, (T.ToTensor(), T.ToTensor()), tokenizer=sample_ids)["train"]
    info.set_epoch(0)
    # One usable sample keeps the guard quiet (it is reused pass after pass): the epoch completes.
    assert len(list(info.dataloader)) == 100
    (tmp_path / "d-000000.tar").write_bytes(b"")  # now no shard has a usable sample
    with pytest.raises(Exception, match="shards in a row without one usable sample"):
        list(info.dataloader)


def test_uneven_shards_under_torchrun(tmp_path):
    """Shards of 12, 3, 5 and 4 samples, batch 4, 2 ranks x 2 workers, no resampling. Before the rebuild this
    job hung at step 2 of 4: the worker holding the 3-sample shard gave no batch, so its rank fell short and
    the other waited in all-reduce (and 12, 3 and 5 alone, fewer shards than workers, were refused)."""
    spec = make_shards(tmp_path / "shards", [12, 3, 5, 4])
    proc = torchrun(["-m", "training.main", "--model", "PIR-tiny", "--is_aff_loss", "--train-data", spec,
                     "--dataset-type", "webdataset", "--batch-size", "4", "--epochs", "2", "--workers", "2",
                     "--precision", "fp32", "--lr", "1e-4", "--warmup", "1", "--logs-dir", str(tmp_path / "logs"),
                     "--name", "uneven", "--log-every-n-steps", "1", "--seed", "0"], timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = re.findall(r"rank (\d+): (\d+) training batches this epoch", proc.stdout + proc.stderr)
    # ceil(ceil(24 / 8) / 2) = 2 batches per worker, 4 per rank, in each of the 2 epochs, on both ranks.
    assert sorted(counts) == [("0", "4"), ("0", "4"), ("1", "4"), ("1", "4")]
    log = (tmp_path / "logs" / "uneven" / "out.log").read_text()
    assert re.findall(r"Train Epoch: (\d) \[\d+/32 \(100%\)\]", log) == ["0", "1"]
