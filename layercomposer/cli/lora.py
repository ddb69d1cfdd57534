"""`lc lora export`: a trained LoRA in another key format."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ..errors import UsageError
from ._errors import handled_errors, stderr

lora_app = typer.Typer(help="Work with LoRA files.", no_args_is_help=True)


@lora_app.command("export")
def export_cli(
    lora: Annotated[
        Path, typer.Argument(help="A diffusers-format LoRA (.safetensors), e.g. from `lc train`.")
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="The file to write.")],
    format_: Annotated[
        str, typer.Option("--format", help="comfyui (diffusion_model.* keys, fused qkv).")
    ] = "comfyui",
):
    """Convert a LoRA to another key format.

    Examples:
        lc lora export runs/tiny/pytorch_lora_weights.safetensors --format comfyui -o layercomposer_comfy.safetensors
    """
    with handled_errors():
        if format_ != "comfyui":
            raise UsageError(f"--format {format_!r}: the only export format is comfyui")
        from ..train.export import export_comfyui

        written = export_comfyui(lora, output)
        stderr.print(f"wrote {escape(str(written))}")
