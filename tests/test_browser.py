"""The welcome page and its playground in a real browser (headless Chromium)."""

from __future__ import annotations

import asyncio
import base64
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CLIENT_KEYS, register_secret
from fakes import FakeChatImages, FakeOrigin, jpeg_bytes, png_bytes
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


CHAT_KEY = "sk-browser-chat-key-9753"
register_secret(CHAT_KEY)


class ChatFakeThread:
    """An edit-capable chat-kind fake (and its image host) on a loop of its own, for a gateway
    in another process driven by a synchronous browser."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10), "the fake did not start"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            self.origin = FakeOrigin()
            self.chat = FakeChatImages(self.origin)
            self.ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    def received(self) -> list[Any]:
        """The chat requests the fake received, each as its JSON body."""
        return [request.json for request in list(self.chat.requests)]

    def close(self) -> None:
        """Stop the fakes and their loop."""

        def stop() -> None:
            self.chat.server.stop()
            self.origin.server.stop()
            self.loop.stop()

        self.loop.call_soon_threadsafe(stop)
        self.thread.join(10)


@pytest.fixture
def chat_gateway(tmp_path: Path) -> Iterator[tuple[str, ChatFakeThread]]:
    """A gateway process whose one model is the chat-kind fake (it takes input images)."""
    fake = ChatFakeThread()
    env = clean_env(
        AUTHORIZED_API_KEY=CLIENT_KEYS[0],
        IMAGE_GEN_MODEL_1="chat-image-model",
        IMAGE_GEN_API_BASE_1=fake.chat.url("v1"),
        IMAGE_GEN_API_KEY_1=CHAT_KEY,
        IMAGE_GEN_KIND_1="chat",
        IMAGE_PROXY_ALLOW_PRIVATE_NETWORKS="true",
    )
    process = Gateway(["--port", "0"], env, tmp_path / "stderr.log")
    try:
        yield process.wait_listening(), fake
    finally:
        process.close()
        fake.close()


def user_parts(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The content parts of a chat request's last user message (text as one part)."""
    content = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def text_of(body: dict[str, Any]) -> str:
    """Every text the provider got in a chat request, joined."""
    texts = []
    for message in body["messages"]:
        content = message["content"]
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        texts += [part.get("text", "") for part in parts if part.get("type") == "text"]
    return "\n".join(texts)


def image_urls(body: dict[str, Any]) -> list[str]:
    """The image_url parts the provider got in a chat request."""
    return [
        part["image_url"]["url"]
        for message in body["messages"]
        if not isinstance(message["content"], str)
        for part in message["content"]
        if part.get("type") == "image_url"
    ]


def record_chat_requests(page) -> list[dict[str, Any]]:
    """The bodies of the chat completions the page sends, as they are sent."""
    bodies: list[dict[str, Any]] = []

    def on_request(request) -> None:
        if request.url.endswith("/v1/chat/completions") and request.method == "POST":
            bodies.append(request.post_data_json)

    page.on("request", on_request)
    return bodies


def send_expecting_error(page, prompt: str) -> tuple[str, str]:
    """Send ``prompt`` with the client key; wait for the error: its sentence and its detail."""
    page.fill("#key", CLIENT_KEYS[0])
    page.fill("#prompt", prompt)
    page.click("#go")
    page.wait_for_function("document.getElementById('status').className === 'error'", timeout=30000)
    return page.locator("#status").inner_text(), page.locator("#detail").inner_text()


def strip_count(page) -> int:
    """How many images the session strip shows."""
    return page.evaluate("document.querySelectorAll('#strip li').length")


def wait_strip(page, count: int) -> None:
    """Wait until the strip shows ``count`` images, each loaded."""
    page.wait_for_function(
        "[...document.querySelectorAll('#strip img')].filter("
        f"i => i.complete && i.naturalWidth > 0).length >= {count}",
        timeout=30000,
    )


@pytest.mark.parametrize(
    "viewport",
    [{"width": 1280, "height": 900}, {"width": 390, "height": 844}],
    ids=["desktop", "phone"],
)
def test_a_follow_up_refines_and_an_upload_reaches_the_provider(chat_gateway, tmp_path, viewport):
    gateway, fake = chat_gateway
    upload = png_bytes(size=48, seed=21)
    picked = tmp_path / "photo.png"
    picked.write_bytes(upload)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=viewport)
            asked = record_chat_requests(page)
            page.goto(gateway + "/")
            assert "client-key" in page.locator("#key-hint").inner_text()
            page.fill("#key", CLIENT_KEYS[0])
            page.select_option("#model", "chat-image-model")
            page.fill("#prompt", "a red fox in snow, 16:9")
            page.click("#go")
            wait_strip(page, 1)

            page.fill("#prompt", "now make it at night")
            page.click("#go")
            wait_strip(page, 2)
            # The page sent the conversation so far, not the follow-up alone.
            assert [m["role"] for m in asked[1]["messages"]] == ["user", "assistant", "user"]
            follow_up = fake.received()[1]
            said = text_of(follow_up)
            assert "fox" in said and "night" in said, said
            # The first image went back to the provider as the image to refine.
            assert len(image_urls(follow_up)) == 1

            page.set_input_files("#attach", str(picked))
            page.wait_for_function("!document.getElementById('attachment').hidden")
            page.fill("#prompt", "make this a watercolour")
            page.click("#go")
            wait_strip(page, 3)
            edit = fake.received()[2]
            sent = [url for url in image_urls(edit) if url.startswith("data:")]
            uploaded = [base64.b64decode(url.split(",", 1)[1]) for url in sent]
            assert upload in uploaded
            assert "watercolour" in text_of(edit)

            assert strip_count(page) == 3
            markdown = page.get_attribute("#strip li:nth-child(3) button.copy", "data-markdown")
            assert markdown.startswith("![") and "/image-proxy" in markdown
            download = page.get_attribute("#strip li:nth-child(3) a.download", "href")
            assert download and "/image-proxy" in download
            assert page.locator("#chat li.user").count() == 3

            # A new conversation starts afresh; the session's images stay in the strip.
            page.click("#reset")
            assert page.locator("#chat li").count() == 0
            page.fill("#prompt", "a blue car")
            page.click("#go")
            wait_strip(page, 4)
            assert [m["role"] for m in asked[3]["messages"]] == ["user"]
            assert "fox" not in text_of(fake.received()[3])
            page.screenshot(path=str(tmp_path / f"chat-{viewport['width']}.png"))
            scroll_width = page.evaluate("document.documentElement.scrollWidth")
            assert scroll_width <= viewport["width"], "the page must not scroll sideways"
        finally:
            browser.close()


def test_copy_markdown_fills_the_clipboard_and_a_download_is_named_by_its_type(chat_gateway):
    gateway, fake = chat_gateway
    jpeg = jpeg_bytes(seed=9)

    def answer_with_a_jpeg() -> None:
        fake.origin.serve("photo.jpg", jpeg, content_type="image/jpeg")
        link = fake.origin.url("photo.jpg")
        fake.chat.script(FakeChatImages.content_answer(f"![a lake]({link})"))

    fake.loop.call_soon_threadsafe(answer_with_a_jpeg)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(accept_downloads=True)
            # The real clipboard (Playwright grants it with CDP's Browser.grantPermissions).
            context.grant_permissions(["clipboard-read", "clipboard-write"], origin=gateway)
            page = context.new_page()
            page.goto(gateway + "/")
            page.fill("#key", CLIENT_KEYS[0])
            page.select_option("#model", "chat-image-model")
            page.fill("#prompt", "a lake at dawn")
            page.click("#go")
            page.wait_for_function(
                "document.querySelectorAll('#strip li').length === 1", timeout=30000
            )
            link = page.get_attribute("#strip li a.download", "href")
            assert "/image-proxy" in link
            page.click("#strip li button.copy")
            page.wait_for_function(
                "document.querySelector('#strip li button.copy').textContent === 'Copied'"
            )
            assert page.evaluate("navigator.clipboard.readText()") == f"![a lake at dawn]({link})"

            page.wait_for_function(
                "document.querySelector('#strip li a.download').download.endsWith('.jpg')"
            )
            with page.expect_download() as downloading:
                page.click("#strip li a.download")
            download = downloading.value
            assert download.suggested_filename == "imagegate-1.jpg"
            assert Path(download.path()).read_bytes() == jpeg
        finally:
            browser.close()


def test_errors_read_as_sentences(chat_gateway, tmp_path):
    gateway, fake = chat_gateway
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a picture")
    refusal = FakeChatImages.error_answer(400, "Your request was rejected by the safety system.")
    fake.loop.call_soon_threadsafe(fake.chat.script, refusal)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(gateway + "/")
            page.set_input_files("#attach", str(text_file))
            status = page.locator("#status")
            assert "not an image" in status.inner_text()
            assert status.get_attribute("class") == "error"
            assert page.locator("#attachment").is_hidden()

            sentence, detail = send_expecting_error(page, "a red fox in snow")
            assert "provider refused" in sentence
            assert "safety system" in detail
            assert strip_count(page) == 0
        finally:
            browser.close()


# Hand the page a file as a paste into the prompt or a drop on the form would.
GIVE_FILE = """([how, name, type, bytes, size]) => {
    const transfer = new DataTransfer();
    const content = bytes ? new Uint8Array(bytes) : new Uint8Array(size);
    transfer.items.add(new File([content], name, {type}));
    const init = {bubbles: true, cancelable: true};
    const target = document.getElementById(how === 'paste' ? 'prompt' : 'play');
    target.dispatchEvent(how === 'paste'
        ? new ClipboardEvent('paste', {...init, clipboardData: transfer})
        : new DragEvent('drop', {...init, dataTransfer: transfer}));
}"""


def give_file(page, how: str, name: str, data: bytes | None = None, size: int = 0) -> None:
    """Paste (``how="paste"``) or drop a file claiming to be a PNG: ``data``, or ``size`` zeros."""
    page.evaluate(GIVE_FILE, [how, name, "image/png", list(data) if data else None, size])


def test_a_dropped_or_pasted_image_is_attached_and_a_bad_one_refused(gateway):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 390, "height": 844})
            page.goto(gateway + "/")
            status = page.locator("#status")
            give_file(page, "drop", "big.png", size=5 * 1024 * 1024)
            assert "larger than 4 MiB" in status.inner_text()
            give_file(page, "drop", "fake.png", b"just some text, not a PNG")
            page.wait_for_function(
                "document.getElementById('status').textContent.includes('not an image')"
            )
            assert page.locator("#attachment").is_hidden()
            give_file(page, "drop", "real.png", png_bytes(size=32, seed=5))
            page.wait_for_function("!document.getElementById('attachment').hidden")
            preview = page.get_attribute("#attachment-preview", "src")
            assert preview.startswith("data:image/png;base64,")
            assert base64.b64decode(preview.split(",", 1)[1]) == png_bytes(size=32, seed=5)
            # The demo model draws from text only: the gateway refuses the image, said plainly.
            page.select_option("#model", "imagegate-demo")
            sentence, detail = send_expecting_error(page, "make it blue")
            assert "cannot edit images" in sentence
            assert "imagegate-demo" in detail
            page.click("#detach")
            assert page.locator("#attachment").is_hidden()
            give_file(page, "paste", "pasted.png", png_bytes(size=24, seed=6))
            page.wait_for_function("!document.getElementById('attachment').hidden")
            preview = page.get_attribute("#attachment-preview", "src")
            assert base64.b64decode(preview.split(",", 1)[1]) == png_bytes(size=24, seed=6)
        finally:
            browser.close()
