"""The one place that turns exceptions into a message on stderr and an exit code.

Exit codes: 0 ok, 1 runtime failure (a model, a device, a write), 2 invalid canvas or usage,
130 interrupted; stdout closed by its reader (`| head`): a quiet 1. A traceback is shown only
with LC_DEBUG=1.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from ..errors import (
    CanvasError,
    InputError,
    LcError,
    MissingPackage,
    ModelError,
    UsageError,
    exception_text,
    missing_package,
    printable,
)

EXIT_OK, EXIT_FAILURE, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 130
# stdout's reader went away (`| head`): a quiet 1, as click, rich and Python's own recipe do
EXIT_BROKEN_PIPE = 1


class TerminalConsole(Console):
    """A Rich console that shows control characters instead of sending them: every string it
    renders (a message, a table's cells and title) goes through `errors.printable` before its
    markup is read, so a path or a LoRA's metadata holding ESC sequences cannot clear the
    screen or retitle the window. lc prints through these consoles only."""

    def render_str(self, text: str, **options) -> Text:
        return super().render_str(printable(text), **options)


stderr = TerminalConsole(stderr=True, highlight=False, soft_wrap=True)

# exception type -> (exit code, label). The first matching row wins, so subclasses come first.
ERROR_TABLE: list[tuple[type[BaseException], int, str]] = [
    (CanvasError, EXIT_INVALID, "invalid canvas"),
    (UsageError, EXIT_INVALID, "usage"),
    (InputError, EXIT_INVALID, "invalid input"),
    (ModelError, EXIT_FAILURE, "model"),
    (MissingPackage, EXIT_FAILURE, "missing package"),
    (LcError, EXIT_FAILURE, "error"),
    (PermissionError, EXIT_FAILURE, "permission denied"),
    (OSError, EXIT_FAILURE, "file system"),
]


def classify(exc: BaseException) -> tuple[int, str]:
    """The exit code and label lc uses for an exception."""
    for kind, code, label in ERROR_TABLE:
        if isinstance(exc, kind):
            return code, label
    return EXIT_FAILURE, "internal error"


def report(exc: BaseException) -> int:
    """Print `exc` for a person and return its exit code."""
    if isinstance(exc, ImportError):  # an optional package: say which extra brings it
        exc = missing_package(exc) or exc
    code, label = classify(exc)
    if isinstance(exc, CanvasError):
        for problem in exc.problems:
            stderr.print(f"[red]error:[/red] {escape(str(problem))}")
    elif isinstance(exc, LcError):
        stderr.print(f"[red]{label}:[/red] {escape(exc.message)}")
        if exc.hint:
            stderr.print(f"[dim]hint:[/dim] {escape(exc.hint)}")
    else:
        stderr.print(f"[red]{label}:[/red] {escape(exception_text(exc))}")
        if label == "internal error":
            stderr.print(
                "[dim]hint:[/dim] this is a bug in lc; rerun with LC_DEBUG=1 and report the traceback"
            )
    return code


@contextmanager
def handled_errors() -> Iterator[None]:
    """Run a command body; map any exception to a message and `typer.Exit(code)`."""
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except KeyboardInterrupt:
        stderr.print("[yellow]interrupted[/yellow]")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except BrokenPipeError:
        raise typer.Exit(closed_pipe()) from None
    except Exception as exc:  # noqa: BLE001 - this is the one place that catches everything
        if os.environ.get("LC_DEBUG"):
            import traceback

            traceback.print_exc(file=sys.stderr)
        raise typer.Exit(report(exc)) from None


def closed_pipe() -> int:
    """End quietly when stdout's reader went away (`lc lora info X | head`), as other CLIs do:
    the rest of the output goes nowhere, and Python's own flush at exit does not complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a file (a test's capture): nothing to redirect
        pass
    return EXIT_BROKEN_PIPE
