"""/image-proxy over real loopback HTTP with fake image origins: links that outlive the origin."""

from __future__ import annotations

import asyncio
import base64
import os
import select
import socket
from urllib.parse import urlencode, urlsplit

import pytest
from conftest import PROXY_SECRET, assert_error, gateway_settings, register_secret, with_env
from fakes import FakeOrigin, noise_png, png_bytes, png_of_length
from tornado.httpclient import HTTPClientError
from tornado.httputil import HTTPHeaders
from tornado.iostream import IOStream
from tornado.netutil import bind_sockets

from tornado_imagegate.app import make_app, make_store
from tornado_imagegate.errors import GatewayError
from tornado_imagegate.images.links import LinkSigner, derive_secret
from tornado_imagegate.server import make_http_server, with_kept_state

LAB = {"IMAGE_PROXY_ALLOW_PRIVATE_NETWORKS": "true", "IMAGE_FETCH_TIMEOUT": "5"}


@pytest.fixture
def origin(io_loop):
    """A fake image host on 127.0.0.1."""
    server = FakeOrigin()
    yield server
    server.close()


def store_of(app):
    """The image store behind an application."""
    return app.services.store


def local(link: str, base_url: str) -> str:
    """A link as the test reaches it (same path and query, this server)."""
    parts = urlsplit(link)
    return f"{base_url}{parts.path}?{parts.query}"


async def get(http_client, url, **headers):
    """GET without raising on an error status."""
    return await http_client.fetch(url, headers=headers, raise_error=False)


async def keep_refused(app, url, base_url):
    """A provider image that fails definitively: keeping it is a 502 at once, and the signed link
    (as issued before such failures were caught) stays an error when served on demand."""
    with pytest.raises(GatewayError) as failed:
        await store_of(app).keep_url(url, "https://gateway.example")
    assert failed.value.status == 502
    query = urlencode(store_of(app).signer.query_for_url(url))
    register_secret(query)
    return f"{base_url}/image-proxy?{query}"


async def keep(app, url, base_url):
    """Keep an upstream image as a provider's answer would, and return the link as served here."""
    link = (await store_of(app).keep_url(url, "https://gateway.example")).link
    register_secret(urlsplit(link).query)
    return local(link, base_url)


@pytest.mark.gen_test
@with_env(LAB)
async def test_kept_link_works_after_the_origin_link_expired(http_client, base_url, app, origin):
    image = png_bytes(96)
    origin.serve("tmp/a.png", image)
    link = await keep(app, origin.url("tmp/a.png"), base_url)
    assert origin.hits["tmp/a.png"] == 1
    origin.status("tmp/a.png", 404)  # the provider's temporary link expired
    for _ in range(3):
        response = await get(http_client, link)
        assert response.code == 200
        assert response.body == image
        assert response.headers["Content-Type"] == "image/png"
    assert origin.hits["tmp/a.png"] == 1


@pytest.fixture
def serve(io_loop):
    """Start another gateway process-equivalent (an app on its own server); yield its base URL."""
    servers = []

    def start(application):
        server = make_http_server(application)
        sockets = bind_sockets(0, "127.0.0.1", family=socket.AF_INET)
        server.add_sockets(sockets)
        servers.append(server)
        return f"http://127.0.0.1:{sockets[0].getsockname()[1]}"

    yield start
    for server in servers:
        server.stop()


@pytest.mark.gen_test
async def test_links_survive_a_restart_with_a_disk_tier(http_client, origin, tmp_path, serve):
    env = {**LAB, "IMAGE_CACHE_DIR": str(tmp_path / "cache")}
    before = make_app(gateway_settings(env))
    image, drawn = png_bytes(80), png_bytes(40, seed=9)
    origin.serve("b.png", image)
    fetched_link = (await store_of(before).keep_url(origin.url("b.png"), "https://gw.example")).link
    bytes_link = store_of(before).keep_bytes(drawn, "https://gw.example").link
    register_secret(urlsplit(fetched_link).query, urlsplit(bytes_link).query)
    origin.status("b.png", 404)  # and the provider's link has expired since

    after = serve(make_app(gateway_settings(env)))  # a restart: empty memory, same disk
    for link, expected in ((fetched_link, image), (bytes_link, drawn)):
        response = await get(http_client, local(link, after))
        assert response.code == 200
        assert response.body == expected
    assert origin.hits["b.png"] == 1
    assert not [name for name in os.listdir(tmp_path / "cache") if name.startswith(".tmp-")]


@pytest.mark.gen_test
async def test_metrics_report_the_disk_tier(http_client, tmp_path, serve):
    app = make_app(gateway_settings({"IMAGE_CACHE_DIR": str(tmp_path / "cache")}))
    store_of(app).keep_bytes(png_bytes(60), "https://gw.example")
    on_disk = sum(path.stat().st_size for path in (tmp_path / "cache").iterdir())
    metrics = await get(http_client, f"{serve(app)}/metrics")
    assert metrics.code == 200
    text = metrics.body.decode()
    assert f"imagegate_image_disk_cache_bytes {float(on_disk)}" in text
    assert "imagegate_image_disk_cache_evictions_total 0.0" in text


@pytest.mark.gen_test
@with_env(LAB)
@pytest.mark.parametrize(
    "tamper",
    [
        "unsigned",
        "bad_signature",
        "other_url",
        "later_expiry",
        "seed_style",
        "missing_signature",
        "extra_field",
        "repeated_field",
        "garbage",
    ],
)
async def test_forged_altered_and_unsigned_links_are_403_and_reach_no_origin(
    http_client, base_url, app, origin, tamper
):
    origin.serve("c.png", png_bytes())
    origin.serve("other.png", png_bytes(seed=5))
    signer = store_of(app).signer
    good = signer.query_for_url(origin.url("c.png"))
    encoded_other = base64.urlsafe_b64encode(origin.url("other.png").encode()).decode().rstrip("=")
    queries = {
        "unsigned": {"u": good["u"], "e": good["e"]},
        "bad_signature": {**good, "s": good["s"][:-2] + ("AA" if good["s"][-2:] != "AA" else "BB")},
        "other_url": {**good, "u": encoded_other},
        "later_expiry": {**good, "e": str(int(good["e"]) + 3600)},
        "seed_style": {"url": origin.url("c.png")},
        "missing_signature": {"u": good["u"], "e": good["e"], "s": ""},
        "extra_field": {**good, "url": origin.url("other.png")},
        "repeated_field": None,
        "garbage": {"u": "%%%", "e": "x", "s": "***"},
    }
    if tamper == "repeated_field":
        query = urlencode(good) + "&u=" + encoded_other
    else:
        query = urlencode(queries[tamper])
    response = await get(http_client, f"{base_url}/image-proxy?{query}")
    assert_error(response, 403, "forbidden_image_link")
    assert origin.connections == 0


@pytest.mark.gen_test
@with_env(LAB)
async def test_expired_link_whose_image_is_gone_is_403_without_a_fetch(
    http_client, base_url, app, origin
):
    origin.serve("old.png", png_bytes())
    signer = store_of(app).signer
    query = signer.query_for_url(origin.url("old.png"), now=0)
    response = await get(http_client, f"{base_url}/image-proxy?{urlencode(query)}")
    assert_error(response, 403, "expired_image_link")
    assert origin.connections == 0


@pytest.mark.gen_test
@with_env(LAB)
async def test_expired_link_of_a_kept_image_still_serves(http_client, base_url, app, origin):
    image = png_bytes(50)
    origin.serve("kept.png", image)
    await keep(app, origin.url("kept.png"), base_url)
    query = store_of(app).signer.query_for_url(origin.url("kept.png"), now=0)
    response = await get(http_client, f"{base_url}/image-proxy?{urlencode(query)}")
    assert response.code == 200
    assert response.body == image


def test_derived_secret_is_stable_across_restarts_and_changes_with_the_keys():
    settings = gateway_settings({"IMAGE_PROXY_SECRET": "", "SD_API_KEY": "sd-key-for-derivation"})
    register_secret("sd-key-for-derivation")
    first = LinkSigner(derive_secret("", settings.secret_material()))
    second = make_store(settings).signer
    assert first.query_for_url("https://x/y.png", now=1) == second.query_for_url(
        "https://x/y.png", now=1
    )
    other = gateway_settings({"IMAGE_PROXY_SECRET": "", "SD_API_KEY": "another-sd-key"})
    register_secret("another-sd-key")
    assert make_store(other).signer.secret != first.secret
    configured = make_store(gateway_settings({})).signer
    assert configured.secret == derive_secret(PROXY_SECRET, [])


@pytest.mark.gen_test
async def test_links_signed_before_the_data_directory_kept_a_secret_still_work(
    http_client, origin, tmp_path, serve
):
    keys = {**LAB, "IMAGE_PROXY_SECRET": "", "SD_API_KEY": "sd-key-before-upgrade"}
    register_secret("sd-key-before-upgrade")
    image = png_bytes(50, seed=3)
    origin.serve("c.png", image)
    before = make_app(gateway_settings(keys))  # no data directory: a secret derived from the keys
    old_link = (await store_of(before).keep_url(origin.url("c.png"), "https://gw.example")).link
    kept = with_kept_state(gateway_settings({**keys, "IMAGEGATE_DATA_DIR": str(tmp_path)}))
    register_secret(kept.image_proxy_secret, urlsplit(old_link).query)
    after = make_app(kept)
    assert store_of(after).signer.secret != store_of(before).signer.secret
    base = serve(after)
    response = await get(http_client, local(old_link, base))
    assert response.code == 200
    assert response.body == image
    forged = LinkSigner(derive_secret("another secret", [])).query_for_url(origin.url("c.png"))
    response = await get(http_client, f"{base}/image-proxy?{urlencode(forged)}")
    assert_error(response, 403, "forbidden_image_link")


@pytest.mark.gen_test
async def test_private_origin_is_refused_with_no_connection_made(http_client, base_url, app):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    try:
        for url in (f"http://127.0.0.1:{port}/x.png", f"http://localhost:{port}/x.png"):
            query = store_of(app).signer.query_for_url(url)
            response = await get(http_client, f"{base_url}/image-proxy?{urlencode(query)}")
            error = assert_error(response, 502, "upstream_error")
            assert "may not fetch" in error["message"]
            assert response.headers["x-should-retry"] == "false"
        readable, _, _ = select.select([listener], [], [], 0.2)
        assert readable == [], "the gateway connected to a private address"
    finally:
        listener.close()


@pytest.mark.gen_test
async def test_keep_url_of_a_private_origin_fails_at_once_and_connects_nowhere(app, origin):
    # A refused address is a definitive failure: no signed link that could only ever answer 502.
    origin.serve("p.png", png_bytes())
    with pytest.raises(GatewayError) as refused:
        await store_of(app).keep_url(origin.url("p.png"), "https://gateway.example")
    assert refused.value.status == 502 and refused.value.code == "upstream_error"
    assert "may not fetch" in refused.value.message
    assert origin.connections == 0


@pytest.fixture
def two_hosts(io_loop):
    """An "allowed" origin on 127.0.0.1 and a "private" one on 127.0.0.2."""
    allowed, private = FakeOrigin("127.0.0.1"), FakeOrigin("127.0.0.2")
    yield allowed, private
    allowed.close()
    private.close()


@pytest.fixture
def app(gateway_env, request):
    """The gateway; with the ``only_loopback_one_is_public`` mark, its address filter treats only
    127.0.0.1 as public, so a test can tell an allowed host from a private one on loopback."""
    settings = gateway_settings(gateway_env)
    store = make_store(settings)
    if request.node.get_closest_marker("only_loopback_one_is_public"):
        store.fetcher.address_allowed = lambda address: address == "127.0.0.1"
    return make_app(settings, store=store)


@pytest.mark.gen_test
@pytest.mark.only_loopback_one_is_public
async def test_redirect_to_a_private_address_is_refused(http_client, base_url, app, two_hosts):
    allowed, private = two_hosts
    private.serve("secret.png", png_bytes())
    allowed.serve("direct.png", png_bytes(seed=2))
    allowed.redirect("hop.png", private.url("secret.png"))
    signer = store_of(app).signer

    direct = await get(
        http_client,
        f"{base_url}/image-proxy?{urlencode(signer.query_for_url(allowed.url('direct.png')))}",
    )
    assert direct.code == 200

    hop = await get(
        http_client,
        f"{base_url}/image-proxy?{urlencode(signer.query_for_url(allowed.url('hop.png')))}",
    )
    assert_error(hop, 502, "upstream_error")
    assert allowed.hits["hop.png"] == 1
    assert private.connections == 0


@pytest.mark.gen_test
@pytest.mark.only_loopback_one_is_public
async def test_redirects_are_followed_a_few_times_each_checked(
    http_client, base_url, app, two_hosts
):
    allowed, _ = two_hosts
    image = png_bytes(seed=4)
    allowed.serve("final.png", image)
    allowed.redirect("r1", allowed.url("r2"))
    allowed.redirect("r2", "/final.png")
    for name in ("loop1", "loop2"):
        allowed.redirect(name, allowed.url("loop2" if name == "loop1" else "loop1"))
    allowed.redirect("to-ftp", "ftp://127.0.0.1/x.png")
    allowed.redirect("to-userinfo", f"http://user:pw@127.0.0.1:{allowed.port}/final.png")
    signer = store_of(app).signer

    async def fetch(path):
        query = urlencode(signer.query_for_url(allowed.url(path)))
        return await get(http_client, f"{base_url}/image-proxy?{query}")

    ok = await fetch("r1")
    assert ok.code == 200 and ok.body == image
    for bad in ("loop1", "to-ftp", "to-userinfo"):
        assert_error(await fetch(bad), 502, "upstream_error")
    assert allowed.hits["loop1"] + allowed.hits["loop2"] <= 4


@pytest.mark.gen_test
@with_env({**LAB, "IMAGE_MAX_BYTES": "50000"})
@pytest.mark.parametrize("declared", [True, False])
async def test_oversized_image_is_an_error_and_is_never_cached(
    http_client, base_url, app, origin, declared
):
    big = png_of_length(200_000)

    async def behaviour(handler):
        handler.set_header("Content-Type", "image/png")
        if declared:
            handler.finish(big)
            return
        for start in range(0, len(big), 20_000):  # chunked: no Content-Length
            handler.write(big[start : start + 20_000])
            await handler.flush()
        handler.finish()

    origin.routes["big.png"] = behaviour
    link = await keep_refused(app, origin.url("big.png"), base_url)
    for _ in range(2):
        try:
            response = await get(http_client, link)
        except HTTPClientError as exc:  # the answer was cut once it went over the limit
            assert exc.code == 599
        else:
            assert response.code == 502, "an oversized image must never be a 200"
            assert "larger than" in response.body.decode()
    assert origin.hits["big.png"] == 3  # nothing was cached: each request went to the origin
    assert len(store_of(app).cache) == 0


@pytest.mark.gen_test
@with_env(LAB)
@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/html", b"<html><script>alert(1)</script></html>"),
        ("image/svg+xml", b'<svg xmlns="http://www.w3.org/2000/svg"><script/></svg>'),
        ("image/png", b"<html>not really a png</html>"),
        ("application/json", png_bytes()),
    ],
)
async def test_non_raster_answers_are_refused(
    http_client, base_url, app, origin, content_type, body
):
    origin.serve("x", body, content_type=content_type)
    link = await keep_refused(app, origin.url("x"), base_url)
    error = assert_error(await get(http_client, link), 502, "upstream_error")
    assert "cannot use" in error["message"]
    assert len(store_of(app).cache) == 0


@pytest.mark.gen_test
@with_env(LAB)
async def test_type_is_read_from_the_bytes_not_copied_from_upstream(
    http_client, base_url, app, origin
):
    origin.serve(
        "o",
        png_bytes(),
        content_type="application/octet-stream",
        X_Upstream_Secret="leak",
        Set_Cookie="a=b",
    )
    query = urlencode(store_of(app).signer.query_for_url(origin.url("o")))
    first = await get(http_client, f"{base_url}/image-proxy?{query}")  # streamed on a miss
    assert first.code == 200
    for response in (first, await get(http_client, f"{base_url}/image-proxy?{query}")):
        assert response.headers["Content-Type"] == "image/png"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert "sandbox" in response.headers["Content-Security-Policy"]
        assert "X-Upstream-Secret" not in response.headers
        assert "Set-Cookie" not in response.headers


@pytest.mark.gen_test
@with_env({**LAB, "IMAGE_FETCH_TIMEOUT": "1"})
async def test_slow_origin_past_the_deadline_is_504(http_client, base_url, app, origin):
    held = origin.hold("slow.png", png_bytes())  # answers only after the gateway has given up
    query = urlencode(store_of(app).signer.query_for_url(origin.url("slow.png")))
    response = await get(http_client, f"{base_url}/image-proxy?{query}")
    held.release.set()
    assert_error(response, 504, "upstream_timeout")


@pytest.mark.gen_test
@with_env(LAB)
async def test_upstream_status_errors_are_502(http_client, base_url, app, origin):
    origin.status("missing.png", 404)
    query = urlencode(store_of(app).signer.query_for_url(origin.url("missing.png")))
    error = assert_error(
        await get(http_client, f"{base_url}/image-proxy?{query}"), 502, "upstream_error"
    )
    assert "404" in error["message"]


@pytest.mark.gen_test
@with_env(LAB)
async def test_fifty_concurrent_requests_for_one_missing_image_make_one_fetch(
    http_client, base_url, app, origin
):
    image = noise_png(120, 120)

    async def slowish(handler):
        handler.set_header("Content-Type", "image/png")
        for start in range(0, len(image), 8192):
            handler.write(image[start : start + 8192])
            await handler.flush()
            await asyncio.sleep(0.01)  # a slow origin: the fifty requests arrive meanwhile
        handler.finish()

    origin.routes["one.png"] = slowish
    query = urlencode(store_of(app).signer.query_for_url(origin.url("one.png")))
    responses = await asyncio.gather(
        *[get(http_client, f"{base_url}/image-proxy?{query}") for _ in range(50)]
    )
    assert {response.code for response in responses} == {200}
    assert all(response.body == image for response in responses)
    assert origin.hits["one.png"] == 1


@pytest.mark.gen_test
@with_env(LAB)
async def test_client_leaving_mid_stream_harms_nobody_and_caches_nothing_partial(
    http_client, base_url, app, origin, http_port
):
    image = noise_png(200, 200)
    held = origin.hold("d.png", image, first=30000)
    query = urlencode(store_of(app).signer.query_for_url(origin.url("d.png")))
    stream = IOStream(socket.socket())
    await stream.connect(("127.0.0.1", http_port))
    await stream.write(f"GET /image-proxy?{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = await stream.read_until(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    await stream.read_bytes(1000, partial=True)
    stream.close()  # the client goes away mid-image

    assert (await get(http_client, f"{base_url}/health")).code == 200
    assert len(store_of(app).cache) == 0  # nothing partial was stored
    (download,) = store_of(app).fetcher.inflight.values()
    held.release.set()
    await asyncio.wait_for(download.done, 10)  # the download went on without its client
    response = await get(http_client, f"{base_url}/image-proxy?{query}")
    assert response.code == 200 and response.body == image
    assert origin.hits["d.png"] == 1


@pytest.mark.gen_test
@with_env(LAB)
async def test_origin_dying_mid_body_caches_nothing(http_client, base_url, app, origin):
    image = noise_png(100, 100)

    async def dies(handler):
        handler.set_header("Content-Type", "image/png")
        handler.set_header("Content-Length", str(len(image)))
        handler.write(image[: len(image) // 2])
        await handler.flush()
        handler.request.connection.close()

    origin.routes["die.png"] = dies
    link = await keep(app, origin.url("die.png"), base_url)
    assert len(store_of(app).cache) == 0
    origin.serve("die.png", image)  # the origin recovers: the link now fetches the whole image
    response = await get(http_client, link)
    assert response.code == 200 and response.body == image
    assert origin.hits["die.png"] == 2


@pytest.mark.gen_test
@with_env({**LAB, "IMAGE_CACHE_MAX_BYTES": "40000", "IMAGE_MAX_BYTES": "1000000"})
async def test_image_over_the_item_limit_streams_through_uncached(
    http_client, base_url, app, origin
):
    image = noise_png(150, 150)  # about 68 KB: over the 40 KB cache
    origin.serve("huge.png", image)
    query = urlencode(store_of(app).signer.query_for_url(origin.url("huge.png")))
    for expected_hits in (1, 2):
        response = await get(http_client, f"{base_url}/image-proxy?{query}")
        assert response.code == 200 and response.body == image
        assert origin.hits["huge.png"] == expected_hits


@pytest.mark.gen_test
@with_env(LAB)
async def test_cache_hit_validators_304_and_head(http_client, base_url, app, origin):
    origin.serve("v.png", png_bytes(70))
    link = await keep(app, origin.url("v.png"), base_url)
    response = await get(http_client, link)
    etag = response.headers["ETag"]
    assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert response.headers["Last-Modified"].endswith("GMT")
    assert int(response.headers["Content-Length"]) == len(response.body)
    not_modified = await get(http_client, link, **{"If-None-Match": etag})
    assert not_modified.code == 304 and not_modified.body == b""
    # A client may send its validators in several header lines: any of them matches.
    several = HTTPHeaders()
    several.add("If-None-Match", '"an-older-copy"')
    several.add("If-None-Match", etag)
    repeated = await http_client.fetch(link, headers=several, raise_error=False)
    assert repeated.code == 304 and repeated.body == b""
    several = HTTPHeaders()
    several.add("If-None-Match", '"an-older-copy"')
    several.add("If-None-Match", '"another-copy"')
    other = await http_client.fetch(link, headers=several, raise_error=False)
    assert other.code == 200 and other.body == response.body
    head = await http_client.fetch(link, method="HEAD", raise_error=False)
    assert head.code == 200 and head.body == b""
    assert head.headers["Content-Length"] == response.headers["Content-Length"]
    assert origin.hits["v.png"] == 1


@pytest.mark.gen_test
@with_env(LAB)
async def test_a_first_fetch_counts_as_in_flight_until_it_is_served(
    http_client, base_url, app, origin
):
    # A shutdown waits for what is in flight: a GET or HEAD waiting on its download counts.
    lifecycle = app.services.lifecycle
    image = noise_png(120, 120)
    for method, path in (("GET", "get.png"), ("HEAD", "head.png")):
        held = origin.hold(path, image, first=1000)
        query = urlencode(store_of(app).signer.query_for_url(origin.url(path)))
        served = asyncio.ensure_future(
            http_client.fetch(f"{base_url}/image-proxy?{query}", method=method, raise_error=False)
        )
        await held.asked.wait()
        assert lifecycle.inflight == 1
        held.release.set()
        response = await served
        assert response.code == 200 and lifecycle.inflight == 0
        assert response.body == (image if method == "GET" else b"")
        hit = await get(http_client, f"{base_url}/image-proxy?{query}")
        assert hit.code == 200 and hit.body == image and lifecycle.inflight == 0
    assert await lifecycle.drain(1)
