"""Quieting native libraries that log to the process's stderr (MediaPipe's LiteRT runtime)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for the block, unless LC_DEBUG is set.

    LiteRT prints INFO lines from C++ that no environment variable silences; they would bury
    lc's own messages. Python's own stderr is flushed first so nothing of ours is lost.
    """
    if os.environ.get("LC_DEBUG"):
        yield
        return
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no usable fd 2 (some embedded runners): nothing to quiet
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
