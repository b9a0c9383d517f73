"""One image decoder: for every kind of file an RS user has, the tensor training sees (webdataset bytes and
CSV/JSON files, with ``--bands``) equals the tensor evaluation sees (``ImageFiles`` with the val transform)."""
import argparse
import json
import warnings

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from pir_clip.evaluation.encode import ImageFiles
from test_data import write_shard
from training.data import get_data

rasterio = pytest.importorskip("rasterio")
RNG = np.random.default_rng(5)
VAL = open_clip.image_transform(32, is_train=False)  # resize, centre crop, normalise: deterministic
H, W = 41, 37  # not square, not the output size: the transform resizes and crops


def write_tiff(path, bands_first):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not georeferenced
        with rasterio.open(path, "w", driver="GTiff", height=H, width=W, count=bands_first.shape[0],
                           dtype=bands_first.dtype) as dst:
            dst.write(bands_first)


def write_files(folder):
    """Every kind of file, written with PIL or rasterio; returns their names in caption order."""
    rgb = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "rgb8.png")
    Image.fromarray((RNG.random((H, W)) * 60000).astype(np.uint16)).save(folder / "grey16.tif")
    write_tiff(folder / "rgb16.tif", (RNG.random((3, H, W)) * 4000).astype(np.uint16))
    write_tiff(folder / "float32.tif", (RNG.random((3, H, W)) * 2 - 0.5).astype(np.float32))
    Image.fromarray(rgb[:, :, 1]).save(folder / "grey8.png")
    Image.fromarray(rgb).quantize(16).save(folder / "palette.png")
    Image.fromarray(np.dstack([rgb, rgb[:, :, :1]]), "RGBA").save(folder / "rgba.png")
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg")
    write_tiff(folder / "multiband16.tif", (RNG.random((6, H, W)) * 3000).astype(np.uint16))
    write_tiff(folder / "multiband8.tif", RNG.integers(0, 256, (5, H, W), dtype=np.uint8))
    return ["rgb8.png", "grey16.tif", "rgb16.tif", "float32.tif", "grey8.png", "palette.png", "rgba.png",
            "cmyk.jpg", "multiband16.tif", "multiband8.tif"]


MULTIBAND = ["multiband16.tif", "multiband8.tif"]


def caption_index(captions):
    """A stand-in tokenizer: caption "n" -> [n], so each batch row names its file."""
    return torch.tensor([[int(c)] for c in captions])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kinds")
    return folder, write_files(folder)


def training_inputs(folder, names, fmt):
    """``--train-data`` in ``fmt`` holding ``names``, caption i for names[i]."""
    if fmt == "webdataset":
        samples = [(name.split(".")[0], {name.split(".")[1]: (folder / name).read_bytes(), "txt": str(i).encode()})
                   for i, name in enumerate(names)]
        write_shard(folder / f"kinds-{len(names)}.tar", samples)
        return str(folder / f"kinds-{len(names)}.tar")
    if fmt == "csv":
        path = folder / f"kinds-{len(names)}.csv"
        path.write_text("filepath\ttitle\n" + "".join(f"{name}\t{i}\n" for i, name in enumerate(names)))
        return str(path)
    path = folder / f"kinds-{len(names)}.json"
    path.write_text(json.dumps({"images": [{"filename": name, "split": "train", "sentences": [{"raw": str(i)}]}
                                           for i, name in enumerate(names)]}))
    return str(path)


@pytest.mark.parametrize("bands", [None, "4,3,2"])
@pytest.mark.parametrize("fmt", ["webdataset", "csv", "json"])
def test_training_sees_what_evaluation_sees(files, fmt, bands):
    folder, names = files
    names = MULTIBAND if bands else names
    args = argparse.Namespace(
        train_data=training_inputs(folder, names, fmt), dataset_type="auto", train_num_samples=len(names),
        dataset_resampled=False, train_data_upsampling_factors=None, csv_separator="\t", csv_img_key="filepath",
        csv_caption_key="title", csv_label_key=None, csv_encoding="utf-8", train_images_dir=str(folder),
        json_split="train", batch_size=len(names), workers=0, seed=0, world_size=1, rank=0, is_aff_loss=True,
        aff_label_regex=None, bands=bands)
    info = get_data(args, (VAL, VAL), tokenizer=caption_index)["train"]
    info.set_epoch(0)
    (images, tokens, _), = list(info.dataloader)
    assert sorted(tokens.flatten().tolist()) == list(range(len(names)))  # every file once, none skipped
    evaluation = ImageFiles([str(folder / name) for name in names], VAL, bands=(4, 3, 2) if bands else None)
    for image, index in zip(images, tokens.flatten().tolist()):
        assert torch.equal(image, evaluation[index]), names[index]
    # The kinds differ from each other (a decoder that returned one constant would fail above, but make sure
    # deep data was stretched rather than clipped: no image is almost all black or white).
    for index in range(len(names)):
        pixels = evaluation[index]
        assert 0.05 < (pixels > pixels.min()).float().mean() and pixels.std() > 0.1, names[index]
