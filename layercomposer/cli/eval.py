"""`lc eval`: identity, prompt following, image quality and locked-layer fidelity of outputs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..choices import IdentityBackend, Suite
from ..errors import InputError, UsageError
from ..eval.availability import METRICS, PYTHON_OPTIONS, MetricStatus, metric_status, skipped_line
from ..eval.identity import IDENTITY_BACKENDS
from ..eval.metrics import EvalOptions, parse_metrics
from ..eval.outputs import find_outputs
from ..eval.published import TABLE_1
from ..eval.run import EvalReport, check_eval, run_eval
from ..eval.vqascore import DEFAULT_MODEL as DEFAULT_VQASCORE_MODEL
from ._common import JsonOption
from ._errors import EXIT_FAILURE, EXIT_INVALID, handled_errors, stderr
from ._errors import report as report_error
from ._progress import LineProgress

MetricsOption = Annotated[
    str | None,
    typer.Option(
        help=f"Comma-separated, from {', '.join(METRICS)} (default: every one that can run; "
        "the others are named in one line). identity: face similarity to each subject; "
        "vqascore, hpsv3: need their packages, here or in the environment of --vqascore-python "
        "/ --hpsv3-python; fidelity: locked layers' PSNR/SSIM. `lc eval --check` lists them.",
        show_default=False,
    ),
]
VQAScorePythonOption = Annotated[
    str | None,
    typer.Option(
        PYTHON_OPTIONS["vqascore"][0],
        envvar=PYTHON_OPTIONS["vqascore"][1],
        help="The python of an environment with t2v_metrics: VQAScore runs there, from lc.",
    ),
]
HPSv3PythonOption = Annotated[
    str | None,
    typer.Option(
        PYTHON_OPTIONS["hpsv3"][0],
        envvar=PYTHON_OPTIONS["hpsv3"][1],
        help="The python of an environment with hpsv3: HPSv3 runs there, from lc.",
    ),
]
IdentityBackendOption = Annotated[
    IdentityBackend,
    typer.Option(
        "--identity-backend",
        help="insightface: ArcFace, buffalo_l pack; antelopev2: ArcFace, antelopev2 pack; "
        "dlib: offline, not on ArcFace's scale.",
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
    metrics, identity_backend, vqascore_model, hpsv3_checkpoint, device, batch_size, download,
    vqascore_python=None, hpsv3_python=None,
) -> EvalOptions:  # fmt: skip
    if identity_backend not in IDENTITY_BACKENDS:
        raise UsageError(
            f"--identity-backend {identity_backend!r}: choose one of {', '.join(IDENTITY_BACKENDS)}"
        )
    return EvalOptions(
        metrics=None if metrics is None else parse_metrics(metrics),
        identity_backend=identity_backend, vqascore_model=vqascore_model,
        hpsv3_checkpoint=str(hpsv3_checkpoint) if hpsv3_checkpoint else None,
        device=device, batch_size=batch_size, download_models=download,
        vqascore_python=vqascore_python or None, hpsv3_python=hpsv3_python or None,
    )  # fmt: skip


def report_skipped(skipped: list[MetricStatus]) -> None:
    """The one line naming the metrics that will not run and how to enable them."""
    if skipped:
        stderr.print(f"[yellow]{escape(skipped_line(skipped))}[/yellow]", soft_wrap=True)


def print_check(options: EvalOptions, json_: bool) -> None:
    """`lc eval --check`: each metric, whether it can run, where, and how to enable it."""
    statuses = [
        metric_status(m, options.identity_backend, options.pythons.get(m), options.download_models)
        for m in METRICS
    ]
    if json_:
        print(json.dumps({"metrics": [s.to_dict() for s in statuses]}))
        return
    # One block per metric, each fact on its own line: paths and install lines stay whole and
    # wrap at the terminal's edge (a table squeezes them into columns a word wide).
    for s in statuses:
        state = "[green]available[/green]" if s.available else "[red]not available[/red]"
        stderr.print(f"[bold]{s.metric}[/bold]: {state}")
        if not s.available:
            stderr.print(f"  why: {escape(' '.join(s.problem.split()))}")
        stderr.print(f"  where: {escape(s.where)}")
        if s.enable:
            stderr.print(f"  to enable: {escape(' '.join(s.enable.split()))}")


@contextmanager
def stage_progress(quiet: bool) -> Iterator:
    """A callback (stage, done, total): one bar per stage on a terminal; off a terminal (a CI
    log) one line per finished unit with an estimate of the time left; nothing if `quiet`."""
    if quiet:
        yield None
        return
    if not stderr.is_terminal:
        yield LineProgress(lambda line: stderr.print(escape(line)))
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
    for s in report.summaries:
        if s.caveat():
            stderr.print(
                f"[yellow]not comparable with the paper:[/yellow] {escape(s.method)} ran with "
                f"{escape(s.caveat())}"
            )
    folders = {path.parent for path in _in_order(report.files)}
    if len(folders) == 1:  # `wrote results.md, ... in eval/`
        names = ", ".join(path.name for path in _in_order(report.files))
        stderr.print(f"wrote {escape(names)} in {escape(str(folders.pop()))}/")
    else:
        stderr.print(f"wrote {escape(', '.join(str(p) for p in _in_order(report.files)))}")


def _in_order(files: dict[str, Path]) -> list[Path]:
    """The written files, the summary table first, the figures after the tables."""
    order = ["table", "results", "subjects", "locked", "figure_metrics", "figure_samples"]
    ranked = sorted(files, key=lambda k: order.index(k) if k in order else len(order))
    return [files[key] for key in ranked if files[key].exists()]


def _fmt(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def eval_cli(
    outputs: Annotated[
        list[str] | None,
        typer.Argument(
            help="Render output folders, manifests or images; LABEL=PATH names the method "
            "(default: the mode the manifest says was used).",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Folder for the tables, figures and scores.")
    ] = Path("eval"),
    metrics: MetricsOption = None,
    identity_backend: IdentityBackendOption = "insightface",
    vqascore_model: VQAScoreModelOption = DEFAULT_VQASCORE_MODEL,
    hpsv3_checkpoint: HPSv3CheckpointOption = None,
    vqascore_python: VQAScorePythonOption = None,
    hpsv3_python: HPSv3PythonOption = None,
    metrics_device: MetricsDeviceOption = "auto",
    batch_size: BatchSizeOption = 8,
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="List each metric: can it run, where, how to enable it; then exit."
        ),
    ] = False,
    suite: Annotated[
        Suite | None,
        typer.Option(help="Show the paper's Table 1 rows for this setting in results.md."),
    ] = None,
    no_figure: NoFigureOption = False,
    download_models: DownloadOption = False,
    json_: JsonOption = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bars or progress lines.")
    ] = False,
):
    """Measure rendered outputs, read through their run manifests (prompt, canvas, subjects).

    Writes results.csv (one row per output), subjects.csv, locked.csv, results.md (a summary per
    method) and figure_metrics.png / figure_samples.png into -o. Scores are kept in
    scores.jsonl there: a rerun only computes what is missing, and metrics run in different
    environments add up. With no --metrics, every metric that can run runs and one line names
    the others. Exit 1 if any output could not be evaluated.

    Examples:
        lc eval --check --vqascore-python ~/venvs/vqa/bin/python
        lc eval out/ --identity-backend dlib
        lc eval layered=runs/a collage=runs/b --suite 2p -o eval/2p
        LC_VQASCORE_PYTHON=~/venvs/vqa/bin/python lc eval bench/2p/renders -o bench/2p
    """
    with handled_errors():
        if suite is not None and suite not in TABLE_1:
            raise UsageError(f"--suite {suite!r}: choose one of {', '.join(TABLE_1)}")
        options = eval_options(
            metrics, identity_backend, vqascore_model, hpsv3_checkpoint, metrics_device,
            batch_size, download_models, vqascore_python, hpsv3_python,
        )  # fmt: skip
        if check:
            print_check(options, json_)
            return
        if not outputs:
            raise UsageError("name the outputs to evaluate", hint="e.g. lc eval out/")
        damaged: list[InputError] = []  # manifests that cannot be read: reported, left out
        found = find_outputs(outputs, damaged)
        if damaged and not found:
            raise damaged[0]
        for problem in damaged:
            report_error(problem)
        options, skipped = check_eval(options, not no_figure)
        report_skipped(skipped)
        with stage_progress(quiet) as progress:
            report = run_eval(
                found, options, output, TABLE_1.get(suite or "", ()), "lc eval", not no_figure,
                progress, skipped=skipped,
            )  # fmt: skip
        print_report(report, json_)
        if damaged:
            stderr.print(f"{len(damaged)} manifest(s) left out: they are not valid (see above)")
            raise typer.Exit(EXIT_INVALID)
        if report.failed:
            raise typer.Exit(EXIT_FAILURE)
