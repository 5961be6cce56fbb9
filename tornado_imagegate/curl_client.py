"""The seam with Tornado's curl client: ``GatewayCurlClient``, configured once at start-up.

It overrides a private method of Tornado's ``CurlAsyncHTTPClient`` and reads its private state,
so setup.cfg bounds tornado below the next minor version, and tests/test_curl_client.py
fails, naming what changed, when an installed Tornado no longer behaves as this relies on:

- ``_set_timeout(msecs)`` is how curl's timer requests reach the client (Tornado registers the
  bound method as curl's timer function in ``initialize()``, and calls it itself when a request
  is queued); it replaces the pending timer, ``self._timeout`` (None when there is none), with
  ``self.io_loop.add_timeout(now + msecs / 1000, ...)``;
- the timer's callback sets ``self._timeout`` back to None before it runs curl, so a timer that
  has fired is never mistaken for one still pending;
- ``initialize()`` takes ``max_clients`` and ``max_body_size``, and ``close()`` removes the
  pending timer and closes curl's handles.

The other private detail the gateway relies on is in listener.py: the exact bytes of Tornado's
bare answer to a framing error, and the exception it is handling when it writes them
(``framing_error_answer``, pinned by the framing tests of tests/test_inbound.py).
"""

from __future__ import annotations

from typing import Any

import pycurl
from tornado.curl_httpclient import CurlAsyncHTTPClient


class GatewayCurlClient(CurlAsyncHTTPClient):
    """Tornado's curl client, with a pool apart for filtered fetches and a timer bursts cannot
    starve.

    Each new request asks curl to run "now" by replacing the pending timer with a new one; during
    a burst (a thousand chat completions arriving at once) that timer was replaced again and
    again, and no upstream request started until the burst was read. Keeping the earlier timer
    lets upstream work start while requests still arrive.
    """

    _timer_deadline = 0.0

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

    def _set_timeout(self, msecs: int) -> None:
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
