"""`lc train`: finetune a LayerComposer LoRA from one YAML config."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ._common import SetOption
from ._errors import handled_errors, stderr


def train_cli(
    config: Annotated[
        Path,
        typer.Argument(help="Training config (YAML), e.g. configs/tiny.yaml.", show_default=False),
    ],
    set_: SetOption = None,
    resume: Annotated[
        bool, typer.Option(help="Continue from the run folder's latest checkpoint.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
):
    """Train a LoRA with locking-aware sampling and the flow-matching loss.

    The run folder (`output_dir`) gets checkpoints/, samples/, metrics.csv and, at the end,
    pytorch_lora_weights.safetensors (load it with `lc render --lora`). Several GPUs:
    `accelerate launch -m layercomposer train CONFIG`.

    Examples:
        lc train configs/tiny.yaml --set data.path=data/tiny --set output_dir=runs/tiny
        lc train configs/flux-kontext.yaml --resume
    """
    with handled_errors():
        from ..train.config import load_train_config
        from ..train.trainer import StepReport, Trainer

        loaded = load_train_config(config, set_ or ())
        if quiet or not sys.stderr.isatty():

            def report(step: StepReport) -> None:
                if not quiet and (step.step % 10 == 0 or step.step == step.steps):
                    stderr.print(
                        f"step {step.step}/{step.steps} loss {step.loss:.4f} ({step.samples_per_second:.2f} samples/s)"
                    )

            final = Trainer(loaded, resume=resume, on_step=report).run()
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

                final = Trainer(loaded, resume=resume, on_step=report).run()
        stderr.print(f"wrote {escape(str(final))}")
