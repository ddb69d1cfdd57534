"""Atomic file writes: a reader (or a killed batch) never sees a half-written output.

Every file lc writes goes through here, so every one ends with the permissions a plain
`open(path, "w")` would have given it: the umask's for a new file, the old file's own for one it
replaces. (A temporary file is private while it is written; left so, outputs on a shared
machine or in a CI artifact would be unreadable to everyone but their owner.)
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .limits import open_regular_file

TEMP_SUFFIX = ".lc-tmp"  # every temporary file lc writes ends with this
_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:  # elsewhere reading it means setting it: keep other threads out meanwhile
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def plain_file_mode(path: str | Path) -> int:
    """The mode a plain write of `path` would leave: its own if it exists, else 0666 - umask."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return 0o666 & ~current_umask()


def plain_dir_mode() -> int:
    """The mode `mkdir` gives a new folder: 0777 - umask."""
    return 0o777 & ~current_umask()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` for a writer that wants a file name (safetensors,
    torch.save); when the block ends it gets `path`'s plain mode, is flushed to disk and
    renamed onto `path`. On an error it is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    temp = Path(name)
    try:
        yield temp
        os.chmod(temp, plain_file_mode(path))  # the writer may have replaced the file itself
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.chmod(temp, plain_file_mode(path))
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
    with open_regular_file(path) as handle:  # an input named by a canvas: a FIFO is refused
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
