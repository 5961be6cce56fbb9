"""The welcome page and its playground in a real browser (headless Chromium)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import CLIENT_KEYS
from processes import Gateway, clean_env

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Flags for this closed network: no background connections, no sandbox as root, no GPU.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install '.[test]')"
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium here: apt-get install chromium (.ci/run does)"
)


@pytest.fixture
def gateway(tmp_path: Path):
    """The embedded default (demo provider) as a real process."""
    process = Gateway(
        ["--port", "0"], clean_env(AUTHORIZED_API_KEY=CLIENT_KEYS[0]), tmp_path / "stderr.log"
    )
    try:
        yield process.wait_listening()
    finally:
        process.close()


@pytest.mark.parametrize(
    "viewport",
    [{"width": 1280, "height": 900}, {"width": 390, "height": 844}],
    ids=["desktop", "phone"],
)
def test_playground_generates_an_image_that_renders(gateway, tmp_path, viewport):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=viewport)
            page.goto(gateway + "/")
            assert "tornado-imagegate" in page.title()
            assert page.locator("#base-url").inner_text() == f"{gateway}/v1"
            page.fill("#key", CLIENT_KEYS[0])
            page.dispatch_event("#key", "change")
            page.wait_for_function(
                "document.querySelectorAll('#model option').length >= 1", timeout=15000
            )
            page.select_option("#model", "imagegate-demo")
            page.fill("#prompt", "a lighthouse in a storm")
            page.select_option("#ratio", "16:9")
            page.click("#go")
            page.wait_for_function(
                "document.getElementById('image').complete"
                " && document.getElementById('image').naturalWidth > 0",
                timeout=30000,
            )
            size = page.evaluate(
                "[document.getElementById('image').naturalWidth,"
                " document.getElementById('image').naturalHeight]"
            )
            assert size == [1024, 576]
            assert page.locator("#status").inner_text().startswith("Done")
            assert page.evaluate("window.localStorage.getItem('imagegate-key')") == CLIENT_KEYS[0]
            page.screenshot(path=str(tmp_path / f"playground-{viewport['width']}.png"))
            scroll_width = page.evaluate("document.documentElement.scrollWidth")
            assert scroll_width <= viewport["width"], "the page must not scroll sideways"
        finally:
            browser.close()


def test_a_wrong_key_shows_the_error(gateway):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(gateway + "/")
            page.fill("#key", "not-the-key")
            page.fill("#prompt", "a cat")
            page.click("#go")
            page.wait_for_function(
                "document.getElementById('status').className === 'error'", timeout=15000
            )
            assert "API key" in page.locator("#status").inner_text()
        finally:
            browser.close()
