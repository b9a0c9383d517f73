"""Hits as GeoJSON (RFC 7946): a FeatureCollection a GIS opens as it is.

One Feature per hit, in rank order. The geometry is the chip's footprint in WGS84 (longitude, latitude):
its four transformed corners, a Polygon with the exterior ring counter-clockwise as RFC 7946 section 3.1.6
asks; a chip crossing the antimeridian is split into a MultiPolygon of its two sides (section 3.1.9).
Hits without coordinates (plain images, shard samples) have a null geometry (section 3.2). Properties:
``rank``, ``id``, ``score``, ``source``, ``window`` ([col, row, width, height] or null), ``crs`` and
``bounds`` (in that CRS). The collection carries the query as a foreign member and a ``bbox`` over the
located hits.
"""
from typing import Any, Dict, List, Optional, Sequence

COORDINATE_DIGITS = 9  # about 0.1 mm at the equator


def _ring(points: Sequence[Sequence[float]]) -> List[List[float]]:
    """A closed ring, counter-clockwise (positive shoelace area in lon/lat)."""
    pts = [[round(float(x), COORDINATE_DIGITS), round(float(y), COORDINATE_DIGITS)] for x, y in points]
    area = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1]))
    if area < 0:
        pts.reverse()
    return pts + [pts[0]]


def _unwrap(lons: Sequence[float]) -> List[float]:
    """Longitudes made continuous across the antimeridian (jumps over 180 degrees shifted by 360)."""
    out = [lons[0]]
    for lon in lons[1:]:
        while lon - out[-1] > 180:
            lon -= 360
        while lon - out[-1] < -180:
            lon += 360
        out.append(lon)
    return out


def _clip_lon(points: Sequence[Sequence[float]], keep_below: bool, at: float) -> List[List[float]]:
    """Sutherland-Hodgman clip of a polygon against the meridian ``lon = at`` (one side kept)."""
    def inside(p):
        return p[0] <= at if keep_below else p[0] >= at

    out: List[List[float]] = []
    for i, current in enumerate(points):
        previous = points[i - 1]
        if inside(current):
            if not inside(previous):
                out.append(_cross(previous, current, at))
            out.append(list(current))
        elif inside(previous):
            out.append(_cross(previous, current, at))
    return out


def _cross(a, b, at: float) -> List[float]:
    t = (at - a[0]) / (b[0] - a[0])
    return [at, a[1] + t * (b[1] - a[1])]


def footprint_geometry(footprint: Optional[Sequence[float]]) -> Optional[Dict[str, Any]]:
    """A chip footprint (lon, lat x 4) -> a GeoJSON Polygon (MultiPolygon across the antimeridian)."""
    if footprint is None:
        return None
    lons = _unwrap([footprint[i] for i in range(0, 8, 2)])
    lats = [footprint[i] for i in range(1, 8, 2)]
    points = list(zip(lons, lats))
    if max(lons) <= 180 and min(lons) >= -180:
        return {"type": "Polygon", "coordinates": [_ring(points)]}
    # Crossing: cut at the antimeridian and bring the outer part back into [-180, 180].
    at = 180.0 if max(lons) > 180 else -180.0
    west = _clip_lon(points, keep_below=True, at=at)
    east = _clip_lon(points, keep_below=False, at=at)
    shift = -360.0 if at == 180.0 else 360.0
    if at == 180.0:
        east = [[x + shift, y] for x, y in east]
    else:
        west = [[x + shift, y] for x, y in west]
    parts = [[_ring(part)] for part in (west, east) if len(part) >= 3]
    return {"type": "MultiPolygon", "coordinates": parts}


def _bbox(features: List[Dict[str, Any]]) -> Optional[List[float]]:
    boxes = [f["properties"]["bounds_wgs84"] for f in features if f["properties"].get("bounds_wgs84")]
    if not boxes:
        return None
    return [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]


def hits_to_geojson(hits: Sequence, query: Any = None) -> Dict[str, Any]:
    """Hits (:class:`~pir_clip.search.index.Hit` or their ``to_dict()``) -> an RFC 7946 FeatureCollection."""
    features = []
    for hit in hits:
        d = hit.to_dict() if hasattr(hit, "to_dict") else dict(hit)
        features.append({
            "type": "Feature",
            "id": d["id"],
            "geometry": footprint_geometry(d.get("footprint_wgs84")),
            "properties": {"rank": d["rank"], "id": d["id"], "score": d["score"], "source": d["source"],
                           "window": d.get("window"), "crs": d.get("crs"), "bounds": d.get("bounds"),
                           "bounds_wgs84": d.get("bounds_wgs84")},
        })
    collection: Dict[str, Any] = {"type": "FeatureCollection", "query": query, "features": features}
    bbox = _bbox(features)
    if bbox is not None and bbox[0] <= bbox[2]:
        collection["bbox"] = bbox
    return collection
