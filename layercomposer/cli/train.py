"""`lc train`: finetune a LayerComposer LoRA from one YAML config."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ._common import ConfigSetOption, JsonOption
from ._errors import TerminalConsole, handled_errors, stderr
from ._progress import LineProgress


def train_cli(
    config: Annotated[
        Path,
        typer.Argument(help="Training config (YAML), e.g. configs/tiny.yaml.", show_default=False),
    ],
    set_: ConfigSetOption = None,
    resume: Annotated[
        bool,
        typer.Option(
            help="Continue from the run folder's latest checkpoint (written with the same "
            "settings; more steps may be given)."
        ),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Start over in a run folder that holds another run: its checkpoints, samples, "
            "metrics and LoRA are removed first.",
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    estimate: Annotated[
        bool,
        typer.Option(
            "--estimate",
            help="Print the config's memory per GPU and time per step, counted from the model's "
            "architecture (no weights are loaded), and exit.",
        ),
    ] = False,
    gpus: Annotated[
        int, typer.Option(min=1, help="--estimate: processes (GPUs) the run is launched on.")
    ] = 1,
    device_tflops: Annotated[
        float,
        typer.Option(
            min=0.001,
            help="--estimate: the bf16 rate one GPU sustains, TFLOP/s (default: an H100 SXM's, "
            "~40% of its 989 peak; at the same share an L40S gives ~145, an RTX 4090 ~66).",
        ),
    ] = 400.0,
    resolution: Annotated[
        int | None,
        typer.Option(
            min=16, help="--estimate: image size (default: the dataset's if it exists, else 512)."
        ),
    ] = None,
    conditioning_tokens: Annotated[
        int | None,
        typer.Option(
            min=0, help="--estimate: layer tokens per example (default: one canvas' worth)."
        ),
    ] = None,
    json_: JsonOption = False,
):
    """Train a LoRA with locking-aware sampling and the flow-matching loss.

    The run folder (`output_dir`) gets checkpoints/, samples/, metrics.csv and, at the end,
    pytorch_lora_weights.safetensors (load it with `lc render --lora`). A folder that holds
    another run is refused (exit 2) unless --resume or --overwrite says what to do with it.
    Several GPUs: `accelerate launch -m layercomposer train CONFIG`.

    Examples:
        lc train configs/tiny.yaml --set data.path=data/tiny --set output_dir=runs/tiny
        lc train configs/flux-kontext.yaml --resume
        lc train configs/tiny.yaml --overwrite
        lc train configs/flux-kontext-1gpu.yaml --estimate
        lc train configs/flux-kontext.yaml --estimate --gpus 8 --json
    """
    with handled_errors():
        from ..train.config import load_train_config

        loaded = load_train_config(config, set_ or ())
        if estimate:
            from ..train.architecture import model_architecture
            from ..train.estimate import estimate as estimate_budget

            dataset_resolution, captions = _dataset_facts(loaded.data.path)
            budget = estimate_budget(
                loaded,
                model_architecture(loaded.model, loaded.revision),
                resolution=resolution or dataset_resolution,
                conditioning_tokens=conditioning_tokens,
                gpus=gpus,
                device_tflops=device_tflops,
                captions=captions,
            )
            if json_:
                print(json.dumps(budget.to_dict()))
            else:
                _print_estimate(budget)
            return
        from ..train.trainer import StepReport, Trainer

        if quiet or not sys.stderr.isatty():
            # A log's line per logged step, with the time left: timed from the end of the first
            # step this run makes (it carries the warm-up; a resumed run starts past 0).
            lines = LineProgress(lambda line: stderr.print(escape(line)))
            first: list[int] = []

            def report(step: StepReport) -> None:
                if quiet:
                    return
                if not first:
                    first.append(step.step)
                    lines.start("step", step.step)
                if step.step % 10 == 0 or step.step == step.steps:
                    what = f"loss {step.loss:.4f}, {step.samples_per_second:.2f} samples/s"
                    if step.step == first[0]:
                        stderr.print(f"step {step.step}/{step.steps} ({what})")
                    lines("step", step.step, step.steps, what)

            trainer = Trainer(loaded, resume=resume, on_step=report, overwrite=overwrite)
            final = trainer.run()
        else:
            columns = (
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
            )
            with Progress(*columns, console=stderr) as progress:
                task = progress.add_task("training", total=loaded.train.steps)

                def report(step: StepReport) -> None:
                    progress.update(
                        task, completed=step.step,
                        description=f"loss {step.loss:.4f}  {step.samples_per_second:.2f} samples/s",
                    )  # fmt: skip

                trainer = Trainer(loaded, resume=resume, on_step=report, overwrite=overwrite)
                final = trainer.run()
        if trainer.accelerator.is_main_process:  # one line for all processes
            stderr.print(f"wrote {escape(str(final))}")


def _dataset_facts(path: str | list[str]) -> tuple[int, int | None]:
    """The dataset's image size and distinct captions; (512, None) when there is no dataset yet."""
    from ..errors import LcError
    from ..train.dataset import load_datasets

    try:
        index = load_datasets(path)
    except LcError:
        return 512, None
    captions = {image.caption for scene in index.scenes for image in scene.images}
    return index.resolution, len(captions)


def _print_estimate(budget) -> None:
    from rich.table import Table

    from ..train.estimate import GB

    tokens = budget.tokens
    table = Table(
        title=f"{escape(budget.model)} at {budget.resolution}x{budget.resolution}: memory per GPU",
        title_justify="left",
    )
    table.add_column("item")
    table.add_column("GB", justify="right")
    table.add_column("note")
    for item in budget.memory:
        table.add_row(item.name, f"{item.bytes / GB:.2f}", escape(item.note))
    table.add_row("total", f"{budget.total_bytes / GB:.1f}", "", style="bold")
    out = TerminalConsole(highlight=False, soft_wrap=True)
    out.print(table)
    params = budget.parameters
    out.print(
        f"parameters: transformer {params['transformer'] / 1e9:.2f} B, "
        f"LoRA {params['lora'] / 1e9:.3f} B, T5 {params['text_encoder_2'] / 1e9:.2f} B, "
        f"CLIP {params['text_encoder'] / 1e6:.0f} M, VAE {params['vae'] / 1e6:.0f} M"
    )
    out.print(f"CPU memory: {budget.host_bytes / GB:.1f} GB")
    for item in budget.host_memory:
        out.print(f"  {item.name}: {item.bytes / GB:.2f} GB ({escape(item.note)})")
    out.print(
        f"tokens per example: {tokens.noisy:,} noisy + {tokens.conditioning:,} conditioning "
        f"+ {tokens.text:,} text"
    )
    hours = budget.steps * budget.seconds_per_step / 3600
    out.print(
        f"time: {budget.flops_per_example / 1e12:.0f} TFLOP per example x {budget.batch_size} "
        f"per GPU = {budget.seconds_per_step:.2f} s per step at {budget.device_tflops:g} TFLOP/s "
        f"(global batch {budget.global_batch} on {budget.gpus} GPU"
        f"{'s' if budget.gpus > 1 else ''}); {budget.steps:,} steps: {hours:,.1f} h "
        f"({hours / 24:.1f} days)"
    )
    for line in budget.assumptions:
        out.print(f"assumed: {escape(line)}")
