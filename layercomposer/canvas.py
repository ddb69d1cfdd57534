"""Canvas files (YAML, version 1): the schema, loading with `--set` overrides, and error locations.

No torch and no images here: this module only says whether a file is well-formed. Whether
its images exist and produce visible tokens is checked in `layers.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import CanvasError, Problem
from .limits import MAX_LAYERS
from .tokens import TOKEN_PX
from .yamlfile import Loc, YamlFile, read_yaml_file

CANVAS_VERSION = 1
MIN_SIDE, MAX_SIDE = 64, 4096
MAX_SCALE = 16.0
MAX_POSITION = 100_000  # px from the canvas origin, either way

Anchor = Literal[
    "top-left",
    "top",
    "top-right",
    "left",
    "center",
    "right",
    "bottom-left",
    "bottom",
    "bottom-right",
]
Flip = Literal["none", "horizontal", "vertical", "both"]
Fit = Literal["cover", "contain", "stretch"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BackgroundSpec(_Strict):
    """An image that fills the whole canvas, below every layer."""

    image: str = Field(description="Image path, relative to the canvas file.")
    fit: Fit = Field(
        "cover",
        description="cover: fill and crop; contain: fit inside, transparent bars; stretch: ignore aspect.",
    )
    lock: bool = Field(True, description="Locked: kept almost exactly (only relit).")


class LayerSpec(_Strict):
    """One subject: an RGBA cut-out (or an RGB image plus a mask) placed on the canvas."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_-]*$",
        max_length=64,
        description="Unique name; used by `--set layers.NAME.key=value`.",
    )
    image: str = Field(description="Image path, relative to the canvas file.")
    mask: str | None = Field(
        None, description="Grayscale mask (white = subject); otherwise the image's alpha is used."
    )
    position: tuple[float, float] = Field(
        description="[x, y] in canvas pixels of the anchor point."
    )
    anchor: Anchor = Field(
        "center", description="Which point of the placed image sits at `position`."
    )
    scale: float = Field(1.0, gt=0, le=MAX_SCALE, description="Resize factor applied after crop.")
    rotate: float = Field(0.0, ge=-360, le=360, description="Degrees, counter-clockwise.")
    flip: Flip = "none"
    crop: tuple[int, int, int, int] | None = Field(
        None, description="[x0, y0, x1, y1] in source pixels, applied first."
    )
    lock: bool = Field(False, description="Locked: kept almost exactly (only relit).")

    @field_validator("position")
    @classmethod
    def _position_is_near_the_canvas(cls, position):
        # A layer may hang past the edge, but pixel arithmetic needs finite, bounded numbers.
        if not all(math.isfinite(v) and abs(v) <= MAX_POSITION for v in position):
            raise ValueError(f"position must be two finite numbers within ±{MAX_POSITION} px")
        return position

    @field_validator("crop")
    @classmethod
    def _crop_is_a_box(cls, crop):
        if crop is not None:
            x0, y0, x1, y1 = crop
            if min(crop) < 0 or x1 <= x0 or y1 <= y0:
                raise ValueError("crop must be [x0, y0, x1, y1] with 0 <= x0 < x1 and 0 <= y0 < y1")
        return crop


class CanvasSpec(_Strict):
    """A layered canvas: a prompt, a size, an optional background and a list of layers."""

    model_config = ConfigDict(title="lc canvas file, version 1")

    version: Literal[1] = Field(CANVAS_VERSION, description="Canvas file format version.")
    prompt: str = Field(min_length=1, description="What the image should show.")
    size: tuple[int, int] = Field(
        (1024, 1024),
        description=f"[width, height] in pixels, multiples of {TOKEN_PX}, {MIN_SIDE}..{MAX_SIDE}.",
    )
    seed: int | None = Field(None, ge=0, lt=2**63, description="Default seed; `--seed` wins.")
    steps: int = Field(28, ge=1, le=500, description="Denoising steps.")
    guidance: float = Field(
        2.5, ge=0, le=30, description="Distilled guidance scale (FLUX.1 Kontext)."
    )
    notes: str | None = Field(None, description="Free text, copied into every run manifest.")
    background: BackgroundSpec | None = None
    layers: list[LayerSpec] = Field(
        default_factory=list, max_length=MAX_LAYERS, description="Bottom to top (z-order)."
    )

    @field_validator("size")
    @classmethod
    def _size_fits_token_grid(cls, size):
        problems = []
        for axis, side in zip(("width", "height"), size, strict=True):
            if side < MIN_SIDE or side > MAX_SIDE:
                problems.append(
                    f"{axis} must be between {MIN_SIDE} and {MAX_SIDE} px, got {side} "
                    "(FLUX.1 Kontext works best near 1 megapixel, e.g. [1024, 1024])"
                )
            elif side % TOKEN_PX:
                lower = side // TOKEN_PX * TOKEN_PX
                problems.append(
                    f"{axis} must be a multiple of {TOKEN_PX}, got {side} "
                    f"(try {max(lower, MIN_SIDE)} or {lower + TOKEN_PX})"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return size

    @field_validator("layers")
    @classmethod
    def _names_are_unique(cls, layers):
        message = _duplicate_names_message([layer.name for layer in layers])
        if message:
            raise ValueError(message)
        return layers

    @model_validator(mode="after")
    def _has_something_to_compose(self):
        if not self.layers and self.background is None:
            raise ValueError("nothing to compose: add at least one layer or a background")
        return self


def _duplicate_names_message(names: list) -> str | None:
    twice = sorted({str(name) for name in names if names.count(name) > 1})
    return f"layer names must be unique; used more than once: {', '.join(twice)}" if twice else None


def canvas_json_schema() -> dict[str, Any]:
    """Return the JSON Schema of canvas files, for editors and other tools."""
    schema = CanvasSpec.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


@dataclass(frozen=True)
class Canvas:
    """A validated canvas file: its spec (overrides applied) and where it came from."""

    spec: CanvasSpec
    path: Path
    sha256: str
    overrides: tuple[str, ...] = ()
    allow_outside: bool = False
    file: YamlFile | None = field(default=None, compare=False, repr=False)  # for error locations

    @property
    def name(self) -> str:
        return self.path.stem

    def where(self, loc: Loc) -> str:
        """Return 'file:line' (or the `--set` that wrote it) for a location in the file."""
        return self.file.where(loc) if self.file else str(self.path)

    def problem(self, loc: Loc, message: str) -> Problem:
        return Problem(self.where(loc), loc, message)

    def resolve(self, relative: str, loc: Loc) -> Path:
        """Return the absolute path of an image named in the file, refusing escapes."""
        base = self.path.parent.resolve()
        target = (base / relative).resolve()
        if not self.allow_outside and not target.is_relative_to(base):
            raise CanvasError(
                [
                    self.problem(
                        loc,
                        f"'{relative}' is outside the canvas folder {base}; keep images beside "
                        "the canvas file, or pass --allow-outside",
                    )
                ]
            )
        return target


def load_canvas(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), allow_outside: bool = False
) -> Canvas:
    """Return the validated canvas at `path`, with `key.path=value` overrides applied."""
    file = read_yaml_file(path, tuple(overrides), kind="canvas file")
    try:
        spec = file.validate(CanvasSpec)
    except CanvasError as exc:
        # pydantic checks names only once every layer is valid; report duplicates regardless.
        layers = file.data.get("layers")
        names = (
            [item.get("name") for item in layers if isinstance(item, dict)]
            if isinstance(layers, list)
            else []
        )
        message = _duplicate_names_message([name for name in names if name is not None])
        duplicates = [file.problem(("layers",), message)] if message else []
        raise CanvasError(list(dict.fromkeys(exc.problems + duplicates))) from None
    return Canvas(spec, file.path, file.sha256, file.overrides, allow_outside, file)
