"""Base handlers: CORS, bearer auth, bounded JSON bodies and the OpenAI error envelope."""

from __future__ import annotations

import hmac
import itertools
import logging
import os
import re
from typing import Any

from tornado.httputil import HTTPServerRequest
from tornado.web import (
    Application,
    HTTPError,
    RequestHandler,
    StaticFileHandler,
    stream_request_body,
)

from tornado_imagegate import errors, jsontext
from tornado_imagegate.config import Settings
from tornado_imagegate.errors import GatewayError
from tornado_imagegate.lifecycle import Lifecycle
from tornado_imagegate.openai_api import decode_json_object
from tornado_imagegate.provider_kinds import MAX_INPUT_IMAGES
from tornado_imagegate.urlpolicy import base_url

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 4 * 1024 * 1024
CORS_ALLOW_METHODS = "GET, HEAD, POST, OPTIONS"
CORS_DEFAULT_HEADERS = "Authorization, Content-Type"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


class RequestIds:
    """Request ids: a random prefix for this process, then a counter (unique, and cheap to make:
    one random draw per process, not one per request)."""

    def __init__(self) -> None:
        self.renew()

    def renew(self) -> None:
        """Draw a new prefix and restart the counter (a forked worker must not repeat its
        parent's ids)."""
        self.prefix = os.urandom(4).hex()
        self.counter = itertools.count()

    def new(self) -> str:
        """The next id: 16 hexadecimal digits."""
        return f"{self.prefix}{next(self.counter):08x}"


REQUEST_IDS = RequestIds()
os.register_at_fork(after_in_child=REQUEST_IDS.renew)


class RequestIdMixin:
    """A request id for every answer (``X-Request-Id``) and its access-log line.

    A well-formed id sent by a proxy in front is kept, so both logs tell of the same request.
    """

    request: Any
    _request_id: str | None = None

    @property
    def request_id(self) -> str:
        """This request's id, made once."""
        if self._request_id is None:
            # get_list, not get: on a header that is absent (the usual case), ``get`` raises and
            # catches a KeyError inside; joined as ``get`` joins repeated headers.
            given = ",".join(self.request.headers.get_list("X-Request-Id"))
            self._request_id = given if given and _REQUEST_ID.match(given) else REQUEST_IDS.new()
        return self._request_id

    def set_default_headers(self) -> None:
        """Every answer carries the request id (errors too: Tornado resets headers first).

        Tornado's ``Server`` header goes: it tells strangers the exact version to aim at.
        """
        self.clear_header("Server")  # type: ignore[attr-defined]
        self.set_header("X-Request-Id", self.request_id)  # type: ignore[attr-defined]


class BaseHandler(RequestIdMixin, RequestHandler):
    """Every route: request ids, CORS, OPTIONS preflight, errors as the OpenAI envelope.

    The route table gives every route the settings (``config``) and the ``lifecycle``; a
    route's own services reach its ``initialize()``.
    """

    _counted = False

    def __init__(
        self,
        application: Application,
        request: HTTPServerRequest,
        *,
        config: Settings,
        lifecycle: Lifecycle,
        **route_services: Any,
    ) -> None:
        """Keep what every route is given, then let Tornado pass the rest to ``initialize()``."""
        # Kept before Tornado's constructor runs: it sets the default headers (CORS reads the
        # settings) before it calls initialize().
        self.config = config
        self.lifecycle = lifecycle
        super().__init__(application, request, **route_services)

    def prepare(self) -> None:
        """Count the request as in flight, for a graceful shutdown."""
        self.count_in_flight()

    def count_in_flight(self) -> None:
        """Count the request as in flight until it finishes or its client leaves."""
        self._counted = True
        self.lifecycle.begin()

    def on_finish(self) -> None:
        """The request is no longer in flight."""
        if self._counted:
            self._counted = False
            self.lifecycle.end()

    def on_connection_close(self) -> None:
        """The client left: its request is no longer in flight, even if it never finishes
        (a body cut off half-way leaves the handler waiting for the rest)."""
        super().on_connection_close()
        self.on_finish()

    def set_default_headers(self) -> None:
        """Add the request id and the CORS headers to every answer, errors included."""
        super().set_default_headers()
        allowed = self.config.cors_allow_origins
        origin = self.request.headers.get("Origin")
        if "*" in allowed:
            self.set_header("Access-Control-Allow-Origin", "*")
        elif origin and origin in allowed:
            self.set_header("Access-Control-Allow-Origin", origin)
            self.add_header("Vary", "Origin")
        self.set_header("Access-Control-Expose-Headers", "X-Request-Id")

    def options(self, *args: Any, **kwargs: Any) -> None:
        """Answer a CORS preflight, before and without auth."""
        self.set_header("Access-Control-Allow-Methods", CORS_ALLOW_METHODS)
        requested = self.request.headers.get("Access-Control-Request-Headers")
        self.set_header("Access-Control-Allow-Headers", requested or CORS_DEFAULT_HEADERS)
        self.set_header("Access-Control-Max-Age", "86400")
        self.set_status(204)
        self.finish()

    def write_json(self, value: Any, status: int = 200) -> None:
        """Send ``value`` as a JSON body."""
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(jsontext.dumps(value))

    def request_base_url(self) -> str:
        """The absolute base for links in this answer."""
        config = self.config
        return base_url(
            config.public_base_url,
            self.request.protocol,
            self.request.host,
            f"{config.host}:{config.port}",
        )

    def _request_summary(self) -> str:
        # Tornado's summary (in "Uncaught exception" lines) quotes the whole URI, and image
        # links carry their capability in the query: the path alone is logged.
        return f"{self.request.method} {self.request.path} ({self.request.remote_ip})"

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        """Log gateway errors briefly, without a traceback; the unexpected with one."""
        if isinstance(value, GatewayError):
            if value.status >= 500:
                logger.warning(
                    "%s %s -> %d %s%s",
                    self.request.method,
                    self.request.path,
                    value.status,
                    value.code,
                    f": {value.detail}" if value.detail else "",
                )
            return
        if isinstance(value, HTTPError):
            super().log_exception(typ, value, tb)
            return
        # Not Tornado's own line: it appends repr(request), whose URI may be a signed link.
        logger.error("Uncaught exception %s", self._request_summary(), exc_info=(typ, value, tb))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Send every error as ``{"error": {message, type, param, code}}``."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, GatewayError):
            error = exc
        elif isinstance(exc, HTTPError):
            error = errors.from_status(exc.status_code)
        else:
            error = errors.from_status(status_code)
        self.clear_header("Content-Encoding")
        for name, value in error.headers.items():
            self.set_header(name, value)
        self.write_json(error.envelope(), status=error.status)


class ApiHandler(BaseHandler):
    """A route that needs ``Authorization: Bearer <client key>``."""

    def prepare(self) -> None:
        """Refuse requests without a valid client key (preflights pass)."""
        super().prepare()
        if self.request.method != "OPTIONS":
            self.check_client_key()

    def check_client_key(self) -> None:
        """Compare the bearer token with every client key in constant time."""
        scheme, _, token = self.request.headers.get("Authorization", "").partition(" ")
        presented = token.strip().encode()
        if scheme.lower() != "bearer" or not presented:
            raise errors.invalid_api_key()
        matched = False
        for key in self.config.client_keys:
            matched |= hmac.compare_digest(presented, key.encode())
        if not matched:
            raise errors.invalid_api_key()


def upload_body_limit(image_input_max_bytes: int) -> int:
    """The body limit of a route that takes input images: the most images it takes, each
    ``IMAGE_INPUT_MAX_BYTES`` written as base64, and the usual limit for the rest."""
    return MAX_REQUEST_BYTES + MAX_INPUT_IMAGES * image_input_max_bytes * 4 // 3


@stream_request_body
class JsonApiHandler(ApiHandler):
    """An authenticated POST route whose body is a JSON object of bounded size."""

    # A route whose body may carry input images gets room for them (upload_body_limit).
    takes_images = False

    @property
    def body_limit(self) -> int:
        """The largest body this route reads."""
        if self.takes_images:
            return upload_body_limit(self.config.image_input_max_bytes)
        return MAX_REQUEST_BYTES

    def prepare(self) -> None:
        """Check the key, then refuse a declared body over the limit before reading it."""
        self._chunks: list[bytes] = []
        self._received = 0
        super().prepare()
        declared = self.request.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.body_limit:
            raise errors.request_too_large(self.body_limit)

    def data_received(self, chunk: bytes) -> None:
        """Collect the body; past the limit, answer 413 at once rather than read the rest."""
        self._received += len(chunk)
        if self._received <= self.body_limit:
            self._chunks.append(chunk)
            return
        self._chunks.clear()
        # Once this is out, Tornado passes no more of the body on and closes the connection.
        error = errors.request_too_large(self.body_limit)
        error.headers["Connection"] = "close"
        self.send_error(error.status, exc_info=(type(error), error, None))

    def raw_body(self) -> bytes:
        """The request body (413 if it was too large)."""
        if self._received > self.body_limit:
            raise errors.request_too_large(self.body_limit)
        return b"".join(self._chunks)

    def json_body(self) -> dict[str, Any]:
        """The request body as a JSON object (400 if it is not one, 413 if it was too large)."""
        return decode_json_object(self.raw_body())


class StaticHandler(BaseHandler, StaticFileHandler):
    """The welcome page's files, with the same headers and error envelope as every route."""


class NotFoundHandler(BaseHandler):
    """Any path without a route: 404 ``path_not_found`` (a CORS preflight still gets 204)."""

    def prepare(self) -> None:
        """Refuse everything but a preflight."""
        super().prepare()
        if self.request.method != "OPTIONS":
            raise errors.path_not_found(self.request.path)
