"""`lc bench`: the 1P / 2P / 4P personalization benchmark, from identity photos to tables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ..autolayout import PriorSettings
from ..autolayout.prior import DEFAULT_PRIOR_MODEL
from ..baselines import OVERLAY_LORA, QwenEditSettings
from ..choices import Fallback, PriorPrompt, Suite
from ..errors import UsageError, shorten
from ..eval.bench import (
    DEFAULT_METHODS,
    DEFAULT_PRIOR_SEEDS,
    METHODS,
    BenchRequest,
    run_bench,
)
from ..eval.heads import HEAD_MARGIN
from ..eval.vqascore import DEFAULT_MODEL as DEFAULT_VQASCORE_MODEL
from ..models import DEFAULT_MODEL, QWEN_EDIT_MODEL
from ..render import RenderSettings
from ._common import (
    DetectorOption,
    DeviceOption,
    DtypeOption,
    LoraScaleOption,
    ModelOption,
    OffloadOption,
    RevisionOption,
    lora_specs,
    parse_size,
)
from ._errors import EXIT_FAILURE, handled_errors, stderr
from .eval import (
    BatchSizeOption,
    DownloadOption,
    HPSv3CheckpointOption,
    HPSv3PythonOption,
    IdentityBackendOption,
    MetricsDeviceOption,
    MetricsOption,
    NoFigureOption,
    VQAScoreModelOption,
    VQAScorePythonOption,
    eval_options,
    print_report,
    report_skipped,
    stage_progress,
)


def bench_cli(
    suite: Annotated[Suite, typer.Option(help="Persons per image: 1, 2 or 4.")],
    identities: Annotated[
        Path,
        typer.Option(help="Folder of identity photos (one person each), used in name order."),
    ],
    prompts: Annotated[
        Path | None,
        typer.Option(help="One prompt per line (default: benchmarks/prompts/<suite>.txt)."),
    ] = None,
    methods: Annotated[
        str | None,
        typer.Option(
            help=f"Comma-separated: {', '.join(METHODS)} (default: all four for 4p, "
            "layered,collage for 1p and 2p)."
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Output folder (default: bench/<suite>).")
    ] = None,
    model: ModelOption = DEFAULT_MODEL,
    revision: RevisionOption = None,
    lora: Annotated[
        list[str] | None,
        typer.Option(
            "--lora",
            help="The LayerComposer LoRA of the layered method, FILE or FILE:SCALE; repeatable "
            "(more LoRAs stack on it). Without one, layered is stock Kontext fed layer indices "
            "it was not trained on, and results.md says so.",
            metavar="FILE[:SCALE]",
        ),
    ] = None,
    lora_scale: LoraScaleOption = 1.0,
    overlay_lora: Annotated[
        str,
        typer.Option(
            "--overlay-lora",
            help="The overlay-kontext method's LoRA: a .safetensors file, a folder, or a hub "
            "LoRA (owner/name, or owner/name/FILE.safetensors).",
        ),
    ] = OVERLAY_LORA,
    qwen_model: Annotated[
        str,
        typer.Option(
            "--qwen-model",
            help="The qwen-image-edit method's model: hub id, local folder, or builtin:tiny.",
        ),
    ] = QWEN_EDIT_MODEL,
    priors: Annotated[
        Path | None,
        typer.Option(
            help="Prior images (a folder, used in name order and cycled, or one image) "
            "instead of generating them."
        ),
    ] = None,  # fmt: skip
    prior_model: Annotated[
        str, typer.Option("--prior-model", help=r"Generates the priors (FLUX.1 \[dev]).")
    ] = DEFAULT_PRIOR_MODEL,
    size: Annotated[
        str | None,
        typer.Option(help="Canvas size WxH (default: a given prior's size, else 1024x1024)."),
    ] = None,
    detector: DetectorOption = "mediapipe",
    prior_prompt: Annotated[
        PriorPrompt,
        typer.Option(
            "--prior-prompt",
            help="Generate priors from the prompt as given (the paper's protocol), or rewritten "
            "to ask for N visible faces.",
        ),
    ] = "given",
    prior_seeds: Annotated[
        int,
        typer.Option(
            "--prior-seeds",
            min=1,
            help="Generated priors tried per case (seeds --seed, --seed+1, ...) until one shows "
            "a face per person.",
        ),
    ] = DEFAULT_PRIOR_SEEDS,
    fallback: Annotated[
        Fallback,
        typer.Option(
            help="A prior still short of faces: error (the case fails, counted in the table), "
            "or grid (place the rest in a row)."
        ),
    ] = "error",
    head_margin: Annotated[
        float,
        typer.Option(
            "--head-margin",
            min=0.0,
            max=2.0,
            help="1P: the head crop adds this fraction of the face box's size on every side.",
        ),
    ] = HEAD_MARGIN,
    seed: Annotated[int, typer.Option(help="Seed of every prior and render.")] = 0,
    steps: Annotated[
        int | None, typer.Option(min=1, help="Denoising steps (default: the canvas's, 28).")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N prompts.")] = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    offload: OffloadOption = "none",
    metrics: MetricsOption = None,
    identity_backend: IdentityBackendOption = "insightface",
    vqascore_model: VQAScoreModelOption = DEFAULT_VQASCORE_MODEL,
    hpsv3_checkpoint: HPSv3CheckpointOption = None,
    vqascore_python: VQAScorePythonOption = None,
    hpsv3_python: HPSv3PythonOption = None,
    metrics_device: MetricsDeviceOption = "auto",
    batch_size: BatchSizeOption = 8,
    no_figure: NoFigureOption = False,
    download_models: DownloadOption = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bars or lines, no warnings.")
    ] = False,
):
    """Run a 1P / 2P / 4P benchmark: canvases by autolayout, renders per method, metrics.

    Writes into -o: the cases (suite.json), priors, canvases, renders (with manifests), and the
    tables (results.csv with one row per output, results.md beside the paper's figures) and
    figures. Priors come from the prompt as given; a case whose prior still shows too few
    faces after --prior-seeds tries fails and is counted in results.md. 1P cases use each
    photo's cropped head. With no --metrics, every metric that can run runs and one line
    names the others. Rerunning skips every prior, canvas, render and score already made from
    the same inputs. Exit 1 if any case could not be laid out, rendered or evaluated.

    Examples:
        lc bench --suite 2p --identities ffhq/ --lora lc.safetensors -o bench/2p \\
            --vqascore-python ~/venvs/vqa/bin/python --hpsv3-python ~/venvs/hps/bin/python
        lc bench --suite 2p --identities ids/ --priors priors/ --model builtin:tiny --steps 2 \\
            --identity-backend dlib
        lc bench --suite 4p --identities ffhq/ --lora lc.safetensors -o bench/4p  # + the 3 baselines
    """
    with handled_errors():
        if methods is None:
            method_list = DEFAULT_METHODS.get(suite, METHODS[:2])
        else:
            method_list = tuple(m.strip() for m in methods.split(",") if m.strip())
        if not method_list:
            raise UsageError("--methods: name at least one method")
        request = BenchRequest(
            suite=suite, identities=identities, output=output or Path("bench") / suite,
            prompts=prompts, methods=method_list,
            render=RenderSettings(model=model, revision=revision,
                                  loras=lora_specs(lora, lora_scale), dtype=dtype,
                                  device=device, offload=offload),
            overlay_lora=overlay_lora,
            qwen=QwenEditSettings(model=qwen_model, dtype=dtype, device=device, offload=offload),
            priors=priors,
            prior_settings=PriorSettings(model=prior_model, device=device, dtype=dtype,
                                         offload=offload),
            size=parse_size(size), detector=detector, fallback=fallback,
            prior_prompt=prior_prompt, prior_seeds=prior_seeds, head_margin=head_margin,
            seed=seed, steps=steps, limit=limit,
            evaluation=eval_options(metrics, identity_backend, vqascore_model, hpsv3_checkpoint,
                                    metrics_device, batch_size, download_models,
                                    vqascore_python, hpsv3_python),
            figures=not no_figure, download_models=download_models,
        )  # fmt: skip

        # A case's warning ("2p-07: the prior has 4 faces ...") that other cases repeat word for
        # word is printed once; the cases that repeat it are listed after the run.
        repeated: dict[str, list[str]] = {}  # warning -> [the case that gave it first, others]

        def warn(message: str) -> None:
            case, sep, text = message.partition(": ")
            if not sep or not case.startswith(f"{suite}-"):
                case, text = "", message
            if quiet:
                return
            if text in repeated and case:
                repeated[text].append(case)
                return
            repeated[text] = [case]
            stderr.print(f"[yellow]warning:[/yellow] {escape(message)}")

        with stage_progress(quiet) as progress:
            result = run_bench(request, progress, warn)
        for text, (first, *others) in repeated.items():
            if others:
                stderr.print(
                    f"[yellow]warning:[/yellow] {escape(', '.join(others))}: as {escape(first)}, "
                    f"{escape(shorten(text, 70))}"
                )
        for case_id, reason in result.layout_failures.items():
            stderr.print(f"[red]no canvas[/red] {case_id}: {escape(reason)}")
        for failure in result.render_failures:
            stderr.print(
                f"[red]render failed[/red] {escape(failure.canvas)}: {escape(failure.error or '')}"
            )
        if quiet:  # otherwise it was a warning before any work
            report_skipped(result.skipped_metrics)
        if result.report is not None:
            print_report(result.report, json_=False)
        if (
            result.layout_failures
            or result.render_failures
            or result.report is None
            or result.report.failed
        ):
            raise typer.Exit(EXIT_FAILURE)
