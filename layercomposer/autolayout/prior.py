"""The prior image the layout is read from: generated with FLUX.1 [dev], or a given photo.

Its size becomes the canvas size, so it is brought to multiples of 16 here, once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from ..canvas import MAX_SIDE, MIN_SIDE
from ..choices import PriorPrompt, names
from ..errors import UsageError
from ..models import ModelKind
from ..tokens import TOKEN_PX

DEFAULT_PRIOR_MODEL = "black-forest-labs/FLUX.1-dev"
# For the messages on missing weights: lc autolayout and lc bench name the model --prior-model.
PRIOR_KIND = ModelKind("FLUX.1 [dev]", DEFAULT_PRIOR_MODEL, "--prior-model", gated=True)
DEFAULT_PRIOR_SIZE = (1024, 1024)
DEFAULT_STEPS = 28
DEFAULT_GUIDANCE = 3.5  # FLUX.1 [dev]'s usual distilled guidance
TARGET_AREA = 1024 * 1024  # FLUX works best near one megapixel
MAX_AREA = 1.5 * TARGET_AREA  # a given prior larger than this is scaled down to TARGET_AREA
# How a prior's text comes from the canvas prompt: `given` uses it as is (the paper's protocol,
# lc bench's default); `rewrite` adds the count of people and asks for visible faces
# (prior_prompt, lc autolayout's default).
PROMPT_MODES = names(PriorPrompt)


@dataclass(frozen=True)
class PriorSettings:
    """How to generate a prior (ignored when a prior image is given)."""

    model: str = DEFAULT_PRIOR_MODEL
    revision: str | None = None
    size: tuple[int, int] = DEFAULT_PRIOR_SIZE
    seed: int = 0
    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE
    prompt: str | None = None  # verbatim prior prompt; None: the augmented canvas prompt
    device: str = "auto"
    dtype: str = "auto"
    offload: str = "none"


@dataclass(frozen=True, eq=False)
class Prior:
    rgb: np.ndarray  # (H, W, 3) uint8 at the canvas size
    record: dict[str, Any] = field(default_factory=dict)  # for the manifest


def prior_prompt(prompt: str, people: int) -> str:
    """The prompt the prior is generated from: the canvas prompt, asking for visible faces.

    Text-to-image models often draw people from behind or crop heads; the placement needs one
    visible face per subject, so the count is stated explicitly.
    """
    prompt = prompt.strip().rstrip(".")
    if people == 1:
        return f"{prompt}. A photo of one person, face clearly visible, looking at the camera."
    return (
        f"{prompt}. A group photo of {people} people side by side, "
        "every face clearly visible, looking at the camera."
    )


def prior_text(prompt: str, people: int, mode: str) -> str:
    """The text a prior is generated from, by `mode` (one of PROMPT_MODES)."""
    if mode == "given":
        return prompt
    if mode == "rewrite":
        return prior_prompt(prompt, people)
    raise UsageError(f"--prior-prompt {mode!r}: choose one of {', '.join(PROMPT_MODES)}")


def canvas_size_for(width: int, height: int, requested: tuple[int, int] | None) -> tuple[int, int]:
    """The canvas size for a prior of `width` x `height`: `requested`, else the prior's own
    size (scaled to about one megapixel when larger than 1.5 MP), in multiples of 16."""
    if requested is not None:
        return check_size(requested)
    scale = 1.0
    if width * height > MAX_AREA or max(width, height) > MAX_SIDE:
        scale = (TARGET_AREA / (width * height)) ** 0.5
    elif min(width, height) < MIN_SIDE:
        scale = MIN_SIDE / min(width, height)
    side = [max(MIN_SIDE, round(v * scale / TOKEN_PX) * TOKEN_PX) for v in (width, height)]
    return check_size((min(side[0], MAX_SIDE), min(side[1], MAX_SIDE)))


def check_size(size: tuple[int, int]) -> tuple[int, int]:
    width, height = size
    for side in size:
        if side % TOKEN_PX or not MIN_SIDE <= side <= MAX_SIDE:
            raise UsageError(
                f"--size {width}x{height}: each side must be a multiple of {TOKEN_PX} between "
                f"{MIN_SIDE} and {MAX_SIDE}"
            )
    return width, height


def fit_to(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The image scaled and centre-cropped to exactly `size` (a few pixels at most are lost
    when only rounding to multiples of 16)."""
    if (rgb.shape[1], rgb.shape[0]) == tuple(size):
        return rgb
    fitted = ImageOps.fit(Image.fromarray(rgb), size, Image.Resampling.LANCZOS)
    return np.asarray(fitted)


def generate_prior(canvas_prompt: str, people: int, settings: PriorSettings) -> Prior:
    """Generate the prior with diffusers' FluxPipeline (FLUX.1 [dev] or builtin:tiny)."""
    import torch
    from diffusers import FluxPipeline

    from ..models import load_pipeline

    width, height = check_size(settings.size)
    prompt = settings.prompt or prior_prompt(canvas_prompt, people)
    start = time.perf_counter()
    pipe, info = load_pipeline(
        settings.model,
        revision=settings.revision,
        dtype=settings.dtype,
        device=settings.device,
        offload=settings.offload,
        pipeline_class=FluxPipeline,
        kind=PRIOR_KIND,
    )
    loaded = time.perf_counter()
    # A CPU generator makes the same seed give the same noise on any device.
    generator = torch.Generator("cpu").manual_seed(settings.seed)
    with torch.inference_mode():
        images = pipe(
            prompt=prompt,
            width=width,
            height=height,
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance,
            generator=generator,
            output_type="np",
        ).images  # (1, H, W, 3) float in [0, 1]
    rgb = np.clip(np.rint(np.asarray(images[0]) * 255), 0, 255).astype(np.uint8)
    record = {
        "source": "generated",
        "model": info.to_dict(),
        "prompt": prompt,
        "prompt_augmented": settings.prompt is None,
        "seed": settings.seed,
        "steps": settings.steps,
        "guidance": settings.guidance,
        "size": [width, height],
        "seconds": {
            "load": round(loaded - start, 3),
            "generate": round(time.perf_counter() - loaded, 3),
        },
    }
    return Prior(rgb, record)
