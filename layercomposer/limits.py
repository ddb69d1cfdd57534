"""The named bounds on every input lc reads, and the small readers that enforce them.

A hostile or broken file must be refused before it costs much: no input may take more than
10 s or 1 GB of memory before lc answers. Each bound below is checked before the expensive
step (parsing, decoding), never after. Pillow's own decompression-bomb check is process-global
(`Image.MAX_IMAGE_PIXELS`, which any library may change), so image sizes are checked here too.
"""

from __future__ import annotations

import errno
import io
import json
import os
import stat
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

MiB = 1024 * 1024

# YAML (canvas files, training configs, `--set` values). The example canvases are under 2 KB.
MAX_YAML_BYTES = 1 * MiB
MAX_YAML_DEPTH = 32  # mappings and lists nested; a canvas needs 4
MAX_YAML_NODES = 100_000  # scalars, lists and mappings in one document
# Anchors and aliases are refused in every YAML file lc reads (see docs/canvas-format.md).

# JSON (run manifests, state.json, index.json, scene.json, sidecars, studio request bodies).
MAX_JSON_BYTES = 16 * MiB  # a whole JSON file; a manifest is a few KB
MAX_JSON_LINES_BYTES = 64 * MiB  # a whole JSON-lines file (scores.jsonl: ~200 bytes a score)
MAX_JSON_LINE_BYTES = 1 * MiB  # one line of it
MAX_REQUEST_JSON_BYTES = 1 * MiB  # one studio request body (a canvas is a few KB)
MAX_JSON_DEPTH = 32  # objects and arrays nested; a manifest needs 7, a LoRA header 3

# Text files beside dataset images (`<image>.txt` captions): a sentence or two; T5 reads 512 tokens.
MAX_CAPTION_BYTES = 64 * 1024

# Images (layers, masks, backgrounds, priors, subject photos, dataset images, outputs).
MAX_IMAGE_BYTES = 256 * MiB  # the file itself
MAX_IMAGE_PIXELS = 50_000_000  # width x height: a 48 MP phone photo fits; 200 MB as RGBA
MAX_IMAGE_SIDE = 16_384  # either side, in pixels
# The formats lc opens: what cameras, phones and editors write (JPEG includes MPO). Pillow reads
# others (EPS would run Ghostscript, for one); a layer has no need of them.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF")
# Decoder work a small header does not show, counted by a structural scan before decoding: each
# JPEG scan is another pass over every coefficient (libjpeg's progressive mode writes 10; 20,000
# empty ones made a 743 KB file decode for minutes), and each PNG chunk costs Pillow a call and
# memory (6 million empty ones: 21 s and 750 MB). A 256 MiB PNG of 8 KiB IDATs has 32,768.
MAX_JPEG_SCANS = 100  # SOS markers in the whole file (an EXIF thumbnail's and MPO's included)
MAX_PNG_CHUNKS = 100_000

# Canvases: a layer is scaled and rotated in memory, so its size after that is bounded too.
MAX_LAYERS = 64  # subject layers in one canvas (the paper composes up to 4 people)
MAX_LAYER_PIXELS = 2 * 4096 * 4096  # one layer after crop, scale and rotation: ~134 MB as RGBA
MAX_LAYERS_PIXELS = 4 * 4096 * 4096  # all of a canvas's layers together
MAX_CANVAS_DECODE_PIXELS = 100_000_000  # all the images (and masks) a canvas names, decoded

# Videos (`lc dataset build` on video files; the reader lives with the dataset builder).
MAX_VIDEO_BYTES = 8 * 1024 * MiB  # 8 GiB: an hour of 1080p at a high bitrate
MAX_VIDEO_SECONDS = 2 * 60 * 60  # two hours
MAX_VIDEO_FRAMES = 2 * 60 * 60 * 60  # two hours at 60 fps
MAX_VIDEO_PIXELS = 4096 * 2160  # per frame: DCI 4K


class TooLargeError(InputError):
    """An input is over one of lc's bounds; the message says which and by how much."""


class UnreadableImageError(InputError):
    """An image file cannot be decoded; `kind` says why, for callers that phrase it themselves:
    'missing', 'folder', 'special' (a FIFO, socket or device: `NotRegularFileError`), 'empty',
    'format' (not one lc reads), 'corrupt' (truncated, damaged)."""

    def __init__(self, message: str, kind: str = "corrupt"):
        super().__init__(message)
        self.kind = kind


def size_text(count: int) -> str:
    """A byte count for a person: '1.5 MiB', '300 bytes'."""
    if count < 1024:
        return f"{count} bytes"
    for unit in ("KiB", "MiB", "GiB"):
        count /= 1024
        if count < 1024 or unit == "GiB":
            return f"{count:.3g} {unit}"
    raise AssertionError("unreachable")


class NotRegularFileError(InputError):
    """A path names a FIFO, a socket or a device where lc expects a file: reading it could block
    for ever (a FIFO with no writer) or never end (/dev/zero), so it is refused unread."""


_SPECIAL_FILES = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def check_regular(path: str | Path, mode: int) -> None:
    """NotRegularFileError unless `mode` (an `st_mode`) is a regular file's; a folder raises
    IsADirectoryError, as `open` would, so that callers keep their own message for it."""
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    kind = next((name for test, name in _SPECIAL_FILES if test(mode)), "not a file")
    raise NotRegularFileError(f"{path} is {kind}, not a regular file")


def open_regular_file(path: str | Path) -> BinaryIO:
    """`path` opened for reading in binary, if it is a regular file (else NotRegularFileError).

    Opened with O_NONBLOCK and checked on the open descriptor, so that neither a FIFO without
    a writer nor a file swapped for one after a check can make lc wait; the descriptor is made
    blocking again for reading (which changes nothing for a regular file).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        check_regular(path, os.fstat(fd).st_mode)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_file_size(path: str | Path, max_bytes: int, what: str = "file") -> int:
    """The size of `path` in bytes, or TooLargeError if it is over `max_bytes`;
    NotRegularFileError if it is a FIFO, socket or device (see `check_regular`)."""
    status = os.stat(path)
    check_regular(path, status.st_mode)
    size = status.st_size
    if size > max_bytes:
        raise TooLargeError(
            f"{path}: {what} is {size:,} bytes, over lc's limit of {size_text(max_bytes)}"
        )
    return size


def read_bytes_bounded(path: str | Path, max_bytes: int, what: str = "file") -> bytes:
    """A file's bytes, refusing files over `max_bytes` (also one that grows while read)."""
    check_file_size(path, max_bytes, what)
    with open_regular_file(path) as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise TooLargeError(f"{path}: {what} is over lc's limit of {size_text(max_bytes)}")
    return data


def read_json_bounded(path: str | Path, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """A JSON file's value; TooLargeError over `max_bytes`, ValueError if it is not JSON.

    `json.JSONDecodeError` (a ValueError) and `UnicodeDecodeError` propagate for the caller to
    phrase; nesting deep enough to exhaust the parser is reported as a ValueError too.
    """
    return loads_json_bounded(read_bytes_bounded(path, max_bytes, "JSON file"), max_bytes)


def loads_json_bounded(data: bytes | str, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """`json.loads` with a size cap and a depth cap (`MAX_JSON_DEPTH`): nesting deeper is a
    ValueError ("nested too deeply"), never a RecursionError here or in whoever walks the value."""
    if len(data) > max_bytes:
        raise TooLargeError(f"JSON text is over lc's limit of {size_text(max_bytes)}")
    try:
        value = json.loads(data)
    except RecursionError:  # the parser's own limit (~1,000 levels) was reached first
        raise ValueError(f"JSON is nested too deeply (over {MAX_JSON_DEPTH} levels)") from None
    if json_depth(value) > MAX_JSON_DEPTH:
        raise ValueError(f"JSON is nested too deeply (over {MAX_JSON_DEPTH} levels)")
    return value


def json_depth(value: Any) -> int:
    """How many objects and arrays are nested in a parsed JSON value (0 for a scalar); walked
    without recursion, so any depth the parser returned is measured."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth)
            stack.extend(
                (child, depth + 1) for child in (node.values() if isinstance(node, dict) else node)
            )
    return deepest


def read_json_lines_bounded(
    path: str | Path,
    max_bytes: int = MAX_JSON_LINES_BYTES,
    max_line_bytes: int = MAX_JSON_LINE_BYTES,
) -> list[Any]:
    """The values of a JSON-lines file; a line that is not JSON (cut short by a killed run) or
    is over `max_line_bytes` is skipped, a file over `max_bytes` is TooLargeError."""
    values = []
    for line in read_bytes_bounded(path, max_bytes, "JSON-lines file").splitlines():
        if len(line) > max_line_bytes:
            continue
        try:
            values.append(loads_json_bounded(line, max_line_bytes))
        except ValueError:
            continue
    return values


# --- images --------------------------------------------------------------------------------------


def check_image_size(
    width: int,
    height: int,
    max_pixels: int = MAX_IMAGE_PIXELS,
    max_side: int = MAX_IMAGE_SIDE,
    name: str = "the image",
) -> None:
    """TooLargeError if an image of this size is over the bounds; called before decoding."""
    if width <= 0 or height <= 0:
        raise UnreadableImageError(f"{name} claims a size of {width}x{height} pixels")
    if max(width, height) > max_side or width * height > max_pixels:
        raise TooLargeError(
            f"{name} is {width}x{height} pixels, over lc's limit of {max_side:,} pixels a side "
            f"and {max_pixels / 1e6:g} MP"
        )


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SCAN_READ = 4 * MiB


def check_decoder_work(handle: BinaryIO, name: str = "the image") -> None:
    """TooLargeError if a JPEG has more than `MAX_JPEG_SCANS` scans or a PNG more than
    `MAX_PNG_CHUNKS` chunks; read from `handle` (which is left at its start) before decoding.

    The scan is structural and cheap: a JPEG's SOS markers are counted with `bytes.count` (in
    entropy-coded data an 0xFF byte is always followed by 0x00 or a restart marker, so 0xFFDA
    occurs only where a scan starts, or inside an APP segment's bytes: an overcount by a few at
    most), a PNG's chunks are walked by their length fields without reading their data.
    """
    start = handle.read(8)
    try:
        if start.startswith(b"\xff\xd8"):
            scans, previous = start.count(b"\xff\xda"), start[-1:]
            while scans <= MAX_JPEG_SCANS and (block := handle.read(_SCAN_READ)):
                scans += (previous + block).count(b"\xff\xda")  # a marker split across reads
                previous = block[-1:]
            if scans > MAX_JPEG_SCANS:
                raise TooLargeError(
                    f"{name} is a JPEG of more than {MAX_JPEG_SCANS} scans, over lc's limit "
                    "(each scan is another decoding pass over the whole image)"
                )
        elif start == PNG_SIGNATURE:
            chunks = 0
            while header := handle.read(8):
                if len(header) < 8:
                    break  # truncated: the decoder says so
                chunks += 1
                if chunks > MAX_PNG_CHUNKS:
                    raise TooLargeError(
                        f"{name} is a PNG of more than {MAX_PNG_CHUNKS:,} chunks, over lc's limit"
                    )
                if header[4:] == b"IEND":
                    break
                handle.seek(int.from_bytes(header[:4], "big") + 4, io.SEEK_CUR)  # data, CRC
    finally:
        handle.seek(0)


def open_image_bounded(
    source: str | Path | bytes,
    max_pixels: int = MAX_IMAGE_PIXELS,
    max_side: int = MAX_IMAGE_SIDE,
    max_bytes: int = MAX_IMAGE_BYTES,
    upright: bool = False,
    before_decoding: Callable[[int, int], None] | None = None,
) -> Image.Image:
    """An image decoded into memory (first frame, in an 8-bit mode), its size checked first.

    The width and height come from the header and are checked before any pixel is decoded, and
    so is the work the decoder would do (`check_decoder_work`: JPEG scans, PNG chunks).
    With `upright`, the EXIF orientation is applied. `before_decoding(width, height)` may raise
    to refuse the image on its header alone. Raises TooLargeError (over a bound) or
    UnreadableImageError (missing, empty, not a format lc reads, truncated, corrupt), each with
    a message naming the file; never a Pillow exception.
    """
    name = "the image" if isinstance(source, bytes) else str(source)
    try:
        if isinstance(source, bytes):
            if len(source) > max_bytes:
                size = f"{len(source):,} bytes"
                raise TooLargeError(f"{name} is {size}, over lc's limit of {size_text(max_bytes)}")
            handle: Any = io.BytesIO(source)
        else:
            check_file_size(source, max_bytes, "image")
            handle = open_regular_file(source)  # closed below, after decoding
        with handle:
            if not handle.read(1):
                raise UnreadableImageError(f"{name} is empty (0 bytes)", "empty")
            handle.seek(0)
            check_decoder_work(handle, name)
            with Image.open(handle, formats=IMAGE_FORMATS) as image:
                check_image_size(image.width, image.height, max_pixels, max_side, name)
                if before_decoding is not None:  # the caller's own bound on (width, height)
                    before_decoding(image.width, image.height)
                image.load()
                # A format whose size can change while loading (a JPEG draft, say): again.
                check_image_size(image.width, image.height, max_pixels, max_side, name)
                loaded = ImageOps.exif_transpose(image) if upright else image
                return eight_bit(loaded)
    except (TooLargeError, UnreadableImageError):
        raise
    except NotRegularFileError as exc:
        raise UnreadableImageError(exc.message, "special") from None
    except FileNotFoundError:
        raise UnreadableImageError(f"image not found: {source}", "missing") from None
    except IsADirectoryError:
        raise UnreadableImageError(f"{source} is a folder, not an image", "folder") from None
    except Image.DecompressionBombError as exc:
        # Pillow's own check (process-global, so not the only one) refused it first.
        limit = f"{max_side:,} pixels a side and {max_pixels / 1e6:g} MP"
        raise TooLargeError(f"{name} is over lc's limit of {limit} ({exc})") from None
    except UnidentifiedImageError:
        formats = ", ".join(IMAGE_FORMATS)
        raise UnreadableImageError(
            f"{name} is not an image format lc can read ({formats})", "format"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, MemoryError) as exc:
        # Pillow reports truncated or corrupt data with any of these, depending on the format.
        reason = str(exc) or type(exc).__name__
        raise UnreadableImageError(
            f"{name} cannot be read: truncated or corrupt ({reason})"
        ) from None


def eight_bit(image: Image.Image) -> Image.Image:
    """The image in an 8-bit mode Pillow converts correctly to RGB(A) or L.

    Pillow opens 16-bit grayscale as 'I;16' or 'I' and float TIFFs as 'F'; `convert('L')` or
    `convert('RGBA')` on those clips at 255 instead of scaling, turning a photo or a mask white.
    """
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        peak = 255.0 if image.mode == "I" and values.max(initial=0) <= 255 else 65535.0
        return _with_info(
            Image.fromarray(np.clip(values * (255.0 / peak), 0, 255).round().astype(np.uint8)),
            image,
        )
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
        if values.size and values.max() <= 1.0:
            values = values * 255.0
        return _with_info(Image.fromarray(np.clip(values, 0, 255).round().astype(np.uint8)), image)
    return image


def _with_info(converted: Image.Image, original: Image.Image) -> Image.Image:
    """`converted` with the original's metadata (EXIF); its transparency value was 16-bit."""
    converted.info.update({k: v for k, v in original.info.items() if k != "transparency"})
    return converted
