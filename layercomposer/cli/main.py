"""The `lc` command: wires each command module into one Typer app, nothing more."""

from __future__ import annotations

import logging
import os
from typing import Annotated

import typer

# diffusers and transformers log warnings a user cannot act on (e.g. a missing torchvision);
# lc reports what matters itself. Set these variables to see their logs again.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

from .. import __version__
from .autolayout import autolayout_cli
from .bench import bench_cli
from .dataset import dataset_app
from .eval import eval_cli
from .inspect import inspect_cli
from .lora import lora_app
from .preview import preview_cli
from .render import render_cli
from .schema import schema_cli
from .studio import studio_cli
from .train import train_cli
from .validate import validate_cli

# torchao (lc render --quantize), which diffusers imports whenever it is installed, logs each GPU
# kernel library it cannot load, and torch a deprecation for each of torchao's enums.
for _noisy in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)

app = typer.Typer(
    name="lc",
    help="LayerComposer: compose several people on a layered canvas, then render one image.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"lc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
):
    """LayerComposer: compose several people on a layered canvas, then render one image."""


app.command("validate")(validate_cli)
app.command("inspect")(inspect_cli)
app.command("preview")(preview_cli)
app.command("schema")(schema_cli)
app.command("render")(render_cli)
app.command("studio")(studio_cli)
app.command("autolayout")(autolayout_cli)
app.command("eval")(eval_cli)
app.command("bench")(bench_cli)
app.command("train")(train_cli)
app.add_typer(lora_app, name="lora")
app.add_typer(dataset_app, name="dataset")


def main() -> None:
    app()
