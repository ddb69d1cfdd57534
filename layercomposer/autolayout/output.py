"""Writing autolayout's results all at once, or not at all.

Everything but the canvas file goes into `<canvas stem>.autolayout/` beside it. That folder is
built under a temporary name in the same parent and renamed into place only after the whole
layout succeeded; the canvas file, the entry point, is written (atomically) last.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..errors import UsageError
from ..files import TEMP_SUFFIX, plain_dir_mode, write_bytes_atomic

ASSETS_SUFFIX = ".autolayout"


def assets_folder(canvas_path: Path) -> Path:
    """The folder beside a canvas that holds its layers, prior, preview and manifest."""
    return canvas_path.with_name(canvas_path.stem + ASSETS_SUFFIX)


class Staging:
    """A temporary folder for the outputs, committed by two renames or removed on failure."""

    def __init__(self, canvas_path: Path, force: bool):
        if canvas_path.suffix.lower() not in (".yaml", ".yml"):
            raise UsageError(f"-o {canvas_path}: the canvas file must end in .yaml or .yml")
        self.canvas_path = canvas_path
        self.assets = assets_folder(canvas_path)
        existing = [p for p in (canvas_path, self.assets) if p.exists()]
        if existing and not force:
            raise UsageError(
                f"{', '.join(map(str, existing))} already exist(s)",
                hint="pass --force to replace them, or choose another -o",
            )
        if canvas_path.is_dir():
            raise UsageError(f"-o {canvas_path} is a folder; give the canvas file's path")
        self._created = _missing_parents(canvas_path.parent)
        canvas_path.parent.mkdir(parents=True, exist_ok=True)
        self.dir = Path(
            tempfile.mkdtemp(
                prefix=f".{self.assets.name}.", suffix=TEMP_SUFFIX, dir=canvas_path.parent
            )
        )
        # mkdtemp makes a private folder; it becomes the outputs' folder, as mkdir would make it.
        self.dir.chmod(plain_dir_mode())

    def commit(self, canvas_text: str) -> None:
        """Move the folder into place, then write the canvas file; undo the move on failure."""
        old = None
        if self.assets.exists():
            old = self.assets.with_name(f".{self.assets.name}.old{TEMP_SUFFIX}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.assets, old)
        try:
            os.replace(self.dir, self.assets)
            write_bytes_atomic(self.canvas_path, canvas_text.encode())
        except BaseException:
            if self.assets.exists() and not self.dir.exists():
                os.replace(self.assets, self.dir)
            if old is not None:
                os.replace(old, self.assets)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def discard(self) -> None:
        """Remove the temporary folder and any parent folder this run created."""
        shutil.rmtree(self.dir, ignore_errors=True)
        for folder in self._created:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break


def _missing_parents(folder: Path) -> list[Path]:
    missing = []
    folder = folder.absolute()
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    return missing
