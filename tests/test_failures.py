"""Upstream failures a user must not pay for: shared downloads, dead links, hanging links, noise."""

from __future__ import annotations

import asyncio
import json

import pytest
from conftest import (
    CLIENT_KEYS,
    LINK,
    LOG_WATCH,
    assert_error,
    chat_body,
    json_of,
    post_chat,
    register_secret,
    with_env,
)
from fakes import (
    Answer,
    FakeChatImages,
    FakeLLM,
    FakeSD,
    FakeSet,
    png_bytes,
    png_of_length,
)
from pngcheck import png_info

SD_KEY = "sd-failures-key-4141"
CHAT_KEY = "chat-failures-key-5252"
LLM_KEY = "llm-failures-key-6363"
register_secret(SD_KEY, CHAT_KEY, LLM_KEY)


@pytest.fixture
def fakes(io_loop):
    """The fakes of one test."""
    started = FakeSet(sd=FakeSD, chat=FakeChatImages, llm=FakeLLM)
    yield started
    started.close()


@pytest.fixture
def gateway_env(fakes, request):
    """A gateway whose SD and chat-kind groups point at the fakes."""
    env = {
        "SD_API_KEY": SD_KEY,
        "SD_API_BASE": fakes.sd.url("api/v1/generate_image"),
        "IMAGE_GEN_MODEL_1": "chat-test",
        "IMAGE_GEN_API_BASE_1": fakes.chat.url("v1/chat/completions"),
        "IMAGE_GEN_API_KEY_1": CHAT_KEY,
        "OPENAI_API_BASE": fakes.llm.base_url(),
        "OPENAI_API_KEY": LLM_KEY,
        "IMAGE_PROXY_ALLOW_PRIVATE_NETWORKS": "true",
        "IMAGE_GEN_TIMEOUT": "5",
    }
    env.update(getattr(request, "param", {}))
    return env


async def raw_chat(port: int, body: dict) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Send a chat completion on a connection of its own, without reading the answer yet."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = json.dumps(body).encode()
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
        + f"Authorization: Bearer {CLIENT_KEYS[0]}\r\n".encode()
        + b"Content-Type: application/json\r\nConnection: close\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    await writer.drain()
    return reader, writer


# --- a client leaving never breaks a download others wait for ---


@pytest.mark.gen_test(timeout=30)
async def test_clients_leaving_do_not_break_the_shared_download(
    http_client, base_url, http_port, fakes
):
    image = png_bytes(size=256, seed=7)
    held = fakes.images.hold("slow.png", image, first=len(image) // 2, declare_length=True)
    fakes.sd.default = FakeSD.image_answer(fakes.images.url("slow.png"))
    clients = [await raw_chat(http_port, chat_body(model="Z-Image")) for _ in range(20)]
    await fakes.sd.wait_requests(20, within=10)
    await asyncio.wait_for(held.asked.wait(), 10)
    before = len(LOG_WATCH.lines)
    for _reader, writer in clients[::2]:  # half of them hang up mid-way
        writer.close()
    # The gateway notices them leave while the image is still held.
    await LOG_WATCH.wait_for("abandoning its generation", since=before, count=10)
    held.release.set()
    for reader, writer in clients[1::2]:
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), answer[:300]
        link = LINK.findall(json.loads(body)["choices"][0]["message"]["content"])[0]
        register_secret(link.partition("?")[2])
        path = link.split("/", 3)[3]
        served = await http_client.fetch(f"{base_url}/{path}")
        assert served.body == image
    assert fakes.images.hits["slow.png"] == 1  # one download served every request
    assert not [line for line in LOG_WATCH.lines if "InvalidStateError" in line]


# --- definitive failures are errors now; transient ones a link that fetches later ---


@pytest.mark.gen_test(timeout=30)
@with_env({"IMAGE_GEN_TIMEOUT": "60", "IMAGE_FETCH_TIMEOUT": "1"})
async def test_a_hanging_image_answers_with_its_link_when_its_download_gives_up(
    http_client, base_url, fakes
):
    image = png_bytes(size=64, seed=11)
    held = fakes.images.hold("hang.png", image)
    fakes.sd.script(FakeSD.image_answer(fakes.images.url("hang.png")))
    before = len(LOG_WATCH.lines)
    try:
        response = await post_chat(http_client, base_url, chat_body(model="Z-Image"))
        # The answer came once the download's own 1 s deadline passed, long before the
        # generation's 60 s one, while the image host still holds the image.
        assert not held.release.is_set()
        assert response.code == 200, response.body
        assert any("its link will fetch on demand" in line for line in LOG_WATCH.lines[before:])
    finally:
        held.release.set()
    link = LINK.findall(json_of(response)["choices"][0]["message"]["content"])[0]
    register_secret(link.partition("?")[2])
    served = await http_client.fetch(f"{base_url}/{link.split('/', 3)[3]}")
    assert served.body == image


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("serve", "reason"),
    [
        (lambda origin: origin.status("x.png", 404), "answered HTTP 404"),
        (
            lambda origin: origin.serve("x.png", b"<html>login</html>", "text/html"),
            "cannot use",
        ),
        (lambda origin: origin.serve("x.png", b"<svg/>", "image/svg+xml"), "cannot use"),
        (lambda origin: origin.serve("x.png", png_of_length(300_000)), "larger than"),
    ],
    ids=["404", "html", "svg", "too-large"],
)
@with_env({"IMAGE_MAX_BYTES": "100000"})
async def test_a_dead_provider_image_fails_the_generation(
    http_client, base_url, fakes, serve, reason
):
    serve(fakes.images)
    fakes.sd.script(FakeSD.image_answer(fakes.images.url("x.png")))
    response = await post_chat(http_client, base_url, chat_body(model="Z-Image"))
    error = assert_error(response, 502, "upstream_error")
    assert "could not be downloaded" in error["message"] and reason in error["message"]
    # The key is not blamed: the next request goes to the same single key and succeeds.
    again = await post_chat(http_client, base_url, chat_body(model="Z-Image"))
    assert again.code == 200, again.body
    assert fakes.sd.keys_used() == [SD_KEY, SD_KEY]


@pytest.mark.gen_test
@with_env({"IMAGE_PROXY_ALLOW_PRIVATE_NETWORKS": "false"})
async def test_a_refused_provider_image_address_fails_the_generation(http_client, base_url, fakes):
    # The provider itself is configured, so trusted; the image URL it returns is on loopback.
    fakes.images.serve("x.png", png_bytes())
    fakes.sd.script(FakeSD.image_answer(fakes.images.url("x.png")))
    response = await post_chat(http_client, base_url, chat_body(model="Z-Image"))
    error = assert_error(response, 502, "upstream_error")
    assert "may not fetch" in error["message"]
    assert fakes.images.connections == 0


@pytest.mark.gen_test
async def test_a_transient_image_failure_still_answers_with_a_link_that_works_later(
    http_client, base_url, fakes
):
    fakes.images.status("flaky.png", 503)
    fakes.sd.script(FakeSD.image_answer(fakes.images.url("flaky.png")))
    response = await post_chat(http_client, base_url, chat_body(model="Z-Image"))
    assert response.code == 200, response.body
    link = LINK.findall(json_of(response)["choices"][0]["message"]["content"])[0]
    register_secret(link.partition("?")[2])
    fakes.images.serve("flaky.png", png_bytes(seed=3))  # the host recovers
    served = await http_client.fetch(f"{base_url}/{link.split('/', 3)[3]}")
    png_info(served.body)


# --- bare links: at most n (plus two spare) fetched, side by side, within the deadline ---


@pytest.mark.gen_test
async def test_an_answer_with_thousands_of_links_makes_a_few_fetches(http_client, base_url, fakes):
    for number in range(3000):
        fakes.images.status(f"l/{number}", 404)
    links = " ".join(fakes.images.url(f"l/{number}") for number in range(3000))
    fakes.chat.script(FakeChatImages.content_answer(f"Here you go: {links}"))
    response = await post_chat(http_client, base_url, chat_body(model="chat-test"))
    assert "held no image" in assert_error(response, 502, "upstream_error")["message"]
    assert sum(fakes.images.hits.values()) == 3  # n = 1, plus two spare links


@pytest.mark.gen_test
async def test_a_bare_image_link_after_a_page_link_is_found(http_client, base_url, fakes):
    fakes.images.serve("page", b"<html>terms</html>", "text/html")
    fakes.images.serve("pic", png_bytes(seed=9))
    answer = f"Made under {fakes.images.url('page')}: {fakes.images.url('pic')}"
    fakes.chat.script(FakeChatImages.content_answer(answer))
    response = await post_chat(http_client, base_url, chat_body(model="chat-test"))
    assert response.code == 200, response.body
    assert len(LINK.findall(json_of(response)["choices"][0]["message"]["content"])) == 1


@pytest.mark.gen_test(timeout=30)
@with_env({"IMAGE_GEN_TIMEOUT": "1", "IMAGE_FETCH_TIMEOUT": "30"})
async def test_hanging_links_are_fetched_together_and_given_up_at_the_deadline(
    http_client, base_url, fakes
):
    release = asyncio.Event()
    for number in range(6):
        fakes.images.hold(f"hang/{number}", png_bytes(), release=release)
    links = " ".join(fakes.images.url(f"hang/{number}") for number in range(6))
    fakes.chat.script(FakeChatImages.content_answer(links))
    try:
        response = await post_chat(http_client, base_url, chat_body(model="chat-test", n=2))
        # The answer came while every link still hangs: the gateway gave up at its deadline
        # rather than waiting 30 s for each link in turn.
        assert not release.is_set()
        assert_error(response, 502, "upstream_error")
        assert sorted(fakes.images.hits) == [f"hang/{number}" for number in range(4)]
    finally:
        release.set()


# --- an optimiser timeout is a warning, not an error with a traceback ---


@pytest.mark.gen_test(timeout=30)
@with_env({"OPENAI_MODEL": "gpt-test", "LLM_TIMEOUT": "0.5"})
async def test_an_optimiser_timeout_logs_no_error(http_client, base_url, fakes):
    fakes.llm.default = Answer(hang=True)
    before = len(LOG_WATCH.lines)
    response = await post_chat(http_client, base_url, chat_body(model="Z-Image"))
    assert response.code == 200, response.body
    # The gateway hangs up on the held request: its late outcome, read by then, must have been
    # dropped quietly.
    await asyncio.wait_for(fakes.llm.client_left.wait(), 10)
    await fakes.llm.aclose()
    lines = LOG_WATCH.lines[before:]
    assert any("prompt optimisation failed (timeout)" in line for line in lines), lines
    # (Earlier tests' tasks may be collected meanwhile: asyncio's lines about them don't count.)
    assert not [line for line in lines if line.startswith(("ERROR tornado", "ERROR tornado_"))]


@pytest.mark.gen_test(timeout=30)
@with_env({"OPENAI_MODEL": "gpt-test"})
async def test_a_client_leaving_during_optimisation_logs_no_error(base_url, http_port, fakes):
    fakes.llm.default = Answer(hang=True)
    before = len(LOG_WATCH.lines)
    _reader, writer = await raw_chat(http_port, chat_body(model="Z-Image"))
    await fakes.llm.wait_requests(1)
    writer.close()
    await LOG_WATCH.wait_for("abandoning", since=before)
    # The gateway hangs up on the held request: its late outcome, read by then, must have been
    # dropped quietly.
    await asyncio.wait_for(fakes.llm.client_left.wait(), 10)
    await fakes.llm.aclose()
    lines = LOG_WATCH.lines[before:]
    # (Earlier tests' tasks may be collected meanwhile: asyncio's lines about them don't count.)
    assert not [line for line in lines if line.startswith(("ERROR tornado", "ERROR tornado_"))]
    assert fakes.sd.requests == []  # the generation stopped with its client
