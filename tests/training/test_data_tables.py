"""Map-style data (CSV, JSON) keeps a fixed batch size under DDP: with a quarter of the images corrupt, every
batch of every rank is full, bad images are replaced (the same way every run) and counted exactly once per
record met, in one process and under torchrun with the affiliation loss's all-gathers."""
import argparse
import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from test_ddp import torchrun
from training.data import SKIP_REASONS, get_data

IMAGES, CAPTIONS, CORRUPT = 16, 2, {1, 6, 11, 12}  # 4 of 16 images (a quarter), 8 of 32 records


def quarter_corrupt(folder):
    """16 images (class c0..c3 by name), 2 captions each; images 1, 6, 11 and 12 are not images."""
    records = []
    for n in range(IMAGES):
        name = f"c{n % 4}_{n}.png"
        if n in CORRUPT:
            (folder / name).write_bytes(b"\x89PNG\r\n\x1a\n this is not an image" if n % 2 else b"")
        else:
            buffer = io.BytesIO()
            Image.fromarray(np.full((8, 8, 3), n * 10, np.uint8)).save(buffer, "PNG")
            (folder / name).write_bytes(buffer.getvalue())
        records += [(name, f"{n * CAPTIONS + k}") for k in range(CAPTIONS)]
    csv = folder / "train.csv"
    csv.write_text("filename,title\n" + "".join(f"{name},{caption}\n" for name, caption in records))
    (folder / "train.json").write_text(json.dumps({"images": [
        {"filename": f"c{n % 4}_{n}.png", "split": "train",
         "sentences": [{"raw": str(n * CAPTIONS + k)} for k in range(CAPTIONS)]} for n in range(IMAGES)]}))
    return folder


def record_ids(captions):
    """A stand-in tokenizer: caption "r" -> [r], record r of image r // 2."""
    return torch.tensor([[int(c)] for c in captions])


def load(folder, fmt, rank, world_size, workers, epoch=0):
    args = argparse.Namespace(
        train_data=str(folder / f"train.{fmt}"), dataset_type="auto", csv_separator=",", csv_img_key="filename",
        csv_caption_key="title", csv_label_key=None, csv_encoding="utf-8", train_images_dir=None, json_split="train",
        batch_size=4, workers=workers, seed=0, world_size=world_size, rank=rank, is_aff_loss=True,
        aff_label_regex=None)
    info = get_data(args, (T.ToTensor(), T.ToTensor()), epoch=epoch, tokenizer=record_ids)["train"]
    info.set_epoch(epoch)
    return info, list(info.dataloader)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("world_size", [1, 2])
@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_corrupt_images_are_replaced_not_dropped(tmp_path, fmt, world_size, workers):
    folder = quarter_corrupt(tmp_path)
    corrupt_seen = 0
    for rank in range(world_size):
        info, batches = load(folder, fmt, rank, world_size, workers)
        assert len(batches) == info.dataloader.num_batches == 32 // (4 * world_size)
        for images, tokens, class_ids in batches:
            assert images.shape == (4, 3, 8, 8) and tokens.shape == (4, 1) and class_ids.shape == (4,)
            for image, record in zip(images, tokens.flatten().tolist()):
                image_number = record // CAPTIONS
                assert image_number not in CORRUPT  # a replacement: its own caption, image and class
                assert torch.allclose(image, torch.full_like(image, image_number * 10 / 255))
        # Exact counts: one per record of this rank's share whose image is corrupt.
        share = list(info.sampler)
        expected = sum(index // CAPTIONS in CORRUPT for index in share)
        assert info.skipped() == {**dict.fromkeys(SKIP_REASONS, 0), "corrupt_image": expected}
        corrupt_seen += expected
        # The same run again draws the same replacements.
        assert all(torch.equal(a[1], b[1]) for a, b in zip(batches, load(folder, fmt, rank, world_size, workers)[1]))
    assert corrupt_seen == len(CORRUPT) * CAPTIONS


def test_one_good_image_is_enough(tmp_path, monkeypatch):
    # 15 of 16 images corrupt: random replacement alone would often fail (and used to drop the sample); the
    # scan after it always finds the good image, so batches stay full.
    monkeypatch.setattr("test_data_tables.CORRUPT", set(range(1, IMAGES)))
    folder = quarter_corrupt(tmp_path)
    info, batches = load(folder, "csv", 0, 1, 0)
    assert len(batches) == 8 and all(len(tokens) == 4 for _, tokens, _ in batches)
    assert {r for _, tokens, _ in batches for r in tokens.flatten().tolist()} == {0, 1}
    assert info.skipped()["corrupt_image"] == 30


def test_no_decodable_image_is_a_clear_error(tmp_path):
    (tmp_path / "a_1.png").write_bytes(b"")
    (tmp_path / "train.csv").write_text("filename,title\n" + "a_1.png,1\n" * 8)
    with pytest.raises(Exception, match="no image of --train-data .*train.csv decodes"):
        load(tmp_path, "csv", 0, 1, 0)


def test_quarter_corrupt_under_torchrun(tmp_path):
    folder = quarter_corrupt(tmp_path)
    proc = torchrun(["-m", "training.main", "--model", "PIR-tiny", "--is_aff_loss", "--gather-with-grad",
                     "--train-data", str(folder / "train.csv"), "--csv-separator", ",", "--csv-img-key", "filename",
                     "--csv-caption-key", "title", "--batch-size", "4", "--epochs", "1", "--workers", "2",
                     "--precision", "fp32", "--lr", "1e-4", "--warmup", "1", "--logs-dir", str(tmp_path / "logs"),
                     "--name", "corrupt", "--log-every-n-steps", "1"], timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = re.findall(r"rank (\d): (\d+) training batches this epoch", proc.stderr)
    assert sorted(counts) == [("0", "4"), ("1", "4")]
    log = (tmp_path / "logs" / "corrupt" / "out.log").read_text()
    assert "skipped 8 bad training samples (8 corrupt image)" in log  # summed over both ranks' workers
