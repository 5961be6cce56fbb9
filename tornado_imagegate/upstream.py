"""The only place that calls out over HTTP: one curl client, deadlines, guards, errors mapped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import pycurl
from tornado.curl_httpclient import CurlError
from tornado.httpclient import (
    AsyncHTTPClient,
    HTTPClientError,
    HTTPRequest,
    HTTPResponse,
)
from tornado.httputil import HTTPHeaders

from tornado_imagegate.errors import UpstreamError
from tornado_imagegate.urlpolicy import is_public_address

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
# The answer headers callers read (lower-case); the others are not parsed at all. Tornado's own
# parsing of every header line into HTTPHeaders cost about 180k instructions for a 7-line answer
# (valgrind), some 50 us of CPU on every upstream call.
KEPT_HEADERS = frozenset({"retry-after", "content-type"})
# curl's error numbers (CURLE_*) that arrive as Tornado's status 599.
_CURL_KINDS = {
    5: "connect",  # could not resolve proxy
    6: "connect",  # could not resolve host
    7: "connect",  # could not connect
    28: "timeout",
    23: "too_large",  # write error: Tornado's max_body_size guard
    63: "too_large",  # file size over CURLOPT_MAXFILESIZE
    47: "bad_answer",  # too many redirects
    52: "bad_answer",  # empty reply
    56: "connect",  # receive error (connection reset)
    35: "connect",  # TLS handshake failed
    60: "connect",  # TLS certificate problem
}


# libcurl's CURLPROXY_* numbers; pycurl names no constant for an HTTPS proxy.
_PROXY_TYPES = {
    "http": pycurl.PROXYTYPE_HTTP,
    "https": getattr(pycurl, "PROXYTYPE_HTTPS", 2),
    "socks5": pycurl.PROXYTYPE_SOCKS5,
    "socks5h": pycurl.PROXYTYPE_SOCKS5_HOSTNAME,
}


@dataclass(frozen=True)
class OutboundProxy:
    """A configured proxy, its user-info kept apart from its URL and never shown."""

    url: str  # scheme://host[:port], no user-info
    scheme: str
    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)

    @classmethod
    def from_url(cls, url: str) -> OutboundProxy:
        """Split a proxy URL (``UPSTREAM_PROXY``, ``IMAGE_FETCH_PROXY``) for curl."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = host if parts.port is None else f"{host}:{parts.port}"
        return cls(
            url=f"{parts.scheme}://{netloc}",
            scheme=parts.scheme,
            username=unquote(parts.username or ""),
            password=unquote(parts.password or ""),
        )

    def apply(self, curl: Any) -> None:
        """Send this handle's transfer through the proxy, whatever the environment says."""
        curl.setopt(pycurl.PROXY, self.url)
        curl.setopt(pycurl.PROXYTYPE, _PROXY_TYPES[self.scheme])
        curl.setopt(pycurl.NOPROXY, "")  # the environment's no_proxy does not apply either
        if self.username or self.password:
            curl.setopt(pycurl.PROXYUSERNAME, self.username)
            curl.setopt(pycurl.PROXYPASSWORD, self.password)


async def resolve_checked(url: str, address_allowed: Callable[[str], bool]) -> str:
    """Resolve the host of ``url`` (off the loop) and return the address to connect to.

    Every address the name resolves to must pass ``address_allowed``: a name that answers with
    public and private addresses together is refused whole, as a rebinding attempt would be.
    An IPv4 address is preferred: a proxy reaches IPv4 almost everywhere, IPv6 not always.
    Raises UpstreamError ("connect" when the name does not resolve, "refused_address").
    """
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            parts.hostname, port, type=socket.SOCK_STREAM
        )
    except (OSError, UnicodeError):
        raise UpstreamError("connect", "could not resolve the host") from None
    addresses = [str(info[4][0]) for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)]
    if not addresses:
        raise UpstreamError("connect", "could not resolve the host")
    if not all(address_allowed(address) for address in addresses):
        raise UpstreamError("refused_address", "address refused by the network filter")
    return next((address for address in addresses if ":" not in address), addresses[0])


def header_field(line: str, wanted: frozenset[str]) -> tuple[str, str] | None:
    """``(name, value)`` of an answer's header line whose lower-cased name is ``wanted``."""
    name, colon, value = line.partition(":")
    name = name.strip().lower()
    if colon and name in wanted:
        return name, value.strip()
    return None


@dataclass
class FetchGuard:
    """Per-request checks run inside curl: the address filter, a byte limit, and an abort switch.

    curl calls these from its own callbacks, so they are plain functions that never raise.
    """

    allow_private: bool = True
    max_bytes: int | None = None
    abort_reason: str | None = None
    refused_address: str | None = None
    address_allowed: Callable[[str], bool] = is_public_address
    # Replaces Tornado's own header parsing: curl calls it synchronously, before any body
    # chunk, whereas Tornado's header_callback may be delivered after the first chunks. Without
    # one, the guard keeps the KEPT_HEADERS of the last answer (after redirects) itself.
    header_function: Callable[[bytes], None] | None = None
    # Replaces Tornado's delivery of a streamed body (``streaming_callback``, which queues each
    # chunk for a later turn of the loop): curl calls it with each chunk as it arrives. Like
    # every callback here, it must never raise nor call into the HTTP client.
    write_function: Callable[[bytes], None] | None = None
    kept_headers: dict[str, str] = field(default_factory=dict)
    # pycurl duplicates the descriptor of each socket we open for it; ours are closed at the end.
    opened: list[socket.socket] = field(default_factory=list)
    curl: Any = None
    # Where filtered fetches keep their connections (GatewayCurlClient.filtered_pool); without
    # one, every filtered fetch opens a new connection.
    filtered_pool: Any = None
    # A call to a service the operator configured (a provider, the optimiser): Upstream gives
    # it UPSTREAM_PROXY. Image fetches set this false; a filtered fetch never takes it anyway.
    configured_service: bool = True
    # The proxy this transfer goes through; None: straight to the host.
    proxy: OutboundProxy | None = None
    # UPSTREAM_PROXY=env only: libcurl then reads http_proxy, HTTPS_PROXY, ALL_PROXY and
    # NO_PROXY itself. Otherwise the environment's proxy variables are ignored.
    proxy_from_env: bool = False
    # For a filtered fetch through a proxy: the address resolve_checked() let through. Every
    # connection is pinned to it, and the proxy is asked to tunnel to it, never to a name.
    pinned_address: str | None = None

    def __post_init__(self) -> None:
        if not self.allow_private and (
            self.proxy_from_env or (self.proxy is not None and self.pinned_address is None)
        ):
            # Through a proxy the filter on the connected address sees only the proxy.
            raise ValueError("a filtered fetch goes through a proxy only to a pinned address")

    def abort(self, reason: str, nudge: bool = False) -> None:
        """Stop the transfer at curl's next progress callback.

        An idle transfer (waiting for its answer) runs no callback until something happens on
        it; ``nudge`` makes curl run it now. Never nudge from inside one of curl's callbacks.
        """
        if self.abort_reason is None:
            self.abort_reason = reason
        if nudge and self.curl is not None:
            try:
                # A pause and an unpause leave the transfer as it was but make curl run it now.
                self.curl.pause(pycurl.PAUSE_ALL)
                self.curl.pause(pycurl.PAUSE_CONT)
            except pycurl.error:
                pass

    def prepare(self, curl: Any) -> None:
        """Install the guards on a curl handle (Tornado resets handles between requests)."""
        self.curl = curl
        # No signals: Python already ignores SIGPIPE, and without this curl changes the SIGPIPE
        # handler twice on every call into it (two system calls, several per request).
        curl.setopt(pycurl.NOSIGNAL, 1)
        curl.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        curl.setopt(pycurl.REDIR_PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        curl.setopt(pycurl.NOPROGRESS, 0)
        curl.setopt(pycurl.XFERINFOFUNCTION, self._progress)
        if self.max_bytes is not None:
            curl.setopt(pycurl.MAXFILESIZE_LARGE, self.max_bytes)
        curl.setopt(pycurl.HEADERFUNCTION, self.header_function or self._keep_header)
        if self.write_function is not None:
            curl.setopt(pycurl.WRITEFUNCTION, self.write_function)
        self._route(curl)
        # A handle keeps its share across Tornado's reset: a trusted call must never use the
        # filtered pool, and a filtered fetch joins it afresh.
        curl.unsetopt(pycurl.SHARE)
        if self.allow_private:
            return
        # Through a proxy, the socket goes to the proxy (perhaps on loopback): resolve_checked()
        # checked the image host's addresses instead, and pinned the transfer to one of them.
        if self.proxy is None:
            curl.setopt(pycurl.OPENSOCKETFUNCTION, self._open_socket)
        if self.filtered_pool is not None:
            curl.setopt(pycurl.SHARE, self.filtered_pool)  # every connection there was checked
        else:
            curl.setopt(pycurl.FRESH_CONNECT, 1)  # so that the filter sees every connection

    def _route(self, curl: Any) -> None:
        if self.pinned_address is not None:
            # Empty host and ports: whatever host curl reads in the URL, every connection of
            # this transfer goes to the checked address. TLS still sends and verifies the URL's
            # host name; only the address connected to (or tunnelled to) changes.
            address = self.pinned_address
            shown = f"[{address}]" if ":" in address else address
            curl.setopt(pycurl.CONNECT_TO, [f"::{shown}:"])
        if self.proxy is not None:
            self.proxy.apply(curl)
            if self.pinned_address is not None:
                # Plain http through a proxy would name the host in the request line, for the
                # proxy to resolve; a tunnel names the pinned address (CONNECT address:port).
                curl.setopt(pycurl.HTTPPROXYTUNNEL, 1)
        elif not self.proxy_from_env:
            # Tornado unsets PROXY, and libcurl would then take a proxy from the environment
            # and connect to it: the address filter would check the proxy and nothing else.
            curl.setopt(pycurl.PROXY, "")
            curl.setopt(pycurl.NOPROXY, "*")

    def _keep_header(self, raw: bytes) -> None:
        line = raw.decode("latin-1")
        if line.startswith("HTTP/"):  # a new answer: a redirect's, or the final one
            self.kept_headers.clear()
            return
        kept = header_field(line, KEPT_HEADERS)
        if kept is not None:
            name, value = kept
            self.kept_headers[name] = value

    def _progress(self, dltotal: int, dlnow: int, ultotal: int, ulnow: int) -> int:
        if self.abort_reason is not None:
            return 1
        if self.max_bytes is not None and dlnow > self.max_bytes:
            self.abort_reason = "too_large"
            return 1
        return 0

    def _open_socket(self, purpose: int, address: Any) -> Any:
        host = address.addr[0] if address.addr else ""
        if address.family not in (socket.AF_INET, socket.AF_INET6) or not self.address_allowed(
            host
        ):
            self.refused_address = host
            return pycurl.SOCKET_BAD
        sock = socket.socket(address.family, address.socktype, address.protocol)
        self.opened.append(sock)
        return sock

    def close_sockets(self) -> None:
        """Close our copies of the sockets opened for curl (curl holds its own duplicates)."""
        while self.opened:
            self.opened.pop().close()


class Upstream:
    """Makes every outbound request through the one curl client configured at start-up."""

    def __init__(self, client: AsyncHTTPClient | None = None, proxy: str = "") -> None:
        """``proxy``: ``UPSTREAM_PROXY`` for calls to configured services ("", "env" or a URL)."""
        self._client = client
        self.proxy_from_env = proxy == "env"
        self.proxy = OutboundProxy.from_url(proxy) if proxy and proxy != "env" else None

    @property
    def client(self) -> AsyncHTTPClient:
        """The shared AsyncHTTPClient (created on first use, on the running loop)."""
        if self._client is None:
            self._client = AsyncHTTPClient()
        return self._client

    async def fetch(
        self, request: HTTPRequest, deadline: float, guard: FetchGuard | None = None
    ) -> HTTPResponse:
        """Send ``request`` and return its answer, whatever its status, before ``deadline``.

        Of the answer's headers, only KEPT_HEADERS are in ``response.headers``, unless the
        guard brings its own ``header_function``.

        ``deadline`` is a loop time and covers time queued for a connection. Failures to get an
        answer at all raise UpstreamError; no status 599 ever leaves this function.
        """
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise UpstreamError("timeout", "deadline passed before the request was sent")
        guard = guard or FetchGuard()
        if guard.configured_service and guard.allow_private:
            guard.proxy, guard.proxy_from_env = self.proxy, self.proxy_from_env
        if guard.filtered_pool is None:
            guard.filtered_pool = getattr(self.client, "filtered_pool", None)
        request.request_timeout = remaining
        request.connect_timeout = min(remaining, CONNECT_TIMEOUT)
        request.prepare_curl_callback = guard.prepare
        client = self.client
        answer = self._start(client, request)
        # A transfer curl started at once ends by ``deadline`` through curl's own timeout
        # (request_timeout above); only one queued for a free handle needs a timer of ours.
        waits_for_deadline = (
            asyncio.timeout_at(deadline) if getattr(client, "queued", True) else _NO_TIMER
        )
        # When we stop waiting (deadline, cancellation), curl's transfer is aborted through the
        # guard and ends on its own; its outcome then finds ``answer`` done and is dropped.
        try:
            async with waits_for_deadline:
                response = await answer
        except TimeoutError:
            guard.abort("deadline", nudge=True)
            raise UpstreamError("timeout", f"no answer within {remaining:.1f}s") from None
        except asyncio.CancelledError:
            guard.abort("cancelled", nudge=True)
            raise
        finally:
            guard.close_sockets()
            guard.curl = None  # Tornado may hand the handle to another request now
        error = response.error
        if isinstance(error, CurlError):  # no answer at all
            raise self._classify(error, guard)
        if error is not None and not isinstance(error, HTTPClientError):  # not even sent
            if isinstance(error, (OSError, ValueError, pycurl.error)):
                raise UpstreamError("connect", f"{type(error).__name__}")
            raise error
        for name, value in guard.kept_headers.items():
            response.headers[name] = value
        return response

    @staticmethod
    def _start(client: AsyncHTTPClient, request: HTTPRequest) -> asyncio.Future[HTTPResponse]:
        """Hand ``request`` to the client as its ``fetch()`` would, with a future of our own.

        Tornado's future is left out: cancelled, it would log the transfer's late failure as an
        ERROR ("Exception after Future was cancelled"), and shielding it costs a loop turn.
        Any answer, whatever its status, and any failure arrive as the future's result.
        """
        if getattr(client, "_closed", False):
            raise RuntimeError("fetch() called on closed AsyncHTTPClient")
        answer: asyncio.Future[HTTPResponse] = asyncio.get_running_loop().create_future()

        def deliver(response: HTTPResponse) -> None:
            if not answer.done():  # else we stopped waiting: the outcome is dropped
                answer.set_result(response)

        if not isinstance(request.headers, HTTPHeaders):
            request.headers = HTTPHeaders(request.headers)
        client.fetch_impl(with_defaults(request, client.defaults), deliver)
        return answer

    @staticmethod
    def _classify(exc: HTTPClientError, guard: FetchGuard) -> UpstreamError:
        errno = getattr(exc, "errno", None)
        if guard.refused_address is not None:
            return UpstreamError("refused_address", "address refused by the network filter")
        if guard.abort_reason == "too_large" or errno in (23, 63):
            return UpstreamError("too_large", "answer over the size limit")
        if guard.abort_reason is not None:
            kind = "timeout" if guard.abort_reason == "deadline" else guard.abort_reason
            return UpstreamError(kind, f"aborted: {guard.abort_reason}")
        kind = _CURL_KINDS.get(errno or 0, "connect")
        if kind == "timeout":
            return UpstreamError(kind, "no answer within the deadline")
        return UpstreamError(kind, f"curl error {errno}")


_NO_TIMER = contextlib.nullcontext()


def with_defaults(request: HTTPRequest, defaults: dict[str, Any]) -> HTTPRequest:
    """``request`` with the client's defaults written into the options it leaves unset (None).

    Tornado's ``fetch()`` wraps each request in a proxy object that looks every option up in the
    request, then in the defaults: some fifty lookups through ``__getattr__`` per upstream call,
    about a sixth of curl's set-up time. Writing the few defaults in once gives the same values.
    """
    for name, value in defaults.items():
        if getattr(request, name, None) is None:
            setattr(request, name, value)
    return request


def retry_after_seconds(response: HTTPResponse) -> float | None:
    """The ``Retry-After`` of an answer in seconds (delta form only), or None."""
    value = response.headers.get("Retry-After", "").strip()
    if value.isdigit():
        return float(value)
    return None
