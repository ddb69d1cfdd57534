"""`lc dataset build`: scenes of photos and videos -> a layered training dataset."""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ._errors import handled_errors, stderr

dataset_app = typer.Typer(help="Build layered training datasets.", no_args_is_help=True)


@dataset_app.command("build")
def build_cli(
    scenes: Annotated[
        Path,
        typer.Argument(
            help="A folder of scene folders (2+ images of the same people each) and/or videos, "
            "or one video file."
        ),
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
    frames_per_shot: Annotated[
        int,
        typer.Option(
            "--frames-per-shot", min=2, max=64, help="Videos: frames sampled across each shot."
        ),
    ] = 8,
    cut_threshold: Annotated[
        float,
        typer.Option(
            "--cut-threshold",
            min=0.01,
            max=1.0,
            help="Videos: colour-histogram distance between two frames that makes a cut.",
        ),
    ] = 0.35,
    workers: Annotated[
        int, typer.Option(min=1, help="Scenes and videos built in parallel processes.")
    ] = 1,
    resume: Annotated[bool, typer.Option(help="Keep scenes a previous run finished.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
):
    """Split every image into one layer per person plus the background, identities matched.

    Masks beside an image (`<image>.mask.<k>.png`) replace segmentation; `<image>.txt` is its
    caption. Skipped and reported: images with no face, scenes with one usable image, scenes
    with more than --max-identities people.

    A video is cut into shots, each shot a scene of --frames-per-shot frames spread across it;
    near-duplicate frames and frames whose faces are too small or blurred are dropped and
    reported too. `<video>.txt` captions its frames.

    Examples:
        lc dataset build photos/ -o data/layered --resolution 512 --workers 2
        lc dataset build clips/ -o data/from-video --frames-per-shot 6
    """
    with handled_errors():
        from ..errors import UsageError
        from ..train.build import BuildOptions, build_dataset
        from ..train.video import VideoOptions

        if resolution % 16:
            raise UsageError(f"--resolution {resolution} must be a multiple of 16")
        video = VideoOptions(frames_per_shot=frames_per_shot, cut_threshold=cut_threshold)
        options = BuildOptions(resolution, detector, embedder, max_identities, video=video)
        show_progress = not quiet and sys.stderr.isatty()
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
        progress = (
            Progress(*columns, TimeElapsedColumn(), console=stderr, transient=True)
            if show_progress
            else nullcontext()
        )
        with progress:
            task = progress.add_task("scene folders and videos") if show_progress else None
            inside = progress.add_task("", total=None, visible=False) if show_progress else None

            def on_progress(done: int, total: int) -> None:
                if task is not None:
                    progress.update(task, completed=done, total=total)
                    progress.update(inside, visible=False)

            def on_step(what: str, done: int, total: int | None) -> None:
                if inside is not None:
                    progress.update(
                        inside, description=what, completed=done, total=total, visible=True
                    )

            def report(result) -> None:
                kept = f"{len(result.scene.images)} images" if result.scene else "dropped"
                if not quiet:
                    stderr.print(f"scene {escape(result.name)}: {kept}")

            index = build_dataset(
                scenes, output, options, workers, resume, report, on_progress, on_step
            )
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
