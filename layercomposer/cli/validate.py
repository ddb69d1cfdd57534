"""`lc validate`: check canvas files, listing every problem with its file and line."""

from __future__ import annotations

import typer
from rich.markup import escape

from ..canvas import load_canvas
from ..errors import CanvasError, Problem
from ..layers import build_layers
from ._common import AllowOutsideOption, CanvasPaths, SetOption
from ._errors import EXIT_INVALID, handled_errors, stderr


def validate_canvases(paths, overrides=(), allow_outside=False) -> dict[str, list[Problem]]:
    """Return the problems of each canvas file (an empty list for a valid one)."""
    results: dict[str, list[Problem]] = {}
    for path in paths:
        try:
            build_layers(load_canvas(path, overrides, allow_outside))
            results[str(path)] = []
        except CanvasError as exc:
            results[str(path)] = exc.problems
    return results


def validate_cli(
    canvases: CanvasPaths, set_: SetOption = None, allow_outside: AllowOutsideOption = False
):
    """Check canvas files: schema, images, masks and visible tokens.

    Exits 0 when every file is valid, 2 otherwise, with each problem as
    `file:line: [layers -> 2 -> scale] message`.

    Examples:
        lc validate canvases/*.yaml
        lc validate scene.yaml --set layers.alice.scale=0.8
    """
    with handled_errors():
        results = validate_canvases(canvases, set_ or (), allow_outside)
        for path, problems in results.items():
            if problems:
                for problem in problems:
                    stderr.print(f"[red]error:[/red] {escape(str(problem))}")
            else:
                stderr.print(f"[green]ok[/green] {escape(path)}")
        failed = sum(1 for problems in results.values() if problems)
        if failed:
            stderr.print(f"{failed} of {len(results)} canvas files are invalid")
            raise typer.Exit(EXIT_INVALID)
