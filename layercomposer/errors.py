"""The exceptions lc raises on purpose; `cli/_errors.py` maps each to a message and exit code."""

from __future__ import annotations

import re
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


class MissingPackage(LcError):
    """An optional package a command needs is not installed (see `missing_package`)."""


class InputError(LcError):
    """An input file cannot be used: missing, unreadable, not what it should be, or (`lc
    autolayout`) an image with no usable face in it. Exit 2, like a usage error."""


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


# --- shaping messages ---------------------------------------------------------------------------
# Every message that quotes another library's exception goes through `exception_text`, and every
# one-line account of a failure (a batch's failure table, the studio's status) through
# `describe`: one place decides how long a quote may be and where it is cut.

QUOTE_LIMIT = 300  # characters of another library's message kept in one of ours

# The extra that brings each optional package (pyproject.toml); `missing_package` names it.
EXTRAS: dict[str, str] = {
    **dict.fromkeys(
        ("torch", "diffusers", "transformers", "accelerate", "peft", "safetensors",
         "sentencepiece", "huggingface_hub"),
        "render",
    ),
    **dict.fromkeys(("mediapipe", "dlib", "face_recognition_models"), "autolayout"),
    **dict.fromkeys(("starlette", "uvicorn", "ruamel"), "studio"),
    "av": "video",
    "matplotlib": "eval",
    "torchao": "quantize",
}  # fmt: skip
TORCH_FIRST = "pip install torch==2.13.0"  # before any extra: a bare torch may be a CUDA build


# What a terminal would act on rather than show: C0 controls but newline and tab (ESC starts
# the sequences that clear the screen or retitle the window; CR and BS overwrite what was
# printed), DEL, C1 controls (0x9b is a one-byte CSI), and the bidi overrides that reorder a
# line (Trojan Source). Any other Unicode character is shown as it is.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """`text` safe to show on a terminal: each control character escaped as Python writes it
    (`\\x1b`, `\\u202e`), newlines, tabs and all other Unicode kept. Every text that came from a
    file or a user (a path, metadata, a name) goes through this before it is printed; lc's
    consoles (`cli._errors.TerminalConsole`) apply it to everything they print."""
    return _UNPRINTABLE.sub(lambda match: repr(match.group())[1:-1], text)


def shorten(text: str, limit: int = QUOTE_LIMIT) -> str:
    """`text` on one line of at most `limit` characters, cut after a whole word and marked '…'."""
    line = " ".join(text.split())
    if len(line) <= limit:
        return line
    cut = line[: limit - 1]
    space = cut.rfind(" ")
    if space >= limit // 4:  # a word boundary not too far back; else one endless token is cut
        cut = cut[:space]
    return cut.rstrip(" ,;:(") + "…"


def exception_text(exc: BaseException, limit: int = QUOTE_LIMIT) -> str:
    """What an exception says, for quoting in a message: its first line, shortened (see
    `shorten`), or its type's name when it says nothing."""
    lines = str(exc).strip().splitlines()
    return shorten(lines[0], limit) if lines and lines[0].strip() else type(exc).__name__


def missing_package(exc: ImportError) -> MissingPackage | None:
    """The error to report for an optional package that is not installed, with the line that
    installs it; None when `exc` is not about one (a bug, or a broken installation)."""
    name = (exc.name or "").split(".")[0]
    if not name or name == "layercomposer" or not isinstance(exc, ModuleNotFoundError):
        return None
    extra = EXTRAS.get(name)
    if extra is None:
        return MissingPackage(f"the package {name} is not installed", hint=f"pip install {name}")
    install = f"pip install -e '.[{extra}]'"
    if extra in ("render", "quantize") or name == "torch":
        install = f"{TORCH_FIRST} && {install}"
    return MissingPackage(
        f"{name} is not installed; it comes with lc's [{extra}] extra",
        hint=f"from lc's source folder: {install}",
    )


def describe(exc: BaseException) -> str:
    """One line saying what went wrong and, when known, what to do: for tables and logs."""
    if isinstance(exc, CanvasError):
        return str(exc)
    if isinstance(exc, ImportError):
        exc = missing_package(exc) or exc
    if isinstance(exc, LcError):
        return exc.message + (f" (hint: {exc.hint})" if exc.hint else "")
    return f"{type(exc).__name__}: {exception_text(exc)}"
