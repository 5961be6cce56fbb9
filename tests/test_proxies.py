"""Outbound proxies, with a real recording proxy: which calls go through one, and which never do.

Image fetches never take a proxy from the environment nor ``UPSTREAM_PROXY``; provider and
optimiser calls take ``UPSTREAM_PROXY`` (or, with ``env``, the environment's); an image fetch
through ``IMAGE_FETCH_PROXY`` is resolved and checked by the gateway and pinned to the checked
address. Cases that need addresses other than loopback run in a private network namespace
(tests/netns_proxies.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlencode

import pycurl
import pytest
from conftest import (
    LINK,
    assert_error,
    chat_body,
    gateway_settings,
    json_of,
    post_chat,
    register_secret,
    with_env,
)
from fakes import FakeLLM, FakeOrigin, FakeSD, FakeSet, RecordingProxy, png_bytes
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from tornado_imagegate.app import make_app, make_store
from tornado_imagegate.config import ConfigError, load_settings

SD_KEY = "sd-key-proxies-1357"
LLM_KEY = "llm-key-proxies-2468"
PROXY_PASSWORD = "pr0xy-pa55word-8642"
register_secret(SD_KEY, LLM_KEY, PROXY_PASSWORD)
ENV_PROXY_NAMES = ("http_proxy", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")
NETNS_SCRIPT = Path(__file__).resolve().parent / "netns_proxies.py"


@pytest.fixture
def fakes(io_loop):
    """The fake provider, image host and LLM."""
    started = FakeSet(sd=FakeSD, llm=FakeLLM)
    yield started
    started.close()


@pytest.fixture
def http_client(http_server):
    """The test's own client: Tornado's simple one, which takes no proxy from the environment."""
    client = SimpleAsyncHTTPClient(force_instance=True)
    yield client
    client.close()


@pytest.fixture
def env_proxies(monkeypatch, proxy):
    """Every proxy variable libcurl reads points at the recording proxy; no NO_PROXY."""
    for name in ENV_PROXY_NAMES:
        monkeypatch.setenv(name, proxy.url())
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def gateway_env(fakes, proxy, request):
    """SD and the optimiser on the fakes; ``{proxy}`` in a value is the proxy's host:port."""
    env = {
        "SD_API_KEY": SD_KEY,
        "SD_API_BASE": fakes.sd.url("api/v1/generate_image"),
        "OPENAI_MODEL": "gpt-test",
        "OPENAI_API_BASE": fakes.llm.base_url(),
        "OPENAI_API_KEY": LLM_KEY,
        "IMAGE_PROXY_ALLOW_PRIVATE_NETWORKS": "true",  # the image host is on loopback
        "IMAGE_GEN_TIMEOUT": "5",
        "IMAGE_FETCH_TIMEOUT": "5",
        "LLM_TIMEOUT": "5",
    }
    for name, value in getattr(request, "param", {}).items():
        env[name] = value.format(proxy=proxy.netloc)
    return env


async def generate_and_fetch(http_client, base_url):
    """A chat completion through SD and the optimiser, then its image through its link."""
    response = await post_chat(http_client, base_url, chat_body("a cat", model="Z-Image"))
    assert response.code == 200, response.body
    links = LINK.findall(json_of(response)["choices"][0]["message"]["content"])
    assert links
    image = await http_client.fetch(links[0], raise_error=False)
    assert image.code == 200 and image.body.startswith(b"\x89PNG"), image.body[:200]


def through(proxy: RecordingProxy, port: int) -> list[str]:
    """The requests the proxy was asked to make to 127.0.0.1:``port``, in any proxy form."""
    return [line for line in proxy.requests if f"127.0.0.1:{port}" in line]


@pytest.mark.gen_test
async def test_environment_proxies_carry_nothing_by_default(
    http_client, base_url, fakes, proxy, env_proxies
):
    # Provider, optimiser, and image fetch (private networks allowed here: the host is loopback).
    await generate_and_fetch(http_client, base_url)
    assert fakes.sd.requests and fakes.llm.requests
    assert proxy.connections == 0, proxy.requests


@pytest.mark.gen_test
@with_env({"UPSTREAM_PROXY": "env"})
async def test_upstream_proxy_env_takes_the_environments_proxy_for_provider_calls_only(
    http_client, base_url, fakes, proxy, env_proxies
):
    await generate_and_fetch(http_client, base_url)
    assert through(proxy, fakes.sd.port) == [
        f"POST http://127.0.0.1:{fakes.sd.port}/api/v1/generate_image"
    ]
    assert through(proxy, fakes.llm.port) == [
        f"POST http://127.0.0.1:{fakes.llm.port}/v1/chat/completions"
    ]
    # Image fetches ignore the environment even when provider calls take it, and even with
    # IMAGE_PROXY_ALLOW_PRIVATE_NETWORKS=true.
    assert through(proxy, fakes.images.port) == []
    assert fakes.images.connections >= 1


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("gateway_env", "expected"),
    [
        (
            {"UPSTREAM_PROXY": f"http://gw-user:{PROXY_PASSWORD}@{{proxy}}"},
            "POST http://127.0.0.1:{port}/",
        ),
        (
            {"UPSTREAM_PROXY": f"socks5h://gw-user:{PROXY_PASSWORD}@{{proxy}}"},
            "SOCKS5 CONNECT 127.0.0.1:{port}",
        ),
        ({"UPSTREAM_PROXY": "socks5://{proxy}"}, "SOCKS5 CONNECT 127.0.0.1:{port}"),
    ],
    indirect=["gateway_env"],
    ids=["http", "socks5h", "socks5"],
)
async def test_upstream_proxy_carries_provider_and_optimiser_calls_and_no_image_fetch(
    http_client, base_url, fakes, proxy, gateway_env, expected
):
    await generate_and_fetch(http_client, base_url)
    for fake in (fakes.sd, fakes.llm):
        sent = through(proxy, fake.port)
        assert len(sent) == len(fake.requests) == 1, proxy.requests
        assert sent[0].startswith(expected.format(port=fake.port)), sent
    assert through(proxy, fakes.images.port) == []
    assert fakes.images.connections >= 1
    if "gw-user" in gateway_env["UPSTREAM_PROXY"]:
        assert proxy.credentials == [f"gw-user:{PROXY_PASSWORD}"] * 2


@pytest.mark.gen_test
@with_env({"UPSTREAM_PROXY": f"http://gw-user:{PROXY_PASSWORD}@{{proxy}}"})
async def test_an_unreachable_upstream_proxy_is_a_502_that_never_shows_its_password(
    http_client, base_url, fakes, proxy, gateway_env, app
):
    # A proxy on a closed port (the recording proxy, closed before the request).
    proxy.close()
    assert app.services.settings.upstream_proxy.endswith(f"@{proxy.netloc}")
    response = await post_chat(http_client, base_url, chat_body("a cat", model="Z-Image"))
    assert_error(response, 502, "upstream_error")
    assert PROXY_PASSWORD.encode() not in response.body
    assert fakes.sd.requests == []


# --- IMAGE_FETCH_PROXY on loopback: the filter is told that only 127.0.0.1 is public ---


@pytest.fixture
def two_hosts(io_loop):
    """An "allowed" image host on 127.0.0.1 and a "private" one on 127.0.0.2."""
    allowed, private = FakeOrigin("127.0.0.1"), FakeOrigin("127.0.0.2")
    yield allowed, private
    allowed.close()
    private.close()


@pytest.fixture
def app(gateway_env, request):
    """The gateway; for ``image_fetch_proxy`` tests, its filter takes only 127.0.0.1 as public."""
    settings = gateway_settings(gateway_env)
    store = make_store(settings)
    if settings.image_fetch_proxy:
        store.fetcher.address_allowed = lambda address: address == "127.0.0.1"
    return make_app(settings, store=store)


async def fetch_signed(http_client, base_url, app, url):
    """GET a signed link to ``url`` through the gateway."""
    query = urlencode(app.services.store.signer.query_for_url(url))
    return await http_client.fetch(f"{base_url}/image-proxy?{query}", raise_error=False)


@pytest.mark.gen_test
@with_env({"IMAGE_FETCH_PROXY": "http://{proxy}", "IMAGE_PROXY_ALLOW_PRIVATE_NETWORKS": "false"})
async def test_image_fetch_proxy_tunnels_to_the_checked_address_on_every_hop(
    http_client, base_url, app, proxy, two_hosts, env_proxies
):
    allowed, private = two_hosts
    image = png_bytes(seed=7)
    allowed.serve("a.png", image)
    allowed.redirect("hop.png", allowed.url("a.png"))
    private.serve("secret.png", png_bytes(seed=8))
    allowed.redirect("to-private.png", private.url("secret.png"))

    ok = await fetch_signed(http_client, base_url, app, allowed.url("hop.png"))
    assert ok.code == 200 and ok.body == image
    # Tunnelled to the checked address itself, never to a name (the second hop reused the
    # tunnel: it was resolved to the same address).
    assert set(proxy.requests) == {f"CONNECT 127.0.0.1:{allowed.port}"}
    assert allowed.hits["hop.png"] == allowed.hits["a.png"] == 1

    proxy.requests.clear()
    refused = await fetch_signed(http_client, base_url, app, private.url("secret.png"))
    assert_error(refused, 502, "upstream_error")
    assert proxy.requests == []
    redirected = await fetch_signed(http_client, base_url, app, allowed.url("to-private.png"))
    assert_error(redirected, 502, "upstream_error")
    assert allowed.hits["to-private.png"] == 1  # the first hop went through (a pooled tunnel)
    assert set(proxy.requests) <= {f"CONNECT 127.0.0.1:{allowed.port}"}
    assert private.connections == 0


def test_image_fetch_proxy_is_a_config_problem_without_a_libcurl_that_pins(monkeypatch):
    monkeypatch.setattr(pycurl, "version_info", lambda: (11, "7.48.0", 0x073000))
    env = {"IMAGE_FETCH_PROXY": f"http://user:{PROXY_PASSWORD}@127.0.0.1:3128"}
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    (problem,) = caught.value.problems
    assert problem.startswith("IMAGE_FETCH_PROXY: needs libcurl 7.49")
    assert PROXY_PASSWORD not in problem


# --- addresses other than loopback: in a private network namespace ---


def _namespaces_work() -> bool:
    try:
        done = subprocess.run(["unshare", "-rnm", "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.mark.skipif(not _namespaces_work(), reason="`unshare -rnm` (user+net+mount ns) fails")
@pytest.mark.parametrize("scenario", ["environment", "image-fetch-proxy", "translated"])
def test_in_a_private_network_namespace(scenario):
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    done = subprocess.run(
        ["unshare", "-rnm", sys.executable, str(NETNS_SCRIPT), scenario],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=NETNS_SCRIPT.parent,
    )
    assert done.returncode == 0, f"{scenario} failed:\n{done.stdout}\n{done.stderr}"
    assert f"PASSED {scenario}" in done.stdout, done.stdout
    print(done.stdout)
