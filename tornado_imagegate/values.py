"""The types of option values: each parses a variable's text strictly and shows a value readably."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

import pycurl

_KEY_TEXT = re.compile(r"^[\x21-\x7e]+$")
# Plain decimal digits only: no exponent, no hex, no underscores, no inf or nan.
_WHOLE = re.compile(r"^[+-]?[0-9]+$")
_DECIMAL = re.compile(r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)$")
# Endpoint paths of the OpenAI-style APIs: a URL ending with one of them names that API.
API_PATHS = (
    "/chat/completions",
    "/completions",
    "/images/generations",
    "/images/edits",
    "/images/variations",
    "/embeddings",
    "/responses",
    "/models",
    "/moderations",
    "/audio/speech",
    "/audio/transcriptions",
    "/audio/translations",
)
_BYTE_UNITS = (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))
# The path of a base URL: empty, or ending with an API version or with /openai.
_BASE_PATH = re.compile(r"^$|/(?:v[0-9]+[a-z0-9]*|openai)$")


@dataclass(frozen=True)
class ValueType:
    """How an option's text becomes a value, what it accepts, and how the report shows a value.

    ``parse`` raises ValueError with a short reason. A ``secret`` type's text is never echoed
    (keys, and URLs, whose user-info or query may hold a key); ``show`` never reveals a secret.
    """

    parse: Callable[[str], Any]
    accepts: str
    show: Callable[[Any], str] = str
    secret: bool = False


# --- parsers: each returns the parsed value or raises ValueError with a short reason ---


def whole_number(text: str) -> int:
    """A whole number written in plain decimal digits."""
    if not _WHOLE.match(text.strip()):
        raise ValueError("must be a whole number in decimal digits")
    return int(text)


def decimal_number(text: str) -> float:
    """A number written in plain decimal digits, with an optional fraction."""
    if not _DECIMAL.match(text.strip()):
        raise ValueError("must be a number in decimal digits (such as 30 or 2.5)")
    return float(text)


def positive_seconds(text: str) -> float:
    """A duration in seconds, more than 0."""
    value = decimal_number(text)
    if value <= 0:
        raise ValueError("must be a positive number of seconds")
    return value


def positive_int(text: str) -> int:
    """A whole number, 1 or more."""
    value = whole_number(text)
    if value <= 0:
        raise ValueError("must be a positive whole number")
    return value


def non_negative_int(text: str) -> int:
    """A whole number, 0 or more."""
    value = whole_number(text)
    if value < 0:
        raise ValueError("must be a whole number, 0 or more")
    return value


def worker_count(text: str) -> int:
    """A number of processes, 1 or more, or ``auto``: one per CPU this process may run on."""
    if text.strip().lower() == "auto":
        return len(os.sched_getaffinity(0))
    if not _WHOLE.match(text.strip()) or int(text) <= 0:
        raise ValueError("must be a whole number, 1 or more, or auto")
    return int(text)


def port(text: str) -> int:
    """A TCP port, 0 to 65535."""
    value = whole_number(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number from 0 to 65535")
    return value


def boolean(text: str) -> bool:
    """true/false, yes/no, on/off or 1/0, in any case."""
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def image_inputs(text: str) -> int | None:
    """How many input images a group takes: true (its kind's number, at least one), false (none)
    or a number; empty: its kind's number (None)."""
    stripped = text.strip()
    if not stripped:
        return None
    if _WHOLE.match(stripped):
        return non_negative_int(stripped)
    return -1 if boolean(stripped) else 0


def show_image_inputs(value: int | None) -> str:
    """The --check-config form of an ``IMAGE_GEN_INPUTS_n`` value."""
    if value is None:
        return "as the kind"
    return "true" if value < 0 else str(value)


def host(text: str) -> str:
    """A host name or address, not empty."""
    value = text.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def text_value(text: str) -> str:
    """Any text, stripped."""
    return text.strip()


def split_list(text: str) -> tuple[str, ...]:
    """Split a comma-separated variable into its non-empty, stripped items."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def keys(text: str) -> tuple[str, ...]:
    """Comma-separated keys, each printable ASCII without spaces, as an HTTP header carries it.

    A bad key is named by its position, never by its value.
    """
    items = split_list(text)
    bad = [
        f"#{position}" for position, key in enumerate(items, start=1) if not _KEY_TEXT.match(key)
    ]
    if len(bad) == 1:
        raise ValueError(f"key {bad[0]} holds a space, a control or a non-ASCII character")
    if bad:
        raise ValueError(f"keys {', '.join(bad)} hold a space, a control or a non-ASCII character")
    return items


def choice(*allowed: str, synonyms: dict[str, str] | None = None) -> Callable[[str], str]:
    """A parser accepting one of ``allowed`` (or a synonym of one) in any case."""
    spelled = {word.lower(): word for word in allowed}
    spelled.update({word.lower(): meant for word, meant in (synonyms or {}).items()})

    def parse(text: str) -> str:
        value = spelled.get(text.strip().lower())
        if value is None:
            raise ValueError("must be " + _or(allowed))
        return value

    return parse


def _or(words: tuple[str, ...]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def http_url(text: str) -> str:
    """An absolute http:// or https:// URL with a valid port."""
    url = text.strip()
    parts = _split_url(url, "must be an absolute http:// or https:// URL with a valid port")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http:// or https:// URL")
    return url


def _split_url(url: str, bad_port: str) -> SplitResult:
    """The parts of a URL; a port that is not a number up to 65535 is the problem ``bad_port``."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 (reading it validates the port)
    except ValueError:
        raise ValueError(bad_port) from None
    return parts


def plain_base_url(text: str) -> str:
    """An absolute http(s) URL without user, query or fragment; no trailing slash."""
    url = http_url(text)
    parts = urlsplit(url)
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("must be a plain base URL, without user, query or fragment")
    return url.rstrip("/")


def endpoint_url(url: str, path: str) -> str:
    """The endpoint to call for a URL given as the provider's base URL or as the endpoint itself.

    With ``path`` (``/images/generations``), a URL whose path is empty or ends with a version
    (``/v1``, ``/v1beta``, ``/api/v3``) or with ``/openai`` is a base: ``path`` is appended.
    Any other URL is the endpoint as given, so that an endpoint of any shape can be written out
    in full. A URL ending with the endpoint of another API is refused.
    """
    parts = urlsplit(url)
    trimmed = parts.path.rstrip("/")
    if path and trimmed.endswith(path):
        return url
    named = next((api for api in API_PATHS if trimmed.endswith(api)), None)
    if named is not None:
        advice = f"; give the base URL (such as https://host/v1) or its {path} endpoint"
        raise ValueError(f"ends with {named}, the endpoint of another API{advice if path else ''}")
    if path and _BASE_PATH.search(trimmed):
        return urlunsplit(parts._replace(path=trimmed + path))
    return url


def json_object(text: str) -> dict[str, Any]:
    """A JSON object (``{"steps": 30}``); its text is never quoted back in an error."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        position = f" at line {exc.lineno} column {exc.colno}" if hasattr(exc, "lineno") else ""
        raise ValueError(f"is not valid JSON{position}") from None
    if not isinstance(value, dict):
        raise ValueError(f"must be a JSON object ({{...}}), not {type(value).__name__}")
    return value


def show_json_object(value: dict[str, Any]) -> str:
    """The field names of a JSON object, never their values (one may hold a secret)."""
    return ", ".join(value) if value else "(none)"


def upstream_proxy(text: str) -> str:
    """``env``, or an http, https, socks5 or socks5h proxy URL."""
    value = text.strip()
    if value.lower() == "env":
        return "env"
    parts = _split_url(value, "must be env or a proxy URL with a valid port")
    if parts.scheme not in ("http", "https", "socks5", "socks5h") or not parts.hostname:
        raise ValueError("must be env or a proxy URL: http://, https://, socks5:// or socks5h://")
    return value


def image_fetch_proxy(text: str) -> str:
    """An http:// proxy (host and port) that tunnels, so each fetch is pinned to its address."""
    value = text.strip()
    parts = _split_url(value, "must be an http:// proxy URL with a valid port")
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
        # Only an HTTP proxy that tunnels (CONNECT) lets the gateway pin the checked address.
        raise ValueError("must be an http:// proxy URL (host and port, no path)")
    if not libcurl_can_pin():
        # Never fetch through a proxy unchecked: without CONNECT_TO the proxy resolves names.
        raise ValueError(
            "needs libcurl 7.49 or later with CONNECT_TO, to pin each fetch to the address the "
            f"gateway checked; this one is libcurl {pycurl.version_info()[1]}"
        )
    return value


def redis_url(text: str) -> str:
    """A Redis URL: ``redis://`` or ``rediss://`` with a host, or ``unix://`` with a socket path."""
    url = text.strip()
    parts = _split_url(url, "must be a redis://, rediss:// or unix:// URL with a valid port")
    if parts.scheme in ("redis", "rediss") and parts.hostname:
        return url
    if parts.scheme == "unix" and parts.path:
        return url
    raise ValueError("must be a redis://host, rediss://host or unix:///path URL")


def show_redis_url(url: str) -> str:
    """A Redis URL without its password or options; the database number stays visible."""
    return redact_url(url) if url else "none"


def libcurl_can_pin() -> bool:
    """Whether pycurl and libcurl can pin a connection to a checked address (CURLOPT_CONNECT_TO)."""
    return hasattr(pycurl, "CONNECT_TO") and pycurl.version_info()[2] >= 0x073100


# --- how the report shows values: never a secret ---


def redact_url(url: str) -> str:
    """A URL fit for logs and reports: no user-info, query or fragment (they may carry keys)."""
    parts = urlsplit(url)
    hostname = parts.hostname or ""
    if ":" in hostname:
        hostname = f"[{hostname}]"
    shown_port = f":{parts.port}" if parts.port else ""
    suffix = "?..." if parts.query else ""
    return f"{parts.scheme}://{hostname}{shown_port}{parts.path}{suffix}"


def show_bytes(value: int) -> str:
    """A size in the largest binary unit it fills (``256 MiB``), with the bytes when rounded."""
    unit, size = next(((unit, size) for unit, size in _BYTE_UNITS if value >= size), ("", 1))
    if not unit:
        return f"{value} byte{'' if value == 1 else 's'}"
    shown = f"{value / size:.1f}".removesuffix(".0")
    exact = float(shown) * size == value
    return f"{shown} {unit}" + ("" if exact else f" ({value} bytes)")


def show_seconds(value: float) -> str:
    """A duration as it would be written back: ``30 s``, ``2592000 s``, ``0.5 s`` (no exponent)."""
    return (f"{value:f}".rstrip("0").rstrip(".") or "0") + " s"


def show_boolean(value: bool) -> str:
    """``true`` or ``false``, as the variable is written."""
    return "true" if value else "false"


def show_list(value: tuple[str, ...]) -> str:
    """A comma-separated list."""
    return ", ".join(value)


def show_keys(value: tuple[str, ...]) -> str:
    """How many keys, never which."""
    if not value:
        return "none"
    return f"{len(value)} key{'' if len(value) == 1 else 's'}"


def show_set(value: str) -> str:
    """Whether a secret is set, never what it is."""
    return "set" if value else "not set"


def show_proxy(proxy: str) -> str:
    """A proxy setting: none, the environment's, or its URL without user-info."""
    if not proxy:
        return "none"
    if proxy == "env":
        return "from the environment (http_proxy, https_proxy, all_proxy, no_proxy)"
    return redact_url(proxy)


# --- the types ---

HOST = ValueType(host, "a host name or address")
PORT = ValueType(port, "a port number, 0 to 65535 (0: any free port)")
SECONDS = ValueType(positive_seconds, "seconds, more than 0", show_seconds)
BYTES = ValueType(positive_int, "bytes, 1 or more", show_bytes)
COUNT = ValueType(positive_int, "a whole number, 1 or more")
WORKERS = ValueType(worker_count, "a whole number, 1 or more, or auto (one per CPU)")
INDEX = ValueType(non_negative_int, "a whole number, 0 or more")
BOOLEAN = ValueType(boolean, "true or false", show_boolean)
TEXT = ValueType(text_value, "text")
NAMES = ValueType(split_list, "a comma-separated list", show_list)
KEYS = ValueType(keys, "comma-separated keys", show_keys, secret=True)
SECRET = ValueType(text_value, "text", show_set, secret=True)
PUBLIC_URL = ValueType(plain_base_url, "an absolute http(s) URL", redact_url, secret=True)
ENDPOINT = ValueType(http_url, "the provider's base URL or its full endpoint", redact_url, True)
API_URL = ValueType(plain_base_url, "a base URL or full endpoint, no query", redact_url, True)
PROXY = ValueType(upstream_proxy, "env, or an http(s) or socks5(h) proxy URL", show_proxy, True)
FETCH_PROXY = ValueType(image_fetch_proxy, "an http://host:port proxy", show_proxy, True)
IMAGE_INPUTS = ValueType(image_inputs, "true, false or a number of images", show_image_inputs)
JSON_OBJECT = ValueType(json_object, "a JSON object", show_json_object, secret=True)
REDIS_URL = ValueType(redis_url, "a redis://, rediss:// or unix:// URL", show_redis_url, True)


def one_of(*allowed: str, synonyms: dict[str, str] | None = None) -> ValueType:
    """A type accepting one of ``allowed`` words, in any case."""
    return ValueType(choice(*allowed, synonyms=synonyms), _or(allowed))
