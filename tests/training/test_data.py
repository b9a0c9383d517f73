"""Tests of the training data pipeline (src/training/data/) and the Karpathy -> WebDataset converter, on a
tiny generated data set (PNG, JPEG and TIFF images) and hand-made shards with bad samples."""
import argparse
import importlib.util
import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import open_clip
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

import pir_clip  # noqa: F401  (registers the PIR-tiny tokenizer config)
from pir_clip.data.annotations import DataFormatError
from pir_clip.data.labels import class_id, resolve_class_id
from pir_clip.data.synthetic import generate
import training.data.webdataset as training_wds
from training.data import SKIP_REASONS, UNKNOWN_CLASS, get_data

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["airport", "pond", "desert"]
IMAGE_SIZE = 32
BATCH = 5  # 3 classes x 3 train images x 5 captions = 45 train samples: 9 full batches


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    generate(out, seed=3, images_per_class=4, classes=CLASSES, image_format="mixed", image_size=40, shard_size=6,
             val_fraction=0.0, test_fraction=0.25)
    return out


@pytest.fixture(scope="module")
def tokenizer():
    return open_clip.get_tokenizer("PIR-tiny")


TRANSFORM = T.Compose([T.Resize((IMAGE_SIZE, IMAGE_SIZE)), T.ToTensor()])


def make_args(train_data, **overrides):
    args = dict(train_data=str(train_data), dataset_type="auto", train_num_samples=None, dataset_resampled=False,
                train_data_upsampling_factors=None, csv_separator="\t", csv_img_key="filepath",
                csv_caption_key="title", csv_label_key=None, csv_encoding="utf-8", train_images_dir=None,
                json_split="train", batch_size=BATCH, workers=0, seed=0, world_size=1, rank=0, distributed=False,
                is_aff_loss=False, aff_label_regex=None)
    args.update(overrides)
    return argparse.Namespace(**args)


def load(args, tokenizer, epoch=0):
    info = get_data(args, (TRANSFORM, TRANSFORM), epoch=epoch, tokenizer=tokenizer)["train"]
    info.set_epoch(epoch)
    return info


def run_epoch(info):
    return list(info.dataloader)


def pairs(batches):
    """Counter of (token tuple, class id) over all samples of ``batches``."""
    return Counter((tuple(t.tolist()), int(c)) for _, texts, ids in batches for t, c in zip(texts, ids))


def expected_pairs(synth, tokenizer, split="train", regex=None):
    data = json.loads((synth / "dataset_synthetic.json").read_text())
    result = Counter()
    for entry in data["images"]:
        if entry["split"] == split:
            cid = resolve_class_id(image_name=entry["filename"], regex=regex)
            for sentence in entry["sentences"]:
                result[(tuple(tokenizer([sentence["raw"]])[0].tolist()), cid)] += 1
    return result


def shard_spec(synth, kind):
    n = len(list((synth / "shards" / kind).glob("train-*.tar")))
    return str(synth / "shards" / kind / f"train-{{000000..{n - 1:06d}}}.tar")


def format_args(synth, fmt, **overrides):
    if fmt in ("rs5m", "openclip"):
        return make_args(shard_spec(synth, fmt), **overrides)
    if fmt == "csv":
        return make_args(synth / "csv" / "train.csv", train_images_dir=str(synth / "images"), **overrides)
    return make_args(synth / "dataset_synthetic.json", **overrides)


FORMATS = ["rs5m", "openclip", "csv", "json"]


# ---------------------------------------------------------------------------------------------- formats


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_yields_typed_batches_with_name_classes(synth, tokenizer, fmt):
    info = load(format_args(synth, fmt, is_aff_loss=True), tokenizer)
    batches = run_epoch(info)
    assert len(batches) == info.dataloader.num_batches == 9
    for images, texts, ids in batches:
        assert images.shape == (BATCH, 3, IMAGE_SIZE, IMAGE_SIZE) and images.dtype == torch.float32
        assert texts.shape == (BATCH, 48) and texts.dtype == torch.long
        assert ids.shape == (BATCH,) and ids.dtype == torch.int64
    # Same names -> same ids in every format, and the exact (caption, class) multiset of the JSON's train split.
    assert pairs(batches) == expected_pairs(synth, tokenizer)
    assert {int(c) for _, _, ids in batches for c in ids} == {class_id(c) for c in CLASSES}
    assert info.skipped() == dict.fromkeys(SKIP_REASONS, 0)


@pytest.mark.parametrize("fmt", ["rs5m", "json"])
def test_regex_replaces_the_name_rule(synth, tokenizer, fmt):
    regex = r"^(?P<class>[a-z]{3})"
    batches = run_epoch(load(format_args(synth, fmt, is_aff_loss=True, aff_label_regex=regex), tokenizer))
    assert pairs(batches) == expected_pairs(synth, tokenizer, regex=regex)
    assert {int(c) for _, _, ids in batches for c in ids} == {class_id(c[:3]) for c in CLASSES}


def test_explicit_csv_label_column_wins(synth, tokenizer, tmp_path):
    names = sorted(p.name for p in (synth / "images").iterdir())[:BATCH]
    rows = ["filename,title,scene"] + [f"{name},caption {i},{'harbor' if i % 2 else ''}"
                                       for i, name in enumerate(names)]
    path = tmp_path / "labelled.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    args = make_args(path, train_images_dir=str(synth / "images"), csv_label_key="scene", is_aff_loss=True)
    (_, texts, ids), = run_epoch(load(args, tokenizer))
    got = {tuple(t.tolist()): int(c) for t, c in zip(texts, ids)}
    for i, name in enumerate(names):
        expected = class_id("harbor") if i % 2 else resolve_class_id(image_name=name)
        assert got[tuple(tokenizer([f"caption {i}"])[0].tolist())] == expected


def test_sample_shuffle_is_deterministic_per_epoch(synth, tokenizer):
    args = format_args(synth, "rs5m")
    order = lambda epoch: [tuple(t.tolist()) for _, texts, _ in run_epoch(load(args, tokenizer, epoch))
                           for t in texts]
    assert order(0) == order(0)
    assert order(1) != order(0) and sorted(order(1)) == sorted(order(0))


# ---------------------------------------------------------------------------------------------- bad samples


def image_bytes(fmt, colour):
    buffer = io.BytesIO()
    Image.new("RGB", (20, 20), colour).save(buffer, {"png": "PNG", "tif": "TIFF", "jpg": "JPEG"}[fmt])
    return buffer.getvalue()


def write_shard(path, samples):
    with tarfile.open(path, "w") as tar:
        for key, fields in samples:
            for field, data in fields.items():
                info = tarfile.TarInfo(f"{key}.{field}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def good_sample(n, fmt="tif"):
    return f"s{n:03d}", {fmt: image_bytes(fmt, (n * 9 % 256, 40, 90)), "txt": f"scene number {n}".encode()}


@pytest.fixture(scope="module")
def bad_shards(tmp_path_factory):
    """Shard 0: 9 samples, one a truncated PNG; shard 1: 11 samples, one with a blank caption, one without a
    caption, one without an image. 8 good samples each."""
    folder = tmp_path_factory.mktemp("bad")
    shard0 = [good_sample(n, "tif" if n % 2 else "png") for n in range(9)]
    truncated = image_bytes("png", (1, 2, 3))
    shard0[1] = ("s001", {"png": truncated[:len(truncated) // 2], "txt": b"a broken image"})
    shard1 = [good_sample(n) for n in range(100, 111)]
    shard1[1] = ("s101", {"tif": image_bytes("tif", (5, 5, 5)), "txt": b"   "})
    shard1[2] = ("s102", {"tif": image_bytes("tif", (6, 6, 6))})
    shard1[3] = ("s103", {"txt": b"no image here"})
    write_shard(folder / "bad-000000.tar", shard0)
    write_shard(folder / "bad-000001.tar", shard1)
    (folder / "sizes.json").write_text(json.dumps({"bad-000000.tar": 9, "bad-000001.tar": 11}))
    return folder


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_shard_samples_are_skipped_and_counted(bad_shards, tokenizer, workers, monkeypatch):
    # An image is decoded (and a corrupt one counted) when it leaves the shuffle buffer; without the buffer
    # an epoch of exactly the 16 good samples decodes every sample once, so the counts are exact.
    monkeypatch.setattr(training_wds, "SAMPLE_SHUFFLE_SIZE", 1)
    monkeypatch.setattr(training_wds, "SAMPLE_SHUFFLE_INITIAL", 1)
    args = make_args(bad_shards / "bad-{000000..000001}.tar", workers=workers, batch_size=4, train_num_samples=16)
    info = load(args, tokenizer)
    batches = run_epoch(info)
    assert len(batches) == info.dataloader.num_batches == 4
    captions = {tuple(t.tolist()) for _, texts, _ in batches for t in texts}
    good = {tuple(tokenizer([f"scene number {n}"])[0].tolist()) for n in (*range(9), *range(100, 111))}
    assert len(captions) == 16 and captions <= good  # every good sample once, nothing of the bad ones
    assert info.skipped() == {**dict.fromkeys(SKIP_REASONS, 0), "corrupt_image": 1, "missing_caption": 2,
                              "missing_image": 1}
    # Without --is_aff_loss the names still give classes: key 's001' has no '_', so it is its own class.
    assert all(int(c) != UNKNOWN_CLASS for _, _, ids in batches for c in ids)
    info.set_epoch(1)
    assert info.skipped() == dict.fromkeys(SKIP_REASONS, 0)


def test_bad_shard_samples_with_the_shuffle_buffer(bad_shards, tokenizer):
    # With the buffer, samples without image or caption are counted as their shard is read.
    args = make_args(bad_shards / "bad-{000000..000001}.tar", workers=2, batch_size=4, train_num_samples=16)
    info = load(args, tokenizer)
    assert len(run_epoch(info)) == 4
    skipped = info.skipped()
    assert (skipped["missing_caption"], skipped["missing_image"]) == (2, 1) and skipped["corrupt_image"] <= 1


def corrupt_copy(synth, tmp_path, fmt):
    """A copy of the synthetic images with one train image overwritten by garbage."""
    images = tmp_path / "images"
    images.mkdir()
    for p in (synth / "images").iterdir():
        (images / p.name).write_bytes(p.read_bytes())
    data = json.loads((synth / "dataset_synthetic.json").read_text())
    victim = next(e for e in data["images"] if e["split"] == "train")
    (images / victim["filename"]).write_bytes(b"\x89PNG this is not an image")
    if fmt == "csv":
        path = tmp_path / "train.csv"
        path.write_text((synth / "csv" / "train.csv").read_text())
        return make_args(path, workers=2), len(victim["sentences"])
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(data))
    return make_args(path), len(victim["sentences"])


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_map_style_corrupt_image_is_replaced_and_counted(synth, tokenizer, tmp_path, fmt):
    args, n_bad = corrupt_copy(synth, tmp_path, fmt)
    info = load(args, tokenizer)
    batches = run_epoch(info)
    assert len(batches) == info.dataloader.num_batches == 9
    assert all(len(images) == BATCH for images, _, _ in batches)  # replaced, so DDP ranks stay in step
    assert info.skipped()["corrupt_image"] == n_bad
    assert sum(info.skipped().values()) == n_bad


# ---------------------------------------------------------------------------------------------- errors


def test_json_naming_missing_images_fails_before_loading(synth, tokenizer, tmp_path):
    data = json.loads((synth / "dataset_synthetic.json").read_text())
    data["images"][0]["filename"] = "airport_999.tif"
    data["images"][1]["filename"] = "pond_998.png"
    data["images"][0]["split"] = data["images"][1]["split"] = "train"
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataFormatError) as err:
        get_data(make_args(path, train_images_dir=str(synth / "images")), (TRANSFORM, TRANSFORM), tokenizer=tokenizer)
    message = str(err.value)
    assert "2 of" in message and "airport_999.tif" in message and "pond_998.png" in message
    assert "--train-images-dir" in message


@pytest.mark.parametrize("train_data, expected", [
    ("missing.csv", "missing.csv does not exist"),
    ("missing.json", "missing.json does not exist"),
    ("shards/none-{000000..000003}.tar", "no shard file matches"),
    ("data.parquet", "--dataset-type"),
])
def test_missing_inputs_are_named(tmp_path, tokenizer, train_data, expected):
    with pytest.raises(DataFormatError, match="--train-data|--dataset-type") as err:
        get_data(make_args(tmp_path / train_data), (TRANSFORM, TRANSFORM), tokenizer=tokenizer)
    assert expected in str(err.value)


def test_aff_loss_without_image_names_is_a_clear_error(tmp_path, tokenizer):
    samples = [(f"{n:04d}", {"img_content": image_bytes("png", (n, n, n)), "caption": b"a field"})
               for n in range(8)]
    for n in range(2):
        write_shard(tmp_path / f"noname-{n:06d}.tar", samples)
    spec = tmp_path / "noname-{000000..000001}.tar"
    with pytest.raises(DataFormatError) as err:
        get_data(make_args(spec, is_aff_loss=True, train_num_samples=16), (TRANSFORM, TRANSFORM), tokenizer=tokenizer)
    assert "--is_aff_loss" in str(err.value) and "img_name" in str(err.value)
    # Without the affiliation loss the same shards train, with unknown classes.
    batches = run_epoch(load(make_args(spec, train_num_samples=16, batch_size=4), tokenizer))
    assert {int(c) for _, _, ids in batches for c in ids} == {UNKNOWN_CLASS}
    with pytest.raises(DataFormatError, match="--is_aff_loss.*synthetic"):
        get_data(make_args(None, dataset_type="synthetic", is_aff_loss=True, train_num_samples=10),
                 (TRANSFORM, TRANSFORM), tokenizer=tokenizer)


@pytest.mark.parametrize("fmt", ["csv", "rs5m"])
def test_aff_loss_with_a_regex_that_never_matches_fails_early(synth, tokenizer, fmt):
    with pytest.raises(DataFormatError, match="--aff-label-regex") as err:
        get_data(format_args(synth, fmt, is_aff_loss=True, aff_label_regex=r"^\d+$"), (TRANSFORM, TRANSFORM),
                 tokenizer=tokenizer)
    assert "--is_aff_loss" in str(err.value)


def test_synthetic_smoke_data(tokenizer):
    info = load(make_args(None, dataset_type="synthetic", train_num_samples=10, batch_size=4), tokenizer)
    (images, texts, ids), _ = run_epoch(info)
    assert images.shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE) and texts.shape == (4, 48)
    assert ids.tolist() == [UNKNOWN_CLASS] * 4


# ---------------------------------------------------------------------------------------------- distribution


def sample_ids(batches):
    return {(hash(images[i].numpy().tobytes()), tuple(texts[i].tolist()))
            for images, texts, _ in batches for i in range(len(images))}


def test_two_ranks_get_disjoint_samples(synth, tokenizer):
    # Webdataset ranks: tests/training/test_data_epochs.py.
    fmt = "json"
    per_rank = [load(format_args(synth, fmt, world_size=2, rank=rank, distributed=True), tokenizer)
                for rank in (0, 1)]
    assert per_rank[0].dataloader.num_batches == per_rank[1].dataloader.num_batches
    seen = [sample_ids(run_epoch(info)) for info in per_rank]
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    indices = [set(info.sampler) for info in per_rank]
    assert not indices[0] & indices[1] and len(indices[0]) == len(indices[1]) == 22


def test_resampled_mode_yields_the_configured_number_of_batches(synth, tokenizer):
    spec = shard_spec(synth, "rs5m") + "::" + shard_spec(synth, "openclip")
    args = make_args(spec, dataset_resampled=True, train_data_upsampling_factors="1::3", train_num_samples=33,
                     batch_size=4)
    info = load(args, tokenizer)
    assert info.dataloader.num_batches == 9 and info.dataloader.num_samples == 36
    assert len(run_epoch(info)) == 9
    with pytest.raises(DataFormatError, match="--dataset-resampled"):
        get_data(make_args(spec, train_data_upsampling_factors="1::3"), (TRANSFORM, TRANSFORM), tokenizer=tokenizer)


# ---------------------------------------------------------------------------------------------- converter


def converter():
    path = REPO / "scripts" / "convert_karpathy_to_wds.py"
    spec = importlib.util.spec_from_file_location("convert_karpathy_to_wds", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_converter_round_trips_through_get_data(synth, tokenizer, tmp_path, capsys):
    convert = converter()
    out = tmp_path / "wds"
    assert convert.main(["--json", str(synth / "dataset_synthetic.json"), "--out", str(out), "--shard-size", "10",
                         "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 45 samples (9 images)" in printed and "train-{000000..000004}.tar" in printed
    assert json.loads((out / "sizes.json").read_text()) == {f"train-{n:06d}.tar": 10 if n < 4 else 5 for n in range(5)}
    with tarfile.open(out / "train-000000.tar") as tar:
        names = tar.getnames()
    assert names[:3] == ["000000000.img_content", "000000000.caption", "000000000.img_name"]

    args = make_args(out / "train-{000000..000004}.tar", dataset_type="webdataset", is_aff_loss=True)
    assert pairs(run_epoch(load(args, tokenizer))) == expected_pairs(synth, tokenizer)

    first = (out / "train-000000.tar").read_bytes()
    assert convert.main(["--json", str(synth / "dataset_synthetic.json"), "--out", str(out), "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert convert.main(["--json", str(synth / "dataset_synthetic.json"), "--out", str(out), "--shard-size", "10",
                         "--no-progress", "--overwrite"]) == 0
    assert (out / "train-000000.tar").read_bytes() == first  # same seed, same bytes


def test_converter_names_missing_images(synth, tmp_path, capsys):
    data = json.loads((synth / "dataset_synthetic.json").read_text())
    data["images"][0].update(filename="airport_777.tif", split="train")
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(data))
    assert converter().main(["--json", str(path), "--images-dir", str(synth / "images"), "--out",
                             str(tmp_path / "o"), "--no-progress"]) == 2
    assert "airport_777.tif" in capsys.readouterr().err
