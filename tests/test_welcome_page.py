"""The welcome page as a newcomer sees it in Chromium: its icon, its layout on a phone, the image
caption, and the screenshots the README shows."""

from __future__ import annotations

import base64
import os
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CLIENT_KEYS
from pngcheck import png_info
from processes import Gateway, clean_env
from test_browser import CHROMIUM, CHROMIUM_ARGS, sync_api

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium here: apt-get install chromium (.ci/run does)"
)

# The address the screenshots show, as if started with the README's command: the browser is
# routed from it to the gateway's real (free) port.
SHOWN_ORIGIN = "http://127.0.0.1:8080"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
VIEWPORTS = {"desktop": DESKTOP, "phone": PHONE}
# The README shows these: written when UPDATE_SCREENSHOTS=1, so that an ordinary test run
# never changes the checkout.
SCREENSHOT_DIR = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
KEEP_SCREENSHOTS = os.environ.get("UPDATE_SCREENSHOTS") == "1"

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture
def gateway(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Gateway, str]]:
    """The embedded default (demo provider) as a real process whose page and links name
    SHOWN_ORIGIN (or the public base URL the test is parametrized with)."""
    public = getattr(request, "param", SHOWN_ORIGIN)
    env = clean_env(AUTHORIZED_API_KEY=CLIENT_KEYS[0], PUBLIC_BASE_URL=public)
    process = Gateway(["--port", "0"], env, tmp_path / "stderr.log")
    try:
        yield process, process.wait_listening()
    finally:
        process.close()


@pytest.fixture
def browser() -> Iterator[object]:
    """Headless Chromium."""
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def open_page(browser, base: str, viewport: dict[str, int]):
    """A page at ``viewport`` size on the welcome page, SHOWN_ORIGIN routed to ``base``."""
    page = browser.new_page(viewport=viewport)

    def to_gateway(route) -> None:
        real = base + route.request.url[len(SHOWN_ORIGIN) :]
        route.fulfill(response=route.fetch(url=real))

    page.route(SHOWN_ORIGIN + "/**", to_gateway)
    page.goto(base + "/")
    return page


def generate(page, prompt: str) -> None:
    """Generate an image with the demo model from the playground and wait until it shows."""
    page.fill("#key", CLIENT_KEYS[0])
    page.select_option("#model", "imagegate-demo")
    page.fill("#prompt", prompt)
    page.click("#go")
    page.wait_for_function(
        "document.getElementById('image').complete"
        " && document.getElementById('image').naturalWidth > 0",
        timeout=30000,
    )


def test_the_favicon_is_served_and_a_visit_logs_no_404(gateway, browser) -> None:
    process, base = gateway
    with _NO_PROXY.open(f"{base}/favicon.ico", timeout=10) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("image/")
        assert answer.read(4) == b"\x00\x00\x01\x00"  # an ICO file
    page = open_page(browser, base, DESKTOP)
    icons = page.eval_on_selector_all("link[rel=icon]", "links => links.map(l => l.href)")
    assert f"{base}/static/favicon.svg" in icons
    # The browser fetches the page's icon by itself, after the page.
    process.wait_for_stderr(r"200 GET /static/favicon\.svg")
    access = [line for line in process.stderr().splitlines() if " GET /" in line]
    assert not [line for line in access if " 404 " in line], access


def line_tops(page, selector: str) -> int:
    """On how many lines the element's text is laid out."""
    return page.evaluate(
        "s => new Set([...document.querySelector(s).getClientRects()]"
        ".map(r => Math.round(r.top))).size",
        selector,
    )


@pytest.mark.parametrize(
    "gateway", [SHOWN_ORIGIN, "https://images.example-company.com"], indirect=True
)
def test_on_a_phone_nothing_is_clipped_and_the_base_url_keeps_whole(gateway, browser) -> None:
    _, base = gateway
    page = open_page(browser, base, PHONE)
    origin = page.evaluate("document.getElementById('base-url').textContent").removesuffix("/v1")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    # The base URL fits on one line, and is not cut mid-word to make it fit.
    assert page.locator("#base-url").inner_text() == f"{origin}/v1"
    assert line_tops(page, "#base-url") == 1
    # The curl command fits its box: wrapped at spaces and slashes, not scrolled away.
    box = page.evaluate(
        "(() => { const b = document.getElementById('curl');"
        " return [b.scrollWidth, b.clientWidth, b.getBoundingClientRect().right]; })()"
    )
    scroll_width, client_width, right = box
    assert scroll_width <= client_width, "the curl command is cut off on a phone"
    assert right <= PHONE["width"]
    # Every line break falls at a space or after a slash or hyphen: no word is split.
    breaks = page.evaluate(
        """(() => {
            const code = document.querySelector('#curl code');
            const walker = document.createTreeWalker(code, NodeFilter.SHOW_TEXT);
            const range = document.createRange();
            const found = [];
            let lastTop = null, lastChar = '';
            for (let node = walker.nextNode(); node; node = walker.nextNode()) {
                for (let i = 0; i < node.length; i++) {
                    range.setStart(node, i); range.setEnd(node, i + 1);
                    const rect = range.getBoundingClientRect();
                    const char = node.data[i];
                    if (char === '\\n') { lastTop = null; lastChar = char; continue; }
                    if (rect.height === 0) { continue; }
                    const top = Math.round(rect.top);
                    if (lastTop !== null && top > lastTop) { found.push(lastChar + char); }
                    lastTop = top; lastChar = char;
                }
            }
            return found;
        })()"""
    )
    assert breaks, "a phone is expected to wrap the command somewhere"
    for pair in breaks:
        assert pair[0] in " /-" or pair[1] == " ", f"the command is split mid-word at {pair!r}"
    # Copying the command gives it unchanged, one option a line.
    command = page.locator("#curl").text_content()
    assert command.startswith(f"curl {origin}/v1/chat/completions \\\n  -H ")


@pytest.mark.parametrize("viewport", ["desktop", "phone"])
def test_the_image_is_captioned_with_its_prompt(gateway, browser, viewport) -> None:
    _, base = gateway
    page = open_page(browser, base, VIEWPORTS[viewport])
    generate(page, "a lighthouse in a storm")
    # The demo model has no prompt optimiser: the caption is the prompt as asked.
    assert page.locator("#caption").inner_text() == "Prompt: a lighthouse in a storm"
    assert page.evaluate("document.documentElement.scrollWidth") <= VIEWPORTS[viewport]["width"]


def screenshot(page, path: Path) -> bytes:
    """The viewport as a PNG, taken with the DevTools protocol; written to ``path``."""
    session = page.context.new_cdp_session(page)
    data = session.send("Page.captureScreenshot", {"format": "png"})["data"]
    session.detach()
    png = base64.b64decode(data)
    path.write_bytes(png)
    return png


@pytest.mark.parametrize("viewport", ["desktop", "phone"])
def test_screenshots_of_the_welcome_page_and_the_playground(
    gateway, browser, tmp_path, viewport
) -> None:
    _, base = gateway
    size = VIEWPORTS[viewport]
    page = open_page(browser, base, size)
    shots = {f"welcome-{viewport}.png": screenshot(page, tmp_path / f"welcome-{viewport}.png")}
    generate(page, "a lighthouse in a storm, 16:9")
    page.evaluate("document.activeElement.blur()")
    page.evaluate("document.getElementById('result').scrollIntoView({block: 'end'})")
    shots[f"playground-{viewport}.png"] = screenshot(page, tmp_path / f"playground-{viewport}.png")
    for name, png in shots.items():
        info = png_info(png)
        assert (info["width"], info["height"]) == (size["width"], size["height"]), name
    if KEEP_SCREENSHOTS:
        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        for name in shots:
            shutil.copyfile(tmp_path / name, SCREENSHOT_DIR / name)
