"""Argument types shared by several commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import UsageError

CanvasPath = Annotated[Path, typer.Argument(help="A canvas file (YAML).", show_default=False)]
CanvasPaths = Annotated[list[Path], typer.Argument(help="Canvas files (YAML).", show_default=False)]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override a canvas key: `--set seed=7`, `--set layers.alice.lock=true` "
        "(layers by name or index). Repeatable.",
        metavar="KEY=VALUE",
    ),
]
AllowOutsideOption = Annotated[
    bool,
    typer.Option(
        "--allow-outside",
        help="Allow image paths that leave the canvas file's folder (`..` or absolute paths).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]


def parse_size(text: str | None) -> tuple[int, int] | None:
    """`1024x768` (or `1024,768`) as (width, height); None stays None."""
    if text is None:
        return None
    parts = text.lower().replace(",", "x").split("x")
    try:
        width, height = (int(part) for part in parts)
    except ValueError:
        raise UsageError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 1024x768") from None
    return width, height
