"""Logging that never carries a secret: access lines without query strings, curl kept quiet,
and a filter on every log handler that removes keys, secrets and signed links from any line."""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tornado_imagegate.metrics import Metrics

access_log = logging.getLogger("tornado.access")
ACCESS_LINE = "%d %s %s %.1fms id=%s"
# What logging records when it is told not to look for the caller (``logging._srcfile = None``).
NO_CALLER = ("(unknown file)", "(unknown function)")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_request(handler: Any, metrics: Metrics | None = None) -> None:
    """One access line per request (status, method, path without query, time, request id).

    The query is left out: image links are capabilities, and nothing else belongs in a log.
    Also counts the request in ``metrics`` (bound by ``make_app``, as Tornado's
    ``log_function`` is given the handler alone).
    """
    status = handler.get_status()
    request = handler.request
    seconds = request.request_time()
    if metrics is not None:
        route = getattr(handler, "route_name", type(handler).__name__)
        metrics.count_request(route, request.method, status, seconds)
    if status < 400:
        level = logging.INFO
    elif status < 500:
        level = logging.WARNING
    else:
        level = logging.ERROR
    if not access_log.isEnabledFor(level):
        return  # nothing to format
    request_id = getattr(handler, "request_id", "-")
    args = (status, request.method, request.path, 1000 * seconds, request_id)
    # The record is made here, not by ``access_log.log``: that walks the stack for the calling
    # line on every request, and no line of the access log shows it.
    access_log.handle(
        access_log.makeRecord(
            access_log.name, level, NO_CALLER[0], 0, ACCESS_LINE, args, None, NO_CALLER[1]
        )
    )


REDACTED = "[redacted]"
# Shorter "secrets" would blank out ordinary words; every real key is longer.
MIN_SECRET_CHARS = 8
# Credentials in an HTTP header, as Tornado may quote a malformed request's header block.
_CREDENTIAL_HEADER = re.compile(
    r"(?i)\b((?:proxy-)?authorization|x-api-key|api-key|cookie)(\s*[:=]\s*)[^\r\n'\"]*"
)
# What every match of _CREDENTIAL_HEADER contains, in lower case.
_CREDENTIAL_WORDS = ("authorization", "api-key", "cookie")
# Image links are capabilities: the query of /image-proxy, and any signed-link field.
_IMAGE_LINK_QUERY = re.compile(r"(/image-proxy\?)[^\s'\"<>)]*")
_SIGNED_FIELD = re.compile(r"([?&](?:s|u|id)=)[A-Za-z0-9_\-%.=]+")
_URL_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/\s@'\"]+@", re.IGNORECASE)


def may_name_credential(text: str) -> bool:
    """Whether ``text`` may hold a credential header (``_CREDENTIAL_HEADER`` can only match
    where this is true)."""
    if not text.isascii():
        return True  # case-insensitive matching also pairs a few non-ASCII letters with ASCII
    lowered = text.lower()
    return any(word in lowered for word in _CREDENTIAL_WORDS)


class SecretFilter(logging.Filter):
    """Rewrites any log record that would show a configured secret, a credential header, a URL's
    user-info or a signed image link; installed on log handlers, so it sees every logger's lines.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Also hide these values, as written and as ``repr`` would escape them."""
        forms = set(self.secrets)
        for secret in secrets:
            if secret and len(secret) >= MIN_SECRET_CHARS:
                forms.update({secret, repr(secret)[1:-1], secret.encode("unicode_escape").decode()})
        self.secrets = sorted(forms, key=len, reverse=True)

    def redact(self, text: str) -> str:
        """``text`` without anything this filter hides."""
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        # Each pattern runs only where the literal text it needs is present: a line that cannot
        # match (an access line, say) costs a few substring tests instead of three regex scans.
        if "://" in text:
            text = _URL_USERINFO.sub(rf"\1{REDACTED}@", text)
        if "=" in text:
            if "/image-proxy?" in text:
                text = _IMAGE_LINK_QUERY.sub(rf"\1{REDACTED}", text)
            if "?" in text or "&" in text:
                text = _SIGNED_FIELD.sub(rf"\1{REDACTED}", text)
        if may_name_credential(text):
            text = _CREDENTIAL_HEADER.sub(rf"\1\2{REDACTED}", text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message and traceback text in place; never drop a record."""
        message = record.getMessage()
        # The formatted message replaces msg and args either way, so that the formatter does
        # not %-format the line a second time.
        record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
            record.exc_info = None  # the formatter now prints the cleaned text
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


SECRET_FILTER = SecretFilter()


def hide_secrets(secrets: Iterable[str]) -> None:
    """Hide these values from every log line, and filter every handler of the root logger."""
    SECRET_FILTER.add(secrets)
    for handler in logging.getLogger().handlers:
        if SECRET_FILTER not in handler.filters:
            handler.addFilter(SECRET_FILTER)


class SecondFormatter(logging.Formatter):
    """logging's Formatter, formatting the date and time once per second rather than once per
    line (an access line a request: ``strftime`` was most of a line's formatting)."""

    _second: int | None = None
    _text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """``asctime`` as logging's Formatter writes it: local time, then milliseconds."""
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._text = time.strftime(self.default_time_format, self.converter(record.created))
            self._second = second
        return self.default_msec_format % (self._text, record.msecs)


def configure_logging(level: str) -> None:
    """Log to stderr (unbuffered under systemd) at ``level``, keeping curl's verbose mode off."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SecondFormatter(LOG_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
    hide_secrets(())
    keep_curl_quiet()


def keep_curl_quiet() -> None:
    """Keep Tornado's curl logger above DEBUG, where it turns on curl's verbose mode.

    curl's verbose output prints request headers, ``Authorization`` included.
    """
    root_level = logging.getLogger().getEffectiveLevel()
    logging.getLogger("tornado.curl_httpclient").setLevel(max(logging.INFO, root_level))
