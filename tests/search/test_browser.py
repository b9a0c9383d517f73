"""The search page in a real browser: Debian's chromium driven by Playwright against `pir-clip serve` running
as its own process on a free loopback port.

Skipped when no chromium is installed, unless PIR_CLIP_REQUIRE_BROWSER=1 (set by .ci/run, which installs it).
The screenshot is saved under the test's temporary folder (its path is printed).
"""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from pir_clip.cli import main
from pir_clip.search import SearchIndex
from search_helpers import ROOT, env, index_args

CHROMIUM = os.environ.get("PIR_CLIP_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
REQUIRED = os.environ.get("PIR_CLIP_REQUIRE_BROWSER") == "1"


def browser_or_skip():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if REQUIRED:
            raise
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    if not CHROMIUM:
        if REQUIRED:
            pytest.fail("PIR_CLIP_REQUIRE_BROWSER=1 but no chromium on PATH (apt-get install chromium)")
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    return sync_playwright


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(synthetic_data, tiny_checkpoint, tmp_path_factory):
    """`pir-clip serve` in a subprocess on 127.0.0.1, stopping itself after 10 minutes at the latest."""
    browser_or_skip()
    out = tmp_path_factory.mktemp("browser") / "index"
    assert main(["index"] + index_args([synthetic_data / "images"], out, tiny_checkpoint)) == 0
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pir_clip", "serve", str(out), "--port", str(port),
                             "--exit-after", "600"], cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "api/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"pir-clip serve did not come up:\n{proc.stdout.read()}")
                time.sleep(0.3)
        yield url, SearchIndex.open(out)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_search_page_in_chromium(server, tmp_path):
    url, index = server
    sync_playwright = browser_or_skip()
    query = "a red roof next to a road"
    expected = index.search_text(query, 20)
    first = expected[0]
    like = index.search_like(first.id, 20)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            requests = []
            page.on("request", lambda request: requests.append(request.url))
            page.goto(url)
            page.wait_for_function("document.getElementById('index-info').textContent.includes('items')")
            assert f"{len(index)} items" in page.text_content("#index-info")
            assert page.is_hidden("#token-box") and page.is_hidden("#detail")  # no token needed, nothing chosen
            page.select_option("#k", "20")
            page.fill("#query", query)
            page.click("#search-button")
            page.wait_for_selector(".card")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('20 hits')")
            cards = page.query_selector_all(".card")
            assert len(cards) == 20
            assert cards[0].get_attribute("data-id") == str(first.id)
            assert page.text_content(".card .source") == os.path.basename(first.source)
            assert page.text_content(".card .score") == f"{first.score:.3f}"
            # The first thumbnail loads (through the API, with the page's headers) and shows the item.
            page.wait_for_function("document.querySelector('.card img').naturalWidth > 0")
            cards[0].click()
            page.wait_for_selector("#detail:not([hidden])")
            page.wait_for_function("document.getElementById('detail-table').textContent.includes('source')")
            assert first.source in page.text_content("#detail-table")
            page.click("#more-like-this")
            # The status reads "searching items like #N…" until the new hits are on the page.
            page.wait_for_function("document.getElementById('status').textContent === "
                                   f"'{len(like)} hits for items like #{first.id}'")
            assert page.get_attribute(".card", "data-id") == str(like[0].id)
            assert page.text_content(".card .source") == os.path.basename(like[0].source)
            with page.expect_download() as download_info:
                page.click("#geojson-button")
            saved = tmp_path / "hits.geojson"
            download_info.value.save_as(saved)
            assert '"FeatureCollection"' in saved.read_text()
            screenshot = tmp_path / "search_page.png"
            page.screenshot(path=str(screenshot), full_page=True)
            print(f"screenshot: {screenshot}")
            assert screenshot.stat().st_size > 10_000
            # Nothing but this server was asked for anything.
            assert requests and all(r.startswith(url) or r.startswith("blob:") for r in requests)
        finally:
            browser.close()


def test_the_page_stays_light_at_many_hits(server):
    """At k = all items, only thumbnails near the viewport are fetched (lazy images)."""
    url, index = server
    sync_playwright = browser_or_skip()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 800, "height": 400})
            images = []
            page.on("request", lambda request: images.append(request.url) if "/image" in request.url else None)
            page.goto(url)
            page.select_option("#k", "1000")
            page.fill("#query", "farmland")
            page.click("#search-button")
            page.wait_for_function(f"document.querySelectorAll('.card').length === {len(index)}")
            page.wait_for_timeout(1500)
            assert 0 < len(images) < len(index)
        finally:
            browser.close()
