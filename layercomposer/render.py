"""Rendering canvases to files: one model load, many canvases, a manifest beside every image.

Outputs go to `OUT/<canvas>/<seed>.png` and `OUT/<canvas>/<seed>.json`, each written atomically,
the image first and the manifest last: a manifest only ever describes an image that is whole.
"""

from __future__ import annotations

import hashlib
import os
import resource
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .canvas import Canvas, CanvasSpec, load_canvas
from .errors import CanvasError, LcError, ModelError, UsageError, describe
from .files import TEMP_SUFFIX, png_bytes, sha256_file, write_bytes_atomic, write_json_atomic
from .fill import DEFAULT_FILL, FILLS, LEGACY_FILL
from .layers import build_layers, image_file_hashes
from .limits import open_image_bounded
from .lora import LoraSpec
from .manifest import build_manifest, check_manifest, inputs_sha256, read_manifest
from .models import DEFAULT_MODEL

Status = Literal["rendered", "skipped", "failed"]
SPEED_DEFAULTS = {
    "compile": False,
    "first_block_cache": None,
    "quantize": "none",
    "attention_backend": None,
}


@dataclass(frozen=True)
class RenderSettings:
    """Everything about a render that is not in the canvas file."""

    model: str = DEFAULT_MODEL
    revision: str | None = None
    loras: tuple[LoraSpec, ...] = ()  # stacked in this order, each at its scale
    mode: str = "auto"
    encode: str = "canvas"
    dtype: str = "auto"
    device: str = "auto"
    offload: str = "none"
    attention_backend: str | None = None
    cache_dir: str | None = None
    compile: bool = False
    first_block_cache: float | None = None  # threshold; None: off
    quantize: str = "none"
    fill: str = "auto"  # black | grey | auto: the LoRA's recorded fill, else black
    # Put before the canvas's prompt (lc bench's overlay-kontext: "Place it. "); recorded.
    prompt_prefix: str = ""
    # The method this render stands for (lc bench's "overlay-kontext"): the label `lc eval`
    # groups it under. None: the mode used. Recorded in the manifest, not an input.
    method: str | None = None

    def speed_options(self):
        """The transformer speed options as `speed.SpeedOptions` (validated)."""
        from .speed import SpeedOptions

        return SpeedOptions(self.compile, self.first_block_cache, self.quantize)

    def speed_inputs(self) -> dict[str, Any] | None:
        """The speed options that can change pixels, for the manifest; None when all are off.

        Left out when off so that manifests written before these options existed keep their
        inputs hash, and `--resume` still recognises their outputs.
        """
        speed = {name: getattr(self, name) for name in SPEED_DEFAULTS}
        return speed if speed != SPEED_DEFAULTS else None


@dataclass(frozen=True)
class FillChoice:
    """The fill a render uses, where it came from, and what to tell the user about it."""

    fill: str
    source: Literal["option", "lora", "default"]
    lora_fill: str | None  # what the LoRA file records (lc.fill), if anything
    notice: str | None = None  # one line for the user, or None
    warning: bool = False  # the notice is a warning: the fill contradicts the LoRA's

    def to_dict(self) -> dict[str, Any]:
        return {"used": self.fill, "source": self.source, "lora": self.lora_fill}


def choose_fill(requested: str, lora_fill: str | None, has_lora: bool) -> FillChoice:
    """The fill for `--fill requested` (auto, black or grey) given the LoRA's recorded fill.

    `auto` takes the LoRA's fill, else black. An explicit fill always wins, with a warning when
    the LoRA was trained with another: a LoRA sees its layers best on the canvas it learned on.
    """
    recorded = lora_fill if lora_fill in FILLS else None
    if requested != "auto":
        if recorded is not None and recorded != requested:
            return FillChoice(
                requested, "option", lora_fill,
                f"--fill {requested} contradicts the LoRA, which was trained with fill "
                f"{recorded}: rendering with {requested} as asked (omit --fill to use {recorded})",
                warning=True,
            )  # fmt: skip
        return FillChoice(requested, "option", lora_fill)
    if recorded is not None:
        return FillChoice(
            recorded, "lora", lora_fill, f"fill {recorded}: the LoRA's, from its metadata"
        )
    if not has_lora:
        return FillChoice(DEFAULT_FILL, "default", None)
    what = f"an unknown fill {lora_fill!r}" if lora_fill else "no fill"
    return FillChoice(
        DEFAULT_FILL, "default", lora_fill,
        f"fill {DEFAULT_FILL} (the default): the LoRA records {what}; pass --fill grey if it "
        "was trained on grey",
    )  # fmt: skip


def resolve_fill(settings: RenderSettings) -> FillChoice:
    """`choose_fill` for these settings, reading the LoRA file's metadata (its header only)."""
    from .lora_metadata import lora_fill

    if settings.fill not in (*FILLS, "auto"):
        raise UsageError(f"--fill {settings.fill!r}: choose one of auto, {', '.join(FILLS)}")
    # The first LoRA that records a fill decides (several: the method's LoRA comes first).
    recorded = next((fill for spec in settings.loras if (fill := lora_fill(spec.path))), None)
    return choose_fill(settings.fill, recorded, bool(settings.loras))


@dataclass
class RenderResult:
    """One output of a batch, as reported on stdout with `--json`."""

    canvas: str
    seed: int | None
    status: Status
    image: str | None = None
    manifest: str | None = None
    mode: str | None = None
    seconds: float = 0.0
    error: str | None = None
    exit_code: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Renderer:
    """Loads the model on first use (a fully resumed batch never loads it) and renders."""

    settings: RenderSettings
    on_step: Callable[[int, int], None] | None = None
    pipe: Any = None
    model_info: Any = None
    lora_infos: list = field(default_factory=list)  # lora.LoraInfo, in load order
    load_seconds: float = 0.0
    notices: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # settings that contradict each other
    _fill: FillChoice | None = field(default=None, repr=False)  # resolved once, see fill_choice
    _built: tuple | None = field(default=None, repr=False)  # (canvas, its layers), see _layers

    def load(self) -> None:
        if self.pipe is not None:
            return
        from .latents import LatentCache
        from .models import load_pipeline

        started = time.perf_counter()
        s = self.settings
        self.pipe, self.model_info = load_pipeline(
            s.model, s.revision, s.dtype, s.device, s.offload, s.attention_backend,
            speed=s.speed_options(),
        )  # fmt: skip
        if s.loras:
            from .lora import load_loras

            self.lora_infos = load_loras(self.pipe, s.loras)
        self.pipe.latent_cache = LatentCache(s.cache_dir)
        self.load_seconds = time.perf_counter() - started

    def fill_choice(self) -> FillChoice:
        """The fill of every render of this renderer (the LoRA's header is read once)."""
        if self._fill is None:
            self._fill = resolve_fill(self.settings)
        return self._fill

    def _layers(self, canvas: Canvas) -> list:
        """The canvas's layers, built once for all of its seeds (`-n K` decodes images once)."""
        if self._built is None or self._built[0] is not canvas:
            self._built = (canvas, build_layers(canvas))
        return self._built[1]

    def render(
        self, canvas: Canvas, seed: int, out_dir: Path, resume: bool = False
    ) -> RenderResult:
        """Render one canvas with one seed into `out_dir/<canvas>/<seed>.png` (+ `.json`)."""
        started = time.perf_counter()
        image_path, manifest_path = output_paths(out_dir, canvas, seed)
        fill = self.fill_choice()
        inputs = render_inputs(canvas, self.settings, seed, fill.fill)
        if resume and is_complete(image_path, manifest_path, inputs):
            return RenderResult(
                str(canvas.path), seed, "skipped", str(image_path), str(manifest_path)
            )
        layers = self._layers(canvas)  # invalid images fail here, before any model work
        told = self.warnings if fill.warning else self.notices
        # The collage is flattened over its own base colour: the fill is unused, say nothing.
        if fill.notice and fill.notice not in told and self.settings.mode != "collage":
            told.append(fill.notice)

        self.load()
        import torch

        device = self.pipe._execution_device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        generator = torch.Generator("cpu").manual_seed(seed)
        try:
            output = self.pipe(
                prompt=self.settings.prompt_prefix + canvas.spec.prompt,
                layers=layers,
                mode=self.settings.mode,
                num_inference_steps=canvas.spec.steps,
                guidance_scale=canvas.spec.guidance,
                generator=generator,
                encode=self.settings.encode,
                output_type="np",
                callback_on_step_end=progress_callback(self.on_step),
                fill=fill.fill,
            )
        except torch.OutOfMemoryError:
            raise LcError(
                f"out of GPU memory rendering {canvas.path} ({canvas.spec.size[0]}x{canvas.spec.size[1]})",
                hint="try --offload model (or sequential), --dtype bfloat16, a smaller canvas, or "
                "fewer/smaller layers (lc inspect shows the sequence length)",
            ) from None
        if output.mode_reason and output.mode_reason not in self.notices:
            self.notices.append(output.mode_reason)

        pixels = np.clip(np.rint(output.images[0] * 255), 0, 255).astype(np.uint8)
        data = png_bytes(pixels)
        write_bytes_atomic(image_path, data)
        timings = {
            "load": round(self.load_seconds, 4),
            **{k: round(v, 4) for k, v in output.timings.items()},
        }
        timings["total"] = round(time.perf_counter() - started, 4)  # includes a first render's load
        self.load_seconds = 0.0  # the load belongs to the first render only
        manifest = build_manifest(
            inputs,
            mode_used=output.mode,
            mode_reason=output.mode_reason,
            method=self.settings.method or output.mode,
            model=self.model_info.to_dict(),
            lora=one_or_list([info.to_dict() for info in self.lora_infos]),
            fill=fill.to_dict(),
            dtype=str(self.pipe.transformer.dtype).removeprefix("torch."),
            device=str(device),
            tokens=output.tokens,
            timings=timings,
            latent_cache=output.cache,
            prompt_cache="hit" if output.prompt_cached else "miss",
            first_block_cache=output.first_block_cache,
            peak_memory_bytes=peak_memory_bytes(device),
            notes=canvas.spec.notes,
            output={
                "image": image_path.name,
                "sha256": _sha256_bytes(data),
                "size": list(canvas.spec.size),
            },
        )
        write_json_atomic(manifest_path, manifest)
        return RenderResult(
            str(canvas.path), seed, "rendered", str(image_path), str(manifest_path), output.mode,
            round(time.perf_counter() - started, 3),
        )  # fmt: skip


def one_or_list(items: list[dict]) -> dict | list[dict] | None:
    """A manifest's LoRA entry: None without a LoRA, the dict of one, the list of several."""
    return None if not items else items[0] if len(items) == 1 else items


def as_list(entry: dict | list[dict] | None) -> list[dict]:
    """The LoRAs of a manifest's `lora` entry (see `one_or_list`), as a list."""
    return [] if not entry else [entry] if isinstance(entry, dict) else list(entry)


def progress_callback(on_step: Callable[[int, int], None] | None) -> Callable | None:
    """A diffusers `callback_on_step_end` that tells `on_step` (steps done, steps in all)."""
    if on_step is None:
        return None

    def callback(pipe, step: int, timestep, tensors: dict) -> dict:
        on_step(step + 1, pipe.num_timesteps)
        return {}

    return callback


def render_inputs(
    canvas: Canvas, settings: RenderSettings, seed: int, fill: str | None = None
) -> dict[str, Any]:
    """What determines a render's output: the resolved canvas, its files' hashes, the settings.

    `fill` is the resolved fill when the caller already has it; None resolves it here."""
    loras = [
        {
            "path": spec.path,
            "sha256": sha256_file(spec.path) if Path(spec.path).is_file() else None,
            "scale": spec.scale,
        }
        for spec in settings.loras
    ]
    return {
        **canvas_inputs(canvas),
        "model": settings.model,
        "revision": settings.revision,
        # One LoRA: a dict, as before several could be stacked (so --resume still knows those
        # outputs); several: a list of them, in load order.
        "lora": one_or_list(loras),
        "seed": seed,
        "mode": settings.mode,
        "encode": settings.encode,
        # Resolved: `auto` with a LoRA is the LoRA's fill.
        "fill": fill if fill is not None else resolve_fill(settings).fill,
        "dtype": settings.dtype,
        "device": settings.device,
        **({"speed": speed} if (speed := settings.speed_inputs()) else {}),
        # Only when set, so that other manifests keep their inputs hash (and --resume works).
        **({"prompt_prefix": prefix} if (prefix := settings.prompt_prefix) else {}),
    }


def canvas_inputs(canvas: Canvas) -> dict[str, Any]:
    """The canvas part of a render's inputs (what `lc eval` reads): the resolved canvas and the
    SHA-256 of its input images."""
    return {
        "canvas": {
            "path": str(canvas.path),
            "sha256": canvas.sha256,
            "overrides": list(canvas.overrides),
            "resolved": canvas.spec.model_dump(mode="json"),
        },
        "images": image_file_hashes(canvas),
    }


def output_paths(out_dir: Path, canvas: Canvas, seed: int) -> tuple[Path, Path]:
    folder = Path(out_dir) / canvas.name
    return folder / f"{seed}.png", folder / f"{seed}.json"


def is_complete(image_path: Path, manifest_path: Path, inputs: dict[str, Any]) -> bool:
    """Whether an earlier run already wrote this output, whole, from the same inputs."""
    if not (image_path.is_file() and manifest_path.is_file()):
        return False
    try:
        manifest = read_manifest(manifest_path)
    except LcError:
        return False
    return manifest.get("inputs_sha256") == inputs_sha256(inputs) and manifest.get(
        "output", {}
    ).get("sha256") == sha256_file(image_path)


def remove_stale_temporaries(folder: Path) -> int:
    """Delete temporary files a killed run left in an output folder; return how many."""
    removed = 0
    if folder.is_dir():
        for temp in folder.glob(f".*{TEMP_SUFFIX}"):
            temp.unlink(missing_ok=True)
            removed += 1
    return removed


def peak_memory_bytes(device) -> int:
    """Peak GPU memory on CUDA; the process's peak resident memory elsewhere."""
    import torch

    if getattr(device, "type", "cpu") == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- batches ----------------------------------------------------------------------------------


def seeds_for(canvas: Canvas, seed: int | None, num_images: int) -> list[int]:
    """`--seed` (else the canvas's seed, else 0), then the next `num_images - 1` integers."""
    base = seed if seed is not None else (canvas.spec.seed if canvas.spec.seed is not None else 0)
    return [base + i for i in range(num_images)]


def shard(items: list, rank: int, world_size: int) -> list:
    """This process's share of `items` (round-robin), for `accelerate launch`."""
    return items[rank::world_size]


def render_batch(
    paths: Iterable[Path],
    renderer: Renderer,
    out_dir: Path,
    overrides: tuple[str, ...] = (),
    allow_outside: bool = False,
    seed: int | None = None,
    num_images: int = 1,
    resume: bool = False,
    fail_fast: bool = False,
    rank: int = 0,
    world_size: int = 1,
    on_result: Callable[[RenderResult], None] | None = None,
    on_canvas: Callable[[Path, int], None] | None = None,
) -> list[RenderResult]:
    """Render every canvas (this process's share of them); a failure doesn't stop the others.

    A model that cannot be loaded stops the batch: every later canvas would fail the same way.
    """
    results: list[RenderResult] = []

    def record(result: RenderResult) -> None:
        results.append(result)
        if on_result:
            on_result(result)

    for path in shard(list(dict.fromkeys(paths)), rank, world_size):  # given order, no repeats
        try:
            canvas = load_canvas(path, overrides, allow_outside)
        except CanvasError as exc:
            record(RenderResult(str(path), None, "failed", error=str(exc), exit_code=2))
            if fail_fast:
                break
            continue
        remove_stale_temporaries(Path(out_dir) / canvas.name)
        seeds = seeds_for(canvas, seed, num_images)
        if on_canvas:
            on_canvas(path, len(seeds))
        for this_seed in seeds:
            try:
                record(renderer.render(canvas, this_seed, Path(out_dir), resume))
            except (ModelError, UsageError, ImportError):
                raise  # every later canvas would fail the same way: stop, say it once
            except CanvasError as exc:
                record(RenderResult(str(path), this_seed, "failed", error=str(exc), exit_code=2))
            except Exception as exc:  # noqa: BLE001 - one bad canvas must not stop the batch
                record(
                    RenderResult(str(path), this_seed, "failed", error=describe(exc), exit_code=1)
                )
            if fail_fast and results[-1].status == "failed":
                return results
    return results


def batch_exit_code(results: list[RenderResult]) -> int:
    """0 if nothing failed; 1 if any runtime failure; else 2 (only invalid canvases)."""
    codes = {result.exit_code for result in results if result.status == "failed"}
    if not codes:
        return 0
    return 1 if 1 in codes else 2


# --- reproducing a manifest -------------------------------------------------------------------


@dataclass
class Reproduction:
    """The outcome of `lc render --from-manifest`."""

    manifest: str
    image: str
    identical: bool
    max_abs_difference: int


def rerender_manifest(
    manifest_path: Path, out_dir: Path, renderer_factory: Callable[[RenderSettings], Renderer]
) -> Reproduction:
    """Render a manifest's inputs again into `out_dir`, and compare with the recorded output."""
    manifest = read_manifest(manifest_path)
    inputs = manifest["inputs"]
    if "pipeline" in inputs:  # another pipeline's output, e.g. lc bench's qwen-image-edit
        raise UsageError(
            f"{manifest_path} was made by {inputs['pipeline']}, not by lc render",
            hint="run the lc bench command that made it again (it resumes what is unchanged)",
        )
    check_manifest(manifest, manifest_path, rendered=True)
    recorded_canvas = inputs["canvas"]
    spec = CanvasSpec.model_validate(recorded_canvas["resolved"])
    canvas = Canvas(
        spec,
        Path(recorded_canvas["path"]),
        recorded_canvas["sha256"],
        tuple(recorded_canvas["overrides"]),
        allow_outside=True,
    )
    current = image_file_hashes(canvas)
    changed = [name for name, digest in inputs["images"].items() if current.get(name) != digest]
    if changed:
        raise LcError(
            f"input images changed since {manifest_path} was written: {', '.join(changed)}",
            hint="a manifest reproduces only with the same input files",
        )
    loras = tuple(
        LoraSpec(lora["path"], lora.get("scale", 1.0)) for lora in as_list(inputs.get("lora"))
    )
    settings = RenderSettings(
        model=inputs["model"], revision=inputs["revision"], loras=loras,
        mode=inputs["mode"], encode=inputs["encode"],
        dtype=inputs["dtype"], device=inputs["device"], fill=inputs.get("fill", LEGACY_FILL),
        prompt_prefix=inputs.get("prompt_prefix", ""),
        **{**SPEED_DEFAULTS, **inputs.get("speed", {})},
    )  # fmt: skip
    recorded_image = Path(manifest_path).parent / manifest["output"]["image"]
    before = _read_pixels(recorded_image)  # before rendering: out_dir may be the same folder
    result = renderer_factory(settings).render(canvas, inputs["seed"], out_dir)
    identical = sha256_file(result.image) == manifest["output"]["sha256"]
    after = _read_pixels(Path(result.image))
    if identical:
        difference = 0
    elif before is None or before.shape != after.shape:
        difference = -1  # the recorded image is gone or has another size: no pixel comparison
    else:
        difference = int(np.abs(before - after).max())
    return Reproduction(str(manifest_path), result.image, identical, difference)


def _read_pixels(path: Path) -> np.ndarray | None:
    if not path.is_file():
        return None
    return np.asarray(open_image_bounded(path), np.int16)


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) from the environment `accelerate launch` and `torchrun` set."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
