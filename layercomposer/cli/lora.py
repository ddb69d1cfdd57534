"""`lc lora export`: a trained LoRA in another key format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ..choices import LoraFormat
from ..errors import UsageError
from ._common import JsonOption
from ._errors import TerminalConsole, handled_errors, stderr

lora_app = typer.Typer(help="Work with LoRA files.", no_args_is_help=True)


@lora_app.command("export")
def export_cli(
    lora: Annotated[
        Path, typer.Argument(help="A diffusers-format LoRA (.safetensors), e.g. from `lc train`.")
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="The file to write.")],
    format_: Annotated[
        LoraFormat, typer.Option("--format", help="comfyui: diffusion_model.* keys, fused qkv.")
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


@lora_app.command("info")
def info_cli(
    lora: Annotated[
        Path,
        typer.Argument(
            help="A LoRA .safetensors file, or a run folder holding one.", show_default=False
        ),
    ],
    json_: JsonOption = False,
):
    """Show how a LoRA was trained: fill, timestep shift, rank, alpha, base model, lc version.

    `lc train` writes these as `lc.*` keys in the file's metadata; for other LoRAs the table
    shows what the file itself tells (format, tensors, rank, diffusers' adapter config). The
    rank is per projection: a ComfyUI/kohya file fuses q, k, v into one layer of 3 x the rank
    (shown as "4 (fused qkv: 12 = 3 x 4)"). Only the file's header is read, and for a fused
    file without `lc.rank` one fused up matrix of each kind, to tell an export's blocks from a
    LoRA trained on the fused layer.

    Examples:
        lc lora info runs/tiny/pytorch_lora_weights.safetensors
        lc lora info runs/tiny --json
    """
    with handled_errors():
        from ..lora_metadata import describe_lora_file

        info = describe_lora_file(lora)
        if json_:
            print(json.dumps(info.to_dict(), indent=2))
            return
        TerminalConsole(highlight=False).print(_info_table(info))
        if info.lc is None:
            stderr.print(
                "[yellow]no lc metadata:[/yellow] this LoRA was not written by `lc train` (or by "
                "an lc from before it was recorded); `lc render --lora` uses fill black unless "
                "given --fill"
            )


def _rank_text(info) -> tuple[str, str]:
    """The rank row's value and meaning: "4 (fused qkv: 12 = 3 × 4)", and where it is from."""
    if info.rank is None:
        return "-", ""
    fused = []
    for kind in info.fused:
        if kind.projections > 1:
            fused.append(f"{kind.layer}: {kind.stored_rank} = {kind.projections} × {kind.rank}")
        else:
            fused.append(f"{kind.layer}: {kind.stored_rank}, one LoRA across its projections")
    value = f"{info.rank} (fused {'; '.join(fused)})" if fused else str(info.rank)
    sources = {"lc.rank": "lc.rank", "tensors": "the fused up matrices' blocks"}
    found = sorted({sources[kind.source] for kind in info.fused if kind.source in sources})
    return value, "per projection, largest; from tensor shapes" + "".join(
        f" and {source}" for source in found
    )


def _info_table(info) -> Table:
    """One row per fact: the file, then the lc.* keys, then diffusers' adapter config."""
    from ..lora_metadata import LC_KEYS

    table = Table(title=escape(info.path), show_header=True)
    for column in ("key", "value", "meaning"):
        table.add_column(column)
    rows = [
        ("size", f"{info.size_bytes:,} bytes", ""),
        ("tensors", str(info.tensors), ""),
        ("format", info.format, "key layout"),
        ("rank", *_rank_text(info)),
    ]
    for key, value in (info.lc or {}).items():
        meaning = LC_KEYS[key][1] if key in LC_KEYS else ""
        shown = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
        rows.append((f"lc.{key}", shown, meaning))
    adapter = info.adapter or {}
    for key in ("transformer.r", "transformer.lora_alpha", "transformer.target_modules"):
        if key in adapter:
            value = adapter[key]
            shown = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
            rows.append((key, shown, "diffusers adapter config"))
    for key, value in info.other_metadata.items():
        rows.append((key, value if len(value) <= 80 else value[:77] + "...", "other metadata"))
    for key, value, meaning in rows:
        table.add_row(escape(key), escape(value), escape(meaning))
    return table
