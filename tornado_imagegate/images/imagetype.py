"""Raster image types: recognised from the bytes themselves, never from the sender's header."""

from __future__ import annotations

SNIFF_BYTES = 16

# Types served inline. SVG and anything else that can carry script are never among them.
RASTER_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp", "image/avif", "image/bmp")
# What an upstream may declare for a raster image; the bytes decide the type we serve.
ACCEPTED_DECLARED = frozenset(
    {
        *RASTER_TYPES,
        "image/jpg",
        "image/pjpeg",
        "image/x-png",
        "image/heic",
        "application/octet-stream",
        "binary/octet-stream",
        "",
    }
)


def sniff(head: bytes) -> str | None:
    """The raster type of an image from its first bytes, or None if it is not one we serve."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis"):
        return "image/avif"
    if head.startswith(b"BM") and len(head) >= 14:
        return "image/bmp"
    return None


def declared_type(header: str | None) -> str:
    """The media type of a Content-Type header, lower-cased, without parameters."""
    return (header or "").split(";", 1)[0].strip().lower()


def is_acceptable_declared(header: str | None) -> bool:
    """Whether a declared Content-Type may hold a raster image (text/html, SVG... may not)."""
    return declared_type(header) in ACCEPTED_DECLARED
