"""Image links on a configured provider's own origin are fetched as the provider is reached.

Loopback is the private network here: the address filter refuses it, and every test runs with
IMAGE_PROXY_ALLOW_PRIVATE_NETWORKS=false.
"""

from __future__ import annotations

from collections import deque

import pytest
from conftest import LINK, assert_error, chat_body, json_of, post_chat, register_secret, with_env
from fakes import (
    Answer,
    FakeOpenAIImages,
    FakeOrigin,
    FakeSD,
    FakeSet,
    png_bytes,
)
from fakes.providers import Recorded
from pngcheck import png_info

SD_KEY = "sd-origin-trust-key-3131"
OI_KEY = "sk-origin-trust-key-3232"
register_secret(SD_KEY, OI_KEY)


class FakeLocalSD(FakeSD):
    """An SD service installed locally: its own origin also serves its images.

    Its GET requests take the answers of ``pages``, in order (404 when none is left).
    """

    def __init__(self, image_host: FakeOrigin) -> None:
        super().__init__(image_host)
        self.pages: deque[Answer] = deque()

    def _choose(self, recorded: Recorded, valid: bool) -> Answer:
        if recorded.method == "GET":
            return self.pages.popleft() if self.pages else Answer(404, body=b"no such image")
        return super()._choose(recorded, valid)


@pytest.fixture
def fakes(io_loop):
    """An SD provider (whose origin also serves its images), an edit-capable provider, and
    an image host on another loopback port."""
    started = FakeSet(sd=FakeLocalSD, oi=FakeOpenAIImages)
    yield started
    started.close()


@pytest.fixture
def gateway_env(fakes, proxy, request):
    """The SD kind on loopback, as a newcomer configures it; private networks not allowed.

    ``{proxy}`` in a value given with ``with_env`` is the recording proxy's URL.
    """
    extra = getattr(request, "param", {})
    return {
        "SD_API_KEY": SD_KEY,
        "SD_API_BASE": fakes.sd.url("api/v1/generate_image"),
        "IMAGE_GEN_MODEL_1": "gpt-image-1",
        "IMAGE_GEN_API_BASE_1": fakes.oi.url("v1"),
        "IMAGE_GEN_API_KEY_1": OI_KEY,
        "IMAGE_GEN_KIND_1": "openai-images",
        "IMAGE_PROXY_ALLOW_PRIVATE_NETWORKS": "false",
        **{name: value.replace("{proxy}", proxy.url()) for name, value in extra.items()},
    }


def png_answer(seed: int) -> Answer:
    """The provider's origin answering an image GET."""
    return Answer(body=png_bytes(seed=seed), content_type="image/png")


def image_gets(fake: FakeLocalSD) -> list[str]:
    """The paths of the GET requests the fake received."""
    return [request.path for request in fake.requests if request.method == "GET"]


async def link_of(http_client, base_url: str) -> str:
    """Generate with the SD model; the gateway's image link (path and query) it answers."""
    response = await post_chat(http_client, base_url, chat_body(model="Z-Image"))
    assert response.code == 200, response.body
    link = LINK.findall(json_of(response)["choices"][0]["message"]["content"])[0]
    register_secret(link.partition("?")[2])
    return link.split("/", 3)[3]


@pytest.mark.gen_test
async def test_an_image_link_on_the_providers_own_origin_is_kept_and_served(
    http_client, base_url, fakes
):
    fakes.sd.script(FakeSD.image_answer(fakes.sd.url("images/x.png")))
    fakes.sd.pages.append(png_answer(seed=41))
    link = await link_of(http_client, base_url)
    assert image_gets(fakes.sd) == ["/images/x.png"]
    served = await http_client.fetch(f"{base_url}/{link}")
    assert served.body == png_bytes(seed=41)
    png_info(served.body)
    assert image_gets(fakes.sd) == ["/images/x.png"]  # kept: served without a second fetch


@pytest.mark.gen_test
@with_env({"IMAGE_FETCH_PROXY": "{proxy}"})
async def test_the_providers_origin_is_reached_directly_not_through_the_image_fetch_proxy(
    http_client, base_url, fakes, proxy
):
    # As the provider call itself is: IMAGE_FETCH_PROXY is for images on other hosts.
    fakes.sd.script(FakeSD.image_answer(fakes.sd.url("images/direct.png")))
    fakes.sd.pages.append(png_answer(seed=46))
    link = await link_of(http_client, base_url)
    served = await http_client.fetch(f"{base_url}/{link}")
    assert served.body == png_bytes(seed=46)
    assert image_gets(fakes.sd) == ["/images/direct.png"]
    assert proxy.connections == 0


@pytest.mark.gen_test
@with_env({"UPSTREAM_PROXY": "{proxy}"})
async def test_the_providers_origin_is_reached_through_upstream_proxy_as_the_provider_is(
    http_client, base_url, fakes, proxy
):
    image_url = fakes.sd.url("images/proxied.png")
    fakes.sd.script(FakeSD.image_answer(image_url))
    fakes.sd.pages.append(png_answer(seed=47))
    link = await link_of(http_client, base_url)
    served = await http_client.fetch(f"{base_url}/{link}")
    assert served.body == png_bytes(seed=47)
    assert f"GET {image_url}" in proxy.requests
    assert f"POST {fakes.sd.url('api/v1/generate_image')}" in proxy.requests


@pytest.mark.gen_test
async def test_a_signed_link_to_the_providers_origin_fetches_on_demand(
    http_client, base_url, fakes
):
    # The first download fails transiently: the answer carries the signed link, which
    # fetches the image from the provider's origin when it is asked for.
    fakes.sd.script(FakeSD.image_answer(fakes.sd.url("images/later.png")))
    fakes.sd.pages.extend([Answer(status=503, body=b"busy"), png_answer(seed=42)])
    link = await link_of(http_client, base_url)
    served = await http_client.fetch(f"{base_url}/{link}")
    assert served.body == png_bytes(seed=42)
    assert image_gets(fakes.sd) == ["/images/later.png", "/images/later.png"]


# An image link on another loopback port is still refused: tests/test_failures.py
# (test_a_refused_provider_image_address_fails_the_generation) checks it with the same set-up.


@pytest.mark.gen_test
async def test_a_redirect_from_the_providers_origin_to_another_port_is_refused(
    http_client, base_url, fakes
):
    fakes.images.serve("x.png", png_bytes(seed=44))
    fakes.sd.script(FakeSD.image_answer(fakes.sd.url("images/moved.png")))
    fakes.sd.pages.append(Answer(status=302, headers={"Location": fakes.images.url("x.png")}))
    response = await post_chat(http_client, base_url, chat_body(model="Z-Image"))
    error = assert_error(response, 502, "upstream_error")
    assert "may not fetch" in error["message"]
    assert image_gets(fakes.sd) == ["/images/moved.png"]
    assert fakes.images.connections == 0


@pytest.mark.gen_test
async def test_a_client_input_link_to_a_providers_origin_is_still_refused(
    http_client, base_url, fakes
):
    fakes.sd.pages.append(png_answer(seed=45))
    parts = [
        {"type": "text", "text": "a hat"},
        {"type": "image_url", "image_url": {"url": fakes.sd.url("images/input.png")}},
    ]
    response = await post_chat(http_client, base_url, chat_body(parts, model="gpt-image-1"))
    assert_error(response, 400, "invalid_image_input")
    assert fakes.sd.requests == []
    assert fakes.oi.requests == []
