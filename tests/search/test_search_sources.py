"""What `pir-clip index` reads: listing folders, shards and scenes; shard samples read back by offset."""
import json
import os
import shutil

import numpy as np
import pytest

from pir_clip.data.images import decode_image
from pir_clip.search.sources import (CHIP, IMAGE, SHARD_SAMPLE, InputError, ShardError, collect_files,
                                     enumerate_items, item_pixels, shard_items)
from search_helpers import write_scene


def test_collect_files_walks_folders_and_sorts(synthetic_data, tmp_path):
    root = tmp_path / "archive"
    (root / "a" / "deeper").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (root / "index").mkdir()
    images = sorted(os.listdir(synthetic_data / "images"))
    for i, name in enumerate(images[:6]):
        shutil.copy(synthetic_data / "images" / name, root / ("a/deeper" if i % 2 else "a") / name)
    shutil.copy(synthetic_data / "images" / images[0], root / ".hidden" / images[0])
    shutil.copy(synthetic_data / "images" / images[0], root / "index" / images[0])  # the index's own folder
    shutil.copy(synthetic_data / "shards" / "rs5m" / "test-000000.tar", root / "a" / "test-000000.tar")
    (root / "notes.txt").write_text("not an image")
    os.symlink(root, root / "a" / "loop")  # a symbolic link back up: followed once, never round in a loop
    listing = collect_files([str(root)], exclude=[str(root / "index")])
    paths = [f.path for f in listing.files]
    assert paths == sorted(paths) and len(paths) == 7 and listing.ignored == 1
    assert all(os.path.isabs(p) and "/.hidden/" not in p and "/index/" not in p for p in paths)
    assert [f.kind for f in listing.files].count("shard") == 1
    image = next(f for f in listing.files if f.kind == "image")
    st = os.stat(image.path)
    assert (image.size, image.mtime_ns) == (st.st_size, st.st_mtime_ns)
    # The same file named twice, and as a scene too: listed once, as a scene.
    tif = next(p for p in paths if p.endswith(".tif"))
    again = collect_files([str(root), tif], scenes=[tif], exclude=[str(root / "index")])
    assert len(again.files) == 7 and next(f.kind for f in again.files if f.path == tif) == "scene"


def test_collect_files_brace_spec_and_errors(synthetic_data, tmp_path):
    shards = synthetic_data / "shards" / "rs5m"
    listing = collect_files([str(shards / "train-{000000..000001}.tar")])
    assert [os.path.basename(f.path) for f in listing.files] == ["train-000000.tar", "train-000001.tar"]
    with pytest.raises(InputError, match=r"1 of the 3 paths .* do not exist .*train-000002.tar"):
        collect_files([str(shards / "train-{000000..000002}.tar")])
    with pytest.raises(InputError, match="missing_folder.*does not exist"):
        collect_files([str(tmp_path / "missing_folder")])
    (tmp_path / "x.tar.gz").write_bytes(b"")
    with pytest.raises(InputError, match="Compressed shards are not supported"):
        collect_files([str(tmp_path / "x.tar.gz")])
    with pytest.raises(InputError, match="--scenes.*does not exist"):
        collect_files([], scenes=[str(tmp_path / "nope.tif")])


@pytest.mark.parametrize("keys", ["rs5m", "openclip"])
def test_shard_samples_are_read_back_by_offset(synthetic_data, keys):
    path = synthetic_data / "shards" / keys / "test-000000.tar"
    listing = collect_files([str(path)])
    items, warning = shard_items(listing.files[0])
    sizes = json.loads((synthetic_data / "shards" / keys / "sizes.json").read_text())
    assert warning is None and len(items) == sizes["test-000000.tar"]
    assert [i.item_index for i in items] == list(range(len(items))) and {i.item_count for i in items} == {len(items)}
    for item in items[:6]:
        assert item.kind == SHARD_SAMPLE and item.source == f"{path}#{item.key}"
        assert item.caption and item.name == f"{item.key.rpartition('/')[2]}{os.path.splitext(item.name)[1]}"
        image = item_pixels(item.kind, item.path, key=item.key, member_offset=item.member_offset,
                            member_size=item.member_size)
        np.testing.assert_array_equal(np.asarray(image), np.asarray(decode_image(synthetic_data / "images" / item.name)))


def test_damaged_shards(synthetic_data, tmp_path):
    data = (synthetic_data / "shards" / "rs5m" / "test-000000.tar").read_bytes()
    (tmp_path / "truncated.tar").write_bytes(data[:len(data) // 2 + 100])
    (tmp_path / "garbage.tar").write_bytes(b"this is not a tar file" * 100)
    files = {os.path.basename(f.path): f for f in collect_files([str(tmp_path)]).files}
    items, warning = enumerate_items(files["truncated.tar"], 224, 224)
    assert 0 < len(items) < 40 and "cannot read shard" in warning
    with pytest.raises(ShardError, match="garbage.tar"):
        enumerate_items(files["garbage.tar"], 224, 224)


def test_items_of_images_and_scenes(synthetic_data, tmp_path):
    scene = write_scene(tmp_path / "scene.tif", width=100, height=70)
    listing = collect_files([str(synthetic_data / "images" / "airport_1.png")], scenes=[scene])
    by_kind = {f.kind: f for f in listing.files}
    images, _ = enumerate_items(by_kind["image"], 32, 32)
    assert len(images) == 1 and images[0].kind == IMAGE and images[0].name == "airport_1.png"
    chips, _ = enumerate_items(by_kind["scene"], 32, 32)
    assert len(chips) == 12 and all(c.kind == CHIP and c.source == os.path.abspath(scene) for c in chips)
    assert chips[3].window == (68, 0, 32, 32) and chips[3].crs == "EPSG:32633" and chips[3].item_count == 12
