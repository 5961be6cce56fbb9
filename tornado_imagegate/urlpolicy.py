"""Image links the gateway hands out: unforgeable ids, and the base URL that makes them absolute."""

from __future__ import annotations

import re
import secrets
from urllib.parse import urlencode

IMAGE_PROXY_PATH = "/image-proxy"
_IMAGE_ID = re.compile(r"^[0-9a-f]{32}$")
_SAFE_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


def new_image_id() -> str:
    """A random 128-bit id: knowing one link tells nothing about any other."""
    return secrets.token_hex(16)


def is_image_id(value: str) -> bool:
    """Whether ``value`` has the form of an id this gateway issues."""
    return bool(_IMAGE_ID.match(value))


def image_link(base_url: str, image_id: str) -> str:
    """The absolute link that serves a stored image."""
    return f"{base_url}{IMAGE_PROXY_PATH}?{urlencode({'id': image_id})}"


def base_url(public_base_url: str, scheme: str, host_header: str, fallback_host: str) -> str:
    """``PUBLIC_BASE_URL``, else the request's scheme and Host when that is a plain host name."""
    if public_base_url:
        return public_base_url
    host = host_header if _SAFE_HOST.match(host_header or "") else fallback_host
    return f"{scheme}://{host}"
