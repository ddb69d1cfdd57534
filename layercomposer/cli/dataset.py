"""`lc dataset build`: scenes of photos and videos -> a layered training dataset;
`lc dataset caption`: a caption per image from a vision-language model."""

from __future__ import annotations

import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ..choices import Embedder
from ..errors import printable
from ..models import DEFAULT_CAPTIONER
from ..train.caption import DEFAULT_BATCH_SIZE, DEFAULT_MAX_NEW_TOKENS, DEFAULT_PROMPT
from ._common import DetectorOption, DeviceOption, DtypeOption, JsonOption
from ._errors import handled_errors, stderr
from ._progress import LineProgress

dataset_app = typer.Typer(help="Build and caption layered training datasets.", no_args_is_help=True)


@dataset_app.command("build")
def build_cli(
    scenes: Annotated[
        Path,
        typer.Argument(
            help="A folder of photo folders (2+ images of the same people each), videos and/or "
            "folders of videos, or one video file."
        ),
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="The dataset folder to write.")],
    resolution: Annotated[
        int, typer.Option(min=64, max=2048, help="Square side of every image, a multiple of 16.")
    ] = 512,
    detector: DetectorOption = "mediapipe",
    embedder: Annotated[Embedder, typer.Option(help="Identity embedder.")] = "dlib",
    max_identities: Annotated[
        int,
        typer.Option(
            "--max-identities",
            min=1,
            help="Most people in a scene: photo folders and shots with more are dropped; shots "
            "are grouped into a scene only up to it.",
        ),
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
        int,
        typer.Option(
            min=1, help="Units (photo folders, videos, folders of videos) built in parallel."
        ),
    ] = 1,
    resume: Annotated[bool, typer.Option(help="Keep units a previous run finished.")] = False,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard",
            metavar="K/N",
            help="Build only part K of N (0 <= K < N) of the units, as a complete dataset of "
            "its own: one task of a Slurm array, Indexed Job or Ray task list. Train on all "
            "parts with data.path as a list.",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
):
    """Split every image into one layer per person plus the background, identities matched.

    A folder of photos is one scene. Masks beside an image (`<image>.mask.<k>.png`) replace
    segmentation; `<image>.txt` is its caption. Skipped and reported: images with no face,
    scenes with one usable image, scenes with more than --max-identities people.

    A video is cut into shots of --frames-per-shot frames spread across each; the shots of a
    video, or of all the videos (and photos) of one sub-folder, are grouped by face identity
    into scenes `<name>-scene001`, ..., so a scene spans shots and training takes donors from
    other shots. Near-duplicate frames and frames whose faces are too small or blurred are
    dropped and reported too. `<video>.txt` captions its frames.

    At the end it prints what the data can teach (written to index.json as `stats`): images
    and shots per scene, the share of people with a donor in another shot, and how far
    donors are from their targets in appearance (0: near-copies).

    Examples:
        lc dataset build photos/ -o data/layered --resolution 512 --workers 2
        lc dataset build clips/ -o data/from-video --frames-per-shot 6
        lc dataset build clips/ -o data/part-3 --shard 3/8      # part 3 of 8, on its own machine
    """
    with handled_errors():
        from ..errors import UsageError
        from ..train.build import BuildOptions, Shard, build_dataset
        from ..train.video import VideoOptions

        if resolution % 16:
            raise UsageError(f"--resolution {resolution} must be a multiple of 16")
        part = Shard.parse(shard) if shard is not None else None
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
            task = progress.add_task("photo folders and videos") if show_progress else None
            inside = progress.add_task("", total=None, visible=False) if show_progress else None

            # Off a terminal (a log): a line per finished source, with the time left.
            lines = LineProgress(lambda line: stderr.print(escape(line)))
            counted: list[int] = []

            def on_progress(done: int, total: int) -> None:
                if task is not None:
                    progress.update(task, completed=done, total=total)
                    progress.update(inside, visible=False)
                elif not quiet and not counted:  # the first call: sources a --resume kept
                    counted.append(done)
                    lines.start("sources", done)
                elif not quiet:
                    lines("sources", done, total)

            def on_step(what: str, done: int, total: int | None) -> None:
                if inside is not None:
                    progress.update(
                        inside,
                        description=escape(printable(what)),
                        completed=done,
                        total=total,
                        visible=True,
                    )

            def report(result) -> None:
                if quiet:
                    return
                if not result.scenes:
                    stderr.print(f"{escape(result.name)}: dropped")
                for scene in result.scenes:
                    shots = len({image.shot for image in scene.images})
                    stderr.print(
                        f"scene {escape(scene.name)}: {len(scene.images)} images, "
                        f"{shots} shot{'s' if shots != 1 else ''}"
                    )

            index = build_dataset(
                scenes, output, options, workers, resume, report, on_progress, on_step, part
            )
        title = f"dataset {output}" + (f" (shard {part})" if part else "")
        table = Table(title=title)
        table.add_column("what")
        table.add_column("count", justify="right")
        table.add_row("scenes kept", str(len(index.scenes)))
        table.add_row("images kept", str(sum(len(s.images) for s in index.scenes)))
        identities = {layer.identity for s in index.scenes for i in s.images for layer in i.layers}
        table.add_row("identities", str(len(identities - {"background"})))
        for reason, items in index.dropped.items():
            table.add_row(f"dropped: {reason}", str(len(items)))
        stderr.print(table)
        stderr.print(_teach_table(index.stats))
        if not index.scenes and part:
            stderr.print(f"shard {part} holds no scenes (its units were dropped, or it has none)")


def _teach_table(stats: dict) -> Table:
    """What the data can teach, from the index's `stats` (see layercomposer/train/stats.py)."""

    def spread(value: dict | None, form: str = "g") -> str:
        if not value:
            return "-"
        return " / ".join(f"{value[k]:{form}}" for k in ("min", "median", "max"))

    def share(count: int, fraction: float) -> str:
        return f"{fraction:.0%} ({count} of {stats['people']})"

    table = Table(title="what it can teach")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("images per scene (min / median / max)", spread(stats["images_per_scene"]))
    table.add_row("shots per scene (min / median / max)", spread(stats["shots_per_scene"]))
    table.add_row("people (person-image pairs)", str(stats["people"]))
    table.add_row(
        "... with a donor from another shot",
        share(stats["people_with_other_shot_donor"], stats["other_shot_donor_share"]),
    )
    table.add_row(
        f"... with no donor (always locked; min {stats['min_donor_seconds']:g} s in a shot)",
        share(stats["people_without_donor"], stats["no_donor_share"]),
    )
    table.add_row(
        "target-donor appearance distance (min / median / max; 0 = copies)",
        spread(stats["appearance_distance"], ".3f"),
    )
    return table


@dataset_app.command("caption")
def caption_cli(
    dataset: Annotated[
        Path, typer.Argument(help="A dataset folder written by `lc dataset build`.")
    ],
    model: Annotated[
        str,
        typer.Option(
            help="The captioner: a Qwen2.5-VL-Instruct hub id or local folder, or builtin:tiny "
            "(random weights: noise, for tests)."
        ),
    ] = DEFAULT_CAPTIONER,
    revision: Annotated[
        str | None, typer.Option(help="A hub branch, tag or commit of --model.")
    ] = None,
    prompt: Annotated[
        str | None,
        typer.Option(
            help="What the captioner is asked about each image. Default: the people, what they "
            "do and the setting, in one or two sentences, as a prompt for FLUX."
        ),
    ] = None,
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size",
            min=1,
            max=256,
            help="Images captioned at once (16 with the 7B in bfloat16: about 17 GiB at 512 px).",
        ),
    ] = DEFAULT_BATCH_SIZE,
    max_new_tokens: Annotated[
        int,
        typer.Option("--max-new-tokens", min=1, max=1024, help="The longest caption, in tokens."),
    ] = DEFAULT_MAX_NEW_TOKENS,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Recaption every image: sidecar `.txt` captions and earlier model captions too.",
        ),
    ] = False,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress.")] = False,
    json_: JsonOption = False,
):
    """Write one caption per image with a vision-language model (Qwen2.5-VL-Instruct).

    Replaces lc's default captions ("a photo of N people"); sidecar captions (`<image>.txt`
    when the dataset was built) are kept unless --overwrite, which recaptions every image.
    Images a model captioned before are skipped. Resumable: finished captions are on disk in
    DATASET/captions.jsonl as they come, so after a crash or a kill the same command captions
    only the rest. index.json gets the captions and a record of the captioner (`captioners`).

    Examples:
        lc dataset caption data/layered
        lc dataset caption data/layered --device cuda:1 --batch-size 32 --dtype bfloat16
        lc dataset caption data/layered --model ~/models/Qwen2.5-VL-7B-Instruct --overwrite
        lc dataset caption data/layered --prompt "Describe the two people and the room." --json
    """
    with handled_errors():
        from ..train.caption import CaptionOptions, caption_dataset

        options = CaptionOptions(
            model, revision, DEFAULT_PROMPT if prompt is None else prompt, max_new_tokens,
            batch_size, overwrite, device, dtype,
        )  # fmt: skip
        show_bar = not quiet and not json_ and sys.stderr.isatty()
        if not show_bar:
            _no_download_bars()
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
        progress = (
            Progress(*columns, TimeElapsedColumn(), TimeRemainingColumn(), console=stderr)
            if show_bar
            else nullcontext()
        )
        with progress:
            task = progress.add_task("captions", total=None) if show_bar else None
            last_line = [0.0]

            def on_progress(done: int, total: int) -> None:
                if task is not None:
                    progress.update(task, completed=done, total=total)
                elif done and not quiet and not json_:  # off a terminal: a line every 10 s
                    now = time.monotonic()
                    if now - last_line[0] >= 10 or done == total:
                        last_line[0] = now
                        stderr.print(f"captioned {done}/{total} images")

            summary = caption_dataset(dataset, options, on_progress=on_progress)
        if json_:
            print(json.dumps(summary.to_dict()))
        elif not quiet:
            _print_caption_summary(summary)


def _no_download_bars() -> None:
    """No tqdm bars from huggingface_hub and transformers (loading the weights) in a log."""
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # transformers reads this when it is imported
    if "transformers" in sys.modules:
        from transformers.utils import logging

        logging.disable_progress_bar()


def _print_caption_summary(summary) -> None:
    written = len(summary.captioned) + len(summary.resumed) - len(summary.empty)
    if summary.captioner is None:
        stderr.print(
            f"nothing to caption: {len(summary.already)} images have model captions, "
            f"{len(summary.sidecar_kept)} sidecar captions kept (--overwrite recaptions them)"
        )
        return
    rate = len(summary.captioned) / summary.seconds if summary.seconds else 0.0
    line = f"captioned {written} images with {escape(summary.captioner['id'])}"
    if summary.resumed:
        line += f" ({len(summary.resumed)} from the interrupted run)"
    stderr.print(f"{line}; {rate:.2f} images/s")
    if summary.sidecar_kept or summary.already:
        stderr.print(
            f"kept: {len(summary.sidecar_kept)} sidecar captions, {len(summary.already)} "
            "captioned by a model before (--overwrite recaptions them)"
        )
    if summary.empty:
        shown = ", ".join(summary.empty[:5]) + (" ..." if len(summary.empty) > 5 else "")
        stderr.print(
            f"[yellow]{len(summary.empty)} images got an empty caption and keep their old one:"
            f"[/yellow] {escape(shown)}"
        )
    if summary.cut_off:
        stderr.print(
            f"{summary.cut_off} answers reached --max-new-tokens: cut at their last full "
            "sentence, where they had one"
        )
    if summary.captioner.get("random_weights"):
        stderr.print("[yellow]builtin:tiny has random weights: its captions are noise[/yellow]")
