"""`lc dataset build`: scenes of photos -> a layered training dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ._errors import handled_errors, stderr

dataset_app = typer.Typer(help="Build layered training datasets.", no_args_is_help=True)


@dataset_app.command("build")
def build_cli(
    scenes: Annotated[
        Path,
        typer.Argument(help="A folder of scene folders, each with 2+ images of the same people."),
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="The dataset folder to write.")],
    resolution: Annotated[
        int, typer.Option(min=64, max=2048, help="Square side of every image, a multiple of 16.")
    ] = 512,
    detector: Annotated[
        str, typer.Option(help="Face detector: mediapipe | dlib | insightface.")
    ] = "mediapipe",
    embedder: Annotated[str, typer.Option(help="Identity embedder: dlib | insightface.")] = "dlib",
    max_identities: Annotated[
        int, typer.Option("--max-identities", min=1, help="Drop scenes with more people.")
    ] = 4,
    workers: Annotated[int, typer.Option(min=1, help="Scenes built in parallel processes.")] = 1,
    resume: Annotated[bool, typer.Option(help="Keep scenes a previous run finished.")] = False,
):
    """Split every image into one layer per person plus the background, identities matched.

    Masks beside an image (`<image>.mask.<k>.png`) replace segmentation; `<image>.txt` is its
    caption. Skipped and reported: images with no face, scenes with one usable image, scenes
    with more than --max-identities people.

    Examples:
        lc dataset build photos/ -o data/layered --resolution 512 --workers 2
    """
    with handled_errors():
        from ..errors import UsageError
        from ..train.build import BuildOptions, build_dataset

        if resolution % 16:
            raise UsageError(f"--resolution {resolution} must be a multiple of 16")
        options = BuildOptions(resolution, detector, embedder, max_identities)

        def report(result) -> None:
            kept = f"{len(result.scene.images)} images" if result.scene else "dropped"
            stderr.print(f"scene {escape(result.name)}: {kept}")

        index = build_dataset(scenes, output, options, workers, resume, on_scene=report)
        table = Table(title=f"dataset {output}")
        table.add_column("what")
        table.add_column("count", justify="right")
        table.add_row("scenes kept", str(len(index.scenes)))
        table.add_row("images kept", str(sum(len(s.images) for s in index.scenes)))
        identities = {layer.identity for s in index.scenes for i in s.images for layer in i.layers}
        table.add_row("identities", str(len(identities - {"background"})))
        for reason, items in index.dropped.items():
            table.add_row(f"dropped: {reason}", str(len(items)))
        stderr.print(table)
