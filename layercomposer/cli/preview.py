"""`lc preview`: the flattened collage, annotated with outlines, names, locks and tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..canvas import load_canvas
from ..files import write_png_atomic
from ..layers import build_layers, flatten
from ..preview import render_preview
from ._common import AllowOutsideOption, CanvasPath, SetOption
from ._errors import handled_errors, stderr


def preview_canvas(
    canvas: Path, output: Path, overrides=(), allow_outside=False, tokens=False, collage_only=False
) -> Path:
    """Write the preview (or the bare collage) of a canvas to `output`; return its path."""
    loaded = load_canvas(canvas, overrides, allow_outside)
    layers = build_layers(loaded)
    pixels = flatten(layers) if collage_only else render_preview(layers, show_tokens=tokens)
    return write_png_atomic(output, pixels)


def preview_cli(
    canvas: CanvasPath,
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            help=r"PNG to write \[default: <canvas>.preview.png, or <canvas>.collage.png].",
        ),
    ] = None,
    tokens: Annotated[
        bool, typer.Option("--tokens", help="Tint each layer's kept 16-px tokens.")
    ] = False,
    collage_only: Annotated[
        bool,
        typer.Option(
            "--collage-only",
            help="Write the plain collage (z-order, no marks): the input of the stock-Kontext baseline.",
        ),
    ] = False,
    set_: SetOption = None,
    allow_outside: AllowOutsideOption = False,
):
    """Draw the canvas: layers flattened in z-order, each outlined with its name and lock.

    Examples:
        lc preview canvases/two_people_overlap.yaml -o preview.png --tokens
        lc preview canvases/four_people.yaml --collage-only -o collage.png
    """
    with handled_errors():
        if output is None:
            output = Path(f"{canvas.stem}.{'collage' if collage_only else 'preview'}.png")
        written = preview_canvas(canvas, output, set_ or (), allow_outside, tokens, collage_only)
        stderr.print(f"wrote {written}")
