"""`lc bench`: the 1P / 2P / 4P personalization benchmark as a plain function.

Per suite: one case per prompt, each with k identities (k = 1, 2, 4); a prior per case (given,
or generated with FLUX.1 [dev] in one model load); a canvas per case from `autolayout`; one
render per case and method; then `lc eval`'s metrics and tables, with the paper's Table 1
figures beside. Every stage skips work an earlier run already did with the same inputs, so an
interrupted benchmark resumes where it stopped.

Layout of the output folder:
    suite.json                       the cases: prompt and identity photos (with hashes)
    priors/<case>.png + .json        generated priors and how they were made
    canvases/<case>.yaml (+ .autolayout/, .inputs.json)
    renders/<method>/<case>/<seed>.png + .json     lc render's outputs and manifests
    results.csv, subjects.csv, locked.csv, results.md, figure_*.png, scores.jsonl
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..autolayout import AutolayoutRequest, PriorSettings, autolayout
from ..autolayout.prior import check_size, prior_prompt
from ..errors import InputError, UsageError
from ..files import sha256_file, write_json_atomic, write_png_atomic
from ..manifest import read_manifest
from ..render import Renderer, RenderResult, RenderSettings, render_batch
from .metrics import EvalOptions, Progress
from .outputs import RunOutput
from .report import Published
from .run import EvalReport, check_eval, run_eval

SUITES: dict[str, int] = {"1p": 1, "2p": 2, "4p": 4}
METHODS: tuple[str, ...] = ("layered", "collage")
# LayerComposer's Table 1 (ArcFace, VQAScore, HPSv3), for reference beside ours.
PUBLISHED: dict[str, Published] = {
    "1p": Published("1P", 0.487, 0.893, 12.5),
    "2p": Published("2P", 0.547, 0.796, 11.6),
    "4p": Published("4P", 0.533, 0.840, 12.5),
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
PROMPTS_DIR = Path("benchmarks/prompts")


@dataclass(frozen=True)
class Case:
    """One benchmark item: a prompt and the identity photos it is rendered with."""

    id: str  # "2p-07"
    prompt: str
    subjects: tuple[Path, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "prompt": self.prompt,
            "subjects": [{"path": str(p), "sha256": _sha256(p)} for p in self.subjects],
        }


@dataclass(frozen=True)
class BenchRequest:
    """Everything `lc bench` was asked to do."""

    suite: str
    identities: Path
    output: Path
    prompts: Path | None = None  # None: benchmarks/prompts/<suite>.txt
    methods: tuple[str, ...] = METHODS
    render: RenderSettings = field(default_factory=RenderSettings)  # mode set per method
    priors: Path | None = None  # a folder of prior images (or one image); None: generate
    prior_settings: PriorSettings = field(default_factory=PriorSettings)
    size: tuple[int, int] | None = None
    detector: str = "mediapipe"
    fallback: str = "grid"
    seed: int = 0
    steps: int | None = None  # None: the canvas default
    limit: int | None = None  # only the first N prompts
    evaluation: EvalOptions = field(default_factory=EvalOptions)
    figures: bool = True
    download_models: bool = False


@dataclass
class BenchResult:
    cases: list[Case]
    layout_failures: dict[str, str]  # case id -> why its canvas could not be made
    renders: dict[str, list[RenderResult]]  # by method
    report: EvalReport | None

    @property
    def render_failures(self) -> list[RenderResult]:
        return [r for results in self.renders.values() for r in results if r.status == "failed"]


def read_prompts(path: Path) -> list[str]:
    """One prompt per line; blank lines and lines starting with # are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UsageError(
            f"--prompts {path}: no such file",
            hint="the suites' prompt lists are in lc's repository, benchmarks/prompts/: run from "
            "its root or pass --prompts FILE",
        ) from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise UsageError(f"--prompts {path}: no prompt in it (one per line)")
    return prompts


def list_images(folder: Path, what: str) -> list[Path]:
    """The image files in `folder` (not its subfolders), sorted by name; or `folder` itself
    when it is one image."""
    if folder.is_file():
        return [folder]
    if not folder.is_dir():
        raise UsageError(f"{what} {folder}: no such folder")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise UsageError(f"{what} {folder}: no image in it ({', '.join(IMAGE_SUFFIXES)})")
    return images


def plan_cases(suite: str, prompts: list[str], identities: list[Path]) -> list[Case]:
    """Case i takes identities i*k .. i*k+k-1 (mod their count), so each photo is used about
    equally often and no case has the same photo twice."""
    people = SUITES[suite]
    if len(identities) < people:
        raise UsageError(
            f"the {suite} suite needs at least {people} identity photos, got {len(identities)}"
        )
    return [
        Case(
            f"{suite}-{i:02d}",
            prompt,
            tuple(identities[(i * people + j) % len(identities)] for j in range(people)),
        )
        for i, prompt in enumerate(prompts)
    ]


def run_bench(
    request: BenchRequest,
    progress: Progress | None = None,
    warn: Callable[[str], None] | None = None,
) -> BenchResult:
    """Run the suite end to end into `request.output`; see the module docstring."""
    if request.suite not in SUITES:
        raise UsageError(f"--suite {request.suite!r}: choose one of {', '.join(SUITES)}")
    unknown = [m for m in request.methods if m not in METHODS]
    if unknown or not request.methods:
        raise UsageError(
            f"--methods: choose from {', '.join(METHODS)}, got {','.join(request.methods)}"
        )
    if request.fallback not in ("grid", "error"):
        raise UsageError(f"--fallback {request.fallback!r}: choose grid or error")
    if request.size is not None:
        check_size(request.size)
    prompts = read_prompts(request.prompts or PROMPTS_DIR / f"{request.suite}.txt")
    if request.limit is not None:
        prompts = prompts[: request.limit]
    cases = plan_cases(request.suite, prompts, list_images(request.identities, "--identities"))
    check_eval(request.evaluation, request.figures)  # before hours of rendering, not after

    out = request.output
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        out / "suite.json", {"suite": request.suite, "cases": [c.to_dict() for c in cases]}
    )

    priors = _priors(cases, request, progress)
    canvases, failures = _layouts(cases, priors, request, progress, warn)
    renders = _render_all(list(canvases.values()), request, progress)
    outputs = [
        RunOutput(method, Path(r.manifest), read_manifest(r.manifest))
        for method, results in renders.items()
        for r in results
        if r.status != "failed"
    ]
    report = None
    if outputs:
        published = PUBLISHED[request.suite]
        title = (
            f"lc bench {request.suite}: {len(cases)} prompts, methods {', '.join(request.methods)}"
        )
        report = run_eval(
            outputs, request.evaluation, out, published, title, request.figures, progress
        )
    return BenchResult(cases, failures, renders, report)


# --- priors -----------------------------------------------------------------------------------


def _priors(cases: list[Case], request: BenchRequest, progress: Progress | None) -> dict[str, Path]:
    if request.priors is not None:
        given = list_images(request.priors, "--priors")
        return {case.id: given[i % len(given)] for i, case in enumerate(cases)}
    settings = request.prior_settings
    if request.size is not None:
        settings = replace(settings, size=request.size)
    folder = request.output / "priors"
    pipe, paths = None, {}
    for done, case in enumerate(cases, 1):
        target = folder / f"{case.id}.png"
        record = {
            "prompt": settings.prompt or prior_prompt(case.prompt, len(case.subjects)),
            "model": settings.model, "revision": settings.revision, "seed": request.seed,
            "steps": settings.steps, "guidance": settings.guidance, "size": list(settings.size),
            "dtype": settings.dtype,
        }  # fmt: skip
        if not _same_record(target, record):
            if pipe is None:
                pipe = _load_prior_pipeline(settings)
            write_png_atomic(target, _generate(pipe, record))
            write_json_atomic(
                target.with_suffix(".json"), {**record, "sha256": sha256_file(target)}
            )
        paths[case.id] = target
        if progress:
            progress("priors", done, len(cases))
    del pipe
    _free_memory()
    return paths


def _same_record(target: Path, record: dict[str, Any]) -> bool:
    """Whether `target` exists, whole, and was made from `record` (its .json beside it)."""
    sidecar = target.with_suffix(".json")
    if not (target.is_file() and sidecar.is_file()):
        return False
    try:
        saved = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return saved.get("sha256") == sha256_file(target) and {
        k: v for k, v in saved.items() if k != "sha256"
    } == json.loads(json.dumps(record))


def _load_prior_pipeline(settings: PriorSettings):
    from diffusers import FluxPipeline

    from ..models import load_pipeline

    pipe, _ = load_pipeline(
        settings.model, revision=settings.revision, dtype=settings.dtype, device=settings.device,
        offload=settings.offload, pipeline_class=FluxPipeline,
    )  # fmt: skip
    return pipe


def _generate(pipe, record: dict[str, Any]):
    """(H, W, 3) uint8: one prior, as `lc autolayout` generates it."""
    import numpy as np
    import torch

    width, height = record["size"]
    generator = torch.Generator("cpu").manual_seed(record["seed"])  # same noise on any device
    with torch.inference_mode():
        images = pipe(
            prompt=record["prompt"], width=width, height=height,
            num_inference_steps=record["steps"], guidance_scale=record["guidance"],
            generator=generator, output_type="np",
        ).images  # fmt: skip  # (1, H, W, 3) float in [0, 1]
    return np.clip(np.rint(np.asarray(images[0]) * 255), 0, 255).astype(np.uint8)


# --- canvases ---------------------------------------------------------------------------------


def _layouts(cases, priors, request, progress, warn) -> tuple[dict[str, Path], dict[str, str]]:
    """A canvas per case with `autolayout`; a case whose photos or prior cannot be laid out is
    reported and skipped, not fatal (a missing model still is)."""
    folder = request.output / "canvases"
    canvases: dict[str, Path] = {}
    failures: dict[str, str] = {}
    for done, case in enumerate(cases, 1):
        canvas = folder / f"{case.id}.yaml"
        inputs = {
            "prompt": case.prompt,
            "subjects": [_sha256(p) for p in case.subjects],
            "prior": _sha256(priors[case.id]),
            "size": list(request.size) if request.size else None,
            "detector": request.detector,
            "fallback": request.fallback,
        }
        record = canvas.with_suffix(".inputs.json")

        def case_warning(message: str, case: Case = case) -> None:
            if warn:
                warn(f"{case.id}: {message}")

        try:
            if not (canvas.is_file() and _json_or_none(record) == inputs):
                layout = AutolayoutRequest(
                    prompt=case.prompt, subjects=list(case.subjects), output=canvas,
                    prior=priors[case.id], size=request.size, detector=request.detector,
                    fallback=request.fallback, download_models=request.download_models,
                    force=True,
                )  # fmt: skip
                autolayout(layout, warn=case_warning)
                write_json_atomic(record, inputs)
            canvases[case.id] = canvas
        except (InputError, UsageError) as exc:  # this case's photos or prior
            failures[case.id] = exc.message
            case_warning(f"no canvas: {exc.message}")
        if progress:
            progress("canvases", done, len(cases))
    return canvases, failures


_HASHES: dict[tuple[str, int, int], str] = {}


def _sha256(path: Path) -> str:
    """A file's SHA-256, remembered per (path, size, mtime): the same photos recur in cases."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(path)
    return _HASHES[key]


def _json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


# --- renders ----------------------------------------------------------------------------------


def _render_all(canvases: list[Path], request: BenchRequest, progress) -> dict[str, list]:
    """Render every canvas with each method; outputs already there with the same inputs are
    kept (render_batch's resume). Without a LoRA the methods differ only in mode, so the
    model is loaded once for all of them."""
    results: dict[str, list[RenderResult]] = {}
    loaded = None  # (pipe, model info) to hand to the next method
    for method in request.methods:
        # The method's LoRA is the LayerComposer one; the collage baseline is stock Kontext.
        lora = request.render.lora if method == "layered" else None
        if lora is not None and loaded is not None:
            loaded = None  # a LoRA changes the weights: this method loads its own copy
            _free_memory()
        renderer = Renderer(replace(request.render, mode=method, lora=lora))
        if loaded is not None:
            renderer.pipe, renderer.model_info = loaded
        done = [0]

        def on_result(_: RenderResult, method=method, done=done) -> None:
            done[0] += 1
            if progress:
                progress(f"render {method}", done[0], len(canvases))

        results[method] = render_batch(
            canvases, renderer, request.output / "renders" / method,
            overrides=(f"steps={request.steps}",) if request.steps else (),
            seed=request.seed, resume=True, on_result=on_result,
        )  # fmt: skip
        shareable = renderer.pipe is not None and lora is None
        loaded = (renderer.pipe, renderer.model_info) if shareable else None
        del renderer
    del loaded
    _free_memory()  # the metrics get the GPU memory back
    return results


def _free_memory() -> None:
    gc.collect()
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
