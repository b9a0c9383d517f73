"""`pir-clip index` + `pir-clip search` and the SearchIndex API, end to end on a tiny model.

Exact search equals brute force over the embeddings `retrieval.py --save-embeddings` writes for the same
model and images; hits, JSON, GeoJSON and the contact sheet; "more like this"; the query-model check.
"""
import json
import os
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from pir_clip.cli import main, retrieval_main
from pir_clip.data.annotations import load_retrieval_set
from pir_clip.data.geotiff import render_chip
from pir_clip.data.images import decode_image
from pir_clip.search import ModelMismatchError, ModelSpec, SearchIndex
from search_helpers import index_args, write_scene


def cli(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def retrieval_run(synthetic_data, tiny_checkpoint, tmp_path_factory):
    """retrieval.py --save-embeddings on the test split (CSV), and the same images as a flat list of files."""
    out = tmp_path_factory.mktemp("retrieval")
    code = retrieval_main(["--model-name", "PIR-tiny", "--remoteclip-path", str(tiny_checkpoint),
                           "--retrieval-json-dir", str(synthetic_data / "csv" / "test.csv"),
                           "--retrieval-images-dir", str(synthetic_data / "images"), "--output", str(out / "r.json"),
                           "--save-embeddings", str(out / "emb.pt"), "--batch-size", "3", "--workers", "0", "--quiet"])
    assert code == 0
    data = load_retrieval_set(str(synthetic_data / "csv" / "test.csv"), str(synthetic_data / "images"))
    return torch.load(out / "emb.pt", weights_only=True), data.image_paths


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_exact_search_equals_brute_force_over_retrieval_embeddings(retrieval_run, tiny_checkpoint, tmp_path,
                                                                   capsys, dtype):
    saved, image_paths = retrieval_run
    out = tmp_path / "index"
    code, stdout, stderr = cli(["index"] + index_args(image_paths, out, tiny_checkpoint, "--dtype", dtype), capsys)
    assert code == 0, stderr
    index = SearchIndex.open(out)
    assert len(index) == len(image_paths)
    names = [index.item(i).name for i in range(len(index))]
    # Ids follow sorted paths; map them to retrieval.py's image order.
    position = {name: j for j, name in enumerate(saved["image_files"])}
    to_saved = np.array([position[n] for n in names])
    images = saved["image_embeddings"].numpy()[to_saved]  # (N, D) in index id order
    np.testing.assert_allclose(index._vectors.embeddings.astype(np.float32), images,
                               atol=1e-6 if dtype == "float32" else 1e-3)
    k = 5
    for j in range(0, len(saved["captions"]), 7):
        brute = images.astype(np.float64) @ saved["text_embeddings"][j].numpy().astype(np.float64)
        ref_ids = np.lexsort((np.arange(len(brute)), -brute))[:k]
        hits = index.search_text(saved["captions"][j], k)
        ids, scores = [h.id for h in hits], np.array([h.score for h in hits])
        if dtype == "float32":
            assert ids == ref_ids.tolist()
            np.testing.assert_allclose(scores, brute[ref_ids], atol=1e-5)
        else:  # fp16 storage: scores move by < 1e-3, so only near-ties may swap
            np.testing.assert_allclose(scores, brute[ids], atol=1e-3)
            assert brute[ids].min() >= brute[ref_ids].min() - 2e-3
        assert [h.rank for h in hits] == list(range(1, k + 1))


@pytest.fixture(scope="module")
def mixed_index(synthetic_data, tiny_checkpoint, tmp_path_factory):
    """An index over an image folder, an open_clip-keys shard and a GeoTIFF scene."""
    root = tmp_path_factory.mktemp("mixed")
    scene = write_scene(root / "scene.tif", width=100, height=70, nodata_block=(32, 70, 0, 36))
    out = root / "index"
    code = main(["index"] + index_args([synthetic_data / "images", synthetic_data / "shards/openclip/val-000000.tar"],
                                       out, tiny_checkpoint, "--scenes", scene, "--chip-size", "32"))
    assert code == 0
    return out, scene


def test_search_index_api(mixed_index, synthetic_data):
    out, scene = mixed_index
    index = SearchIndex.open(out)
    manifest = index.manifest
    counts = manifest["counts"]
    assert counts == {**counts, "images": 24, "shard_samples": 20, "chips": 10, "nodata_chips": 2, "errors": 0,
                      "scenes": 1, "shards": 1, "image_files": 24}
    assert len(index) == 54 == counts["items"] and manifest["embeddings"]["dtype"] == "float16"
    assert manifest["model"]["name"] == "PIR-tiny" and len(manifest["model"]["checkpoint_sha256"]) == 64
    kinds = [index.item(i).kind for i in range(len(index))]
    # Ids follow sorted paths: images/, then scene.tif (under the root), then shards/.
    first_chip = kinds.index("chip")
    chip = index.item(first_chip)
    assert chip.source == os.path.abspath(scene) and chip.window == (0, 0, 32, 32) and chip.crs == "EPSG:32633"
    assert chip.bounds_wgs84[0] == pytest.approx(15.0, abs=1e-9)
    np.testing.assert_array_equal(np.asarray(index.item_image(first_chip)), render_chip(scene, (0, 0, 32, 32)))
    sample = index.item(kinds.index("shard"))
    assert sample.source == f"{sample.path}#{sample.key}" and sample.caption and sample.window is None
    np.testing.assert_array_equal(np.asarray(index.item_image(sample.id)),
                                  np.asarray(decode_image(synthetic_data / "images" / sample.name)))
    with pytest.raises(KeyError, match="no item 54"):
        index.item(54)
    # An indexed image as the query finds itself first (and its shard copies), at cosine ~1.
    path = synthetic_data / "images" / "forest_1.png"
    for query in (str(path), path.read_bytes(), Image.open(path)):
        hits = index.search_image(query, 3)
        assert hits[0].name == "forest_1.png" and hits[0].score == pytest.approx(1.0, abs=2e-3)
    # More like this: the item's own embedding as the query, the item left out.
    like = index.search_like(5, 4)
    direct = index.search_embedding(index.embedding(5), 5)
    assert 5 not in [h.id for h in like]
    assert [h.id for h in like] == [h.id for h in direct if h.id != 5][:4]
    assert [h.rank for h in like] == [1, 2, 3, 4]
    d = like[0].to_dict()
    assert list(d)[:6] == ["rank", "id", "score", "source", "window", "bounds_wgs84"]


def test_concurrent_searches_equal_sequential_ones(mixed_index):
    index = SearchIndex.open(mixed_index[0])  # the model loads on first use, from several threads at once
    queries = ["a river", "an airport with two planes", "dense forest", "a parking lot", "storage tanks"] * 2
    results = [None] * len(queries)

    def search(i):
        results[i] = [(h.id, round(h.score, 6)) for h in index.search_text(queries[i], 6)]

    threads = [threading.Thread(target=search, args=(i,)) for i in range(len(queries))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [[(h.id, round(h.score, 6)) for h in index.search_text(q, 6)] for q in queries]


def test_search_cli_outputs(mixed_index, tmp_path, capsys):
    out, scene = mixed_index
    hits_json, geojson, grid = tmp_path / "hits.json", tmp_path / "hits.geojson", tmp_path / "hits.png"
    code, stdout, stderr = cli(["search", out, "--text", "a red roof", "-k", "54", "--output", hits_json,
                                "--geojson", geojson, "--save-grid", grid], capsys)
    assert code == 0, stderr
    result = json.loads(hits_json.read_text())
    assert result["query"] == {"text": "a red roof", "k": 54} and len(result["hits"]) == 54
    expected = [h.to_dict() for h in SearchIndex.open(out).search_text("a red roof", 54)]
    assert result["hits"] == json.loads(json.dumps(expected))
    for hit in result["hits"]:
        assert {"rank", "id", "score", "source", "window", "bounds_wgs84"} <= set(hit)
        assert (hit["window"] is None) == (hit["bounds_wgs84"] is None) == (hit["kind"] != "chip")
    assert "rank" in stdout.splitlines()[0] and "54 hits of 54 items" in stdout
    collection = json.loads(geojson.read_text())
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == 54
    located = [f for f in collection["features"] if f["geometry"] is not None]
    assert len(located) == 10
    for feature, hit in zip(collection["features"], result["hits"]):
        assert feature["properties"]["rank"] == hit["rank"] and feature["properties"]["window"] == hit["window"]
    for feature in located:
        ring = feature["geometry"]["coordinates"][0]
        assert feature["geometry"]["type"] == "Polygon" and len(ring) == 5 and ring[0] == ring[-1]
        area = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, ring[1:]))
        assert area > 0  # counter-clockwise exterior ring (RFC 7946 3.1.6)
        west, south, east, north = feature["properties"]["bounds_wgs84"]
        assert all(west - 1e-9 <= x <= east + 1e-9 and south - 1e-9 <= y <= north + 1e-9 for x, y in ring)
    sheet = Image.open(grid)
    assert sheet.size[0] > 5 * 160 and sheet.size[1] > 11 * 160
    code, stdout, _ = cli(["search", out, "--like", "3", "-k", "2"], capsys)
    assert code == 0 and "2 hits" in stdout


def test_a_query_from_another_model_is_refused(mixed_index, tmp_path, capsys):
    out, _ = mixed_index
    index = SearchIndex.open(out)
    other = tmp_path / "other.pt"
    torch.save({k: v + 0.01 if v.is_floating_point() else v for k, v in torch.load(
        index.manifest["model"]["checkpoint"], weights_only=True).items()}, other)
    code, _, stderr = cli(["search", out, "--text", "x", "--checkpoint", other], capsys)
    assert code == 2
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("error:") and "PIR-tiny (checkpoint" in line and str(other) in line
    assert index.manifest["model"]["checkpoint_sha256"][:12] in line
    code, _, stderr = cli(["search", out, "--text", "x", "--model-name", "CLIP-tiny"], capsys)
    assert code == 2 and "the query model is CLIP-tiny" in stderr
    with pytest.raises(ModelMismatchError, match="built with PIR-tiny.*query model is CLIP-tiny"):
        index.search_embedding(index.embedding(0), 3, model=ModelSpec("CLIP-tiny"))
    with pytest.raises(ValueError, match="query embedding has 64 dimensions, the index 128"):
        index.search_embedding(np.ones(64), 3)


def test_search_errors_are_one_line(mixed_index, tmp_path, capsys):
    out, _ = mixed_index
    for args, message in [(["--text", "x", "--like", "1"], "exactly one query"),
                          (["--like", "99"], "--like 99: the index has ids 0 to 53"),
                          (["--image", tmp_path / "nope.png"], "nope.png does not exist"),
                          (["--text", "  "], "non-empty")]:
        code, _, stderr = cli(["search", out] + args, capsys)
        assert code == 2 and stderr.startswith("error:") and message in stderr and "Traceback" not in stderr
    code, _, stderr = cli(["search", tmp_path / "missing", "--text", "x"], capsys)
    assert code == 2 and "does not exist; build one with 'pir-clip index" in stderr
