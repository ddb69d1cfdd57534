"""`lc studio`: arrange a canvas in the browser, render it, save it back to its YAML file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import LcError
from ..models import DEFAULT_MODEL
from ..render import RenderSettings
from ._common import (
    DeviceOption,
    DtypeOption,
    EncodeOption,
    FillOption,
    LoraOption,
    LoraScaleOption,
    ModelOption,
    ModeOption,
    OffloadOption,
    RevisionOption,
    lora_specs,
)
from ._errors import handled_errors


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
    model: ModelOption = DEFAULT_MODEL,
    revision: RevisionOption = None,
    lora: LoraOption = None,
    lora_scale: LoraScaleOption = 1.0,
    mode: ModeOption = "auto",
    encode: EncodeOption = "box",
    fill: FillOption = "auto",
    dtype: DtypeOption = "auto",
    device: DeviceOption = "auto",
    offload: OffloadOption = "none",
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
            model=model, revision=revision, loras=lora_specs(lora, lora_scale), mode=mode,
            encode=encode, dtype=dtype, device=device, offload=offload,
            cache_dir=str(cache_dir) if cache_dir else None, fill=fill,
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
