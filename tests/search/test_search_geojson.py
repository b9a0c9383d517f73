"""GeoJSON of hits (RFC 7946): WGS84 polygons, counter-clockwise closed rings, antimeridian split, null
geometry for images without coordinates."""
import json

import pytest

from pir_clip.search.geojson import footprint_geometry, hits_to_geojson
from pir_clip.search.index import Hit


def make_hit(rank, footprint=None, bounds_wgs84=None):
    return Hit(id=rank * 10, source=f"/data/s{rank}.tif", kind="chip" if footprint else "image", path="/p", key=None,
               name=None, window=(0, 0, 32, 32) if footprint else None, crs="EPSG:32633" if footprint else None,
               bounds=None, bounds_wgs84=bounds_wgs84, footprint_wgs84=footprint, caption=None, rank=rank, score=0.5)


def signed_area(ring):
    return sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, ring[1:])) / 2


def test_polygon_is_closed_and_counter_clockwise():
    # Corners as chips store them: top-left, top-right, bottom-right, bottom-left (a clockwise order).
    geometry = footprint_geometry((15.0, 42.0, 15.1, 42.0, 15.1, 41.9, 15.0, 41.9))
    ring = geometry["coordinates"][0]
    assert geometry["type"] == "Polygon" and len(ring) == 5 and ring[0] == ring[-1]
    assert signed_area(ring) == pytest.approx(0.01) and sorted(map(tuple, ring[:4])) == [
        (15.0, 41.9), (15.0, 42.0), (15.1, 41.9), (15.1, 42.0)]


def test_a_chip_across_the_antimeridian_is_split():
    geometry = footprint_geometry((179.9, 10.0, -179.9, 10.0, -179.9, 9.9, 179.9, 9.9))
    assert geometry["type"] == "MultiPolygon" and len(geometry["coordinates"]) == 2
    west, east = (part[0] for part in geometry["coordinates"])
    assert {round(x, 9) for x, _ in west} == {179.9, 180.0} and {round(x, 9) for x, _ in east} == {-180.0, -179.9}
    for ring in (west, east):
        assert ring[0] == ring[-1] and signed_area(ring) > 0
        assert all(-180 <= x <= 180 for x, _ in ring)


def test_feature_collection():
    hits = [make_hit(1, (15.0, 42.0, 15.1, 42.0, 15.1, 41.9, 15.0, 41.9), (15.0, 41.9, 15.1, 42.0)), make_hit(2)]
    collection = json.loads(json.dumps(hits_to_geojson(hits, {"text": "tanks"})))
    assert collection["type"] == "FeatureCollection" and collection["query"] == {"text": "tanks"}
    first, second = collection["features"]
    assert first["type"] == "Feature" and first["geometry"]["type"] == "Polygon"
    assert first["properties"] == {"rank": 1, "id": 10, "score": 0.5, "source": "/data/s1.tif",
                                   "window": [0, 0, 32, 32], "crs": "EPSG:32633", "bounds": None,
                                   "bounds_wgs84": [15.0, 41.9, 15.1, 42.0]}
    assert second["geometry"] is None and second["properties"]["window"] is None
    assert collection["bbox"] == [15.0, 41.9, 15.1, 42.0]
    assert hits_to_geojson([h.to_dict() for h in hits], "q") == hits_to_geojson(hits, "q")
