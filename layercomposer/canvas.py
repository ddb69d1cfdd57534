"""Canvas files (YAML, version 1): the schema, loading with `--set` overrides, and error locations.

No torch and no images here: this module only says whether a file is well-formed. Whether
its images exist and produce visible tokens is checked in `layers.py`.
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import CanvasError, Problem, UsageError
from .tokens import TOKEN_PX

CANVAS_VERSION = 1
MIN_SIDE, MAX_SIDE = 64, 4096
MAX_SCALE = 16.0

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
    layers: list[LayerSpec] = Field(default_factory=list, description="Bottom to top (z-order).")

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
    # Where each location was written: YAML line numbers, and the locations `--set` replaced.
    lines: dict[tuple[str | int, ...], int] = field(default_factory=dict, compare=False, repr=False)
    overridden: dict[tuple[str | int, ...], str] = field(
        default_factory=dict, compare=False, repr=False
    )

    @property
    def name(self) -> str:
        return self.path.stem

    def where(self, loc: tuple[str | int, ...]) -> str:
        """Return 'file:line' (or the `--set` that wrote it) for a location in the file."""
        return _locate(self.path, self.lines, self.overridden, loc)

    def problem(self, loc: tuple[str | int, ...], message: str) -> Problem:
        return Problem(self.where(loc), loc, message)

    def resolve(self, relative: str, loc: tuple[str | int, ...]) -> Path:
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
    path = Path(path)
    try:
        raw_bytes = path.read_bytes()
    except FileNotFoundError:
        raise CanvasError([Problem(str(path), (), "no such canvas file")]) from None
    except IsADirectoryError:
        raise CanvasError([Problem(str(path), (), "is a folder, not a canvas file")]) from None
    except OSError as exc:
        raise CanvasError([Problem(str(path), (), f"cannot be read: {exc.strerror}")]) from None

    try:
        text = raw_bytes.decode("utf-8")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except UnicodeDecodeError:
        raise CanvasError([Problem(str(path), (), "is not UTF-8 text")]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        reason = getattr(exc, "problem", None) or str(exc)
        raise CanvasError([Problem(f"{path}:{line}", (), f"not valid YAML: {reason}")]) from None
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise CanvasError(
            [
                Problem(
                    f"{path}:1",
                    (),
                    f"a canvas file must be a YAML mapping (prompt:, layers:, ...), not {kind}",
                )
            ]
        )

    lines = _node_lines(node)
    overridden = {_apply_override(data, override): override for override in overrides}

    try:
        spec = CanvasSpec.model_validate(data)
    except ValidationError as exc:
        problems = [
            Problem(_locate(path, lines, overridden, err["loc"]), err["loc"], _message(err))
            for err in exc.errors()
        ]
        # pydantic checks names only once every layer is valid; report duplicates regardless.
        layers = data.get("layers")
        if isinstance(layers, list):
            names = [
                item.get("name") for item in layers if isinstance(item, dict) and "name" in item
            ]
            message = _duplicate_names_message(names)
            if message:
                problems.append(
                    Problem(_locate(path, lines, overridden, ("layers",)), ("layers",), message)
                )
        raise CanvasError(list(dict.fromkeys(problems))) from None
    digest = hashlib.sha256(raw_bytes).hexdigest()
    return Canvas(spec, path, digest, tuple(overrides), allow_outside, lines, overridden)


# --- error locations -------------------------------------------------------------------------


def _node_lines(node: yaml.Node | None, loc: tuple = ()) -> dict[tuple, int]:
    """Map each location in a composed YAML tree to its 1-based line."""
    if node is None:
        return {}
    lines = {loc: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = (*loc, key_node.value)
            lines.update(_node_lines(value_node, child))
            lines[child] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines.update(_node_lines(item, (*loc, index)))
    return lines


def _locate(path: Path, lines: dict, overridden: dict, loc: tuple) -> str:
    for target, override in overridden.items():
        if tuple(loc[: len(target)]) == target:
            return f"--set {override}"
    while loc and loc not in lines:
        loc = loc[:-1]
    return f"{path}:{lines.get(loc, 1)}"


def _message(err: dict) -> str:
    loc, kind = err["loc"], err["type"]
    if kind == "extra_forbidden":
        valid = _fields_at(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
        return f"unknown key '{loc[-1]}'{hint}"
    if kind == "missing":
        if isinstance(loc[-1], int):
            return f"too few values: item {loc[-1]} is missing"
        return f"'{loc[-1]}' is required"
    message = err["msg"]
    return message.removeprefix("Value error, ")


def _fields_at(loc: tuple) -> list[str]:
    model: type[BaseModel] = CanvasSpec
    for part in loc:
        if isinstance(part, int):
            continue
        model = {"background": BackgroundSpec, "layers": LayerSpec}.get(str(part), model)
    return list(model.model_fields)


# --- overrides ---------------------------------------------------------------------------------


def _resolve_key(data: dict, parts: list[str]) -> list[str | int]:
    """Turn `layers.alice.lock` into the location `['layers', 0, 'lock']`."""
    loc: list[str | int] = []
    node: Any = data
    for i, part in enumerate(parts):
        if isinstance(node, list):
            names = [item.get("name") if isinstance(item, dict) else None for item in node]
            if part in names:
                index = names.index(part)
            elif part.isdigit() and int(part) < len(node):
                index = int(part)
            else:
                close = difflib.get_close_matches(part, [n for n in names if n], n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise UsageError(f"--set {'.'.join(parts)}: no layer named '{part}'{hint}")
            loc.append(index)
            node = node[index]
        elif isinstance(node, dict):
            loc.append(part)
            node = node.get(part) if i < len(parts) - 1 else None
        else:
            raise UsageError(f"--set {'.'.join(parts)}: '{parts[i - 1]}' has no keys")
    return loc


def _apply_override(data: dict, override: str) -> tuple[str | int, ...]:
    """Write one `key.path=value` into the raw canvas data; return the location it wrote."""
    if "=" not in override:
        raise UsageError(
            f"--set expects key.path=value, got '{override}'", hint="e.g. --set seed=7"
        )
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise UsageError(f"--set {override}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    loc = _resolve_key(data, parts)
    node: Any = data
    for part in loc[:-1]:
        if isinstance(node, dict) and part not in node:
            node[part] = {}
        node = node[part]
    node[loc[-1]] = value
    return tuple(loc)
