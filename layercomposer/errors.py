"""The exceptions lc raises on purpose; `cli/_errors.py` maps each to a message and exit code."""

from __future__ import annotations

from dataclasses import dataclass


class LcError(Exception):
    """An error with a message meant for the user (and an optional hint on what to do)."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(LcError):
    """The command line itself is wrong (a bad `--set`, conflicting options)."""


class ModelError(LcError):
    """A model, LoRA or weight file could not be found or loaded."""


class InputError(LcError):
    """An input image cannot be used: unreadable, or no usable face in it (`lc autolayout`)."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a canvas file, located as precisely as we can."""

    source: str  # "scene.yaml:12" or "--set layers.alice.scale=0"
    loc: tuple[str | int, ...]
    message: str

    def __str__(self) -> str:
        where = f" [{' -> '.join(str(part) for part in self.loc)}]" if self.loc else ""
        return f"{self.source}:{where} {self.message}"


class CanvasError(LcError):
    """A canvas file is invalid; carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))
