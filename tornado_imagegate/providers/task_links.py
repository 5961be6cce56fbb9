"""What the BFL, Replicate and fal task APIs share: keyed requests, and which task links to follow.

These APIs answer a submission with the URLs to poll, fetch and cancel the task. The key goes
with every one of those requests, so a URL is followed only when it belongs to the configured
service (its host, or a sibling under the same domain over https, as BFL's ``api.us1.bfl.ai``
polling URLs are for ``api.bfl.ai``); any other is replaced by the URL built from the task id.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from tornado.httpclient import HTTPRequest

from tornado_imagegate import jsontext

_PERCENT = re.compile(r"(?<![\d.])(\d{1,3})(?:\.\d+)?\s*%")


def keyed_request(
    url: str, headers: dict[str, str], method: str = "GET", body: dict[str, Any] | None = None
) -> HTTPRequest:
    """A request with the API's key headers; a JSON body when given (PUT and POST send one)."""
    all_headers = {"Accept": "application/json", **headers}
    payload: bytes | None = None
    if body is not None:
        all_headers["Content-Type"] = "application/json"
        payload = jsontext.dumps(body)
    elif method in ("POST", "PUT"):
        payload = b""
    return HTTPRequest(
        url, method=method, headers=all_headers, body=payload, follow_redirects=False
    )


def _domain(host: str) -> str:
    """``bfl.ai`` for ``api.bfl.ai``: the host without its first label (hosts of 3+ labels)."""
    labels = host.split(".")
    if len(labels) >= 3 and not host.replace(".", "").isdigit():
        return ".".join(labels[1:])
    return host


def same_service(url: str, endpoint: str) -> bool:
    """Whether ``url`` belongs to the service at ``endpoint`` and may receive its key."""
    try:
        link, base = urlsplit(url), urlsplit(endpoint)
        link_port, base_port = link.port, base.port
    except ValueError:
        return False
    if not link.hostname or not base.hostname or link.scheme not in ("http", "https"):
        return False
    if (link.scheme, link.hostname, link_port) == (base.scheme, base.hostname, base_port):
        return True
    domain = _domain(base.hostname)
    return (
        link.scheme == "https"
        and domain != base.hostname
        and (link.hostname == domain or link.hostname.endswith("." + domain))
    )


def service_url(given: Any, endpoint: str) -> str:
    """``given`` when it is a URL of the service at ``endpoint``; else "" (build it from the id)."""
    return given if isinstance(given, str) and same_service(given, endpoint) else ""


def last_percent(text: Any) -> int | None:
    """The last ``NN%`` in a progress log (tqdm bars, "40% done"), 0 to 100; None when none."""
    if not isinstance(text, str):
        return None
    found = [int(value) for value in _PERCENT.findall(text) if int(value) <= 100]
    return found[-1] if found else None


def text_of(value: Any) -> str:
    """The strings inside a provider's free-form reason (a string, list or object), joined."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, dict):
        parts = [text_of(item) for item in value.values()]
    elif isinstance(value, list):
        parts = [text_of(item) for item in value]
    else:
        return ""
    return "; ".join(part for part in parts if part)
