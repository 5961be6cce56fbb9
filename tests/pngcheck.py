"""A small PNG reader for tests: checks the signature and CRCs, returns the IHDR fields."""

from __future__ import annotations

import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_info(data: bytes) -> dict[str, int]:
    """Validate a PNG's chunks and return width, height, bit depth and colour type."""
    assert data[:8] == PNG_SIGNATURE, "not a PNG"
    offset, info, idat = 8, {}, b""
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        payload = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert zlib.crc32(kind + payload) == crc, f"bad CRC in {kind!r}"
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", payload[:10])
            info = {"width": width, "height": height, "depth": depth, "colour": colour}
        elif kind == b"IDAT":
            idat += payload
        offset += 12 + length
        if kind == b"IEND":
            break
    assert info, "no IHDR"
    raw = zlib.decompress(idat)
    channels = {2: 3, 6: 4, 0: 1}[info["colour"]]
    assert len(raw) == info["height"] * (1 + info["width"] * channels), "wrong pixel data size"
    return info
