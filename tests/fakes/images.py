"""Image bytes for fakes, tests and benches: real PNGs, incompressible noise, exact sizes."""

from __future__ import annotations

import base64
import os
import random
import struct
import zlib

from tornado_imagegate.demo_render import render_png

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NOISE_WIDTH = 192
_TEXT_KEYWORD = b"Comment\0"


def png_bytes(size: int = 64, seed: int = 1, text: str = "fake origin image") -> bytes:
    """A real, decodable PNG, the same for the same arguments."""
    return render_png(text, seed, size, size)


def png_of_length(length: int) -> bytes:
    """Bytes of exactly ``length`` that start like a PNG (enough for the gateway's checks)."""
    head = PNG_SIGNATURE + struct.pack(">I", 13) + b"IHDR"
    return head + os.urandom(max(0, length - len(head)))


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(kind + payload))
    return struct.pack(">I", len(payload)) + kind + payload + crc


def noise_png(
    width: int, height: int, rng: random.Random | None = None, comment: bytes | None = None
) -> bytes:
    """A decodable RGB PNG of random pixels (it does not compress: about 3 bytes a pixel).

    With ``rng`` the pixels are reproducible; a ``comment`` goes in a ``tEXt`` chunk.
    """
    row = 1 + 3 * width
    raw = bytearray(rng.randbytes(height * row) if rng is not None else os.urandom(height * row))
    raw[::row] = bytes(height)  # filter type 0 (None) before every row
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    text = _chunk(b"tEXt", _TEXT_KEYWORD + comment) if comment is not None else b""
    return b"".join(
        (
            PNG_SIGNATURE,
            _chunk(b"IHDR", ihdr),
            text,
            _chunk(b"IDAT", zlib.compress(bytes(raw), 0)),
            _chunk(b"IEND", b""),
        )
    )


def noise_png_of_size(size: int, rng: random.Random, width: int = NOISE_WIDTH) -> bytes:
    """An RGB-noise PNG of exactly ``size`` bytes: the pixels fill it, a ``tEXt`` chunk pads it.

    Noise does not compress, like a photograph, so the file is nearly all pixels.
    """
    row = 1 + 3 * width
    height = max(1, (size - 256) // row)

    def length(height: int) -> int:
        # Stored (level 0) deflate: the length does not depend on the pixels.
        pixels = len(zlib.compress(bytes(height * row), 0))
        return len(PNG_SIGNATURE) + (12 + 13) + (12 + len(_TEXT_KEYWORD)) + (12 + pixels) + 12

    while height > 1 and length(height) > size:
        height -= 1
    return noise_png(width, height, rng, comment=b"x" * max(0, size - length(height)))


def b64_png(png: bytes | None = None) -> str:
    """Base64 text of a PNG (a fresh small one when none is given)."""
    return base64.b64encode(png if png is not None else png_bytes()).decode("ascii")


def data_uri(png: bytes | None = None) -> str:
    """A ``data:image/png;base64,...`` URI of a PNG (a fresh small one when none is given)."""
    return "data:image/png;base64," + b64_png(png)


def jpeg_bytes(seed: int = 1) -> bytes:
    """Bytes shaped like a baseline JPEG (SOI, a JFIF APP0, payload, EOI): enough to sniff."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0"
    return b"\xff\xd8" + app0 + random.Random(seed).randbytes(64) + b"\xff\xd9"


def webp_bytes(seed: int = 1) -> bytes:
    """Bytes shaped like a lossy WebP (a RIFF ``WEBP`` container with a VP8 chunk)."""
    payload = random.Random(seed).randbytes(64)
    chunk = b"VP8 " + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk
