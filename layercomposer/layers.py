"""From a canvas to pixels: one canvas-sized RGBA layer per subject, and the flattened collage.

Layers never occlude each other: each keeps its full content, even where another layer lies
on top. Only `flatten` (the collage, for previews and the stock-Kontext baseline) applies z-order.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
from PIL import Image, ImageOps

from .canvas import BackgroundSpec, Canvas, LayerSpec
from .errors import CanvasError, Problem
from .files import sha256_file
from .geometry import Box, Extent, anchored_origin
from .limits import (
    MAX_CANVAS_DECODE_PIXELS,
    MAX_LAYER_PIXELS,
    MAX_LAYERS_PIXELS,
    TooLargeError,
    UnreadableImageError,
    open_image_bounded,
)
from .tokens import TOKEN_PX, valid_token_mask

BACKGROUND_NAME = "background"
COLLAGE_BASE = (255, 255, 255)  # what shows where no layer covers the canvas


@dataclass(frozen=True, eq=False)
class CanvasLayer:
    """One layer after its transform: the placed cut-out and where it sits on the canvas."""

    name: str
    kind: Literal["background", "subject"]
    lock: bool
    cutout: np.ndarray  # (h, w, 4) uint8, the transformed image before placement
    origin: tuple[int, int]  # canvas pixel of the cut-out's top-left corner (may be negative)
    canvas_size: Extent
    content_hash: str  # sha-256 of the cut-out's pixels: same content and transform, same hash

    @property
    def placed(self) -> Box:
        """Where the cut-out lies on the canvas plane (may reach past the canvas edge)."""
        h, w = self.cutout.shape[:2]
        return Box(self.origin[0], self.origin[1], self.origin[0] + w, self.origin[1] + h)

    @property
    def visible_box(self) -> Box:
        """The part of the cut-out that lies on the canvas."""
        return self.placed.intersect(Box(0, 0, *self.canvas_size))

    @cached_property
    def rgba(self) -> np.ndarray:
        """(H, W, 4) uint8: the layer on a transparent canvas, clipped at the canvas edge."""
        return self.crop(Box(0, 0, *self.canvas_size))

    def crop(self, box: Box) -> np.ndarray:
        """(box h, box w, 4) uint8: the part of the canvas-sized layer inside `box` (on the canvas).

        Built from the cut-out alone, so encoding a layer's box never allocates the whole canvas.
        """
        out = np.zeros((box.height, box.width, 4), np.uint8)
        part = self.visible_box.intersect(box)
        if not part.is_empty:
            x, y = self.origin
            out[part.y0 - box.y0 : part.y1 - box.y0, part.x0 - box.x0 : part.x1 - box.x0] = (
                self.cutout[part.y0 - y : part.y1 - y, part.x0 - x : part.x1 - x]
            )
        return out

    @property
    def alpha(self) -> np.ndarray:
        """(H, W) float32 in [0, 1]."""
        return self.rgba[..., 3].astype(np.float32) / 255.0

    @property
    def visible_pixels(self) -> int:
        box, (x, y) = self.visible_box, self.origin
        if box.is_empty:
            return 0
        return int(
            np.count_nonzero(self.cutout[box.y0 - y : box.y1 - y, box.x0 - x : box.x1 - x, 3])
        )

    @cached_property
    def token_mask(self) -> np.ndarray:
        """(H/16, W/16) bool: the tokens this layer contributes (see `tokens.valid_token_mask`)."""
        return self.token_mask_at(TOKEN_PX)

    def token_mask_at(self, token_px: int) -> np.ndarray:
        """(H/token_px, W/token_px) bool: `token_mask` for a model whose tokens are `token_px` wide.

        FLUX's are 16 px (8x VAE, 2x2 packing); a pipeline asks for `2 * vae_scale_factor`.
        Samples the cut-out at the token centres it covers: the same pixels `valid_token_mask`
        reads from the canvas-sized alpha, without building it (16 layers at 2048^2 would be
        256 MB of it, and most of `lc inspect`'s time).
        """
        if token_px == TOKEN_PX and "token_mask" in self.__dict__:
            return self.__dict__["token_mask"]
        (x, y), size = self.origin, self.canvas_size
        grid = Extent(size.width // token_px, size.height // token_px)
        height, width = self.cutout.shape[:2]
        rows = np.arange(grid.height) * token_px + token_px // 2 - y  # centres in cut-out pixels
        cols = np.arange(grid.width) * token_px + token_px // 2 - x
        on_rows, on_cols = (rows >= 0) & (rows < height), (cols >= 0) & (cols < width)
        mask = np.zeros((grid.height, grid.width), bool)
        alpha = self.cutout[np.ix_(rows[on_rows], cols[on_cols], [3])][..., 0]
        mask[np.ix_(on_rows, on_cols)] = valid_token_mask(alpha.astype(np.float32) / 255.0, 1)
        return mask


def build_layers(canvas: Canvas) -> list[CanvasLayer]:
    """Return the canvas's layers, background first, or raise listing every problem found."""
    size = Extent(*canvas.spec.size)
    layers: list[CanvasLayer] = []
    problems: list[Problem] = []
    budget = _DecodeBudget()
    if canvas.spec.background is not None:
        try:
            layers.append(_background_layer(canvas, canvas.spec.background, size, budget))
        except CanvasError as exc:
            problems += exc.problems
    total_pixels = sum(layer.cutout.shape[0] * layer.cutout.shape[1] for layer in layers)
    for index, spec in enumerate(canvas.spec.layers):
        try:
            layer = _subject_layer(canvas, spec, ("layers", index), size, budget)
        except CanvasError as exc:
            problems += exc.problems
            if budget.left < 0:  # no image after this one may be decoded either
                break
            continue
        total_pixels += layer.cutout.shape[0] * layer.cutout.shape[1]
        if total_pixels > MAX_LAYERS_PIXELS:  # stop before the next layer takes more memory
            problems.append(
                canvas.problem(
                    ("layers", index),
                    f"the layers up to '{spec.name}' add up to {total_pixels / 1e6:.0f} MP after "
                    f"scaling, over lc's limit of {MAX_LAYERS_PIXELS / 1e6:.0f} MP a canvas; "
                    "lower their scales",
                )
            )
            break
        if not layer.token_mask.any():
            problems.append(canvas.problem(("layers", index), _no_tokens_message(layer)))
        layers.append(layer)
    if problems:
        raise CanvasError(problems)
    return layers


def flatten(layers: list[CanvasLayer], base: tuple[int, int, int] = COLLAGE_BASE) -> np.ndarray:
    """(H, W, 3) uint8: the layers alpha-composited in z-order over a plain `base` colour."""
    size = layers[0].canvas_size
    out = np.empty((size.height, size.width, 3), np.float32)
    out[:] = np.asarray(base, np.float32)
    for layer in layers:
        rgba = layer.rgba.astype(np.float32)
        alpha = rgba[..., 3:] / 255.0
        out = rgba[..., :3] * alpha + out * (1.0 - alpha)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# --- loading and transforming -----------------------------------------------------------------


def _no_tokens_message(layer: CanvasLayer) -> str:
    if layer.visible_box.is_empty:
        return (
            f"layer '{layer.name}' lies entirely outside the {layer.canvas_size.width}x"
            f"{layer.canvas_size.height} canvas (placed at {tuple(layer.placed)}); move it inside"
        )
    return (
        f"layer '{layer.name}' has no token whose alpha is over 0.5 on the 16-px grid "
        "(too small, too transparent or almost off the canvas); enlarge it or move it inside"
    )


def _subject_layer(
    canvas: Canvas, spec: LayerSpec, loc: tuple, size: Extent, budget: _DecodeBudget
) -> CanvasLayer:
    def fits(width: int, height: int) -> None:  # known from the header: refuse before decoding
        crop = spec.crop
        source = (crop[2] - crop[0], crop[3] - crop[1]) if crop else (width, height)
        _check_transformed_size(canvas, spec, loc, source)

    image = _open_image(canvas, spec.image, (*loc, "image"), budget, fits)
    if spec.mask is not None:
        mask = _open_image(canvas, spec.mask, (*loc, "mask"), budget).convert("L")
        if mask.size != image.size:
            raise CanvasError(
                [
                    canvas.problem(
                        (*loc, "mask"),
                        f"mask is {mask.size[0]}x{mask.size[1]} but the image is "
                        f"{image.size[0]}x{image.size[1]}; they must match",
                    )
                ]
            )
        image = image.convert("RGB")
        image.putalpha(mask)
    elif not _has_alpha(image):
        raise CanvasError(
            [
                canvas.problem(
                    (*loc, "image"),
                    f"layer '{spec.name}': {spec.image} has no alpha channel and no mask is given; "
                    "save the cut-out as an RGBA PNG, or add `mask: <grayscale image>`",
                )
            ]
        )
    image = image.convert("RGBA")

    if spec.crop is not None:
        x0, y0, x1, y1 = spec.crop
        if x1 > image.width or y1 > image.height:
            raise CanvasError(
                [
                    canvas.problem(
                        (*loc, "crop"),
                        f"crop {list(spec.crop)} reaches past the {image.width}x{image.height} image",
                    )
                ]
            )
        image = image.crop(spec.crop)
    if spec.flip in ("horizontal", "both"):
        image = ImageOps.mirror(image)
    if spec.flip in ("vertical", "both"):
        image = ImageOps.flip(image)
    _check_transformed_size(canvas, spec, loc, image.size)
    # Resample in premultiplied alpha, or transparent pixels bleed their colour into the edge.
    image = image.convert("RGBa")
    if spec.scale != 1.0:
        new_size = (
            max(1, round(image.width * spec.scale)),
            max(1, round(image.height * spec.scale)),
        )
        image = image.resize(new_size, Image.Resampling.LANCZOS)
    if spec.rotate % 360:
        image = image.rotate(spec.rotate, Image.Resampling.BICUBIC, expand=True)
    cutout = np.asarray(image.convert("RGBA"))

    origin = anchored_origin(spec.position, spec.anchor, Extent(cutout.shape[1], cutout.shape[0]))
    return CanvasLayer(spec.name, "subject", spec.lock, cutout, origin, size, pixels_hash(cutout))


def _check_transformed_size(
    canvas: Canvas, spec: LayerSpec, loc: tuple, size: tuple[int, int]
) -> None:
    """Refuse a layer whose scaled and rotated image would be over the bound, before making it:
    a 640-px photo at scale 16, rotated 45 degrees, is 12000x12000 pixels (2 GB to resample)."""
    width, height = max(1, round(size[0] * spec.scale)), max(1, round(size[1] * spec.scale))
    turn = math.radians(spec.rotate % 360)
    if turn:  # the bounding box `rotate(expand=True)` makes
        cos, sin = abs(math.cos(turn)), abs(math.sin(turn))
        width, height = math.ceil(width * cos + height * sin), math.ceil(width * sin + height * cos)
    if width * height > MAX_LAYER_PIXELS:
        raise CanvasError(
            [
                canvas.problem(
                    (*loc, "scale"),
                    f"layer '{spec.name}' would be {width}x{height} pixels after scale and "
                    f"rotation, over lc's limit of {MAX_LAYER_PIXELS / 1e6:.0f} MP a layer; "
                    "lower its scale or crop it",
                )
            ]
        )


def _background_layer(
    canvas: Canvas, spec: BackgroundSpec, size: Extent, budget: _DecodeBudget
) -> CanvasLayer:
    image = _open_image(canvas, spec.image, ("background", "image"), budget).convert("RGBA")
    if spec.fit == "stretch":
        image = image.resize(size, Image.Resampling.LANCZOS)
    elif spec.fit == "cover":
        image = ImageOps.fit(image, size, Image.Resampling.LANCZOS)
    else:  # contain: fit inside and leave transparent bars, which carry no tokens
        image = ImageOps.pad(
            image.convert("RGBa"), size, Image.Resampling.LANCZOS, color=(0, 0, 0, 0)
        )
        image = image.convert("RGBA")
    cutout = np.asarray(image)
    return CanvasLayer(
        BACKGROUND_NAME, "background", spec.lock, cutout, (0, 0), size, pixels_hash(cutout)
    )


class _DecodeBudget:
    """The pixels a canvas may still decode: 64 layers of 64 MP photos would take minutes."""

    def __init__(self) -> None:
        self.left = MAX_CANVAS_DECODE_PIXELS

    def spend(self, canvas: Canvas, loc: tuple, width: int, height: int) -> None:
        self.left -= width * height
        if self.left < 0:
            limit = MAX_CANVAS_DECODE_PIXELS / 1e6
            raise CanvasError(
                [
                    canvas.problem(
                        loc,
                        f"the canvas's images up to this one add up to more than {limit:.0f} MP "
                        "to decode, lc's limit a canvas; use smaller images",
                    )
                ]
            )


def _open_image(
    canvas: Canvas,
    relative: str,
    loc: tuple,
    budget: _DecodeBudget,
    fits: Callable[[int, int], None] | None = None,
) -> Image.Image:
    path = canvas.resolve(relative, loc)

    def before_decoding(width: int, height: int) -> None:
        if fits is not None:
            fits(width, height)
        budget.spend(canvas, loc, width, height)

    try:  # checked for size before decoding; 16-bit and float images come back as 8-bit
        return open_image_bounded(path, upright=True, before_decoding=before_decoding)
    except (TooLargeError, UnreadableImageError) as exc:
        raise CanvasError([canvas.problem(loc, exc.message)]) from None


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "RGBa", "La", "PA") or "transparency" in image.info


def pixels_hash(pixels: np.ndarray) -> str:
    """The sha-256 of an array's pixels and shape: the key of its encoded latents."""
    digest = hashlib.sha256(np.ascontiguousarray(pixels).tobytes())
    digest.update(str(pixels.shape).encode())
    return digest.hexdigest()


def image_file_hashes(canvas: Canvas) -> dict[str, str]:
    """Return the sha-256 of every image file the canvas names, keyed by its path in the file."""
    names = [layer.image for layer in canvas.spec.layers] + [
        layer.mask for layer in canvas.spec.layers if layer.mask
    ]
    if canvas.spec.background is not None:
        names.insert(0, canvas.spec.background.image)
    return {name: sha256_file(canvas.resolve(name, ())) for name in dict.fromkeys(names)}


def resize_rgba(rgba: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w, 4) uint8 resized to `size` (w, h), in premultiplied alpha so edges don't bleed."""
    image = Image.fromarray(rgba, "RGBA").convert("RGBa")
    return np.asarray(image.resize(size, Image.Resampling.LANCZOS).convert("RGBA"))
