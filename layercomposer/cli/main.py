"""The `lc` command: wires each command module into one Typer app, nothing more."""

from __future__ import annotations

import inspect
import logging
import os
import re
import sys
from typing import Annotated

import typer

# diffusers and transformers log warnings a user cannot act on (e.g. a missing torchvision);
# lc reports what matters itself. Set these variables to see their logs again.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

from .. import __version__
from ._errors import closed_pipe
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
    no_args_is_help=True,
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
    """LayerComposer: compose several people on a layered canvas, then render one image.

    A canvas file (YAML) lists the people as layers. validate, inspect, preview and schema need
    neither torch nor a model; render, studio, bench and train need FLUX.1 Kontext, or
    --model builtin:tiny, a random-weight model built in code, to try them on any CPU.

    Examples:
        lc validate canvases/*.yaml
        lc inspect canvases/four_people.yaml
        lc preview canvases/four_people.yaml --tokens -o preview.png
        lc render canvases/four_people.yaml --model builtin:tiny --set steps=4 -o out
        lc studio canvases/ --model builtin:tiny
        lc render --help
        lc --install-completion bash
    """


def reflow(doc: str | None) -> str | None:
    """A docstring as help: the lines of each paragraph joined, so that it wraps at the
    terminal's width; a paragraph with indented lines (Examples:) keeps its lines."""
    if not doc:
        return doc
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    kept = [
        p if re.search(r"^\s{2,}\S", p, re.MULTILINE) else " ".join(p.split()) for p in paragraphs
    ]
    return "\n\n".join(kept)


COMMANDS = {
    "validate": validate_cli,
    "inspect": inspect_cli,
    "preview": preview_cli,
    "schema": schema_cli,
    "render": render_cli,
    "studio": studio_cli,
    "autolayout": autolayout_cli,
    "eval": eval_cli,
    "bench": bench_cli,
    "train": train_cli,
}
for _name, _function in COMMANDS.items():
    app.command(_name, help=reflow(_function.__doc__))(_function)
for _group in (lora_app, dataset_app):
    for _info in _group.registered_commands:
        _info.help = reflow(_info.help or (_info.callback and _info.callback.__doc__))
app.add_typer(lora_app, name="lora")
app.add_typer(dataset_app, name="dataset")
app.registered_callback.help = reflow(_root.__doc__)


def main() -> None:
    # click's name for the completion script (`_LC_COMPLETE=bash_source`) is Typer's source_bash
    shell, _, what = os.environ.get("_LC_COMPLETE", "").partition("_")
    if what == "source":
        os.environ["_LC_COMPLETE"] = f"source_{shell}"
    try:
        try:
            app()
        finally:
            sys.stdout.flush()  # here, not at exit, so that a closed pipe is seen below
    except BrokenPipeError:
        sys.exit(closed_pipe())
