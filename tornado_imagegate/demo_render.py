"""Deterministic abstract PNG renderer for the offline demo provider (standard library only)."""

from __future__ import annotations

import colorsys
import hashlib
import math
import random
import struct
import zlib

__all__ = ["render_png"]

_MIN_SIDE = 1
_MAX_SIDE = 4096
_ZLIB_LEVEL = 6
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SOFTWARE = "tornado-imagegate demo provider (not a model)"

_LABEL = "IMAGEGATE DEMO"
_TEXT_RGB = bytes((246, 246, 240))
_BOX_RGB = bytes((16, 16, 22))
_LABEL_MARGIN_UNITS = 3  # gap between the backing box and the image edges, in scale units
_LABEL_PAD_UNITS = 1  # backing-box padding around the glyphs, in scale units

_GLYPH_W = 5
_GLYPH_H = 7
# 5x7 bitmap glyphs, one string per row, "#" = ink.
_GLYPHS: dict[str, tuple[str, ...]] = {
    " ": (".....", ".....", ".....", ".....", ".....", ".....", "....."),
    "A": (".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "D": ("####.", "#...#", "#...#", "#...#", "#...#", "#...#", "####."),
    "E": ("#####", "#....", "#....", "####.", "#....", "#....", "#####"),
    "G": (".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####"),
    "I": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "#####"),
    "M": ("#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"),
    "O": (".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "T": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."),
}

# A span is (x0, x1, rgb): pixels x0 <= x < x1 of one row are painted with rgb.
_Span = tuple[int, int, bytes]


def render_png(prompt: str, seed: int, width: int, height: int) -> bytes:
    """Return a deterministic abstract PNG (8-bit RGB) of width x height for prompt and seed."""
    _check_side("width", width)
    _check_side("height", height)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")

    digest = hashlib.sha256(f"{seed}\0{prompt}".encode()).digest()
    rng = random.Random(int.from_bytes(digest, "big"))  # noqa: S311 (pictures, not secrets)

    hue = rng.random()
    background = _background_rows(rng, hue, width, height)
    spans: list[list[_Span]] = [[] for _ in range(height)]
    _add_shapes(rng, hue, width, height, spans)
    _add_label(width, height, spans)

    rows = []
    for y, row_bg in enumerate(background):
        row_spans = spans[y]
        if not row_spans:
            rows.append(row_bg)
            continue
        row = bytearray(row_bg)
        for x0, x1, rgb in row_spans:
            row[3 * x0 : 3 * x1] = rgb * (x1 - x0)
        rows.append(row)

    raw = b"\x00" + b"\x00".join(rows)  # filter type 0 (None) before every row
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"".join(
        (
            _PNG_SIGNATURE,
            _chunk(b"IHDR", ihdr),
            _chunk(b"tEXt", b"Software\0" + _SOFTWARE.encode("latin-1")),
            _chunk(b"tEXt", f"Comment\0seed={seed}".encode("latin-1")),
            _chunk(b"IDAT", zlib.compress(raw, _ZLIB_LEVEL)),
            _chunk(b"IEND", b""),
        )
    )


def _check_side(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if not _MIN_SIDE <= value <= _MAX_SIDE:
        raise ValueError(f"{name} must be in {_MIN_SIDE}..{_MAX_SIDE}, got {value}")


def _chunk(tag: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(tag)) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)


def _hsv(h: float, s: float, v: float) -> bytes:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return bytes((round(r * 255), round(g * 255), round(b * 255)))


def _lerp_rgb(c0: bytes, c1: bytes, t: float) -> bytes:
    t = t * t * (3.0 - 2.0 * t)  # smoothstep for a softer poster-like blend
    return bytes(round(a + (b - a) * t) for a, b in zip(c0, c1, strict=True))


def _background_rows(rng: random.Random, hue: float, width: int, height: int) -> list[bytes]:
    """One background row per y: a vertical or diagonal gradient between two derived colours."""
    c0 = _hsv(hue + rng.uniform(-0.05, 0.05), rng.uniform(0.35, 0.75), rng.uniform(0.15, 0.4))
    c1 = _hsv(hue + rng.uniform(0.08, 0.3), rng.uniform(0.35, 0.8), rng.uniform(0.55, 0.85))
    if rng.random() < 0.5:
        c0, c1 = c1, c0
    mode = rng.choice(("vertical", "diagonal", "antidiagonal"))

    if mode == "vertical":
        cache: dict[bytes, bytes] = {}
        rows = []
        for y in range(height):
            rgb = _lerp_rgb(c0, c1, y / max(1, height - 1))
            row = cache.get(rgb)
            if row is None:
                row = cache[rgb] = rgb * width
            rows.append(row)
        return rows

    # Diagonal: one long gradient line; each row is a window of it shifted by one pixel per row.
    n = width + height - 1
    line = b"".join(_lerp_rgb(c0, c1, i / max(1, n - 1)) for i in range(n))
    stride = 3 * width
    if mode == "diagonal":
        return [line[3 * y : 3 * y + stride] for y in range(height)]
    return [line[3 * (height - 1 - y) : 3 * (height - 1 - y) + stride] for y in range(height)]


def _add_shapes(
    rng: random.Random, hue: float, width: int, height: int, spans: list[list[_Span]]
) -> None:
    """Append the spans of 3-7 derived discs and rectangles, each with a dark drop shadow."""
    short = min(width, height)
    offset = max(1, short // 90)
    count = rng.randint(3, 7)
    # Latin-hypercube placement: every shape gets its own column and row band, so the
    # shapes spread over the whole canvas instead of clumping.
    cols, rows = list(range(count)), list(range(count))
    rng.shuffle(cols)
    rng.shuffle(rows)
    for i in range(count):
        rgb = _hsv(
            hue + 0.5 + i * 0.618 + rng.uniform(-0.06, 0.06),
            rng.uniform(0.45, 0.95),
            rng.uniform(0.6, 0.95),
        )
        shadow = bytes(c // 4 for c in rgb)
        cx = ((cols[i] + rng.random()) / count * 1.1 - 0.05) * width
        cy = ((rows[i] + rng.random()) / count * 1.1 - 0.05) * height
        if rng.random() < 0.55:
            radius = rng.uniform(0.07, 0.3) * short + 1.0
            _disc(cx + offset, cy + offset, radius, shadow, width, height, spans)
            _disc(cx, cy, radius, rgb, width, height, spans)
        else:
            rw = rng.uniform(0.1, 0.5) * width + 1.0
            rh = rng.uniform(0.05, 0.4) * height + 1.0
            x0, y0 = cx - rw / 2, cy - rh / 2
            _rect(x0 + offset, y0 + offset, rw, rh, shadow, width, height, spans)
            _rect(x0, y0, rw, rh, rgb, width, height, spans)


def _disc(
    cx: float,
    cy: float,
    radius: float,
    rgb: bytes,
    width: int,
    height: int,
    spans: list[list[_Span]],
) -> None:
    r2 = radius * radius
    for y in range(max(0, math.floor(cy - radius)), min(height, math.ceil(cy + radius) + 1)):
        dy = y + 0.5 - cy
        if dy * dy >= r2:
            continue
        half = math.sqrt(r2 - dy * dy)
        x0 = max(0, math.ceil(cx - half - 0.5))
        x1 = min(width, math.floor(cx + half - 0.5) + 1)
        if x0 < x1:
            spans[y].append((x0, x1, rgb))


def _rect(
    x: float,
    y: float,
    w: float,
    h: float,
    rgb: bytes,
    width: int,
    height: int,
    spans: list[list[_Span]],
) -> None:
    x0, x1 = max(0, round(x)), min(width, round(x + w))
    y0, y1 = max(0, round(y)), min(height, round(y + h))
    if x0 >= x1:
        return
    span = (x0, x1, rgb)
    for row in range(y0, y1):
        spans[row].append(span)


def _label_runs() -> list[list[tuple[int, int]]]:
    """Per glyph row, the merged ink runs of the whole label in font units."""
    runs: list[list[tuple[int, int]]] = []
    for r in range(_GLYPH_H):
        bits = ".".join(_GLYPHS[ch][r] for ch in _LABEL)  # 1-unit gap between glyphs
        row_runs: list[tuple[int, int]] = []
        start = None
        for u, bit in enumerate(bits + "."):
            if bit == "#" and start is None:
                start = u
            elif bit != "#" and start is not None:
                row_runs.append((start, u))
                start = None
        runs.append(row_runs)
    return runs


_LABEL_RUNS = _label_runs()
_LABEL_TEXT_UNITS = len(_LABEL) * (_GLYPH_W + 1) - 1
_LABEL_BOX_W = _LABEL_TEXT_UNITS + 2 * _LABEL_PAD_UNITS
_LABEL_BOX_H = _GLYPH_H + 2 * _LABEL_PAD_UNITS


def _label_scale(width: int, height: int) -> int:
    """Largest integer scale (at most the size-proportional one) that fits; 0 means skip."""
    scale = max(1, min(width, height) // 160)
    need_w = _LABEL_BOX_W + 2 * _LABEL_MARGIN_UNITS
    need_h = _LABEL_BOX_H + 2 * _LABEL_MARGIN_UNITS
    while scale > 0 and (need_w * scale > width or need_h * scale > height):
        scale -= 1
    return scale


def _add_label(width: int, height: int, spans: list[list[_Span]]) -> None:
    """Append the spans of the bottom-left "IMAGEGATE DEMO" label on its dark backing box."""
    scale = _label_scale(width, height)
    if scale == 0:
        return
    left = _LABEL_MARGIN_UNITS * scale
    top = height - (_LABEL_MARGIN_UNITS + _LABEL_BOX_H) * scale
    box = (left, left + _LABEL_BOX_W * scale, _BOX_RGB)
    for y in range(top, top + _LABEL_BOX_H * scale):
        spans[y].append(box)
    text_left = left + _LABEL_PAD_UNITS * scale
    text_top = top + _LABEL_PAD_UNITS * scale
    for r, row_runs in enumerate(_LABEL_RUNS):
        row_spans = [
            (text_left + u0 * scale, text_left + u1 * scale, _TEXT_RGB) for u0, u1 in row_runs
        ]
        for y in range(text_top + r * scale, text_top + (r + 1) * scale):
            spans[y].extend(row_spans)
