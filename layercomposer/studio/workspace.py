"""The canvas folder the studio serves: the only files it reads and writes.

Every path a page sends is relative to the folder; `..`, absolute paths and symlinks that leave
the folder are refused before anything is opened. Uploads are checked for size and pixel count
before they are decoded, and stored under `images/` with a name derived from their content type.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import ValidationError

from ..canvas import Canvas, CanvasSpec
from ..errors import CanvasError, LcError, Problem
from ..files import write_bytes_atomic
from ..layers import CanvasLayer, build_layers
from ..limits import MAX_YAML_BYTES, TooLargeError, UnreadableImageError, open_image_bounded
from ..yamlfile import BadYaml, parse_yaml
from .roundtrip import merged_yaml

CANVAS_SUFFIXES = (".yaml", ".yml")
# What the studio shows (history images) and accepts as uploads; detected, never trusted.
SERVED_SUFFIXES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
}
UPLOAD_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}
UPLOAD_FOLDER = "images"
MAX_UPLOAD_BYTES = 25 * 1024 * 1024
MAX_UPLOAD_PIXELS = 40_000_000  # e.g. 8000x5000; a canvas is at most 4096x4096


class Refused(LcError):
    """A request the studio will not carry out; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, hint: str | None = None):
        super().__init__(message, hint)
        self.status = status


@dataclass(frozen=True)
class Upload:
    path: str  # relative to the canvas folder, with forward slashes
    size: tuple[int, int]
    has_alpha: bool


class Workspace:
    """A canvas folder (one canvas file, or every canvas file directly in a folder)."""

    def __init__(
        self,
        target: Path,
        output: Path | None = None,
        max_upload_bytes: int = MAX_UPLOAD_BYTES,
        max_upload_pixels: int = MAX_UPLOAD_PIXELS,
    ):
        target = Path(target)
        if target.is_dir():
            self.root = target.resolve()
            self.only: str | None = None
        elif target.is_file() and target.suffix in CANVAS_SUFFIXES:
            self.root = target.parent.resolve()
            self.only = target.name
        else:
            raise LcError(f"{target} is neither a canvas file (.yaml) nor a folder")
        self.output = (self.root / (output or "studio-renders")).resolve()
        if not self.output.is_relative_to(self.root):
            raise LcError(
                f"--output {output} is outside the canvas folder {self.root}",
                hint="the studio writes only inside the canvas folder; a relative --output is "
                "taken from there",
            )
        self.max_upload_bytes = max_upload_bytes
        self.max_upload_pixels = max_upload_pixels

    # --- paths ---------------------------------------------------------------------------------

    def inside(self, relative: str) -> Path:
        """The absolute path of `relative`, or Refused if it could leave the canvas folder."""
        if not isinstance(relative, str) or not relative or "\x00" in relative or "\\" in relative:
            raise Refused(400, "expected a relative path inside the canvas folder")
        pure = PurePosixPath(relative)
        if pure.is_absolute() or ".." in pure.parts:
            raise Refused(403, f"'{relative}' leaves the canvas folder")
        target = (self.root / pure).resolve()  # follows symlinks, so one pointing out is caught
        if not target.is_relative_to(self.root):
            raise Refused(403, f"'{relative}' leads outside the canvas folder (a symlink?)")
        return target

    def relative(self, path: Path) -> str:
        return Path(path).resolve().relative_to(self.root).as_posix()

    def canvases(self) -> list[str]:
        """The canvas files the page may open, relative to the folder."""
        if self.only:
            return [self.only]
        return sorted(
            path.name
            for path in self.root.iterdir()
            if path.suffix in CANVAS_SUFFIXES and path.is_file() and self._stays(path)
        )

    def canvas_file(self, relative: str) -> Path:
        if relative not in self.canvases():
            raise Refused(404, f"no canvas '{relative}' here; open one of {self.canvases()}")
        return self.inside(relative)

    def served_file(self, relative: str) -> tuple[Path, str]:
        """An image inside the folder (an input or a render), and its media type."""
        path = self.inside(relative)
        media_type = SERVED_SUFFIXES.get(path.suffix.lower())
        if media_type is None:
            raise Refused(403, f"'{relative}': the studio serves only images")
        if not path.is_file():
            raise Refused(404, f"no file '{relative}'")
        return path, media_type

    def _stays(self, path: Path) -> bool:
        return path.resolve().is_relative_to(self.root)

    # --- canvases ------------------------------------------------------------------------------

    def read(self, relative: str) -> dict[str, Any]:
        """A canvas file as the page edits it: the plain data, and the hash of its bytes."""
        path = self.canvas_file(relative)
        raw, data = self._read_canvas(path, relative)
        if not isinstance(data, dict):
            raise Refused(422, f"{relative} is not a canvas file (a YAML mapping)")
        return {"path": relative, "data": data, "sha256": hashlib.sha256(raw).hexdigest()}

    def canvas(self, relative: str, data: Any, as_saved: bool = False) -> Canvas:
        """The page's (unsaved) canvas, validated, as the file Save would write would load.

        Its sha256 is that of the file on disk, or with `as_saved` that of the bytes Save would
        write, so that a render's manifest names the file that reproduces it.
        """
        path = self.canvas_file(relative)
        if not isinstance(data, dict):
            raise CanvasError([Problem(relative, (), "a canvas must be a mapping")])
        try:
            spec = CanvasSpec.model_validate(data)
        except ValidationError as exc:
            problems = [
                Problem(relative, tuple(err["loc"]), err["msg"].removeprefix("Value error, "))
                for err in exc.errors()
            ]
            raise CanvasError(problems) from None
        raw, _ = self._read_canvas(path, relative)
        if as_saved:
            raw = merged_yaml(raw.decode("utf-8"), data).encode()
        digest = hashlib.sha256(raw).hexdigest()
        return Canvas(spec, path, digest, (), allow_outside=False)

    @staticmethod
    def _read_canvas(path: Path, relative: str) -> tuple[bytes, Any]:
        """A canvas file's bytes and data, refused (422) unless lc's bounded YAML reader accepts
        them: the round-trip writer (ruamel) never sees a file the canvas commands refuse."""
        with open(path, "rb") as handle:
            raw = handle.read(MAX_YAML_BYTES + 1)
        try:
            data, _ = parse_yaml(raw)
        except BadYaml as exc:
            where = f"{relative}:{exc.line}" if exc.line else relative
            raise Refused(422, f"{where}: {exc.reason}") from None
        return raw, data

    def layers(self, canvas: Canvas) -> list[CanvasLayer]:
        return build_layers(canvas)

    def save(self, relative: str, data: Any, base_sha256: str | None) -> dict[str, Any]:
        """Write the page's canvas into its file (comments and key order kept); refuse to write
        an invalid canvas, or over a file that changed on disk since the page read it."""
        path = self.canvas_file(relative)
        canvas = self.canvas(relative, data)
        build_layers(canvas)  # a saved canvas must render: missing images, no tokens, ...
        raw, _ = self._read_canvas(path, relative)
        if base_sha256 and hashlib.sha256(raw).hexdigest() != base_sha256:
            raise Refused(
                409,
                f"{relative} changed on disk since the page loaded it",
                hint="reload the canvas, or save with force",
            )
        text = merged_yaml(raw.decode("utf-8"), data)
        if CanvasSpec.model_validate(parse_yaml(text)[0]) != canvas.spec:
            raise LcError(f"writing {relative} would not reproduce the canvas; nothing written")
        mode = path.stat().st_mode & 0o777
        write_bytes_atomic(path, text.encode())
        os.chmod(path, mode)  # the atomic write's temporary file is private (0600)
        return {"path": relative, "sha256": hashlib.sha256(text.encode()).hexdigest()}

    # --- uploads -------------------------------------------------------------------------------

    def store_upload(self, filename: str, data: bytes) -> Upload:
        """Keep an uploaded image under images/ and return where; the same bytes are kept once."""
        if len(data) > self.max_upload_bytes:
            raise Refused(413, f"upload is over {self.max_upload_bytes // (1024 * 1024)} MiB")
        try:  # the size is checked from the header, before any pixel is decoded
            image = open_image_bounded(data, max_pixels=self.max_upload_pixels)
        except TooLargeError as exc:
            raise Refused(413, f"upload: {exc.message}") from None
        except UnreadableImageError:
            raise Refused(415, "not an image the studio accepts (PNG, JPEG or WebP)") from None
        fmt, (width, height) = image.format, image.size
        has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
        if fmt not in UPLOAD_FORMATS:
            raise Refused(415, f"{fmt} images are not accepted; use PNG, JPEG or WebP")

        stem = re.sub(r"[^A-Za-z0-9_-]+", "_", PurePosixPath(filename or "upload").stem)[:48]
        stem = stem.strip("_") or "upload"
        suffix = UPLOAD_FORMATS[fmt]
        for n in range(1000):
            name = f"{stem}{suffix}" if n == 0 else f"{stem}-{n}{suffix}"
            target = self.inside(f"{UPLOAD_FOLDER}/{name}")
            if target.exists() and target.read_bytes() != data:
                continue
            if not target.exists():
                write_bytes_atomic(target, data)
                os.chmod(target, 0o644)  # readable like any image the user put there
            return Upload(self.relative(target), (width, height), has_alpha)
        raise Refused(409, f"too many uploads named {stem}{suffix}")
