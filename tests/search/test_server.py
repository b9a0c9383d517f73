"""`pir-clip serve`'s API through FastAPI's TestClient: every route, its answers equal `pir-clip search` on the
same index, and every kind of bad request gets a JSON error with the right status (nothing crashes)."""
import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pir_clip.cli import main
from pir_clip.search import SearchIndex
from pir_clip.search.server import STATIC_DIR, ServeLimits, create_app, is_loopback
from search_helpers import index_args, write_scene

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def served(synthetic_data, tiny_checkpoint, tmp_path_factory):
    """An index over the synthetic images and a GeoTIFF scene, opened once, with an app over it."""
    root = tmp_path_factory.mktemp("served")
    scene = write_scene(root / "scene.tif", width=64, height=64)
    out = root / "index"
    assert main(["index"] + index_args([synthetic_data / "images"], out, tiny_checkpoint,
                                       "--scenes", scene, "--chip-size", "32")) == 0
    index = SearchIndex.open(out)
    limits = ServeLimits(max_k=100, max_query_chars=200, max_upload_bytes=1024 * 1024, max_image_size=512)
    return out, index, TestClient(create_app(index, limits=limits), raise_server_exceptions=False)


def cli_result(args, capsys):
    assert main([str(a) for a in args]) == 0
    capsys.readouterr()


def assert_json_error(response, status):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["status"] == status and isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    return body["error"]["message"]


def test_health_and_the_page_without_network(served):
    out, index, client = served
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["items"] == len(index) == 28
    assert health["manifest"] == json.loads(json.dumps(index.manifest))
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset in ("static/app.js", "static/style.css"):
        assert asset in page.text
        response = client.get("/" + asset)
        assert response.status_code == 200 and response.text == (STATIC_DIR / asset.split("/")[1]).read_text()
    for name in ("index.html", "app.js", "style.css"):  # every asset is ours: no CDN, no other host
        text = (STATIC_DIR / name).read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text


def test_text_search_equals_the_cli(served, tmp_path, capsys):
    out, index, client = served
    cli_result(["search", out, "--text", "a red roof", "-k", "7", "--output", tmp_path / "hits.json",
                "--geojson", tmp_path / "hits.geojson"], capsys)
    expected = json.loads((tmp_path / "hits.json").read_text())
    got = client.get("/api/search", params={"q": "a red roof", "k": 7}).json()
    assert got["query"] == expected["query"] == {"text": "a red roof", "k": 7}
    assert got["hits"] == expected["hits"] and [h["rank"] for h in got["hits"]] == list(range(1, 8))
    geojson = client.get("/api/search.geojson", params={"q": "a red roof", "k": 7})
    assert geojson.status_code == 200 and geojson.headers["content-type"].startswith("application/geo+json")
    assert geojson.json() == json.loads((tmp_path / "hits.geojson").read_text())


def test_more_like_this_and_geojson_equal_the_cli(served, tmp_path, capsys):
    out, index, client = served
    chip = next(i for i in range(len(index)) if index.item(i).kind == "chip")
    cli_result(["search", out, "--like", chip, "-k", "5", "--output", tmp_path / "like.json",
                "--geojson", tmp_path / "like.geojson"], capsys)
    got = client.get("/api/search", params={"like": chip, "k": 5}).json()
    assert got["hits"] == json.loads((tmp_path / "like.json").read_text())["hits"]
    assert chip not in [h["id"] for h in got["hits"]]
    collection = client.get("/api/search.geojson", params={"like": chip, "k": 5}).json()
    assert collection == json.loads((tmp_path / "like.geojson").read_text())
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == 5


def test_image_upload_equals_the_cli(served, synthetic_data, tmp_path, capsys):
    out, index, client = served
    path = sorted((synthetic_data / "images").glob("*.tif"))[0]
    cli_result(["search", out, "--image", path, "-k", "6", "--output", tmp_path / "img.json"], capsys)
    response = client.post("/api/search/image", params={"k": 6}, content=path.read_bytes(),
                           headers={"Content-Type": "image/tiff"})
    assert response.status_code == 200, response.text
    assert response.json()["hits"] == json.loads((tmp_path / "img.json").read_text())["hits"]
    assert response.json()["hits"][0]["source"] == str(path.resolve())  # the image itself is its own best hit


def test_items_metadata_and_pixels(served):
    out, index, client = served
    for item_id in (0, len(index) - 1):
        assert client.get(f"/api/items/{item_id}").json() == json.loads(json.dumps(index.item(item_id).to_dict()))
        response = client.get(f"/api/items/{item_id}/image", params={"size": 48})
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        served_image = Image.open(io.BytesIO(response.content))
        expected = index.item_image(item_id)
        expected.thumbnail((48, 48))
        assert served_image.size == expected.size and max(served_image.size) <= 48
        assert np.array_equal(np.asarray(served_image.convert("RGB")), np.asarray(expected))
    jpeg = client.get("/api/items/0/image", params={"format": "jpeg"})
    assert jpeg.headers["content-type"] == "image/jpeg" and jpeg.content[:2] == b"\xff\xd8"
    chip = next(i for i in range(len(index)) if index.item(i).kind == "chip")
    meta = client.get(f"/api/items/{chip}").json()
    assert meta["window"] == [0, 0, 32, 32] and meta["crs"] == "EPSG:32633" and len(meta["bounds_wgs84"]) == 4


@pytest.mark.parametrize("url, status", [
    ("/api/items/28", 404), ("/api/items/-1", 404), ("/api/items/99999999999999999999", 404),
    ("/api/items/abc", 422), ("/api/items/28/image", 404), ("/api/items/1.5/image", 422),
    ("/api/search?like=28", 404), ("/api/search?like=-3", 422), ("/api/search?like=x", 422),
    ("/api/search?q=roof&k=101", 422), ("/api/search?q=roof&k=0", 422), ("/api/search?q=roof&k=ten", 422),
    ("/api/search?q=" + "a" * 201, 422), ("/api/search?q=%20%20", 422), ("/api/search", 422),
    ("/api/search?q=roof&like=1", 422), ("/api/search.geojson?k=5", 422),
    ("/api/items/0/image?size=4096", 422), ("/api/items/0/image?format=gif", 422),
    ("/api/nothing", 404), ("/static/missing.js", 404),
])
def test_bad_requests_get_json_errors(served, url, status):
    out, index, client = served
    assert_json_error(client.get(url), status)


@pytest.mark.parametrize("url", [
    "/api/items/..%2F..%2Fetc%2Fpasswd/image", "/api/items/..%2F..%2Fetc%2Fpasswd",
    "/api/items/%2Fetc%2Fpasswd/image", "/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd", "/static/../server.py",
    "/api/items/0/image?size=64&path=/etc/passwd",
])
def test_no_path_from_a_request_reaches_the_file_system(served, url, monkeypatch):
    out, index, client = served
    opened = []
    real_open = open

    def watch(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)
    monkeypatch.setattr("builtins.open", watch)
    response = client.get(url)
    assert "root:" not in response.text and "import" not in response.text
    assert not any("passwd" in path or path.endswith("server.py") for path in opened)
    if url.endswith("path=/etc/passwd"):  # an unknown parameter is ignored: item 0 itself
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    else:
        assert response.status_code in (404, 422)
        assert response.headers["content-type"].startswith("application/json") or response.status_code == 404


def test_uploads_too_large_not_images_or_empty(served):
    out, index, client = served
    fifty_mb = b"\0" * (50 * 1024 * 1024)
    message = assert_json_error(client.post("/api/search/image", content=fifty_mb,
                                            headers={"Content-Type": "image/png"}), 413)
    assert "52,428,800" in message

    def chunks():  # no Content-Length: the limit holds while reading
        for _ in range(8):
            yield b"\0" * (256 * 1024)
    assert_json_error(client.post("/api/search/image", content=chunks(), headers={"Content-Type": "image/png"}), 413)
    assert_json_error(client.post("/api/search/image", content=b"hello", headers={"Content-Type": "text/plain"}), 415)
    assert "not an image" in assert_json_error(
        client.post("/api/search/image", content=b"\x89PNG garbage" * 10, headers={"Content-Type": "image/png"}), 415)
    assert_json_error(client.post("/api/search/image", content=b"", headers={"Content-Type": "image/png"}), 422)
    assert client.get("/api/health").status_code == 200  # still serving


def test_token_guards_every_api_route_not_the_page(served):
    out, index, _ = served
    client = TestClient(create_app(index, token=TOKEN), raise_server_exceptions=False)
    for url in ("/api/health", "/api/search?q=roof", "/api/items/0", "/api/items/0/image", "/api/search.geojson?q=a"):
        assert_json_error(client.get(url), 401)
        assert_json_error(client.get(url, headers={"Authorization": "Bearer wrong"}), 401)
        assert_json_error(client.get(url, headers={"Authorization": TOKEN}), 401)  # no scheme
        assert client.get(url, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    response = client.post("/api/search/image", content=b"x")
    assert_json_error(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"
    assert client.get("/").status_code == 200  # the page itself asks for the token


def test_serve_binds_loopback_and_warns_for_other_hosts(served, monkeypatch, capsys, caplog):
    out, index, _ = served
    started = []

    class FakeServer:
        def __init__(self, config):
            started.append(config)
            self.should_exit = False

        def run(self):
            pass
    monkeypatch.setattr("uvicorn.Server", FakeServer)
    assert main(["serve", str(out), "--port", "8123"]) == 0
    assert started[-1].host == "127.0.0.1" and started[-1].port == 8123
    assert "at http://127.0.0.1:8123/" in capsys.readouterr().out
    with caplog.at_level("WARNING"):
        assert main(["serve", str(out), "--host", "0.0.0.0"]) == 0
    assert started[-1].host == "0.0.0.0" and "WITHOUT an access token" in caplog.text
    assert main(["serve", str(out), "--port", "70000"]) == 2
    assert "--port 70000" in capsys.readouterr().err
    assert main(["serve", str(out / "missing")]) == 2
    assert is_loopback("127.0.0.1") and is_loopback("::1") and not is_loopback("0.0.0.0")
