"""Hostile and odd inputs, written in code: the YAML alias bomb, images with crafted headers,
images in every odd mode. Shared by test_limits.py and test_hardening.py."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def alias_bomb(levels: int = 8, fan_out: int = 9) -> str:
    """The 'billion laughs' canvas: nine aliases of nine, `levels` deep (a few hundred bytes;
    fully expanded, 9**9 strings). The first anchor is on line 3."""
    lines = ['prompt: "a bomb"', "size: [512, 512]"]
    lines.append("a: &a [" + ", ".join(['"lol"'] * fan_out) + "]")
    previous = "a"
    for level in range(levels):
        name = chr(ord("b") + level)
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{previous}"] * fan_out) + "]")
        previous = name
    return "\n".join(lines) + "\n"


def png_bytes(pixels: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header (correct CRCs) claiming width x height RGBA, with almost no data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def bmp_claiming(width: int, height: int) -> bytes:
    """A 24-bit BMP whose header claims width x height."""
    data = bytearray(encoded(Image.new("RGB", (4, 4)), "BMP"))
    struct.pack_into("<ii", data, 18, width, height)
    return bytes(data)


def gif_claiming(width: int, height: int) -> bytes:
    """A GIF whose screen and first image descriptor claim width x height (16-bit fields)."""
    data = bytearray(encoded(Image.new("P", (4, 4)), "GIF"))
    struct.pack_into("<HH", data, 6, width, height)
    descriptor = data.index(b",")  # the image descriptor: ',' left top width height
    struct.pack_into("<HH", data, descriptor + 5, width, height)
    return bytes(data)


def jpeg_claiming(width: int, height: int) -> bytes:
    """A baseline JPEG whose SOF0 segment claims width x height (16-bit fields)."""
    data = bytearray(encoded(Image.new("RGB", (8, 8), (90, 120, 200)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def tiff_claiming(width: int, height: int) -> bytes:
    """An uncompressed little-endian TIFF whose ImageWidth/ImageLength tags claim the size."""
    data = bytearray(encoded(Image.new("L", (4, 4)), "TIFF"))
    assert data[:2] == b"II"
    (ifd,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, ifd)
    for entry in range(count):
        at = ifd + 2 + 12 * entry
        tag, kind = struct.unpack_from("<HH", data, at)
        if tag in (256, 257):
            value = width if tag == 256 else height
            if kind == 3:  # SHORT
                struct.pack_into("<HHIHH", data, at, tag, 4, 1, 0, 0)  # rewrite as LONG
            struct.pack_into("<I", data, at + 8, value)
    return bytes(data)


CLAIMING = {
    "PNG": png_claiming,
    "BMP": bmp_claiming,
    "GIF": gif_claiming,
    "JPEG": jpeg_claiming,
    "TIFF": tiff_claiming,
}


def gradient(height: int = 48, width: int = 48) -> np.ndarray:
    """(h, w) float in [0, 1]: a diagonal ramp, so every grey level is represented."""
    yy, xx = np.mgrid[:height, :width]
    return (yy + xx) / (height + width - 2)


def odd_images() -> dict[str, bytes]:
    """Valid images in the modes Pillow opens oddly, keyed by a short name."""
    ramp = gradient()
    disc = np.hypot(*(np.mgrid[:48, :48] - 23.5)) < 20
    rgb = (np.stack([ramp, 1 - ramp, ramp * 0.5], -1) * 255).astype(np.uint8)
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    la = np.stack([(ramp * 255).astype(np.uint8), np.where(disc, 255, 0).astype(np.uint8)], -1)
    return {
        "gray16": png_bytes((ramp * 65535).astype(np.uint16)),  # opens as I;16
        "cmyk": encoded(Image.fromarray(rgb).convert("CMYK"), "JPEG"),
        "cmyk_tiff": encoded(Image.fromarray(rgb).convert("CMYK"), "TIFF"),
        "palette_alpha": encoded(palette, "PNG", transparency=0),
        "gray_alpha": png_bytes(la, "LA"),
        "bilevel": encoded(Image.fromarray(disc), "PNG"),
        "int32_tiff": encoded(Image.fromarray((ramp * 65535).astype(np.int32), "I"), "TIFF"),
        "float_tiff": encoded(Image.fromarray(ramp.astype(np.float32), "F"), "TIFF"),
        "rgba16": _rgba16_png(ramp, disc),
        "gif": encoded(palette, "GIF", transparency=0),
        "webp": encoded(Image.fromarray(rgb).convert("RGBA"), "WEBP"),
    }


def _rgba16_png(ramp: np.ndarray, disc: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGBA PNG, written by hand (Pillow cannot write one)."""
    height, width = ramp.shape
    channels = [ramp, 1 - ramp, ramp, disc.astype(float)]
    pixels = (np.stack(channels, -1) * 65535).astype(">u2")
    raw = b"".join(b"\x00" + pixels[y].tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )


def broken_images() -> dict[str, bytes]:
    """Files that are not images lc can use: empty, truncated, another format, crafted."""
    good = png_bytes(np.zeros((32, 32, 4), np.uint8))
    return {
        "empty": b"",
        "truncated_png": good[: len(good) // 2],
        "text": b"this is not an image\n",
        "eps": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
        "png_50000": png_claiming(50_000, 50_000),
        "png_zero": png_claiming(0, 10),
        "bmp_huge": bmp_claiming(60_000, 60_000),
        "gif_huge": gif_claiming(65_535, 65_535),
        "jpeg_huge": jpeg_claiming(65_000, 65_000),
        "tiff_huge": tiff_claiming(100_000, 100_000),
        "png_one_row_too_long": png_claiming(20_000, 1),
    }
