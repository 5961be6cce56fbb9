"""The seam with Tornado's curl client: what GatewayCurlClient does, and the contract it relies on.

The contract tests check the installed Tornado, not the gateway: each fails, naming what changed,
when Tornado no longer behaves as tornado_imagegate/curl_client.py assumes. Run them before
raising the upper bound on tornado in setup.cfg.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import json
from typing import Any

import pycurl
import pytest
import tornado
from fakes import Answer, FakeOrigin, FakeUpstream
from tornado.curl_httpclient import CurlAsyncHTTPClient, CurlError, _CurlStreamingBuffer
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, _RequestProxy
from tornado.ioloop import IOLoop

from tornado_imagegate.curl_client import AnswerBody, GatewayCurlClient


def pinned(holds: bool, what: str) -> None:
    """Fail, without a traceback to wade through, naming what Tornado changed."""
    if not holds:
        pytest.fail(
            f"Tornado {tornado.version} changed {what}. GatewayCurlClient "
            "(tornado_imagegate/curl_client.py) relies on it: adapt the override before raising "
            "the bound on tornado in setup.cfg.",
            pytrace=False,
        )


class LoopStandIn:
    """Stands in for a client's ``io_loop``: a stopped clock, timers recorded and never run."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.added: list[tuple[float, Any, object]] = []
        self.removed: list[object] = []

    def time(self) -> float:
        """The stopped clock."""
        return self.now

    def add_timeout(self, deadline: float, callback: Any) -> object:
        """Record a timer and return its handle."""
        handle = object()
        self.added.append((deadline, callback, handle))
        return handle

    def remove_timeout(self, handle: object) -> None:
        """Record that a timer was removed."""
        self.removed.append(handle)


def quiet_tornado_client(io_loop: IOLoop) -> CurlAsyncHTTPClient:
    """Tornado's own curl client, apart from the configured one, with no timer pending."""
    client = CurlAsyncHTTPClient(force_instance=True)
    if client._timeout is not None:  # curl may ask for one while the client is set up
        io_loop.remove_timeout(client._timeout)
        client._timeout = None
    return client


@pytest.fixture
def tornado_client(io_loop):
    """Tornado's own curl client, closed after the test on its real loop."""
    client = quiet_tornado_client(io_loop)
    yield client
    if isinstance(client.io_loop, LoopStandIn):
        client.io_loop, client._timeout = io_loop, None
    client.close()


# --- what the gateway's client does ---


@pytest.mark.gen_test
async def test_the_configured_client_is_the_gateway_curl_client():
    assert isinstance(AsyncHTTPClient(), GatewayCurlClient)


@pytest.mark.gen_test
async def test_new_requests_do_not_push_back_a_pending_timer():
    client = AsyncHTTPClient()
    client._set_timeout(0)
    first = client._timeout
    client._set_timeout(0)  # a second request an instant later: the pending timer stays
    client._set_timeout(500)
    assert client._timeout is first
    client.io_loop.remove_timeout(client._timeout)
    client._timeout = None
    client._set_timeout(500)
    later = client._timeout
    client._set_timeout(0)  # an earlier deadline replaces a later one
    assert client._timeout is not later
    client._set_timeout(-1)  # curl needs no timer: none is left pending
    assert client._timeout is None


@pytest.mark.gen_test
async def test_closing_the_client_closes_its_filtered_pool():
    client = GatewayCurlClient(force_instance=True)
    client.close()
    with pytest.raises(pycurl.error):
        client.filtered_pool.setopt(pycurl.SH_SHARE, pycurl.LOCK_DATA_CONNECT)


@pytest.mark.gen_test
async def test_a_request_reaches_the_upstream_as_tornado_would_send_it():
    upstream = FakeUpstream()
    upstream.default = Answer(json={"ok": True})
    client = GatewayCurlClient(force_instance=True)
    try:
        body = json.dumps({"prompt": "a red fox", "n": 1}).encode()
        answer = await client.fetch(
            HTTPRequest(
                upstream.url("/v1/images/generations"),
                method="POST",
                headers={
                    "Authorization": "Bearer sk-test-0001",
                    "Content-Type": "application/json",
                },
                body=body,
                follow_redirects=False,
            )
        )
        await client.fetch(
            HTTPRequest(upstream.url("/plain"), user_agent="imagegate"), raise_error=False
        )
    finally:
        client.close()
        upstream.close()
    assert answer.code == 200 and json.loads(answer.body) == {"ok": True}
    assert answer.headers["Content-Type"].startswith("application/json")
    sent, fetched = upstream.requests
    assert (sent.method, sent.path, sent.body) == ("POST", "/v1/images/generations", body)
    assert sent.headers["authorization"] == "Bearer sk-test-0001"
    assert sent.headers["user-agent"] == "Mozilla/5.0 (compatible; pycurl)"
    assert "expect" not in sent.headers and "pragma" not in sent.headers
    assert (fetched.method, fetched.body, fetched.headers["user-agent"]) == (
        "GET",
        b"",
        "imagegate",
    )
    assert "gzip" in fetched.headers.get("accept-encoding", "")


@pytest.mark.gen_test
async def test_an_answer_of_many_chunks_is_kept_as_they_came_and_read_whole():
    upstream = FakeOrigin()
    # 300 KB of varied bytes: curl hands it over in some twenty chunks.
    payload = bytes(range(256)) * 1200
    upstream.serve("/big", payload, content_type="application/octet-stream")
    client = GatewayCurlClient(force_instance=True, max_body_size=len(payload))
    small = GatewayCurlClient(force_instance=True, max_body_size=len(payload) - 1)
    try:
        answer = await client.fetch(upstream.url("/big"))
        # One byte over the client's max_body_size fails the transfer, as in Tornado.
        with pytest.raises(CurlError, match="max_body_size"):
            await small.fetch(upstream.url("/big"))
    finally:
        client.close()
        small.close()
        upstream.close()
    pinned(
        isinstance(answer.buffer, AnswerBody),
        "where the client keeps an answer's body (curl.info['buffer'], handed to HTTPResponse)",
    )
    assert answer.body == payload
    assert answer.body is answer.buffer.getvalue()  # joined once, then kept


def test_an_answer_body_is_read_whole_from_its_start():
    body = AnswerBody()
    assert body.getvalue() == b""
    for chunk in (b"ab", b"", b"cde"):
        assert body.write(chunk) == len(chunk)
    assert body.tell() == 5
    assert body.seek(0) == 0
    assert body.getvalue() == b"abcde"
    with pytest.raises(io.UnsupportedOperation):
        body.seek(2)
    body.close()
    assert (body.getvalue(), body.tell()) == (b"", 0)


@pytest.mark.gen_test
async def test_a_header_with_a_line_break_is_refused_before_anything_is_sent():
    upstream = FakeUpstream()
    client = GatewayCurlClient(force_instance=True)
    try:
        with pytest.raises(ValueError):
            await client.fetch(
                HTTPRequest(upstream.url("/x"), headers={"X-Note": "a\r\nInjected: yes"})
            )
    finally:
        client.close()
        upstream.close()
    assert upstream.requests == []


@pytest.mark.gen_test
async def test_a_request_waits_in_the_queue_only_while_every_handle_is_busy():
    origin = FakeOrigin()
    held = origin.hold("hold", b"late", content_type="text/plain")
    client = GatewayCurlClient(force_instance=True, max_clients=1)
    try:
        first = client.fetch(origin.url("hold"))
        assert not client.queued
        second = client.fetch(origin.url("hold"))
        assert client.queued
        held.release.set()
        assert [r.code for r in await asyncio.gather(first, second)] == [200, 200]
        assert not client.queued
    finally:
        held.release.set()
        client.close()
        origin.close()


# --- the contract: what the override relies on in Tornado ---


def test_tornado_has_the_timer_method_the_gateway_overrides():
    method = getattr(CurlAsyncHTTPClient, "_set_timeout", None)
    pinned(callable(method), "CurlAsyncHTTPClient._set_timeout (it is gone)")
    parameters = list(inspect.signature(method).parameters)
    pinned(parameters == ["self", "msecs"], f"the parameters of _set_timeout to {parameters}")
    handler = getattr(CurlAsyncHTTPClient, "_handle_timeout", None)
    pinned(callable(handler), "CurlAsyncHTTPClient._handle_timeout (it is gone)")


def test_tornado_has_the_request_methods_the_gateway_overrides_and_calls():
    for name, wanted in (
        ("fetch_impl", ["self", "request", "callback"]),
        ("_curl_setup_request", ["self", "curl", "request", "buffer", "headers"]),
        ("_process_queue", ["self"]),
        ("_finish_pending_requests", ["self"]),
    ):
        method = getattr(CurlAsyncHTTPClient, name, None)
        pinned(callable(method), f"CurlAsyncHTTPClient.{name} (it is gone)")
        parameters = list(inspect.signature(method).parameters)
        pinned(parameters == wanted, f"the parameters of {name} to {parameters}")
    source = inspect.getsource(CurlAsyncHTTPClient._finish)
    pinned("curl.reset()" in source, "_finish: it no longer resets a handle after its request")
    streaming = inspect.signature(_CurlStreamingBuffer).parameters
    pinned(
        list(streaming) == ["client", "curl", "callback"],
        f"_CurlStreamingBuffer's parameters to {list(streaming)}",
    )


@pytest.mark.gen_test
async def test_tornado_queues_requests_in_a_deque_and_proxies_their_defaults():
    client = GatewayCurlClient(force_instance=True)
    try:
        pinned(hasattr(client, "_requests"), "where waiting requests are kept (no _requests)")
        pinned(hasattr(client, "_closed"), "how a closed client is known (no _closed)")
        proxy = _RequestProxy(HTTPRequest("http://127.0.0.1:9/"), client.defaults)
        pinned(proxy.follow_redirects is True, "_RequestProxy: defaults no longer fill in None")
        # Upstream.with_defaults writes these into each request instead of wrapping it.
        pinned(isinstance(client.defaults, dict), "where a client's defaults are (no dict)")
        unset = HTTPRequest("http://127.0.0.1:9/")
        pinned(unset.follow_redirects is None, "an unset request option is no longer None")
    finally:
        client.close()


def test_tornado_initialize_takes_what_start_up_passes_and_sets_the_state_read():
    parameters = inspect.signature(CurlAsyncHTTPClient.initialize).parameters
    for name in ("max_clients", "max_body_size"):
        pinned(name in parameters, f"CurlAsyncHTTPClient.initialize: it takes no {name!r}")


@pytest.mark.gen_test
async def test_a_new_client_keeps_its_loop_timer_and_body_limit_where_read():
    client = GatewayCurlClient(force_instance=True, max_clients=3, max_body_size=1234)
    try:
        pinned(client.io_loop is IOLoop.current(), "where the client keeps its loop (io_loop)")
        pinned(hasattr(client, "_timeout"), "where the pending timer is kept (no _timeout)")
        pinned(client.max_body_size == 1234, "what initialize does with max_body_size")
    finally:
        client.close()


def test_tornado_replaces_the_pending_timer_with_one_at_now_plus_msecs(tornado_client):
    loop = tornado_client.io_loop = LoopStandIn()
    tornado_client._set_timeout(5000)
    pinned(
        [(deadline, callback) for deadline, callback, _ in loop.added]
        == [(1005.0, tornado_client._handle_timeout)],
        "how _set_timeout schedules: not io_loop.add_timeout(io_loop.time() + msecs / 1000, "
        f"_handle_timeout), but {loop.added}",
    )
    first = loop.added[0][2]
    pinned(tornado_client._timeout is first, "where the pending timer is kept (_timeout)")
    tornado_client._set_timeout(0)
    pinned(loop.removed == [first], "_set_timeout: it no longer removes the pending timer")
    pinned(
        tornado_client._timeout is loop.added[1][2], "_set_timeout: _timeout is not the new timer"
    )


def test_a_fired_timer_is_no_longer_pending(tornado_client):
    loop = tornado_client.io_loop = LoopStandIn()
    tornado_client._set_timeout(0)
    tornado_client._handle_timeout()  # what the loop runs when the timer is due (no transfers)
    pinned(
        tornado_client._timeout is None,
        "_handle_timeout: a timer that has fired is left in _timeout, and would be taken "
        "for a pending one",
    )
    pinned(loop.removed == [], "_handle_timeout: it removes a timer that has already fired")


def test_closing_removes_the_pending_timer(io_loop):
    client = quiet_tornado_client(io_loop)
    loop = client.io_loop = LoopStandIn()
    client._set_timeout(5000)
    pending = client._timeout
    client.close()
    pinned(loop.removed == [pending], "close(): it leaves the pending timer")


class RecordingClient(CurlAsyncHTTPClient):
    """Tornado's curl client, noting every timer request that reaches ``_set_timeout``."""

    def initialize(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Tornado's set-up, noting from the start."""
        self.timer_requests: list[int] = []
        super().initialize(*args, **kwargs)

    def _set_timeout(self, msecs: int) -> None:
        self.timer_requests.append(msecs)
        super()._set_timeout(msecs)


@pytest.mark.gen_test
async def test_curl_timer_requests_reach_an_override_of_set_timeout():
    origin = FakeOrigin()
    origin.serve("x", b"hello", content_type="text/plain")
    client = RecordingClient(force_instance=True)
    client.timer_requests = []  # from here on: only the fetches' requests
    try:
        for _ in range(3):
            answer = await client.fetch(origin.url("x"))
            assert answer.body == b"hello"
    finally:
        client.close()
        origin.close()
    # Only curl asks for "no timer" (-1): Tornado's own calls (a request queued, the re-sync
    # after a timer) always ask for one.
    pinned(
        -1 in client.timer_requests,
        "who calls _set_timeout: curl's timer requests no longer reach an override (of "
        f"{client.timer_requests} during three fetches, none was curl's -1, 'no timer needed')",
    )
