"""Incremental and resumable indexing: only new or changed files are embedded; a run killed with SIGKILL
resumes and the result equals a clean build; an earlier index stays readable meanwhile."""
import os
import shutil
import signal
import time

import pyarrow.parquet as pq
import pytest

from pir_clip.cli import main
from pir_clip.search import SearchIndex, build
from pir_clip.search.shards import TEMP_PREFIX, list_shards
from search_helpers import assert_same_index, index_args, run_index_process


@pytest.fixture
def embedded_items(monkeypatch):
    """The (path, item_index) of every item this process sends to the model."""
    seen = []
    original = build._embed_slice

    def recording(items, *args, **kwargs):
        seen.extend((os.path.basename(i.path), i.item_index) for i in items)
        return original(items, *args, **kwargs)

    monkeypatch.setattr(build, "_embed_slice", recording)
    return seen


def copy_images(synthetic_data, folder, names, preserve_mtime=True):
    folder.mkdir(exist_ok=True)
    for name in names:
        (shutil.copy2 if preserve_mtime else shutil.copy)(synthetic_data / "images" / name, folder / name)


def run(args, capsys):
    code = main(["index"] + [str(a) for a in args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def test_incremental_indexing_embeds_only_new_and_changed_files(synthetic_data, tiny_checkpoint, tmp_path, capsys,
                                                                 embedded_items):
    names = sorted(os.listdir(synthetic_data / "images"))
    archive, out = tmp_path / "archive", tmp_path / "index"
    copy_images(synthetic_data, archive, names[:12])
    run(index_args([archive], out, tiny_checkpoint, "--shard-size", "5"), capsys)
    assert len(embedded_items) == 12 and SearchIndex.open(out).manifest["last_run"]["embedded"] == 12
    # Unchanged: nothing to do.
    embedded_items.clear()
    stdout = run(index_args([archive], out, tiny_checkpoint), capsys)
    assert "is up to date" in stdout and embedded_items == []
    # Three new files, and one rewritten with other pixels.
    copy_images(synthetic_data, archive, names[12:15])
    changed = names[3]
    time.sleep(0.01)
    shutil.copyfile(synthetic_data / "images" / names[20], archive / changed)
    embedded_items.clear()
    stdout = run(index_args([archive], out, tiny_checkpoint), capsys)
    assert sorted(embedded_items) == sorted([(n, 0) for n in names[12:15]] + [(changed, 0)])
    assert "embedded 4 new items" in stdout and "reused 11" in stdout
    clean = tmp_path / "clean"
    run(index_args([archive], clean, tiny_checkpoint), capsys)
    assert_same_index(out, clean, atol=1e-3)
    # The changed file's old row left the shards; every current item is there once.
    rows = sum(pq.read_metadata(p).num_rows for p in list_shards(out / "shards"))
    assert rows == 15
    # A file taken out of the inputs leaves the index, but its embedding stays for later runs.
    moved = tmp_path / names[0]
    shutil.move(archive / names[0], moved)
    run(index_args([archive], out, tiny_checkpoint), capsys)
    assert len(SearchIndex.open(out)) == 14
    shutil.move(moved, archive / names[0])  # same size and mtime: nothing to embed
    embedded_items.clear()
    run(index_args([archive], out, tiny_checkpoint), capsys)
    assert embedded_items == [] and len(SearchIndex.open(out)) == 15
    assert_same_index(out, clean, atol=1e-3)


def test_killed_run_resumes_and_equals_a_clean_build(synthetic_data, tiny_checkpoint, tmp_path, capsys,
                                                    embedded_items):
    names = sorted(os.listdir(synthetic_data / "images"))
    archive, out = tmp_path / "archive", tmp_path / "index"
    copy_images(synthetic_data, archive, names[:16])
    run(index_args([archive], out, tiny_checkpoint), capsys)
    before = SearchIndex.open(out).search_text("an airport", 5)
    copy_images(synthetic_data, archive, names[16:])
    # SIGKILL while writing the second shard of the update (2 items a shard).
    proc = run_index_process(index_args([archive], out, tiny_checkpoint, "--shard-size", "2"),
                             fault="kill-after-shards:1")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    shard_dir = out / "shards"
    assert any(name.startswith(TEMP_PREFIX) for name in os.listdir(shard_dir))  # the half-written shard
    # Nothing already indexed is lost: the previous index is intact and searchable.
    old = SearchIndex.open(out)
    assert len(old) == 16 and [h.id for h in old.search_text("an airport", 5)] == [h.id for h in before]
    embedded_items.clear()
    stdout = run(index_args([archive], out, tiny_checkpoint, "--shard-size", "2"), capsys)
    assert len(embedded_items) == 6 and "embedded 6 new items" in stdout  # 8 new, 2 in the finished shard
    assert "Removed 1 half-written shard" in stdout
    assert not any(name.startswith(TEMP_PREFIX) for name in os.listdir(shard_dir))
    clean = tmp_path / "clean"
    run(index_args([archive], clean, tiny_checkpoint), capsys)
    assert_same_index(out, clean, atol=1e-3)


def test_killed_first_build_resumes(synthetic_data, tiny_checkpoint, tmp_path, capsys, embedded_items):
    out = tmp_path / "index"
    proc = run_index_process(index_args([synthetic_data / "images"], out, tiny_checkpoint, "--shard-size", "5"),
                             fault="kill-after-shards:2")
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists() and len(list_shards(out / "shards")) == 2
    code = main(["search", str(out), "--text", "x"])
    assert code == 2 and "has no manifest.json" in capsys.readouterr().err
    stdout = run(index_args([synthetic_data / "images"], out, tiny_checkpoint, "--shard-size", "5"), capsys)
    assert len(embedded_items) == 14 and "reused 10" in stdout
    clean = tmp_path / "clean"
    run(index_args([synthetic_data / "images"], clean, tiny_checkpoint), capsys)
    assert_same_index(out, clean, atol=1e-3)


def test_a_scene_killed_halfway_resumes_from_its_next_chip(tiny_checkpoint, tmp_path, capsys, embedded_items):
    from search_helpers import write_scene
    scene = write_scene(tmp_path / "scene.tif", width=100, height=70)  # 12 chips of 32 px
    out = tmp_path / "index"
    args = ["--scenes", scene, "--chip-size", "32", "--shard-size", "4"]
    proc = run_index_process(index_args([], out, tiny_checkpoint, *args), fault="kill-after-shards:1")
    assert proc.returncode == -signal.SIGKILL
    stdout = run(index_args([], out, tiny_checkpoint, *args), capsys)
    assert embedded_items == [("scene.tif", i) for i in range(4, 12)] and "reused 4" in stdout
    clean = tmp_path / "clean"
    run(index_args([], clean, tiny_checkpoint, "--scenes", scene, "--chip-size", "32"), capsys)
    assert_same_index(out, clean, atol=1e-3)
