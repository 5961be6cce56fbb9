"""The seam with Tornado's curl client: ``GatewayCurlClient``, configured once at start-up.

It overrides a private method of Tornado's ``CurlAsyncHTTPClient`` and reads its private state,
so setup.cfg bounds tornado below the next minor version, and tests/test_curl_client.py
fails, naming what changed, when an installed Tornado no longer behaves as this relies on:

- ``fetch_impl(request, callback)`` queues a request (``self._requests``), starts what it can
  (``_process_queue()``) and asks for a timer at once (``_set_timeout(0)``); curl runs from
  ``self._multi.socket_action(SOCKET_TIMEOUT, 0)`` and ``_finish_pending_requests()``;
- ``_set_timeout(msecs)`` is how curl's timer requests reach the client (Tornado registers the
  bound method as curl's timer function in ``initialize()``, and calls it itself when a request
  is queued); it replaces the pending timer, ``self._timeout`` (None when there is none), with
  ``self.io_loop.add_timeout(now + msecs / 1000, ...)``;
- the timer's callback sets ``self._timeout`` back to None before it runs curl, so a timer that
  has fired is never mistaken for one still pending;
- ``self._requests`` holds the requests waiting for a free handle (``fetch_impl()`` hands a
  request to curl at once when one is free);
- ``initialize()`` takes ``max_clients`` and ``max_body_size``, and ``close()`` removes the
  pending timer and closes curl's handles;
- ``_curl_setup_request(curl, request, buffer, headers)`` configures a handle for a request, and
  ``_finish()`` resets every handle (``curl.reset()``) before it is used again, so a handle
  starts each request with libcurl's defaults (``_CurlStreamingBuffer(client, curl, callback)``
  takes a streamed answer's chunks);
- ``curl.info["buffer"]`` holds what ``_finish()`` hands to ``HTTPResponse`` as its ``buffer``
  (after ``seek(0)``, or ``close()`` when the transfer failed), read by ``getvalue()``: the
  client puts an ``AnswerBody`` there in place of Tornado's BytesIO.

The other private details the gateway relies on are in listener.py, pinned by
tests/test_inbound.py: the exact bytes of Tornado's bare answer to a framing error, and the
exception it is handling when it writes them (``framing_error_answer``, the framing tests); and
that Tornado reads a request's body, and nothing else, with ``read_bytes`` and ``read_until``
(``BodyReads``, the body timeout tests).
"""

from __future__ import annotations

import functools
import logging
from io import BytesIO, UnsupportedOperation
from typing import Any

import pycurl
from tornado import httputil
from tornado.curl_httpclient import CurlAsyncHTTPClient, _CurlStreamingBuffer, curl_log
from tornado.httpclient import HTTPRequest

# Tornado's user agent when a request names none (kept, so upstreams see no change).
DEFAULT_USER_AGENT = "Mozilla/5.0 (compatible; pycurl)"
# Sent empty, which tells libcurl not to add them (Tornado does the same).
_EMPTY_HEADERS = (b"Expect: ", b"Pragma: ")


class GatewayCurlClient(CurlAsyncHTTPClient):
    """Tornado's curl client, with a pool apart for filtered fetches, requests started at once,
    and a timer bursts cannot starve.

    In Tornado, each new request asks curl to run "now" by replacing the pending timer with a new
    one; during a burst (a thousand chat completions arriving at once) that timer was replaced
    again and again, and no upstream request started until the burst was read. Here a request
    runs curl as it is handed over, and curl's own timer requests keep an earlier pending timer.
    """

    _timer_deadline = 0.0
    _starting = False

    def initialize(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Tornado's set-up, plus the separate pool of connections opened through the filter."""
        super().initialize(*args, **kwargs)
        # Connections opened through the address filter are pooled apart: a filtered fetch may
        # reuse one of them (and its TLS session), never a connection that a trusted call (a
        # configured provider, perhaps on a private address) opened unchecked.
        self.filtered_pool = pycurl.CurlShare()
        self.filtered_pool.setopt(pycurl.SH_SHARE, pycurl.LOCK_DATA_CONNECT)

    def close(self) -> None:
        """Close the transfers, then the filtered pool's connections."""
        super().close()
        try:
            self.filtered_pool.close()
        except pycurl.error:
            pass

    def fetch_impl(self, request: Any, callback: Any) -> None:
        """Queue the request as Tornado does, then let curl start it now, not a loop turn later.

        Tornado asks curl's timer to run "now", which costs a timer and a turn of the loop on
        every upstream call; here curl runs at once, and its next timer is set from what it
        then needs.
        """
        self._starting = True
        try:
            super().fetch_impl(request, callback)
        finally:
            self._starting = False
        self._run_curl()

    def _run_curl(self) -> None:
        # As Tornado's _handle_timeout, without touching the pending timer.
        while True:
            try:
                ret, _ = self._multi.socket_action(pycurl.SOCKET_TIMEOUT, 0)
            except pycurl.error as exc:
                ret = exc.args[0]
            if ret != pycurl.E_CALL_MULTI_PERFORM:
                break
        self._finish_pending_requests()
        wanted = self._multi.timeout()
        if wanted >= 0:
            self._set_timeout(wanted)

    @property
    def queued(self) -> bool:
        """Whether requests wait for a free handle (those not yet handed to curl)."""
        return bool(self._requests)

    def _set_timeout(self, msecs: int) -> None:
        if self._starting:
            return  # fetch_impl runs curl itself, then sets the timer curl needs
        if msecs < 0:
            # curl needs no timer. Tornado would set one 1 ms in the past: an extra loop turn
            # and a call into curl for nothing, on every transfer.
            if self._timeout is not None:
                self.io_loop.remove_timeout(self._timeout)
                self._timeout = None
            return
        deadline = self.io_loop.time() + msecs / 1000.0
        if self._timeout is not None and self._timer_deadline <= deadline:
            return  # an earlier timer is already pending
        super()._set_timeout(msecs)
        self._timer_deadline = deadline

    def _curl_setup_request(
        self, curl: Any, request: Any, buffer: BytesIO, headers: httputil.HTTPHeaders
    ) -> None:
        """Configure a reset handle with what this request changes, and nothing else.

        Tornado's own set-up writes some 35 options, most of them back to the defaults the
        handle already has after ``curl.reset()``; the requests the gateway makes take this
        shorter path. Any other request (authentication, a client certificate, a header
        callback, another method, curl's debug log) goes through Tornado's.
        """
        method = request.method
        if (
            method not in ("GET", "POST")
            or request.auth_username is not None
            or request.proxy_host
            or request.header_callback is not None
            or request.network_interface
            or request.ca_certs is not None
            or request.client_cert is not None
            or request.client_key is not None
            or request.ssl_options is not None
            or request.allow_nonstandard_methods
            or curl_log.isEnabledFor(logging.DEBUG)
        ):
            super()._curl_setup_request(curl, request, buffer, headers)
            return
        lines = [
            b"%s: %s" % (name.encode("ascii"), value.encode("iso-8859-1"))
            for name, value in request.headers.get_all()
            if name not in ("Expect", "Pragma")
        ]
        if any(b"\r" in line or b"\n" in line for line in lines):
            raise ValueError("Illegal characters in header (CR or LF)")
        lines.extend(
            b"%s: %s" % (name.encode("ascii"), request.headers[name].encode("iso-8859-1"))
            if name in request.headers
            else empty
            for name, empty in zip(("Expect", "Pragma"), _EMPTY_HEADERS, strict=True)
        )
        curl.setopt(pycurl.NOSIGNAL, 1)
        curl.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        curl.setopt(pycurl.REDIR_PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        curl.setopt(pycurl.URL, request.url)
        curl.setopt(pycurl.HTTPHEADER, lines)
        curl.setopt(
            pycurl.HEADERFUNCTION, functools.partial(self._curl_header_callback, headers, None)
        )
        curl.setopt(pycurl.WRITEFUNCTION, self._write_function(curl, request, buffer))
        if request.follow_redirects:
            curl.setopt(pycurl.FOLLOWLOCATION, 1)
            curl.setopt(pycurl.MAXREDIRS, request.max_redirects)
        curl.setopt(pycurl.CONNECTTIMEOUT_MS, int(1000 * request.connect_timeout))
        curl.setopt(pycurl.TIMEOUT_MS, int(1000 * request.request_timeout))
        curl.setopt(pycurl.USERAGENT, request.user_agent or DEFAULT_USER_AGENT)
        if request.decompress_response:
            curl.setopt(pycurl.ENCODING, "gzip,deflate")
        if not request.validate_cert:
            curl.setopt(pycurl.SSL_VERIFYPEER, 0)
            curl.setopt(pycurl.SSL_VERIFYHOST, 0)
        if request.allow_ipv6 is False:
            curl.setopt(pycurl.IPRESOLVE, pycurl.IPRESOLVE_V4)
        body = request.body
        if method == "POST":
            if body is None:
                raise ValueError("Body must not be None for method POST")
            curl.setopt(pycurl.POST, 1)
            # curl sends the bytes itself (pycurl keeps them alive): no read callbacks.
            curl.setopt(pycurl.POSTFIELDS, body)
        elif body is not None:
            raise ValueError("Body must be None for GET request")
        if request.prepare_curl_callback is not None:
            request.prepare_curl_callback(curl)

    def _write_function(self, curl: Any, request: HTTPRequest, buffer: BytesIO) -> Any:
        if request.streaming_callback is not None:
            streaming_buffer = _CurlStreamingBuffer(self, curl, request.streaming_callback)
            curl.info["streaming_buffer"] = streaming_buffer
            return streaming_buffer.write
        # The answer's body goes to an AnswerBody, in place of Tornado's BytesIO.
        body = curl.info["buffer"] = AnswerBody()
        max_body_size = self.max_body_size

        def write_function(chunk: bytes) -> int:
            # As Tornado's: an answer over max_body_size fails the transfer (CURLE_WRITE_ERROR).
            if body.size + len(chunk) > max_body_size:
                curl.info["body_too_large"] = True
                return 0
            return body.write(chunk)

        return write_function


class AnswerBody:
    """An answer's body as curl delivers it: its chunks, joined once when it is read.

    Tornado collects a body in a BytesIO, which copies what it holds whenever it grows: a
    137 KB answer (100 KiB of base64) was copied about twice over on its way in. Tornado's
    ``_finish`` calls ``seek(0)`` on it (``close()`` when the transfer failed), and
    ``HTTPResponse.body`` reads it with ``getvalue()``.
    """

    __slots__ = ("_chunks", "size")

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self.size = 0

    def write(self, chunk: bytes) -> int:
        """Keep a chunk as it came (pycurl hands each one over as a bytes object of its own)."""
        self._chunks.append(chunk)
        self.size += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        """The bytes received so far."""
        return self.size

    def seek(self, offset: int, whence: int = 0) -> int:
        """Back to the start, as Tornado does before the body is read (there is no other)."""
        if offset or whence:
            raise UnsupportedOperation("an answer's body is only read whole")
        return 0

    def getvalue(self) -> bytes:
        """The whole body: its chunks joined, once."""
        chunks = self._chunks
        if len(chunks) == 1:
            return chunks[0]
        value = b"".join(chunks)
        self._chunks = [value] if value else []
        return value

    def close(self) -> None:
        """Drop what was received (a failed transfer's partial body)."""
        self._chunks = []
        self.size = 0
