"""Tests for the standard-library PNG renderer of the demo provider."""

from __future__ import annotations

import struct
import zlib

import pytest

from tornado_imagegate.demo_render import render_png

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """Split a PNG into (type, payload) chunks, checking the signature and every CRC."""
    assert data[:8] == PNG_SIGNATURE
    chunks = []
    pos = 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag = data[pos + 4 : pos + 8]
        payload = data[pos + 8 : pos + 8 + length]
        assert len(payload) == length, f"truncated {tag!r} chunk"
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(tag + payload) & 0xFFFFFFFF, f"bad CRC in {tag!r}"
        chunks.append((tag, payload))
        pos += 12 + length
    assert pos == len(data)
    assert chunks[0][0] == b"IHDR"
    assert chunks[-1] == (b"IEND", b"")
    return chunks


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGB non-interlaced PNG with filter-0 rows into (width, height, rows)."""
    chunks = _chunks(data)
    width, height, depth, colour, comp, filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour, comp, filt, interlace) == (8, 2, 0, 0, 0)
    raw = zlib.decompress(b"".join(payload for tag, payload in chunks if tag == b"IDAT"))
    stride = 3 * width
    assert len(raw) == height * (stride + 1)
    rows = []
    for y in range(height):
        start = y * (stride + 1)
        assert raw[start] == 0, f"row {y} uses filter type {raw[start]}"
        rows.append(raw[start + 1 : start + 1 + stride])
    return width, height, rows


def _text_chunks(data: bytes) -> dict[str, str]:
    texts = {}
    for tag, payload in _chunks(data):
        if tag == b"tEXt":
            key, _, value = payload.partition(b"\0")
            texts[key.decode("latin-1")] = value.decode("latin-1")
    return texts


def _pixels(rows: list[bytes]) -> list[bytes]:
    return [row[i : i + 3] for row in rows for i in range(0, len(row), 3)]


def _differing_fraction(a: bytes, b: bytes) -> float:
    pa, pb = _pixels(decode_png(a)[2]), _pixels(decode_png(b)[2])
    assert len(pa) == len(pb)
    return sum(x != y for x, y in zip(pa, pb, strict=True)) / len(pa)


def _near_white(px: bytes) -> bool:
    return min(px) >= 220


@pytest.mark.parametrize(
    ("width", "height"),
    [(64, 64), (1024, 576), (576, 1024), (777, 333), (1024, 1024), (2048, 2048), (1, 1)],
)
def test_valid_png_with_exact_size(width: int, height: int) -> None:
    got_w, got_h, rows = decode_png(render_png("a red fox in the snow", 7, width, height))
    assert (got_w, got_h) == (width, height)
    assert len(rows) == height
    assert all(len(row) == 3 * width for row in rows)


def test_deterministic() -> None:
    a = render_png("a lighthouse at dusk", 42, 512, 384)
    b = render_png("a lighthouse at dusk", 42, 512, 384)
    assert a == b


def test_different_prompt_changes_pixels() -> None:
    a = render_png("a lighthouse at dusk", 42, 256, 256)
    b = render_png("a lighthouse at dawn", 42, 256, 256)
    assert _differing_fraction(a, b) > 0.10


def test_different_seed_changes_pixels() -> None:
    a = render_png("a lighthouse at dusk", 42, 256, 256)
    b = render_png("a lighthouse at dusk", 43, 256, 256)
    assert _differing_fraction(a, b) > 0.10


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 12345])
def test_not_a_flat_image(seed: int) -> None:
    _, _, rows = decode_png(render_png("abstract", seed, 320, 240))
    assert len(set(_pixels(rows))) >= 20


@pytest.mark.parametrize(
    ("seed", "width", "height"), [(1, 1024, 576), (2, 576, 1024), (3, 200, 120)]
)
def test_label_present_bottom_left(seed: int, width: int, height: int) -> None:
    _, _, rows = decode_png(render_png("a quiet harbour", seed, width, height))
    corner = [row[: 3 * (width // 2)] for row in rows[height - height // 4 :]]
    corner_pixels = _pixels(corner)
    assert sum(_near_white(px) for px in corner_pixels) >= 50
    assert sum(max(px) <= 40 for px in corner_pixels) >= 50  # the dark backing box
    # Nothing but the label is near-white: the rest of the image has none.
    top = _pixels(rows[: height - height // 4])
    assert not any(_near_white(px) for px in top)


def test_label_is_the_same_for_any_seed() -> None:
    def white_mask(seed: int) -> list[bool]:
        _, _, rows = decode_png(render_png("whatever", seed, 640, 480))
        return [_near_white(px) for px in _pixels(rows[400:])]

    assert any(white_mask(5))
    assert white_mask(5) == white_mask(6)


def test_label_skipped_when_too_narrow() -> None:
    _, _, rows = decode_png(render_png("tiny", 9, 64, 64))
    assert not any(_near_white(px) for px in _pixels(rows))


def test_text_chunks_are_honest_and_keep_the_prompt_private() -> None:
    prompt = "my very private prompt"
    data = render_png(prompt, 31337, 128, 128)
    texts = _text_chunks(data)
    assert "demo" in texts["Software"]
    assert "not a model" in texts["Software"]
    assert "31337" in texts["Comment"]
    assert prompt.encode() not in data
    assert all(prompt not in value for value in texts.values())


def test_unicode_prompt() -> None:
    _, _, rows = decode_png(render_png("un chat sur un toit, été 🌞", 3, 96, 96))
    assert len(rows) == 96


@pytest.mark.parametrize(
    ("width", "height"),
    [
        (0, 64),
        (64, 0),
        (-1, 64),
        (4097, 64),
        (64, 4097),
        (64.0, 64),
        (64, "64"),
        (True, 64),
        (None, 64),
    ],
)
def test_bad_sizes_raise_value_error(width: object, height: object) -> None:
    with pytest.raises(ValueError):
        render_png("x", 1, width, height)  # type: ignore[arg-type]
