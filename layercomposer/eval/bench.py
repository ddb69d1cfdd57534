"""`lc bench`: the 1P / 2P / 4P personalization benchmark as a plain function.

Per suite: one case per prompt, each with k identities (k = 1, 2, 4); a prior per case (given,
or generated with FLUX.1 [dev] from the prompt as given, in one model load, trying the next
seeds while it shows fewer faces than the case has people); a canvas per case from
`autolayout` (for 1P, from each photo's cropped head); one render per case and method; then
`lc eval`'s metrics and tables, with every Table 1 row of the setting beside. A case that
cannot be laid out is reported and counted as failed. Every stage skips work an earlier run
already did with the same inputs, so an interrupted benchmark resumes where it stopped.

Layout of the output folder:
    suite.json                       the cases: prompt and identity photos (with hashes)
    priors/<case>.png + .json        generated priors and how they were made (seeds tried)
    heads/<case>/<photo>.png         1P: the cropped heads autolayout places
    canvases/<case>.yaml (+ .autolayout/, .inputs.json)
    renders/<method>/<case>/<seed>.png + .json     lc render's outputs and manifests
    results.csv, subjects.csv, locked.csv, results.md, figure_*.png, scores.jsonl
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from contextlib import ExitStack, closing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..autolayout import AutolayoutRequest, PriorSettings, autolayout
from ..autolayout.inputs import read_image
from ..autolayout.layout import MIN_SUBJECT_FACE_PX
from ..autolayout.prior import PRIOR_KIND, PROMPT_MODES, check_size, prior_text
from ..baselines import OVERLAY_LORA, QwenEditRenderer, QwenEditSettings, overlay_settings
from ..errors import InputError, UsageError
from ..faces.detect import open_detector
from ..files import sha256_file, write_json_atomic, write_png_atomic
from ..limits import read_json_bounded
from ..manifest import read_manifest
from ..render import Renderer, RenderResult, RenderSettings, render_batch
from .availability import MetricStatus, skipped_line
from .heads import HEAD_MARGIN, write_head
from .metrics import EvalOptions, Progress
from .outputs import RunOutput
from .published import TABLE_1
from .run import EvalReport, check_eval, run_eval

SUITES: dict[str, int] = {"1p": 1, "2p": 2, "4p": 4}
# layered: LayerComposer; the rest are the 4P baselines diffusers runs, on the collage (see
# baselines.py): stock Kontext, Kontext + the Overlay LoRA, Qwen-Image-Edit.
METHODS: tuple[str, ...] = ("layered", "collage", "overlay-kontext", "qwen-image-edit")
# The paper's 4P baselines are all runnable; for 1P and 2P only stock Kontext is.
DEFAULT_METHODS: dict[str, tuple[str, ...]] = {"1p": METHODS[:2], "2p": METHODS[:2], "4p": METHODS}
DEFAULT_PRIOR_SEEDS = 4  # priors tried per case (seeds seed .. seed+3) for enough faces
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
    methods: tuple[str, ...] = METHODS[:2]
    render: RenderSettings = field(default_factory=RenderSettings)  # mode set per method
    overlay_lora: str = OVERLAY_LORA  # overlay-kontext's LoRA: a file, a folder or a hub id
    qwen: QwenEditSettings = field(default_factory=QwenEditSettings)  # qwen-image-edit's model
    priors: Path | None = None  # a folder of prior images (or one image); None: generate
    prior_settings: PriorSettings = field(default_factory=PriorSettings)
    size: tuple[int, int] | None = None
    detector: str = "mediapipe"
    fallback: str = "error"  # grid: a prior with too few faces places the rest in a row
    prior_prompt: str = "given"  # given: the case prompt as is (the paper); rewrite: prior_text
    prior_seeds: int = DEFAULT_PRIOR_SEEDS  # generated priors tried per case, next seeds
    head_margin: float = HEAD_MARGIN  # 1P: the head crop around the face box (heads.py)
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
    skipped_metrics: list[MetricStatus] = field(default_factory=list)

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
    if request.prior_prompt not in PROMPT_MODES:
        raise UsageError(
            f"--prior-prompt {request.prior_prompt!r}: choose one of {', '.join(PROMPT_MODES)}"
        )
    if request.prior_seeds < 1:
        raise UsageError(f"--prior-seeds {request.prior_seeds}: try at least one seed")
    if request.size is not None:
        check_size(request.size)
    prompts = read_prompts(request.prompts or PROMPTS_DIR / f"{request.suite}.txt")
    if request.limit is not None:
        prompts = prompts[: request.limit]
    cases = plan_cases(request.suite, prompts, list_images(request.identities, "--identities"))
    # Before hours of rendering, not after; with no --metrics, the ones that cannot run here.
    evaluation, skipped = check_eval(request.evaluation, request.figures)
    if skipped and warn:
        warn(skipped_line(skipped))
    if "overlay-kontext" in request.methods:  # a missing LoRA stops the run before any work
        lora = overlay_settings(request.render, request.overlay_lora).loras[0].path
        request = replace(request, overlay_lora=lora)

    out = request.output
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        out / "suite.json",
        {"suite": request.suite, "protocol": protocol(request),
         "cases": [c.to_dict() for c in cases]},
    )  # fmt: skip

    priors, failures = _priors(cases, request, progress)
    canvases, layout_failures = _layouts(cases, priors, failures, request, progress, warn)
    failures.update(layout_failures)
    renders = _render_all(list(canvases.values()), request, progress)
    outputs = [
        RunOutput(method, Path(r.manifest), read_manifest(r.manifest))
        for method, results in renders.items()
        for r in results
        if r.status != "failed"
    ]
    # A case with no canvas is a failure of every method; a failed render, of its method.
    failed = {
        method: len(failures) + sum(r.status == "failed" for r in renders.get(method, []))
        for method in request.methods
    }
    title = f"lc bench {request.suite}: {len(cases)} prompts, methods {', '.join(request.methods)}"
    report = run_eval(
        outputs, evaluation, out, TABLE_1[request.suite], title,
        request.figures and bool(outputs), progress, failed, skipped,
    )  # fmt: skip
    return BenchResult(cases, dict(sorted(failures.items())), renders, report, skipped)


def protocol(request: BenchRequest) -> dict[str, Any]:
    """How the cases' inputs are made, as suite.json records it."""
    generated = request.priors is None
    return {
        "priors": "generated" if generated else "given",
        "prior_prompt": request.prior_prompt if generated else None,
        "prior_seeds": (
            list(range(request.seed, request.seed + request.prior_seeds)) if generated else None
        ),
        "fallback": request.fallback,
        "subject_input": "head" if request.suite == "1p" else "cut-out",
        "head_margin": request.head_margin if request.suite == "1p" else None,
        "detector": request.detector,
        "seed": request.seed,
    }


# --- priors -----------------------------------------------------------------------------------


def _priors(
    cases: list[Case], request: BenchRequest, progress: Progress | None
) -> tuple[dict[str, Path], dict[str, str]]:
    """A prior per case, and the cases whose priors show too few faces (with --fallback error).

    A generated prior that shows fewer usable faces than the case has people is generated
    again with the next seed, up to `prior_seeds` tries; the seeds tried and the faces each
    showed are recorded beside it."""
    if request.priors is not None:
        given = list_images(request.priors, "--priors")
        return {case.id: given[i % len(given)] for i, case in enumerate(cases)}, {}
    settings = request.prior_settings
    if request.size is not None:
        settings = replace(settings, size=request.size)
    folder = request.output / "priors"
    pipe = detector = None
    paths: dict[str, Path] = {}
    failures: dict[str, str] = {}
    try:
        for done, case in enumerate(cases, 1):
            target = folder / f"{case.id}.png"
            people = len(case.subjects)
            record = {
                "prompt": prior_text(case.prompt, people, request.prior_prompt),
                "prompt_mode": request.prior_prompt, "model": settings.model,
                "revision": settings.revision, "seeds": [request.seed, request.prior_seeds],
                "steps": settings.steps, "guidance": settings.guidance,
                "size": list(settings.size), "dtype": settings.dtype,
                "detector": request.detector, "faces_needed": people,
            }  # fmt: skip
            made = _same_record(target, record)
            if made is None:  # made with another number of tries: kept if its seed still counts
                earlier = _same_record(target, {k: v for k, v in record.items() if k != "seeds"})
                if earlier is not None and _still_valid(earlier, record["seeds"]):
                    made = earlier
            if made is None:
                if detector is None:  # first: it fails faster than the prior model loads
                    detector = open_detector(request.detector, download=request.download_models)
                if pipe is None:
                    pipe = _load_prior_pipeline(settings)
                made = _generate_with_faces(pipe, detector, record, target)
            if made["seed"] is None and request.fallback == "error":
                tried = ", ".join(f"{a['seed']}: {a['faces']}" for a in made["attempts"])
                failures[case.id] = (
                    f"every prior shows fewer than {people} usable faces (seed: faces found; "
                    f"{tried}); see {target}"
                )
            paths[case.id] = target
            if progress:
                progress("priors", done, len(cases))
    finally:
        if detector is not None:
            detector.close()
    del pipe
    _free_memory()
    return paths, failures


def _still_valid(saved: dict[str, Any], seeds: list[int]) -> bool:
    """Whether a prior made with other tries still answers `seeds` (first, tries): its seed
    is among them, or it failed trying exactly these."""
    first, tries = seeds
    saved_first, saved_tries = saved.get("seeds") or (None, None)
    if saved_first != first:
        return False
    if saved.get("seed") is not None:
        return first <= saved["seed"] < first + tries
    return saved_tries == tries


def _generate_with_faces(pipe, detector, record: dict[str, Any], target: Path) -> dict[str, Any]:
    """Generate priors for seeds first, first + 1, ... until one shows enough usable faces (or
    the tries run out); write the last one made and its record; return the record."""
    first, tries = record["seeds"]
    attempts = []
    for seed in range(first, first + tries):
        rgb = _generate(pipe, {**record, "seed": seed})
        found = [f for f in detector.detect(rgb) if f.size >= MIN_SUBJECT_FACE_PX]
        attempts.append({"seed": seed, "faces": len(found)})
        if len(found) >= record["faces_needed"]:
            break
    enough = attempts[-1]["faces"] >= record["faces_needed"]
    made = {**record, "attempts": attempts, "seed": attempts[-1]["seed"] if enough else None}
    write_png_atomic(target, rgb)
    write_json_atomic(target.with_suffix(".json"), {**made, "sha256": sha256_file(target)})
    return made


def _same_record(target: Path, record: dict[str, Any]) -> dict[str, Any] | None:
    """The saved record of `target` when it exists, whole, and was made from `record` (its
    .json beside it holds `record` plus what the generation found); else None."""
    sidecar = target.with_suffix(".json")
    if not (target.is_file() and sidecar.is_file()):
        return None
    try:
        saved = read_json_bounded(sidecar)
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or saved.get("sha256") != sha256_file(target):
        return None
    asked = json.loads(json.dumps(record))
    if any(saved.get(key) != value for key, value in asked.items()):
        return None
    if not isinstance(saved.get("attempts"), list) or "seed" not in saved:
        return None
    return saved


def _load_prior_pipeline(settings: PriorSettings):
    from diffusers import FluxPipeline

    from ..models import load_pipeline

    pipe, _ = load_pipeline(
        settings.model, revision=settings.revision, dtype=settings.dtype, device=settings.device,
        offload=settings.offload, pipeline_class=FluxPipeline, kind=PRIOR_KIND,
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


def _layouts(
    cases, priors, prior_failures, request, progress, warn
) -> tuple[dict[str, Path], dict[str, str]]:
    """A canvas per case with `autolayout`; a case whose photos or prior cannot be laid out is
    reported and skipped, not fatal (a missing model still is). Cases in `prior_failures` get
    no canvas (a stale one from an earlier run is not used either)."""
    folder = request.output / "canvases"
    canvases: dict[str, Path] = {}
    failures: dict[str, str] = {}
    heads = request.suite == "1p"  # the paper's 1P input: the cropped head
    with ExitStack() as stack:
        detector = []  # opened once, on the first case that needs head crops

        def open_once():
            if not detector:
                found = open_detector(request.detector, download=request.download_models)
                detector.append(stack.enter_context(closing(found)))
            return detector[0]

        for done, case in enumerate(cases, 1):
            canvas = folder / f"{case.id}.yaml"

            def case_warning(message: str, case: Case = case) -> None:
                if warn:
                    warn(f"{case.id}: {message}")

            if case.id in prior_failures:
                case_warning(f"no canvas: {prior_failures[case.id]}")
            else:
                try:
                    canvases[case.id] = _layout(
                        case, canvas, priors[case.id], request, heads, open_once, case_warning
                    )
                except (InputError, UsageError) as exc:  # this case's photos or prior
                    failures[case.id] = exc.message
                    case_warning(f"no canvas: {exc.message}")
            if progress:
                progress("canvases", done, len(cases))
    return canvases, failures


def _layout(case, canvas, prior, request, heads, detector, warn) -> Path:
    """The canvas of one case, made again only when its inputs changed (`.inputs.json`)."""
    inputs = {
        "prompt": case.prompt,
        "subjects": [_sha256(p) for p in case.subjects],
        "prior": _sha256(prior),
        "size": list(request.size) if request.size else None,
        "detector": request.detector,
        "fallback": request.fallback,
        "prior_prompt": request.prior_prompt if request.priors is None else None,
        "subject_input": "head" if heads else "cut-out",
        "head_margin": request.head_margin if heads else None,
    }
    record = canvas.with_suffix(".inputs.json")
    if canvas.is_file() and _json_or_none(record) == inputs:
        return canvas
    subjects, masks = list(case.subjects), {}
    if heads:
        subjects = []
        for photo in case.subjects:
            image = read_image(photo, "identity photo")
            head, mask = write_head(
                photo, image.rgb, detector().detect(image.rgb),
                request.output / "heads" / case.id, request.head_margin,
            )  # fmt: skip
            subjects.append(head)
            masks[str(head)] = mask  # the whole crop is the layer: no segmentation
    layout = AutolayoutRequest(
        prompt=case.prompt, subjects=subjects, output=canvas, prior=prior, size=request.size,
        detector=request.detector, masks=masks, fallback=request.fallback,
        download_models=request.download_models, force=True, notes=_case_notes(case, request),
    )  # fmt: skip
    autolayout(layout, warn=warn)
    write_json_atomic(record, inputs)
    return canvas


def _case_notes(case: Case, request: BenchRequest) -> str:
    """The canvas's notes, so that every render manifest says how its layout was made."""
    prior = (
        "a given prior image"
        if request.priors is not None
        else f"a prior generated from the prompt ({request.prior_prompt}; priors/{case.id}.json)"
    )
    return f"lc bench {request.suite} case {case.id}: laid out on {prior}"


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
        return read_json_bounded(path)
    except (OSError, ValueError):
        return None


# --- renders ----------------------------------------------------------------------------------


def _render_all(canvases: list[Path], request: BenchRequest, progress) -> dict[str, list]:
    """Render every canvas with each method; outputs already there with the same inputs are
    kept (render_batch's resume). Without a LoRA the methods differ only in mode, so the
    model is loaded once for all of them."""
    results: dict[str, list[RenderResult]] = {}
    loaded = None  # (pipe, model info) to hand to the next method
    for method in request.methods:
        renderer = _method_renderer(method, request)
        # Stock Kontext is shared by the methods without a LoRA; any other weights are loaded
        # for their method alone, after the last method's are freed.
        shares = isinstance(renderer, Renderer) and not renderer.settings.loras
        if loaded is not None and shares:
            renderer.pipe, renderer.model_info = loaded
        elif loaded is not None:
            loaded = None
            _free_memory()
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
        shared = shares and renderer.pipe is not None
        loaded = (renderer.pipe, renderer.model_info) if shared else None
        del renderer
        if loaded is None:
            _free_memory()  # before the next method loads its weights
    del loaded
    _free_memory()  # the metrics get the GPU memory back
    return results


def _method_renderer(method: str, request: BenchRequest) -> Renderer | QwenEditRenderer:
    """The renderer of one method; see METHODS."""
    if method == "qwen-image-edit":
        return QwenEditRenderer(request.qwen)
    if method == "overlay-kontext":
        return Renderer(overlay_settings(request.render, request.overlay_lora))
    # layered's LoRAs are the LayerComposer one (and any stacked on it); the collage baseline is
    # stock Kontext.
    loras = request.render.loras if method == "layered" else ()
    return Renderer(replace(request.render, mode=method, loras=loras))


def _free_memory() -> None:
    gc.collect()
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
