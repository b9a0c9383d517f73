"""Checkpoint I/O: one write per epoch shared by every name it is kept under, each name replaced atomically."""
import os

import pytest
import torch

from training import checkpoints
from training.checkpoints import find_latest, remove_stale_temporaries, save_epoch_checkpoints


def state(epoch):
    return {"epoch": epoch, "state_dict": {"w": torch.full((64, 64), float(epoch))}, "optimizer": {}}


def save(tmp_path, epoch, *, is_best, total=10, delete_previous=False):
    return save_epoch_checkpoints(state(epoch), str(tmp_path), completed_epoch=epoch, total_epochs=total,
                                  save_frequency=1, delete_previous=delete_previous, is_best=is_best)


def epoch_of(path):
    return torch.load(path, weights_only=True)["epoch"]


@pytest.fixture
def count_writes(monkeypatch):
    calls = []
    real_save = torch.save
    monkeypatch.setattr(checkpoints.torch, "save", lambda obj, f: (calls.append(obj["epoch"]), real_save(obj, f)))
    return calls


def test_one_write_per_epoch_under_every_name(tmp_path, count_writes):
    save(tmp_path, 1, is_best=True)
    assert count_writes == [1]
    names = [tmp_path / n for n in ("epoch_latest.pt", "epoch_1.pt", "epoch_best.pt")]
    assert len({os.stat(p).st_ino for p in names}) == 1  # hard links: one file, three names
    assert all(epoch_of(p) == 1 for p in names)

    save(tmp_path, 2, is_best=False)
    assert count_writes == [1, 2]
    # The new latest replaced its name; the files epoch 1 is kept under are untouched.
    assert epoch_of(tmp_path / "epoch_latest.pt") == 2 and epoch_of(tmp_path / "epoch_2.pt") == 2
    assert epoch_of(tmp_path / "epoch_1.pt") == 1 and epoch_of(tmp_path / "epoch_best.pt") == 1
    assert os.stat(tmp_path / "epoch_best.pt").st_ino == os.stat(tmp_path / "epoch_1.pt").st_ino
    assert os.stat(tmp_path / "epoch_latest.pt").st_ino == os.stat(tmp_path / "epoch_2.pt").st_ino
    assert not list(tmp_path.glob("*.tmp"))


def test_delete_previous_keeps_the_best(tmp_path):
    save(tmp_path, 1, is_best=True, delete_previous=True)
    save(tmp_path, 2, is_best=False, delete_previous=True)
    assert not (tmp_path / "epoch_1.pt").exists()
    assert epoch_of(tmp_path / "epoch_best.pt") == 1  # the data lives on under its other name
    assert find_latest(str(tmp_path)) == str(tmp_path / "epoch_latest.pt")


@pytest.mark.parametrize("crash_at", [0, 1, 2])
def test_a_crash_between_names_leaves_only_complete_checkpoints(tmp_path, monkeypatch, crash_at):
    """The process dies at the crash_at-th rename of epoch 2's save: every name holds a complete checkpoint,
    of epoch 1 or 2, and --resume latest's clean-up removes the temporaries."""
    save(tmp_path, 1, is_best=True)
    real_replace, calls = os.replace, []

    def dying_replace(src, dst):
        if len(calls) == crash_at:
            raise KeyboardInterrupt("killed")
        calls.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(checkpoints.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path, 2, is_best=True)
    monkeypatch.setattr(checkpoints.os, "replace", real_replace)
    for name in ("epoch_latest.pt", "epoch_best.pt", "epoch_1.pt", "epoch_2.pt"):
        path = tmp_path / name
        if path.exists():
            assert epoch_of(path) in (1, 2), name
    assert epoch_of(tmp_path / "epoch_latest.pt") in (1, 2)
    assert list(tmp_path.glob("*.tmp"))
    remove_stale_temporaries(str(tmp_path))
    assert not list(tmp_path.glob("*.tmp"))


def test_without_hard_links_the_names_are_copies(tmp_path, monkeypatch, count_writes):
    def no_links(src, dst):
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(checkpoints.os, "link", no_links)
    save(tmp_path, 1, is_best=True)
    assert count_writes == [1]
    names = [tmp_path / n for n in ("epoch_latest.pt", "epoch_1.pt", "epoch_best.pt")]
    assert len({os.stat(p).st_ino for p in names}) == 3
    assert all(epoch_of(p) == 1 for p in names)
