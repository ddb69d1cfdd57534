"""The 4-person baselines of LayerComposer's Table 1 that diffusers can run, for `lc bench`.

Each takes the canvas's collage (its layers flattened in z-order, what `lc preview
--collage-only` writes) and the canvas's prompt, and writes an image and a run manifest in
`lc render`'s layout, so that `lc eval` reads every method the same way:

- `collage`: stock FLUX.1 Kontext [dev] (`lc render --mode collage`);
- `overlay-kontext`: Kontext with the Overlay LoRA, the prompt after its trigger phrase, as the
  paper describes it: `"Place it. " + prompt` (`overlay_settings`);
- `qwen-image-edit`: Qwen-Image-Edit through diffusers' own `QwenImageEditPipeline`
  (`QwenEditRenderer`).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .canvas import Canvas
from .errors import LcError
from .files import png_bytes, write_bytes_atomic, write_json_atomic
from .layers import build_layers, flatten
from .manifest import build_manifest
from .models import QWEN_EDIT_MODEL, Offload, fetch_lora
from .render import (
    RenderResult,
    RenderSettings,
    canvas_inputs,
    is_complete,
    output_paths,
    peak_memory_bytes,
)

# The Overlay Kontext LoRA (ilkerzgi and gokaygokay; licence: the FLUX.1 [dev] non-commercial
# licence, as its model card states) and its trigger phrase. The repo holds more than one
# .safetensors file; this is the one ComfyUI-based tools load. The paper puts "Place it." before
# the prompt; one space joins them.
OVERLAY_REPO = "ilkerzgi/Overlay-Kontext-Dev-LoRA"
OVERLAY_LORA = f"{OVERLAY_REPO}/WVVtJFD90b8SsU6EzeGkO_adapter_model_comfy_converted.safetensors"
OVERLAY_PREFIX = "Place it. "
# Qwen-Image-Edit's model card: true classifier-free guidance 4.0 with a blank negative prompt.
QWEN_PIPELINE = "QwenImageEditPipeline"
QWEN_TRUE_CFG_SCALE = 4.0
QWEN_NEGATIVE_PROMPT = " "


def overlay_settings(base: RenderSettings, lora: str = OVERLAY_LORA) -> RenderSettings:
    """`base` as the overlay-kontext baseline: collage mode, the Overlay LoRA (a file, a folder
    or a hub id, fetched now so that a missing LoRA stops the run before any render), and the
    trigger phrase before the prompt. `base`'s LoRA scale is the LayerComposer LoRA's: the
    Overlay LoRA is applied at 1, as its card uses it."""
    from .lora import LoraSpec, resolve_lora_file

    file = resolve_lora_file(fetch_lora(lora, "--overlay-lora"))
    return replace(
        base,
        mode="collage",
        loras=(LoraSpec(str(file), 1.0),),
        prompt_prefix=OVERLAY_PREFIX,
        method="overlay-kontext",
    )


@dataclass(frozen=True)
class QwenEditSettings:
    """Which Qwen-Image-Edit weights to load, and where."""

    model: str = QWEN_EDIT_MODEL  # a hub id, a local diffusers folder, or builtin:tiny
    revision: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    offload: Offload = "none"


@dataclass
class QwenEditRenderer:
    """Renders canvases' collages with Qwen-Image-Edit; `render` as `render.Renderer.render`.

    The model is loaded on first use, so a fully resumed run never loads it.
    """

    settings: QwenEditSettings = field(default_factory=QwenEditSettings)
    on_step: Any = None  # (step, steps) -> None
    pipe: Any = None
    model_info: Any = None
    load_seconds: float = 0.0
    notices: list[str] = field(default_factory=list)

    def load(self) -> None:
        if self.pipe is not None:
            return
        from .models import load_qwen_edit_pipeline

        started = time.perf_counter()
        s = self.settings
        self.pipe, self.model_info = load_qwen_edit_pipeline(
            s.model, s.revision, s.dtype, s.device, s.offload
        )
        self.load_seconds = time.perf_counter() - started

    def inputs(self, canvas: Canvas, seed: int) -> dict[str, Any]:
        """What determines an output: the canvas (as `lc render` records it) and the settings."""
        s = self.settings
        return {
            **canvas_inputs(canvas),
            "pipeline": QWEN_PIPELINE,
            "model": s.model,
            "revision": s.revision,
            "seed": seed,
            "mode": "collage",
            "true_cfg_scale": QWEN_TRUE_CFG_SCALE,
            "negative_prompt": QWEN_NEGATIVE_PROMPT,
            "dtype": s.dtype,
            "device": s.device,
        }

    def render(
        self, canvas: Canvas, seed: int, out_dir: Path, resume: bool = False
    ) -> RenderResult:
        """Render one canvas's collage into `out_dir/<canvas>/<seed>.png` (+ `.json`)."""
        started = time.perf_counter()
        image_path, manifest_path = output_paths(out_dir, canvas, seed)
        inputs = self.inputs(canvas, seed)
        if resume and is_complete(image_path, manifest_path, inputs):
            return RenderResult(
                str(canvas.path), seed, "skipped", str(image_path), str(manifest_path)
            )
        collage = flatten(build_layers(canvas))  # (H, W, 3) uint8; bad images fail here
        self.load()
        import torch

        width, height = canvas.spec.size
        device = self.pipe._execution_device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        denoise_started = time.perf_counter()
        try:
            images = self.pipe(**qwen_edit_call(collage, canvas.spec.prompt, (width, height),
                                                canvas.spec.steps, seed),
                               callback_on_step_end=self._step_callback(canvas.spec.steps),
                               ).images  # fmt: skip  # (1, H, W, 3) float in [0, 1]
        except torch.OutOfMemoryError:
            raise LcError(
                f"out of GPU memory rendering {canvas.path} with Qwen-Image-Edit",
                hint="try --offload model (or sequential) or --dtype bfloat16",
            ) from None
        denoise_seconds = time.perf_counter() - denoise_started

        pixels = np.clip(np.rint(np.asarray(images[0]) * 255), 0, 255).astype(np.uint8)
        data = png_bytes(pixels)
        write_bytes_atomic(image_path, data)
        timings = {
            "load": round(self.load_seconds, 4),
            "denoise": round(denoise_seconds, 4),  # the whole pipeline call
            "total": round(time.perf_counter() - started, 4),
        }
        self.load_seconds = 0.0  # the load belongs to the first render only
        manifest = build_manifest(
            inputs,
            mode_used="collage",
            mode_reason=None,
            method="qwen-image-edit",
            model=self.model_info.to_dict(),
            lora=None,
            dtype=str(self.pipe.transformer.dtype).removeprefix("torch."),
            device=str(device),
            timings=timings,
            peak_memory_bytes=peak_memory_bytes(device),
            notes=canvas.spec.notes,
            output={
                "image": image_path.name,
                "sha256": hashlib.sha256(data).hexdigest(),
                "size": [width, height],
            },
        )
        write_json_atomic(manifest_path, manifest)
        return RenderResult(
            str(canvas.path), seed, "rendered", str(image_path), str(manifest_path), "collage",
            round(time.perf_counter() - started, 3),
        )  # fmt: skip

    def _step_callback(self, steps: int):
        """diffusers' `callback_on_step_end` that reports progress to `on_step`."""
        if self.on_step is None:
            return None

        def callback(pipe, step: int, timestep, tensors: dict) -> dict:
            self.on_step(step + 1, steps)
            return {}

        return callback


def qwen_edit_call(
    collage: np.ndarray, prompt: str, size: tuple[int, int], steps: int, seed: int
) -> dict[str, Any]:
    """The keyword arguments of a `QwenImageEditPipeline` call for one collage.

    The output has the canvas's size; the pipeline itself resizes the reference image to about
    one megapixel at its aspect ratio (what the model was trained on). The noise is drawn on
    the CPU, so a seed gives the same image on any device.
    """
    import torch
    from PIL import Image

    width, height = size
    return {
        "image": Image.fromarray(collage),
        "prompt": prompt,
        "negative_prompt": QWEN_NEGATIVE_PROMPT,
        "true_cfg_scale": QWEN_TRUE_CFG_SCALE,
        "height": height,
        "width": width,
        "num_inference_steps": steps,
        "generator": torch.Generator("cpu").manual_seed(seed),
        "output_type": "np",
    }
