"""scripts/demo_search.py end to end on a small mosaic: a georeferenced GeoTIFF with a nodata strip,
indexed, three text searches with JSON, GeoJSON and contact sheets."""
import importlib.util
import json
import os

import pytest
import rasterio

from search_helpers import ROOT


@pytest.mark.slow
def test_demo_search(tiny_checkpoint, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("demo_search", os.path.join(ROOT, "scripts", "demo_search.py"))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    out = tmp_path / "demo"
    assert demo.main(["--out", str(out), "--checkpoint", str(tiny_checkpoint), "--tiles", "3", "-k", "4"]) == 0
    stdout = capsys.readouterr().out
    with rasterio.open(out / "mosaic.tif") as mosaic:
        assert mosaic.crs.to_string() == "EPSG:32633" and (mosaic.width, mosaic.height) == (3 * 96, 4 * 96)
        assert mosaic.transform.a == 0.5 and mosaic.nodata == 0
    classes = json.loads((out / "mosaic_classes.json").read_text())
    assert len(classes) == 3 * 3 + 2  # the nodata strip keeps two tiles
    manifest = json.loads((out / "index" / "manifest.json").read_text())
    assert manifest["counts"]["chips"] == 11 and manifest["counts"]["nodata_chips"] == 1
    for n in (1, 2, 3):
        hits = json.loads((out / f"query{n}.json").read_text())["hits"]
        assert len(hits) == 4 and all(f"{h['window'][0]},{h['window'][1]}" in classes for h in hits)
        features = json.loads((out / f"query{n}.geojson").read_text())["features"]
        assert [f["geometry"]["type"] for f in features] == ["Polygon"] * 4
        assert (out / f"query{n}.png").stat().st_size > 1000
    assert stdout.count("/4  ") == 3 and "Open the GeoJSON files" in stdout
