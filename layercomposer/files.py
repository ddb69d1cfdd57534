"""Atomic file writes: a reader (or a killed batch) never sees a half-written output."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

TEMP_SUFFIX = ".lc-tmp"  # every temporary file lc writes ends with this


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | Path, payload: Any) -> Path:
    """Write `payload` as indented JSON, atomically."""
    return write_bytes_atomic(path, (json.dumps(payload, indent=2) + "\n").encode())


def png_bytes(pixels: np.ndarray) -> bytes:
    """Encode an (H, W, 3|4) uint8 array as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png_atomic(path: str | Path, pixels: np.ndarray) -> Path:
    """Save an (H, W, 3|4) uint8 array as a PNG, atomically."""
    return write_bytes_atomic(path, png_bytes(pixels))


def sha256_file(path: str | Path) -> str:
    """Return the hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
