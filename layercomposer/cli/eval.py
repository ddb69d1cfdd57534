"""`lc eval`: identity, prompt following, image quality and locked-layer fidelity of outputs."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..errors import UsageError
from ..eval.bench import PUBLISHED, SUITES
from ..eval.identity import IDENTITY_BACKENDS
from ..eval.metrics import METRICS, EvalOptions, parse_metrics
from ..eval.outputs import find_outputs
from ..eval.run import EvalReport, check_eval, run_eval
from ..eval.vqascore import DEFAULT_MODEL as DEFAULT_VQASCORE_MODEL
from ._common import JsonOption
from ._errors import EXIT_FAILURE, handled_errors, stderr

MetricsOption = Annotated[
    str,
    typer.Option(
        help=f"Comma-separated, from {', '.join(METRICS)}. identity: face similarity to each "
        "subject; vqascore, hpsv3: need their extras (see docs/evaluation.md); fidelity: "
        "locked layers' PSNR/SSIM."
    ),
]
IdentityBackendOption = Annotated[
    str,
    typer.Option(
        "--identity-backend",
        help="insightface (ArcFace, buffalo_l pack) | antelopev2 (ArcFace, antelopev2 pack) | "
        "dlib (offline; not on ArcFace's scale).",
    ),
]
VQAScoreModelOption = Annotated[
    str, typer.Option("--vqascore-model", help="A t2v_metrics VQAScore model.")
]
HPSv3CheckpointOption = Annotated[
    Path | None,
    typer.Option("--hpsv3-checkpoint", help="HPSv3.safetensors (default: from the hub cache)."),
]
MetricsDeviceOption = Annotated[
    str, typer.Option("--metrics-device", help="Device for VQAScore and HPSv3: auto | cpu | cuda.")
]
BatchSizeOption = Annotated[
    int, typer.Option("--batch-size", min=1, help="Images per VQAScore/HPSv3 call.")
]
NoFigureOption = Annotated[
    bool, typer.Option("--no-figure", help="Write the tables only (no matplotlib needed).")
]
DownloadOption = Annotated[
    bool,
    typer.Option("--download-models", help="Fetch missing face model files into lc's cache."),
]


def eval_options(
    metrics, identity_backend, vqascore_model, hpsv3_checkpoint, device, batch_size, download
) -> EvalOptions:
    if identity_backend not in IDENTITY_BACKENDS:
        raise UsageError(
            f"--identity-backend {identity_backend!r}: choose one of {', '.join(IDENTITY_BACKENDS)}"
        )
    return EvalOptions(
        metrics=parse_metrics(metrics), identity_backend=identity_backend,
        vqascore_model=vqascore_model,
        hpsv3_checkpoint=str(hpsv3_checkpoint) if hpsv3_checkpoint else None,
        device=device, batch_size=batch_size, download_models=download,
    )  # fmt: skip


@contextmanager
def stage_progress(enabled: bool) -> Iterator:
    """A callback (stage, done, total) that draws one bar per stage on a terminal."""
    if not enabled:
        yield None
        return
    columns = (
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
    )  # fmt: skip
    with Progress(*columns, console=stderr, transient=True) as progress:
        tasks: dict[str, int] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            progress.update(tasks[stage], completed=done, total=total)

        yield update


def print_report(report: EvalReport, json_: bool) -> None:
    """The summary per method (stderr, or one JSON object on stdout) and where the files are."""
    if json_:
        print(json.dumps({
            "files": {name: str(path) for name, path in report.files.items()},
            "methods": [s.to_dict() for s in report.summaries],
            "failed": [
                {"manifest": str(e.output.manifest_path), "errors": e.errors} for e in report.failed
            ],
        }))  # fmt: skip
        return
    table = Table(title="evaluation")
    for column in ("method", "outputs", "identity", "VQAScore", "HPSv3", "missed", "locked SSIM"):
        table.add_column(column)
    for s in report.summaries:
        table.add_row(
            escape(s.method), str(s.outputs), _fmt(s.identity, 3), _fmt(s.vqascore, 3),
            _fmt(s.hpsv3, 2), f"{s.misses}/{s.subjects}", _fmt(s.locked_ssim, 3),
        )  # fmt: skip
    stderr.print(table)
    for evaluation in report.failed:
        stderr.print(
            f"[red]not fully evaluated[/red] {escape(str(evaluation.output.manifest_path))}: "
            + escape("; ".join(evaluation.errors))
        )
    stderr.print(
        f"tables: {escape(str(report.files['table']))}, {escape(str(report.files['results']))}"
    )


def _fmt(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def eval_cli(
    outputs: Annotated[
        list[str],
        typer.Argument(
            help="Render output folders, manifests or images; LABEL=PATH names the method "
            "(default: the mode the manifest says was used).",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Folder for the tables, figures and scores.")
    ] = Path("eval"),
    metrics: MetricsOption = ",".join(METRICS),
    identity_backend: IdentityBackendOption = "insightface",
    vqascore_model: VQAScoreModelOption = DEFAULT_VQASCORE_MODEL,
    hpsv3_checkpoint: HPSv3CheckpointOption = None,
    metrics_device: MetricsDeviceOption = "auto",
    batch_size: BatchSizeOption = 8,
    suite: Annotated[
        str | None,
        typer.Option(help="Show the paper's published figures for this setting: 1p | 2p | 4p."),
    ] = None,
    no_figure: NoFigureOption = False,
    download_models: DownloadOption = False,
    json_: JsonOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
):
    """Measure rendered outputs, read through their run manifests (prompt, canvas, subjects).

    Writes results.csv (one row per output), subjects.csv, locked.csv, results.md (a summary per
    method) and figure_metrics.png / figure_samples.png into -o. Scores are kept in
    scores.jsonl there: a rerun only computes what is missing, and metrics run in different
    environments add up. Exit 1 if any output could not be evaluated.

    Examples:
        lc eval out/ --identity-backend dlib --metrics identity,fidelity
        lc eval layered=runs/a collage=runs/b --suite 2p -o eval/2p
        lc eval bench/2p/renders --metrics vqascore -o bench/2p    # in the t2v_metrics env
    """
    with handled_errors():
        if suite is not None and suite not in SUITES:
            raise UsageError(f"--suite {suite!r}: choose one of {', '.join(SUITES)}")
        options = eval_options(
            metrics, identity_backend, vqascore_model, hpsv3_checkpoint, metrics_device,
            batch_size, download_models,
        )  # fmt: skip
        found = find_outputs(outputs)
        check_eval(options, not no_figure)
        show = not quiet and not json_ and sys.stderr.isatty()
        with stage_progress(show) as progress:
            report = run_eval(
                found, options, output, PUBLISHED.get(suite or ""), "lc eval", not no_figure,
                progress,
            )  # fmt: skip
        print_report(report, json_)
        if report.failed:
            raise typer.Exit(EXIT_FAILURE)
