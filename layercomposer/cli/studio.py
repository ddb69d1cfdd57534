"""`lc studio`: arrange a canvas in the browser, render it, save it back to its YAML file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import LcError, UsageError
from ..models import DEFAULT_MODEL
from ..render import RenderSettings
from ._errors import handled_errors

CHOICES = {
    "mode": ("auto", "layered", "collage"),
    "encode": ("box", "canvas"),
    "offload": ("none", "model", "sequential"),
    "fill": ("auto", "black", "grey"),
}


def _choice(name: str, value: str) -> str:
    if value not in CHOICES[name]:
        raise UsageError(f"--{name} {value!r}: choose one of {', '.join(CHOICES[name])}")
    return value


def studio_cli(
    target: Annotated[
        Path, typer.Argument(help="A canvas file, or a folder of canvas files.", show_default=False)
    ],
    port: Annotated[int, typer.Option(help="Port to listen on; 0 picks a free one.")] = 0,
    host: Annotated[
        str, typer.Option(help="Address to listen on; only loopback without --allow-remote.")
    ] = "127.0.0.1",
    allow_remote: Annotated[
        bool,
        typer.Option(
            "--allow-remote", help="Allow a --host other machines can reach (prints a warning)."
        ),
    ] = False,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host", help="Extra Host header name to accept (with --allow-remote)."
        ),
    ] = None,
    no_browser: Annotated[
        bool, typer.Option("--no-browser", help="Don't open a browser; just print the address.")
    ] = False,
    model: Annotated[
        str, typer.Option(help="Hub id, local diffusers folder, or builtin:tiny.")
    ] = DEFAULT_MODEL,
    revision: Annotated[str | None, typer.Option(help="Hub revision.")] = None,
    lora: Annotated[str | None, typer.Option(help="LoRA .safetensors to load.")] = None,
    lora_scale: Annotated[float, typer.Option("--lora-scale", help="LoRA strength.")] = 1.0,
    mode: Annotated[str, typer.Option(help="Default mode: auto | layered | collage.")] = "auto",
    encode: Annotated[
        str,
        typer.Option(
            help="Default layer encoding: box makes a moved layer a latent-cache hit; canvas is exact."
        ),
    ] = "box",
    fill: Annotated[
        str,
        typer.Option(
            help="auto | black | grey: transparent layer pixels' colour (auto: the LoRA's, else "
            "black)."
        ),
    ] = "auto",
    dtype: Annotated[str, typer.Option(help="auto | bfloat16 | float16 | float32.")] = "auto",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N | mps.")] = "auto",
    offload: Annotated[str, typer.Option(help="none | model | sequential CPU offload.")] = "none",
    cache_dir: Annotated[
        Path | None, typer.Option("--cache-dir", help="Keep encoded layer latents on disk too.")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            help="Renders folder inside the canvas folder (default: studio-renders).",
        ),
    ] = None,
    max_upload_mb: Annotated[
        int, typer.Option("--max-upload-mb", min=1, help="Largest image upload, in MiB.")
    ] = 25,
):
    """Open the layered canvas in a browser: move, resize, lock and add layers, watch the token
    budget, render, and save the canvas back to its file (comments kept).

    Listens on 127.0.0.1 only; the printed address carries a session token that every request
    needs. Renders go to studio-renders/ inside the canvas folder, each with its manifest.

    Examples:
        lc studio canvases/four_people.yaml
        lc studio canvases/ --model builtin:tiny --no-browser
        lc studio scene.yaml --lora layercomposer.safetensors --port 8765
    """
    with handled_errors():
        try:
            from ..studio.server import serve
        except ImportError as exc:
            raise LcError(
                f"lc studio needs its extra packages ({exc.name} is missing)",
                hint="pip install -e '.[studio]' (and '.[render]' to render)",
            ) from None
        settings = RenderSettings(
            model=model, revision=revision, lora=lora, lora_scale=lora_scale, mode=_choice("mode", mode),
            encode=_choice("encode", encode), dtype=dtype, device=device, offload=_choice("offload", offload),
            cache_dir=str(cache_dir) if cache_dir else None, fill=_choice("fill", fill),
        )  # fmt: skip
        serve(
            target,
            settings,
            host=host,
            port=port,
            open_browser=not no_browser,
            allow_remote=allow_remote,
            allowed_hosts=tuple(allowed_host or ()),
            output=output,
            max_upload_bytes=max_upload_mb * 1024 * 1024,
            say=lambda line: print(line, flush=True),  # stdout: scripts can read the address
        )
