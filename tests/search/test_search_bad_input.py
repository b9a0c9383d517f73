"""Bad input: corrupt images and GeoTIFFs are skipped, counted and listed; empty input, missing index files,
another format version or another model give one clear message; nothing already indexed is lost."""
import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from pir_clip.cli import main
from pir_clip.search import IndexFormatError, SearchIndex
from search_helpers import index_args, write_scene


def cli(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def damaged_scene(path):
    """A tiled, compressed GeoTIFF with one damaged tile (the top-right 32 x 32 chip)."""
    write_scene(path, width=64, height=64)
    import rasterio
    with rasterio.open(path) as src:
        profile = dict(src.profile, compress="deflate", blockxsize=32, blockysize=32)
        pixels = src.read()
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(pixels)
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + 200] = b"\xff" * 200
    path.write_bytes(bytes(data))
    return path


@pytest.fixture
def archive(synthetic_data, tmp_path):
    folder = tmp_path / "archive"
    folder.mkdir()
    for name in sorted(os.listdir(synthetic_data / "images"))[:6]:
        shutil.copy(synthetic_data / "images" / name, folder / name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    png = (synthetic_data / "images" / "forest_1.png").read_bytes()
    (folder / "truncated.png").write_bytes(png[:len(png) // 3])
    return folder


def test_corrupt_images_and_scenes_are_skipped_counted_and_listed(archive, tiny_checkpoint, tmp_path, capsys):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    (scenes / "garbage.tif").write_bytes(b"II*\x00" + b"\x00" * 64)
    damaged_scene(scenes / "damaged.tif")
    write_scene(scenes / "good.tif", width=64, height=32)
    out = tmp_path / "index"
    code, stdout, stderr = cli(["index"] + index_args([archive], out, tiny_checkpoint, "--scenes", scenes,
                                                      "--chip-size", "32"), capsys)
    assert code == 0, stderr
    manifest = SearchIndex.open(out).manifest
    counts = manifest["counts"]
    assert counts["images"] == 6 and counts["chips"] == 3 + 2 and counts["errors"] == 3
    errors = {os.path.basename(e["source"]): e["error"] for e in manifest["errors"]}
    assert set(errors) == {"broken.jpg", "truncated.png", "damaged.tif"}
    assert "cannot decode image" in errors["broken.jpg"] and "window (32, 0, 32, 32)" in errors["damaged.tif"]
    assert [os.path.basename(u["path"]) for u in manifest["unreadable_files"]] == ["garbage.tif"]
    assert "skipped 3 images that did not decode" in stdout and "broken.jpg" in stdout and "truncated.png" in stdout
    assert "skipped 1 file that could not be read" in stdout and "garbage.tif" in stdout
    skipped = pq.read_table(out / "skipped.parquet").to_pylist()
    assert sorted(os.path.basename(r["source"]) for r in skipped) == ["broken.jpg", "damaged.tif", "truncated.png"]
    assert next(r for r in skipped if r["source"].endswith("damaged.tif"))["window"] == [32, 0, 32, 32]


def test_empty_input_changes_nothing(archive, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "index"
    assert cli(["index"] + index_args([archive], out, tiny_checkpoint), capsys)[0] == 0
    before = {name: (out / name).read_bytes() for name in ("manifest.json", "embeddings.npy", "index.faiss")}
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    code, _, stderr = cli(["index"] + index_args([empty], out, tiny_checkpoint), capsys)
    assert code == 2 and stderr.count("\n") == 1
    assert "no images, .tar shards or scenes found" in stderr and "is unchanged" in stderr
    code, _, stderr = cli(["index"] + index_args([tmp_path / "nowhere"], out, tiny_checkpoint), capsys)
    assert code == 2 and "nowhere' does not exist" in stderr
    code, _, stderr = cli(["index", "--out", out, "--checkpoint", tiny_checkpoint, "--model-name", "PIR-tiny"], capsys)
    assert code == 2 and "nothing to index" in stderr
    assert before == {name: (out / name).read_bytes() for name in before}


def test_missing_files_other_versions_and_interrupted_writes(archive, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "index"
    assert cli(["index"] + index_args([archive], out, tiny_checkpoint), capsys)[0] == 0
    (out / "index.faiss").unlink()
    code, _, stderr = cli(["search", out, "--text", "x"], capsys)
    assert code == 2 and "is missing index.faiss" in stderr and "Traceback" not in stderr
    # Running the same command again rebuilds the outputs from the shards, without embedding anything.
    code, stdout, _ = cli(["index"] + index_args([archive], out, tiny_checkpoint), capsys)
    assert code == 0 and "embedded 0 new items" in stdout and len(SearchIndex.open(out)) == 6
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "state": "writing"}))
    with pytest.raises(IndexFormatError, match="stopped while writing the index files; run the same command again"):
        SearchIndex.open(out)
    manifest_path.write_text(json.dumps({**manifest, "version": 99}))
    for command in (["search", out, "--text", "x"], ["index"] + index_args([archive], out, tiny_checkpoint)):
        code, _, stderr = cli(command, capsys)
        assert code == 2 and "is index format version 99, but this pir-clip reads version 1" in stderr
    code, stdout, _ = cli(["index"] + index_args([archive], out, tiny_checkpoint, "--rebuild"), capsys)
    assert code == 0 and "embedded 8 new items" in stdout and SearchIndex.open(out).manifest["version"] == 1


def test_another_model_cannot_update_an_index(archive, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "index"
    assert cli(["index"] + index_args([archive], out, tiny_checkpoint), capsys)[0] == 0
    args = [archive, "--out", out, "--model-name", "CLIP-tiny", "--workers", "0", "--quiet"]
    code, _, stderr = cli(["index"] + args, capsys)
    assert code == 2 and "was built with other settings (model PIR-tiny (checkpoint" in stderr
    assert "-> CLIP-tiny (random weights)" in stderr and "--rebuild" in stderr
    assert SearchIndex.open(out).manifest["model"]["name"] == "PIR-tiny"
    code, _, stderr = cli(["index"] + args + ["--rebuild"], capsys)
    assert code == 0 and SearchIndex.open(out).manifest["model"]["name"] == "CLIP-tiny"


def test_a_checkpoint_changed_after_indexing_is_refused(archive, tiny_checkpoint, tmp_path, capsys):
    checkpoint = tmp_path / "model.pt"
    shutil.copy(tiny_checkpoint, checkpoint)
    out = tmp_path / "index"
    assert cli(["index"] + index_args([archive], out, checkpoint), capsys)[0] == 0
    # Moved: a clear message, and the new location (same weights) is accepted.
    moved = tmp_path / "moved.pt"
    shutil.move(checkpoint, moved)
    code, _, stderr = cli(["search", out, "--text", "a river"], capsys)
    assert code == 2 and f"are gone from {checkpoint}" in stderr and "--checkpoint" in stderr
    code, stdout, _ = cli(["search", out, "--text", "a river", "--checkpoint", moved], capsys)
    assert code == 0 and "6 hits of 6 items" in stdout
    shutil.move(moved, checkpoint)
    import torch
    state = torch.load(checkpoint, weights_only=True)
    torch.save({k: v * 1.01 if v.is_floating_point() else v for k, v in state.items()}, checkpoint)
    code, _, stderr = cli(["search", out, "--text", "a river"], capsys)
    assert code == 2 and "its checkpoint file changed since" in stderr
    # Image-less queries still work: "more like this" needs no model.
    assert len(SearchIndex.open(out).search_like(0, 3)) == 3
    assert np.isfinite(SearchIndex.open(out).embedding(0)).all()
