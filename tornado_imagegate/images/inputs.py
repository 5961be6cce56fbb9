"""Input images a client sends to edit: read from data URIs, the gateway's own links or the web.

Every input is checked the same way whatever its source: at most ``IMAGE_INPUT_MAX_BYTES``, and a
raster type recognised from its bytes (never from what the sender declares). The gateway's own
links are read from its store, never by an HTTP request to itself; other http(s) links go through
the guarded fetcher and its address filter.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re

from tornado_imagegate import errors
from tornado_imagegate.errors import GatewayError
from tornado_imagegate.images import imagetype
from tornado_imagegate.images.links import link_query
from tornado_imagegate.images.store import ImageStore
from tornado_imagegate.openai_api import ChatBody, InputImage

logger = logging.getLogger(__name__)

_DATA_URI = re.compile(r"^data:([a-z0-9.+/-]*)(;[^,]*)?,", re.IGNORECASE)
_MARKDOWN_LINK = re.compile(r"!\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?\s*\)")


def previous_link(chat: ChatBody) -> str | None:
    """The gateway's own image link in the last assistant message before the last user message
    (the conversation's previous image), or None."""
    messages = [m for m in chat.messages or () if m is not None]
    users = [i for i, m in enumerate(messages) if m.role == "user"]
    for message in reversed(messages[: users[-1]] if users else []):
        if message.role != "assistant":
            continue
        links = [url for url in _MARKDOWN_LINK.findall(message.text) if link_query(url)]
        return links[-1] if links else None
    return None


def checked_image(data: bytes, max_bytes: int, param: str = "messages") -> InputImage:
    """``data`` as an input image: 413 over ``max_bytes``, 400 if it is not a raster image."""
    if len(data) > max_bytes:
        raise errors.image_input_too_large(max_bytes, param)
    content_type = imagetype.sniff(data[: imagetype.SNIFF_BYTES])
    if content_type is None:
        raise errors.invalid_image_input(
            "An input image is not a PNG, JPEG, GIF, WebP, AVIF or BMP image.", param
        )
    return InputImage(data, content_type)


def decode_data_uri(uri: str, max_bytes: int) -> InputImage:
    """The image of a base64 ``data:`` URI (its declared type is not trusted)."""
    match = _DATA_URI.match(uri)
    if match is None or "base64" not in (match.group(2) or "").lower():
        raise errors.invalid_image_input("An image data URI must be base64: data:image/...;base64,")
    payload = uri[match.end() :]
    # Checked before decoding: base64 is four characters for three bytes.
    if len(payload) * 3 // 4 > max_bytes + 3:
        raise errors.image_input_too_large(max_bytes)
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise errors.invalid_image_input("An image data URI is not valid base64.") from None
    return checked_image(data, max_bytes)


def checked_source(url: str, max_bytes: int) -> InputImage | str:
    """What can be checked of an input without the network: a data URI decoded, the gateway's
    own link or an http(s) URL as it is (for ``load_input``), anything else 400."""
    if url[:5].lower() == "data:":
        return decode_data_uri(url, max_bytes)
    if link_query(url) is None and url[:7].lower() != "http://" and url[:8].lower() != "https://":
        raise errors.invalid_image_input("An image_url must be a data URI or an http(s) URL.")
    return url


async def load_input(store: ImageStore, url: str, max_bytes: int) -> InputImage:
    """One input image from a data URI, one of the gateway's own links, or an http(s) URL."""
    if url[:5].lower() == "data:":
        return decode_data_uri(url, max_bytes)
    query = link_query(url)
    try:
        if query is not None:
            image = await store.load_link(query)
        elif url[:7].lower() == "http://" or url[:8].lower() == "https://":
            image = await store.fetch_image(url)
        else:
            raise errors.invalid_image_input("An image_url must be a data URI or an http(s) URL.")
    except GatewayError as exc:
        if exc.code == "invalid_image_input":
            raise
        logger.info("an input image could not be loaded: %s %s", exc.code, exc.detail)
        message = exc.message[:1].lower() + exc.message[1:]
        raise errors.invalid_image_input(f"An input image could not be loaded: {message}") from None
    return checked_image(image.data, max_bytes)
