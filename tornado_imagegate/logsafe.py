"""Logging that never carries a secret: access lines without query strings, curl kept quiet."""

from __future__ import annotations

import logging
import sys
from typing import Any

access_log = logging.getLogger("tornado.access")


def log_request(handler: Any) -> None:
    """One access line per request (status, method, path without query, time, request id).

    The query is left out: image links are capabilities, and nothing else belongs in a log.
    Also counts the request in the metrics.
    """
    status = handler.get_status()
    request = handler.request
    seconds = request.request_time()
    metrics = handler.application.settings.get("metrics")
    route = getattr(handler, "route_name", type(handler).__name__)
    if metrics is not None:
        metrics.count_request(route, request.method, status, seconds)
    if status < 400:
        log = access_log.info
    elif status < 500:
        log = access_log.warning
    else:
        log = access_log.error
    request_id = getattr(handler, "request_id", "-")
    log("%d %s %s %.1fms id=%s", status, request.method, request.path, 1000.0 * seconds, request_id)


def configure_logging(level: str) -> None:
    """Log to stderr (unbuffered under systemd) at ``level``, keeping curl's verbose mode off."""
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    keep_curl_quiet()


def keep_curl_quiet() -> None:
    """Keep Tornado's curl logger above DEBUG, where it turns on curl's verbose mode.

    curl's verbose output prints request headers, ``Authorization`` included.
    """
    root_level = logging.getLogger().getEffectiveLevel()
    logging.getLogger("tornado.curl_httpclient").setLevel(max(logging.INFO, root_level))
