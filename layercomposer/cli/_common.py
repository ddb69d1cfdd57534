"""Argument and option types shared by several commands: each is written once here, so the
commands that take it agree on its name, choices, help and completion."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..choices import (
    Detector,
    Dtype,
    Encode,
    FillSetting,
    Mode,
    Offload,
    Quantize,
)
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
ConfigSetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override a config key: `--set train.steps=100`, `--set data.path=data/tiny`, "
        "`--set output_dir=runs/a` (dotted paths into the YAML). Repeatable.",
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
QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress, only errors and the summary.")
]

# --- the model and the device -------------------------------------------------------------------


def _devices(incomplete: str) -> list[str]:
    """Shell completion for --device: the names lc documents (any torch device is accepted)."""
    return [d for d in ("auto", "cpu", "cuda", "cuda:0", "cuda:1") if d.startswith(incomplete)]


ModelOption = Annotated[
    str,
    typer.Option(
        help="FLUX.1 Kontext weights: a hub id, a local diffusers folder, or builtin:tiny "
        "(random weights built in code: no download, the image is noise)."
    ),
]
RevisionOption = Annotated[
    str | None, typer.Option(help="Hub revision of --model (branch, tag or commit).")
]
LoraOption = Annotated[
    list[str] | None,
    typer.Option(
        "--lora",
        help="A LoRA .safetensors (diffusers/peft or ComfyUI/kohya keys), FILE or FILE:SCALE. "
        "Repeatable: the LoRAs stack in the order given (a LayerComposer LoRA with a style or "
        "character LoRA).",
        metavar="FILE[:SCALE]",
    ),
]
LoraScaleOption = Annotated[
    float, typer.Option("--lora-scale", help="Strength of each --lora given without :SCALE.")
]


def lora_specs(values: list[str] | None, default_scale: float = 1.0) -> tuple:
    """The `lora.LoraSpec`s of the --lora options, in order (`--lora-scale` for those without).

    A FIFO, socket or device given as a LoRA is refused here (exit 2), before a model loads:
    the loader would wait on a FIFO for ever."""
    from ..limits import check_regular
    from ..lora import LoraSpec

    specs = tuple(LoraSpec.parse(value, default_scale) for value in values or ())
    for spec in specs:
        path = Path(spec.path).expanduser()
        if path.exists() and not path.is_dir():  # missing files and folders: the loader says
            check_regular(path, path.stat().st_mode)
    return specs


DeviceOption = Annotated[
    str,
    typer.Option(
        help="auto (cuda when there is one, else cpu) | cpu | cuda | cuda:N.",
        autocompletion=_devices,
    ),
]
DtypeOption = Annotated[
    Dtype, typer.Option(help="Weights' dtype; auto: bfloat16 on CUDA, else float32.")
]
OffloadOption = Annotated[
    Offload,
    typer.Option(
        help="CPU offload of the weights: model (each model moved to the GPU when used) or "
        "sequential (layer by layer: least GPU memory, slowest)."
    ),
]

# --- how a canvas is rendered -------------------------------------------------------------------

ModeOption = Annotated[
    Mode,
    typer.Option(
        help="layered: the method (per-layer ids); collage: stock Kontext on the flattened "
        "canvas; auto: layered when a LayerComposer LoRA is loaded, else collage."
    ),
]
EncodeOption = Annotated[
    Encode,
    typer.Option(
        help="canvas: each layer encoded canvas-sized, as the paper; box: only the layer's box "
        "(+margin): faster and cached across moves, approximate."
    ),
]
FillOption = Annotated[
    FillSetting,
    typer.Option(
        help="The colour transparent layer pixels are encoded as; auto: the one the LoRA was "
        "trained with (lc train records it), else black, as the paper."
    ),
]
QuantizeOption = Annotated[
    Quantize,
    typer.Option(
        help="int8 (int8 weights: half the memory) | fp8 (fp8 matmuls, GPUs of compute "
        "capability 8.9+); needs torchao, changes the image."
    ),
]
DetectorOption = Annotated[Detector, typer.Option(help="Face detector.")]


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
