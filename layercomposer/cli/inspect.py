"""`lc inspect`: per-layer tokens and the sequence lengths a canvas costs."""

from __future__ import annotations

import json

from rich.markup import escape
from rich.table import Table

from ..canvas import load_canvas
from ..layers import build_layers
from ..report import canvas_report
from ._common import AllowOutsideOption, CanvasPath, JsonOption, SetOption
from ._errors import TerminalConsole, handled_errors

stdout = TerminalConsole(highlight=False)


def inspect_cli(
    canvas: CanvasPath,
    set_: SetOption = None,
    allow_outside: AllowOutsideOption = False,
    json_: JsonOption = False,
):
    """Show each layer's size, visible pixels, kept tokens, lock and position-id index.

    Totals compare the pruned conditioning length with concatenating whole layers (N x grid)
    and with one collage image. `--json` output is stable: see docs/inspect-json.md.

    Examples:
        lc inspect canvases/four_people.yaml
        lc inspect canvases/four_people.yaml --json | jq .tokens.conditioning
    """
    with handled_errors():
        loaded = load_canvas(canvas, set_ or (), allow_outside)
        report = canvas_report(loaded, build_layers(loaded))
        if json_:
            print(json.dumps(report))
        else:
            print_report(report)


def print_report(report: dict) -> None:
    width, height = report["size"]
    grid_w, grid_h = report["token_grid"]
    table = Table(
        title=f"{escape(report['canvas'])}  {width}x{height} px, {grid_w}x{grid_h} tokens"
    )
    for column in ("layer", "size", "visible px", "tokens", "lock", "id index"):
        table.add_column(column, justify="left" if column == "layer" else "right")
    for layer in report["layers"]:
        table.add_row(
            escape(layer["name"]),
            f"{layer['size'][0]}x{layer['size'][1]}",
            f"{layer['visible_pixels']:,}",
            f"{layer['tokens']:,}",
            "locked" if layer["lock"] else "free",
            str(layer["index"]),
        )
    stdout.print(table)
    tokens = report["tokens"]
    stdout.print(
        f"conditioning tokens: [bold]{tokens['conditioning']:,}[/bold] pruned"
        f"  vs {tokens['unpruned']:,} unpruned ({len(report['layers'])} x grid,"
        f" {tokens['pruned_ratio']:.0%} kept)  vs {tokens['collage']:,} for one collage image"
    )
    stdout.print(
        f"sequence: {tokens['text']} text + {tokens['noisy']:,} image + {tokens['conditioning']:,}"
        f" conditioning = [bold]{tokens['sequence']:,}[/bold] tokens"
    )
