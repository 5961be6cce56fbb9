"""The one outbound client: bursts of fetches, guards, and error mapping."""

from __future__ import annotations

import asyncio
import inspect

import pytest
from fakes import FakeOrigin
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, _RequestProxy

from tornado_imagegate.errors import UpstreamError
from tornado_imagegate.upstream import FetchGuard, Upstream, retry_after_seconds, with_defaults


@pytest.mark.gen_test
async def test_a_burst_of_fetches_all_complete(io_loop):
    origin = FakeOrigin()
    origin.serve("x", b"hello", content_type="text/plain")
    upstream = Upstream()
    deadline = asyncio.get_running_loop().time() + 20
    try:
        answers = await asyncio.gather(
            *[upstream.fetch(HTTPRequest(origin.url("x")), deadline) for _ in range(300)]
        )
    finally:
        origin.close()
    assert {a.code for a in answers} == {200}
    assert origin.hits["x"] == 300


@pytest.mark.gen_test
async def test_connection_refused_is_a_connect_error_never_a_599():
    upstream = Upstream()
    deadline = asyncio.get_running_loop().time() + 5
    with pytest.raises(UpstreamError) as caught:
        await upstream.fetch(HTTPRequest("http://127.0.0.1:9/"), deadline)
    assert caught.value.kind == "connect"


@pytest.mark.gen_test
async def test_a_passed_deadline_is_a_timeout_without_a_request():
    upstream = Upstream()
    with pytest.raises(UpstreamError) as caught:
        await upstream.fetch(
            HTTPRequest("http://127.0.0.1:9/"), asyncio.get_running_loop().time() - 1, FetchGuard()
        )
    assert caught.value.kind == "timeout"


@pytest.mark.gen_test
async def test_time_queued_for_a_connection_counts_against_the_deadline():
    origin = FakeOrigin()
    held = origin.hold("hold", b"late", content_type="text/plain")
    client = AsyncHTTPClient(force_instance=True, max_clients=1)
    upstream = Upstream(client)
    loop = asyncio.get_running_loop()
    try:
        holding = asyncio.ensure_future(
            upstream.fetch(HTTPRequest(origin.url("hold")), loop.time() + 30)
        )
        await held.asked.wait()  # the only connection slot is now taken
        with pytest.raises(UpstreamError) as caught:
            await upstream.fetch(HTTPRequest(origin.url("hold")), loop.time() + 0.3)
        assert caught.value.kind == "timeout"
        assert not holding.done()  # it gave up while still queued, not after the first ended
        held.release.set()
        assert (await holding).code == 200
    finally:
        held.release.set()
        client.close()
        origin.close()


@pytest.mark.gen_test
async def test_only_the_kept_headers_of_the_final_answer_reach_the_caller():
    origin = FakeOrigin()
    origin.redirect("old", "/busy")

    def busy(handler):
        handler.set_status(429)
        handler.set_header("retry-after", "7")
        handler.set_header("X-Upstream-Secret", "s3cr3t")
        handler.finish(b"slow down")

    origin.routes["busy"] = busy
    origin.redirect("moved", "/plain")
    origin.serve("plain", b"ok", content_type="text/plain")
    upstream = Upstream()
    deadline = asyncio.get_running_loop().time() + 10
    try:
        answer = await upstream.fetch(HTTPRequest(origin.url("old")), deadline)
        # set on the redirect, read from the final answer
        plain = await upstream.fetch(HTTPRequest(origin.url("moved")), deadline)
    finally:
        origin.close()
    assert answer.code == 429
    assert answer.headers["Retry-After"] == "7"
    assert "X-Upstream-Secret" not in answer.headers
    assert retry_after_seconds(answer) == 7.0
    assert plain.code == 200 and plain.body == b"ok"
    assert plain.headers["Content-Type"] == "text/plain"
    assert "Location" not in plain.headers and "Retry-After" not in plain.headers


def _loopback_is_public(address: str) -> bool:
    return address == "127.0.0.1"


@pytest.mark.gen_test
async def test_a_trusted_calls_connection_is_never_lent_to_a_filtered_fetch():
    origin = FakeOrigin()
    origin.serve("x", b"hello", content_type="text/plain")
    upstream = Upstream()
    deadline = asyncio.get_running_loop().time() + 10
    try:
        trusted = await upstream.fetch(HTTPRequest(origin.url("x")), deadline)
        assert trusted.code == 200 and origin.connections == 1  # now idle in the pool
        refusing = FetchGuard(allow_private=False, address_allowed=lambda address: False)
        with pytest.raises(UpstreamError) as caught:
            await upstream.fetch(HTTPRequest(origin.url("x")), deadline, refusing)
    finally:
        origin.close()
    assert caught.value.kind == "refused_address"
    assert origin.hits["x"] == 1  # the pooled connection was not used to get past the filter


@pytest.mark.gen_test
async def test_filtered_fetches_reuse_the_connections_the_filter_checked():
    origin = FakeOrigin()
    origin.serve("x", b"hello", content_type="text/plain")
    upstream = Upstream()
    deadline = asyncio.get_running_loop().time() + 10
    checked: list[str] = []

    def allowed(address: str) -> bool:
        checked.append(address)
        return _loopback_is_public(address)

    try:
        for _ in range(3):
            guard = FetchGuard(allow_private=False, address_allowed=allowed)
            answer = await upstream.fetch(HTTPRequest(origin.url("x")), deadline, guard)
            assert answer.code == 200
        assert origin.connections == 1 and checked == ["127.0.0.1"]
        # A trusted call does not take a connection from the filtered pool either.
        assert (await upstream.fetch(HTTPRequest(origin.url("x")), deadline)).code == 200
        assert origin.connections == 2
    finally:
        origin.close()


def test_a_request_with_defaults_written_in_reads_as_tornados_proxy_would():
    defaults = dict(HTTPRequest._DEFAULTS, validate_cert=False, connect_timeout=3.0)
    options = [name for name in inspect.signature(HTTPRequest).parameters if name != "url"]
    given = {"follow_redirects": False, "request_timeout": 7.5, "user_agent": "probe/1"}
    request = HTTPRequest("http://127.0.0.1:9/", method="POST", body=b"{}", **given)
    proxy = _RequestProxy(
        HTTPRequest("http://127.0.0.1:9/", method="POST", body=b"{}", **given), defaults
    )
    filled = with_defaults(request, defaults)
    # Every option a request keeps as an attribute (if_modified_since becomes a header).
    for name in [name for name in options if hasattr(proxy.request, name)]:
        assert getattr(filled, name) == getattr(proxy, name), name
    assert filled.follow_redirects is False and filled.validate_cert is False
