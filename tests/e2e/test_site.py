"""The course website (`make site`), read as a learner reads it: in a real browser.

`make site-test` builds ``site/`` and runs these tests: the build has no broken internal link or
image (checked by the build itself), the home page's course map is the README's, every notebook
is in the navigation, and headless Chromium opens the home page from a local server, follows
the navigation to three notebook pages, sees a figure and a rendered equation, and finds a
notebook with the search box. The screenshots go to build/screenshots/ (``make screenshots``
refreshes the committed ones in reports/screenshots/).
"""

from __future__ import annotations

import html
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO  # noqa: E402

pytest.importorskip("myst_nb", reason="the site's tools are installed by `make site`")
pytestmark = [pytest.mark.site, pytest.mark.slow]

sys.path.insert(0, str(REPO / "scripts"))
import build_site  # noqa: E402

CHROMIUM = os.environ.get("COURSE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT_DIR = Path(os.environ.get("COURSE_SCREENSHOT_DIR") or REPO / "build" / "screenshots")
SCREENSHOT_DIR = SCREENSHOT_DIR if SCREENSHOT_DIR.is_absolute() else REPO / SCREENSHOT_DIR


@pytest.fixture(scope="module")
def site() -> Path:
    if not (build_site.OUT / "index.html").exists() or os.environ.get("COURSE_SITE_REBUILD"):
        assert build_site.main.__module__  # the build runs in-process: same interpreter, same packages
        sys.argv = ["build_site.py", "--check"]
        assert build_site.main() == 0
    return build_site.OUT


def _cells(table_html: str) -> list[list[str]]:
    rows = []
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table_html, flags=re.S):
        cells = re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row, flags=re.S)
        rows.append([" ".join(html.unescape(re.sub(r"<br\s*/?>", " ", re.sub(r"<(?!br)[^>]+>", "", c))).split())
                     for c in cells])
    return rows


def test_the_home_page_course_map_is_the_readmes(site):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- course-map:start -->", 1)[1].split("<!-- course-map:end -->", 1)[0]
    expected = []
    for line in block.strip().splitlines():
        if set(line.replace("|", "").strip()) <= set("-:"):
            continue  # the separator row
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        expected.append([" ".join(re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", c).replace("<br>", " ")
                                  .replace("`", "").split()) for c in cells])
    page = (site / "index.html").read_text(encoding="utf-8")
    table = re.search(r"<table[^>]*>.*?</table>", page, flags=re.S)
    assert table, "the home page has no course map table"
    assert _cells(table.group(0)) == expected, "the site's course map differs from the README's: run `make site`"


def test_every_notebook_has_a_page_in_the_navigation_and_a_download_link(site):
    home = (site / "index.html").read_text(encoding="utf-8")
    for path in build_site.notebooks():
        assert f'href="notebooks/{path.stem}.html"' in home, f"{path.stem} is missing from the navigation"
        page = (site / "notebooks" / f"{path.stem}.html").read_text(encoding="utf-8")
        assert re.search(rf'<a class="reference download internal" download="" href="[^"]*/{path.name}"', page), \
            f"{path.stem}'s page has no link to download {path.name}"


def test_the_site_loads_nothing_from_the_internet(site):
    for page in site.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        remote = re.findall(r'<(?:script|link|img)[^>]+(?:src|href)="(https?://[^"]+)"', text)
        assert not remote, f"{page.relative_to(site)} loads {remote[:3]}: the site must work offline"


def test_a_learner_reads_the_site_in_a_browser(site):
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        message = f"Chromium not found at {CHROMIUM}: install it (`apt-get install chromium`; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "-d", str(site)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("the local web server did not start")
                time.sleep(0.2)
        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/index.html")
            assert "Course map" in page.inner_text("article")
            page.screenshot(path=str(SCREENSHOT_DIR / "site_home.png"))
            visited = []
            for stem in ("01_attention_as_soft_lookup", "04_multi_head_attention", "06_transformer_blocks"):
                page.click(f'nav.bd-docs-nav a[href$="{stem}.html"]')  # the sidebar's navigation
                page.wait_for_load_state("load")
                assert page.url.endswith(f"notebooks/{stem}.html")
                visited.append(page.title())
                # a figure: an image with alt text that the browser decoded
                figure = page.locator("article img[alt]").first
                figure.scroll_into_view_if_needed()
                assert figure.get_attribute("alt"), f"{stem}: a figure without alt text"
                page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=figure.element_handle())
            # a rendered equation: MathJax (served by the site itself) replaced the TeX
            page.goto(f"{base}/notebooks/01_attention_as_soft_lookup.html")
            page.wait_for_selector("article mjx-container", state="attached", timeout=30_000)
            equation = page.locator("article mjx-container").first
            equation.scroll_into_view_if_needed()
            assert equation.is_visible() and equation.bounding_box()["width"] > 5
            page.screenshot(path=str(SCREENSHOT_DIR / "site_notebook_01.png"))
            # search finds a notebook
            page.goto(f"{base}/search.html?q=rotary")
            page.wait_for_selector("#search-results li a", timeout=30_000)
            found = page.locator("#search-results li a").all_inner_texts()
            assert any("Self-attention and positions" in text for text in found), found
            page.screenshot(path=str(SCREENSHOT_DIR / "site_search.png"))
            browser.close()
        assert len(visited) == 3
    finally:
        server.terminate()
        server.wait(timeout=20)
