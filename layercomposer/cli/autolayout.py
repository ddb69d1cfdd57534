"""`lc autolayout`: a ready canvas from subject photos and a prompt (or a prior image)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ..autolayout import AutolayoutRequest, PriorSettings, autolayout
from ..autolayout.prior import DEFAULT_GUIDANCE, DEFAULT_PRIOR_MODEL, DEFAULT_STEPS
from ..choices import Assign, Fallback, Segmenter
from ..errors import UsageError
from ._common import (
    DetectorOption,
    DeviceOption,
    DtypeOption,
    JsonOption,
    OffloadOption,
    parse_size,
)
from ._errors import handled_errors, stderr


def _masks(items: list[str]) -> dict[str, Path]:
    masks = {}
    for item in items:
        key, sep, path = item.partition("=")
        if not sep or not key or not path:
            raise UsageError(f"--mask {item!r}: expected SUBJECT=MASK, e.g. alice=alice_mask.png")
        masks[key] = Path(path)
    return masks


def _faces(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise UsageError(f"--faces {text!r}: expected face indices, e.g. 2,0,1") from None


def autolayout_cli(
    prompt: Annotated[str, typer.Option(help="What the image should show (the canvas prompt).")],
    subject: Annotated[
        list[Path],
        typer.Option(help="A photo of one person; repeat, in order. RGBA PNGs keep their alpha."),
    ],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="The canvas file to write (.yaml).")
    ],
    prior: Annotated[
        Path | None,
        typer.Option(help="Take the layout from this image instead of generating a prior."),
    ] = None,
    prior_model: Annotated[
        str,
        typer.Option("--prior-model", help="Hub id, local diffusers folder, or builtin:tiny."),
    ] = DEFAULT_PRIOR_MODEL,
    prior_prompt: Annotated[
        str | None,
        typer.Option("--prior-prompt", help="Generate the prior from this text, verbatim."),
    ] = None,
    revision: Annotated[str | None, typer.Option(help="Hub revision of the prior model.")] = None,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the generated prior.")] = 0,
    steps: Annotated[
        int, typer.Option(min=1, help="Denoising steps of the prior.")
    ] = DEFAULT_STEPS,
    guidance: Annotated[float, typer.Option(help="Guidance of the prior.")] = DEFAULT_GUIDANCE,
    size: Annotated[
        str | None,
        typer.Option(help=r"Canvas WIDTHxHEIGHT \[default: 1024x1024, or the prior image's size]."),
    ] = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    offload: OffloadOption = "none",
    detector: DetectorOption = "mediapipe",
    segmenter: Annotated[Segmenter, typer.Option(help="Person segmenter.")] = "mediapipe",
    mask: Annotated[
        list[str] | None,
        typer.Option(
            metavar="SUBJECT=MASK",
            help="Your own mask for a subject (its name or file name); repeatable.",
        ),
    ] = None,
    assign: Annotated[
        Assign,
        typer.Option(help="order: left to right; size: largest face first; manual: --faces."),
    ] = "order",
    faces: Annotated[
        str | None,
        typer.Option(help="With --assign manual: a prior face per subject, e.g. 2,0,1."),
    ] = None,
    fallback: Annotated[
        Fallback, typer.Option(help="Too few prior faces: error, or grid (the rest in a row).")
    ] = "error",
    no_face_ok: Annotated[
        bool,
        typer.Option("--no-face-ok", help="Place a subject without a face by its cut-out."),
    ] = False,
    background: Annotated[
        str | None,
        typer.Option(help="Keep a background layer: 'prior', or an image path."),
    ] = None,
    download_models: Annotated[
        bool,
        typer.Option(
            "--download-models", help="Fetch missing detector/segmenter files (SHA-256 checked)."
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing canvas and its folder.")
    ] = False,
    json_: JsonOption = False,
):
    """Derive a canvas from a prior image: each subject cut out and put on a prior face.

    The prior is generated from the prompt (FLUX.1-dev) or given with --prior. Writes the canvas
    and, beside it, <canvas>.autolayout/ with the layers, the prior, a preview and a manifest;
    nothing is written unless the whole layout succeeds. See docs/autolayout.md.

    Examples:
        lc autolayout --prompt "four friends at a campfire" --subject a.jpg --subject b.jpg -o scene.yaml
        lc autolayout --prior group.jpg --subject a.png --subject b.png --prompt "..." -o out/scene.yaml
        lc autolayout --prior-model builtin:tiny --size 256x256 --steps 2 --fallback grid --subject a.png --prompt "test" -o tiny/scene.yaml
    """
    with handled_errors():
        request = AutolayoutRequest(
            prompt=prompt,
            subjects=list(subject),
            output=output,
            prior=prior,
            prior_settings=PriorSettings(
                model=prior_model, revision=revision, seed=seed, steps=steps, guidance=guidance,
                prompt=prior_prompt, device=device, dtype=dtype, offload=offload,
            ),
            size=parse_size(size),
            detector=detector,
            segmenter=segmenter,
            masks=_masks(mask or []),
            assign=assign,
            faces=_faces(faces),
            fallback=fallback,
            no_face_ok=no_face_ok,
            background=background,
            download_models=download_models,
            force=force,
        )  # fmt: skip
        if faces is not None and assign != "manual":
            raise UsageError("--faces goes with --assign manual")

        def warn(message: str) -> None:
            stderr.print(f"[yellow]warning:[/yellow] {escape(message)}")

        result = autolayout(request, warn)
        if json_:
            print(json.dumps(result.to_dict()))
        for placement in result.placements:
            where = f"face {placement.face_index}" if placement.face_index is not None else "grid"
            stderr.print(
                f"{escape(placement.name)}: {where}, scale {placement.scale:.3f}"
                + (f", rotate {placement.rotate:.1f}" if placement.rotate else "")
            )
        stderr.print(f"wrote {escape(str(result.canvas))} and {escape(str(result.folder))}/")
