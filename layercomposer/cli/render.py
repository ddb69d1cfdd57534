"""`lc render`: canvases to images, with a run manifest beside each one."""

from __future__ import annotations

import glob
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..errors import UsageError, printable
from ..models import DEFAULT_MODEL
from ..render import (
    Renderer,
    RenderResult,
    RenderSettings,
    batch_exit_code,
    distributed_rank,
    render_batch,
    rerender_manifest,
    shard,
)
from ._common import (
    AllowOutsideOption,
    DeviceOption,
    DtypeOption,
    EncodeOption,
    FillOption,
    JsonOption,
    LoraOption,
    LoraScaleOption,
    ModelOption,
    ModeOption,
    OffloadOption,
    QuantizeOption,
    QuietOption,
    RevisionOption,
    SetOption,
    lora_specs,
)
from ._errors import EXIT_FAILURE, handled_errors, stderr
from ._progress import LineProgress


def expand_canvases(patterns: list[Path]) -> list[Path]:
    """Canvas paths, with quoted globs (`'canvases/*.yaml'`) expanded as a shell would."""
    paths: list[Path] = []
    for pattern in patterns:
        text = str(pattern)
        if not pattern.exists() and glob.has_magic(text):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise UsageError(f"no canvas file matches {text}")
            paths += [Path(match) for match in matches]
        else:
            paths.append(pattern)
    return paths


def render_cli(
    canvases: Annotated[
        list[Path] | None, typer.Argument(help="Canvas files or globs.", show_default=False)
    ] = None,
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Output folder: OUT/<canvas>/<seed>.png + .json.")
    ] = Path("out"),
    seed: Annotated[
        int | None, typer.Option(help=r"Seed \[default: the canvas's seed, else 0].")
    ] = None,
    num_images: Annotated[
        int,
        typer.Option("--num-images", "-n", min=1, help="Images per canvas, seeds seed..seed+n-1."),
    ] = 1,
    set_: SetOption = None,
    mode: ModeOption = "auto",
    model: ModelOption = DEFAULT_MODEL,
    revision: RevisionOption = None,
    lora: LoraOption = None,
    lora_scale: LoraScaleOption = 1.0,
    dtype: DtypeOption = "auto",
    device: DeviceOption = "auto",
    offload: OffloadOption = "none",
    attention_backend: Annotated[
        str | None,
        typer.Option(
            "--attention-backend",
            help="diffusers attention backend, e.g. native, flash, _native_cudnn.",
        ),
    ] = None,
    encode: EncodeOption = "canvas",
    fill: FillOption = "auto",
    cache_dir: Annotated[
        Path | None, typer.Option("--cache-dir", help="Keep encoded layer latents on disk too.")
    ] = None,
    compile_: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="torch.compile the transformer's blocks: faster steps after a first slow one; "
            "same image up to rounding.",
        ),
    ] = False,
    first_block_cache: Annotated[
        float | None,
        typer.Option(
            "--first-block-cache",
            metavar="THRESHOLD",
            help="Reuse the later blocks' output at steps where the first block's changed less "
            "than THRESHOLD (e.g. 0.08): fewer full steps, a slightly different image.",
        ),
    ] = None,
    quantize: QuantizeOption = "none",
    resume: Annotated[
        bool,
        typer.Option(help="Skip outputs whose manifest shows the same inputs and a whole image."),
    ] = False,
    fail_fast: Annotated[
        bool, typer.Option("--fail-fast", help="Stop at the first failing canvas.")
    ] = False,
    from_manifest: Annotated[
        Path | None,
        typer.Option("--from-manifest", help="Render a manifest's inputs again and compare."),
    ] = None,
    allow_outside: AllowOutsideOption = False,
    json_: JsonOption = False,
    quiet: QuietOption = False,
):
    """Render canvases: one image per seed, each with a run manifest beside it.

    The model is loaded once for all canvases. A failing canvas doesn't stop the others
    (unless --fail-fast); the exit code is non-zero if any failed. Under `accelerate launch`
    the canvases are split across processes.

    Examples:
        lc render canvases/four_people.yaml
        lc render canvases/*.yaml --model builtin:tiny -o out --json
        lc render scene.yaml --lora layercomposer.safetensors -n 4 --seed 100
        lc render scene.yaml --lora layercomposer.safetensors --lora style.safetensors:0.6
        lc render scene.yaml --compile --first-block-cache 0.08 --quantize fp8
        lc render --from-manifest out/four_people/4.json -o reproduced   # seed 4: the canvas's
        accelerate launch --config_file configs/accelerate/render.yaml -m layercomposer render canvases/*.yaml
    """
    with handled_errors():
        settings = RenderSettings(
            model=model, revision=revision, loras=lora_specs(lora, lora_scale), mode=mode,
            encode=encode, dtype=dtype, device=device, offload=offload,
            attention_backend=attention_backend, cache_dir=str(cache_dir) if cache_dir else None,
            compile=compile_, first_block_cache=first_block_cache, quantize=quantize, fill=fill,
        )  # fmt: skip
        settings.speed_options()  # a bad threshold fails now, not after the first canvas loads
        if from_manifest is not None:
            if canvases:
                raise UsageError("give either canvas files or --from-manifest, not both")
            _reproduce(from_manifest, output, json_)
            return
        if not canvases:
            raise UsageError(
                "no canvas given", hint="lc render scene.yaml (or --from-manifest M.json)"
            )
        paths = expand_canvases(canvases)
        rank, world_size = distributed_rank()
        if world_size > 1 and settings.device == "auto":
            settings = _device_for_rank(settings)
        show_progress = not quiet and not json_ and sys.stderr.isatty()
        batch = {
            "out_dir": output, "overrides": set_ or (), "allow_outside": allow_outside, "seed": seed,
            "num_images": num_images, "resume": resume, "fail_fast": fail_fast, "rank": rank,
            "world_size": world_size,
        }  # fmt: skip
        results = _run(paths, settings, batch, json_, quiet, show_progress)
        if world_size > 1:
            results = _gather(results)
        if rank == 0:
            _summary(results, quiet, world_size)
        raise typer.Exit(batch_exit_code(results))


def _run(paths, settings, batch: dict, json_, quiet, show_progress) -> list[RenderResult]:
    """Render a batch (`batch`: render_batch's keyword arguments), reporting as it goes."""

    # Off a terminal (a log), each output's line also says how far the batch is and how long
    # the rest should take: this process's canvases times the images per canvas.
    outputs = len(shard(list(dict.fromkeys(paths)), batch["rank"], batch["world_size"]))
    counts = [0, outputs * batch["num_images"]]  # finished, expected
    pace = LineProgress(lambda line: None)

    def on_result(result: RenderResult) -> None:
        if result.seed is None:  # an invalid canvas: one failure stands for all of its seeds
            counts[1] -= batch["num_images"] - 1
        counts[0] += 1
        done, total = counts
        where = "" if show_progress else f"; {done}/{total}, {pace.pace('outputs', done, total)}"
        if json_:
            print(json.dumps(result.to_dict()), flush=True)
        elif result.status == "failed":
            stderr.print(f"[red]failed[/red] {escape(result.canvas)}: {escape(result.error or '')}")
        elif not quiet:
            stderr.print(
                f"{result.status} {escape(result.image or '')} ({result.seconds:.1f} s{where})"
            )
        for notice in renderer.notices:
            if notice not in shown:
                shown.add(notice)
                stderr.print(f"[yellow]notice:[/yellow] {escape(notice)}")
        for warning in renderer.warnings:
            if warning not in shown:
                shown.add(warning)
                stderr.print(f"[yellow]warning:[/yellow] {escape(warning)}")

    shown: set[str] = set()
    if not show_progress:
        renderer = Renderer(settings)
        return render_batch(paths, renderer, **batch, on_result=on_result)

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=stderr, transient=True) as progress:
        canvases_task = progress.add_task("canvases", total=len(paths))
        steps_task = progress.add_task("denoising", total=None)

        def on_step(done: int, total: int) -> None:
            progress.update(steps_task, completed=done, total=total)

        def on_canvas(path: Path, _: int) -> None:
            progress.update(canvases_task, description=f"canvases ({escape(printable(path.name))})")
            progress.advance(canvases_task)

        renderer = Renderer(settings, on_step=on_step)
        results = render_batch(paths, renderer, **batch, on_result=on_result, on_canvas=on_canvas)
    return results


def _summary(results: list[RenderResult], quiet: bool, processes: int = 1) -> None:
    counts = {
        status: sum(1 for r in results if r.status == status)
        for status in ("rendered", "skipped", "failed")
    }
    line = ", ".join(f"{n} {status}" for status, n in counts.items())
    if processes > 1:
        line += f" ({processes} processes)"
    if counts["failed"]:
        table = Table(title="failed outputs")
        for column in ("canvas", "seed", "error"):
            table.add_column(column)
        for result in results:
            if result.status == "failed":
                table.add_row(
                    escape(result.canvas),
                    str(result.seed if result.seed is not None else "-"),
                    escape(result.error or ""),
                )
        stderr.print(table)
    if counts["failed"] or not quiet:
        stderr.print(f"summary: {line}")


def _reproduce(manifest: Path, output: Path, json_: bool) -> None:
    reproduction = rerender_manifest(manifest, output, lambda settings: Renderer(settings))
    if json_:
        print(json.dumps(reproduction.__dict__))
    if reproduction.identical:
        stderr.print(
            f"[green]identical[/green]: {escape(reproduction.image)} matches {escape(str(manifest))} bit for bit"
        )
        return
    what = (
        "the recorded image is missing"
        if reproduction.max_abs_difference < 0
        else f"max pixel difference {reproduction.max_abs_difference}"
    )
    stderr.print(
        f"[red]differs[/red]: {escape(reproduction.image)} does not match {escape(str(manifest))} ({what})"
    )
    raise typer.Exit(EXIT_FAILURE)


def _device_for_rank(settings: RenderSettings) -> RenderSettings:
    import os
    from dataclasses import replace

    import torch

    if torch.cuda.is_available():
        return replace(settings, device=f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return replace(settings, device="cpu")


def _gather(results: list[RenderResult]) -> list[RenderResult]:
    """Every process's results, on every process (gloo works on CPU and GPU machines alike)."""
    import torch.distributed as dist

    initialised_here = not dist.is_initialized()
    if initialised_here:
        dist.init_process_group("gloo")
    gathered: list[list[dict]] = [None] * dist.get_world_size()  # type: ignore[list-item]
    dist.all_gather_object(gathered, [result.to_dict() for result in results])
    if initialised_here:
        dist.destroy_process_group()
    return [RenderResult(**item) for part in gathered for item in part]
